"""Tokenise SlimPajama into upstream TinyLlama's packed binary files.

Reads SRC/{split}/chunk*/**/*.jsonl.zst (and *.jsonl): JSON lines with `text` and `meta.redpajama_set_name`.
RedPajamaGithub rows are skipped (the code data comes from StarCoder). Each document is its tokens followed
by EOS, the document separator; no BOS is written. P processes each own one output stream,
DST/{split}_slimpajama_{proc}_{counter:010d}.bin, and finally write their last partial chunk cut to whole
blocks, so no padding is written and at most one block per process is lost.

    python scripts/prepare_slimpajama.py --source_path data/SlimPajama-627B --tokenizer_path data/llama \\
        --destination_path data/slim_star_combined --split train
"""

import argparse
import io
import json
import multiprocessing
import os
import queue
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import zstandard
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt import Tokenizer  # noqa: E402
from lit_gpt.packed_dataset import PackedDatasetBuilder  # noqa: E402

SPLITS = ("train", "validation")
PATTERNS = ("*.jsonl.zst", "*.jsonl")


class PrepareError(ValueError):
    """Bad input, found before anything is written."""


def find_files(source_path: Path, split: str) -> List[Path]:
    split_dir = Path(source_path) / split
    return sorted({path for pattern in PATTERNS for path in split_dir.glob(f"chunk*/**/{pattern}")})


def read_texts(path: Path, stats: Counter) -> Iterator[str]:
    """The `text` of each usable row; GitHub rows and malformed lines are counted in `stats` and skipped."""
    with open(path, "rb") as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(raw) if path.name.endswith(".zst") else raw
        for line in io.BufferedReader(stream):
            if not line.strip():
                continue
            try:
                row = json.loads(line)  # bytes: invalid UTF-8 is a ValueError like bad JSON
            except ValueError:
                stats["malformed"] += 1
                continue
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str):
                stats["malformed"] += 1
                continue
            meta = row.get("meta")
            if isinstance(meta, dict) and meta.get("redpajama_set_name") == "RedPajamaGithub":
                stats["github_skipped"] += 1
                continue
            yield text


def split_by_size(files: List[Path], n: int) -> List[List[Path]]:
    """Largest file first to the least loaded process, so processes finish together; each share in path order."""
    shares: List[List[Path]] = [[] for _ in range(n)]
    loads = [0] * n
    for path in sorted(files, key=lambda p: (-p.stat().st_size, str(p))):
        i = loads.index(min(loads))
        shares[i].append(path)
        loads[i] += path.stat().st_size
    return [sorted(share) for share in shares]


def tokenize_files(proc: int, files: List[Path], tokenizer_path: Path, destination_path: Path, split: str,
                   chunk_size: int, block_size: int, report: Callable[[int], None]) -> Counter:
    """One process's work: its files, in order, into its own builder; `report(documents)` after each file."""
    tokenizer = Tokenizer(tokenizer_path)
    builder = PackedDatasetBuilder(destination_path, f"{split}_slimpajama_{proc}", chunk_size,
                                   sep_token=tokenizer.bos_id, vocab_size=tokenizer.vocab_size)
    stats = Counter()
    for path in files:
        documents = 0
        for text in read_texts(path, stats):
            tokens = tokenizer.encode(text, bos=False, eos=True).numpy()
            builder.add_array(tokens)
            stats["tokens_encoded"] += len(tokens)
            documents += 1
        stats["documents"] += documents
        report(documents)
    builder.write_reminder(block_size)
    stats["tokens_written"] = builder.tokens_written
    stats["files_written"] = len(builder.filenames)
    return stats


def _worker(proc: int, messages, args) -> None:
    try:
        stats = tokenize_files(proc, *args, report=lambda documents: messages.put(("file", documents)))
        messages.put(("done", dict(stats)))
    except BaseException as e:  # the parent must hear of any failure, or it would wait forever
        messages.put(("error", f"process {proc}: {type(e).__name__}: {e}"))


def _run_processes(shares: List[List[Path]], args: tuple, report: Callable[[int], None]) -> Counter:
    # fork: children reuse the imported modules, and a script loaded from a path needs no re-import
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    messages = context.Queue()
    procs = [context.Process(target=_worker, args=(i, messages, (share, *args)), daemon=True)
             for i, share in enumerate(shares)]
    for proc in procs:
        proc.start()
    total, finished = Counter(), 0
    try:
        while finished < len(procs):
            try:
                kind, payload = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a tokenizer process died with exit code {dead[0]}") from None
                continue
            if kind == "error":
                raise RuntimeError(payload)
            if kind == "file":
                report(payload)
            else:
                total.update(payload)
                finished += 1
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    return total


def prepare(source_path: Path, tokenizer_path: Path, destination_path: Path, split: str = "train",
            chunk_size: int = 2049 * 1024, num_processes: Optional[int] = None, block_size: int = 2049,
            progress: bool = True) -> Dict:
    """Tokenise one split; returns counts. Raises PrepareError, before writing anything, on bad input."""
    source_path, tokenizer_path, destination_path = Path(source_path), Path(tokenizer_path), Path(destination_path)
    if split not in SPLITS:
        raise PrepareError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if block_size < 1 or chunk_size < block_size or chunk_size % block_size:
        raise PrepareError(f"chunk_size ({chunk_size}) must be a positive multiple of block_size ({block_size}): "
                           "blocks do not cross files")
    if num_processes is None:
        num_processes = os.cpu_count() or 1
    if num_processes < 1:
        raise PrepareError(f"num_processes must be positive, got {num_processes}")
    try:
        tokenizer = Tokenizer(tokenizer_path)
    except (FileNotFoundError, OSError, RuntimeError) as e:
        raise PrepareError(f"cannot load a tokenizer from {tokenizer_path}: {e}") from e
    if tokenizer.eos_id is None:
        raise PrepareError(f"the tokenizer in {tokenizer_path} has no EOS token to separate documents")
    files = find_files(source_path, split)
    if not files:
        raise PrepareError(f"no {' or '.join(PATTERNS)} files under {source_path / split}/chunk*/")
    existing = sorted(destination_path.glob(f"{split}_slimpajama_*")) if destination_path.is_dir() else []
    if existing:
        raise PrepareError(f"{destination_path} already holds {len(existing)} {split}_slimpajama_* files "
                           f"(e.g. {existing[0].name}); remove them or choose another destination")

    destination_path.mkdir(parents=True, exist_ok=True)
    shares = split_by_size(files, min(num_processes, len(files)))
    args = (tokenizer_path, destination_path, split, chunk_size, block_size)
    start = time.perf_counter()
    with tqdm(total=len(files), desc=f"tokenising {split}", unit="file", disable=not progress) as bar:
        documents = 0

        def report(file_documents: int) -> None:
            nonlocal documents
            documents += file_documents
            bar.update(1)
            bar.set_postfix(documents=documents)

        if len(shares) == 1:
            totals = tokenize_files(0, shares[0], *args, report=report)
        else:
            totals = _run_processes(shares, args, report)
    return {"split": split, "destination": str(destination_path), "input_files": len(files),
            "processes": len(shares), "seconds": time.perf_counter() - start,
            **{key: totals[key] for key in ("documents", "tokens_encoded", "tokens_written", "github_skipped",
                                            "malformed", "files_written")},
            "tokens_dropped": totals["tokens_encoded"] - totals["tokens_written"]}


def summary(stats: Dict) -> str:
    return (f"{stats['split']}: {stats['documents']:,} documents from {stats['input_files']} input files, "
            f"tokenised by {stats['processes']} processes in {stats['seconds']:.1f} s; "
            f"{stats['tokens_written']:,} tokens written to {stats['files_written']} files in "
            f"{stats['destination']} ({stats['tokens_dropped']:,} tokens of unfinished last blocks dropped); "
            f"skipped {stats['github_skipped']:,} RedPajamaGithub rows and {stats['malformed']:,} malformed lines.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_path", type=Path, required=True,
                        help="SlimPajama root: the directory that holds train/ and validation/")
    parser.add_argument("--tokenizer_path", type=Path, required=True,
                        help="directory with tokenizer.model (SentencePiece) or tokenizer.json")
    parser.add_argument("--destination_path", type=Path, required=True,
                        help="output directory for the .bin files (created; must not already hold this split's)")
    parser.add_argument("--split", default="train", help=f"which split to read: {' or '.join(SPLITS)}")
    parser.add_argument("--chunk_size", type=int, default=2049 * 1024,
                        help="tokens per output file, a multiple of --block_size (default 2049*1024: 1024 blocks)")
    parser.add_argument("--num_processes", type=int, default=None,
                        help="tokenizer processes, each writing its own files (default: all CPU cores)")
    parser.add_argument("--block_size", type=int, default=2049,
                        help="training block in tokens (model block_size + 1): each process's last file is cut "
                             "to whole blocks of this size (default 2049)")
    args = parser.parse_args(argv)
    try:
        stats = prepare(args.source_path, args.tokenizer_path, args.destination_path, args.split,
                        args.chunk_size, args.num_processes, args.block_size)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
