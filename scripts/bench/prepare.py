"""Tokens/s of scripts/prepare_slimpajama.py end to end (read .jsonl.zst, parse JSON, tokenise, write .bin files)
against bare SentencePiece encoding of the same texts in a multiprocessing Pool of the same size.

    python scripts/prepare_sample_data.py          # once: builds data/sample
    python scripts/bench/prepare.py [--data data/sample] [--num_processes P] [--repeats 3]

Runs of the two alternate, so background load hits both alike; medians are reported. The baseline only
counts tokens (nothing is sent back or written), so the ratio is a lower bound on the pipeline's efficiency.
"""

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import List

import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from lit_gpt.cli import ArgumentParser  # noqa: E402
from prepare_slimpajama import find_files, prepare, read_texts  # noqa: E402

_processor = None


def _load(model_file: str) -> None:
    global _processor
    _processor = spm.SentencePieceProcessor(model_file=model_file)


def _count(text: str) -> int:
    return len(_processor.encode(text)) + 1  # + the EOS the pipeline appends


def bare_sentencepiece(texts: List[str], model_file: str, processes: int) -> float:
    start = time.perf_counter()
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with context.Pool(processes, initializer=_load, initargs=(model_file,)) as pool:
        tokens = sum(pool.imap_unordered(_count, texts, chunksize=1))
    return tokens / (time.perf_counter() - start)


def pipeline(data: Path, processes: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        stats = prepare(data / "raw", data / "tokenizer", Path(out), "train", chunk_size=257 * 1024,
                        num_processes=processes, block_size=257, progress=False)
        return stats["tokens_encoded"] / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "sample",
                        help="output of scripts/prepare_sample_data.py (its raw/train and tokenizer/ are used)")
    parser.add_argument("--num_processes", type=int, default=os.cpu_count(), help="processes for both (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating (default 3)")
    args = parser.parse_args(argv)
    model_file = args.data / "tokenizer" / "tokenizer.model"
    files = find_files(args.data / "raw", "train")
    if not files or not model_file.is_file():
        print(f"error: {args.data} has no raw/train files or tokenizer; run scripts/prepare_sample_data.py",
              file=sys.stderr)
        return 1
    texts = [text for path in files for text in read_texts(path, Counter())]
    print(f"{len(texts)} documents, {sum(map(len, texts)) / 1e6:.1f} M characters, {args.num_processes} processes")
    ours, bare = [], []
    for _ in range(args.repeats):
        ours.append(pipeline(args.data, args.num_processes))
        bare.append(bare_sentencepiece(texts, str(model_file), args.num_processes))
    ours_tps, bare_tps = statistics.median(ours), statistics.median(bare)
    for name, median, runs in (("prepare_slimpajama", ours_tps, ours), ("bare SentencePiece Pool", bare_tps, bare)):
        print(f"{name:24s} {median / 1e6:.2f} M tokens/s (runs: {', '.join(f'{t / 1e6:.2f}' for t in runs)})")
    print(f"ratio: {ours_tps / bare_tps:.2f} (goal >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
