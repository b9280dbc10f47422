"""Tokenise SlimPajama into upstream TinyLlama's packed binary files.

Reads SRC/{split}/chunk*/**/*.jsonl.zst (and *.jsonl): JSON lines with `text` and `meta.redpajama_set_name`.
RedPajamaGithub rows are skipped (the code data comes from StarCoder, scripts/prepare_starcoder.py). Writes
DST/{split}_slimpajama_{proc}_{counter:010d}.bin, one stream per process, each document its tokens and EOS;
beside them DST/{split}_slimpajama.record.json (which tokenizer made the data, its largest token id) and a copy
of the tokenizer in DST/tokenizer/, which training checks its tokenizer and model against. A truncated or
unreadable input, a full disk or Ctrl-C leaves nothing of the run behind (lit_gpt/packing.py).

    python scripts/prepare_slimpajama.py --source_path data/SlimPajama-627B --tokenizer_path data/llama \\
        --destination_path data/slim_star_combined --split train
"""

import io
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

import zstandard  # noqa: E402

from lit_gpt import packing  # noqa: E402
from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.packing import MALFORMED_IN, Corpus, PrepareError, split_by_size, summary  # noqa: E402, F401

SPLITS = ("train", "validation")
PATTERNS = ("*.jsonl.zst", "*.jsonl")


def find_files(source_path: Path, split: str) -> List[Path]:
    split_dir = Path(source_path) / split
    return sorted({path for pattern in PATTERNS for path in split_dir.glob(f"chunk*/**/{pattern}")})


class ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every frame of a `.zst` file, in order.

    zstandard's `stream_reader` returns what it has when the input ends inside a frame and stops quietly, so a
    download cut short read as a shorter file. Here that is an error.

    Raises (from read):
        PrepareError: the input is empty, not zstd, or ends inside a frame (names the file).
    """

    def __init__(self, raw, path: Path) -> None:
        super().__init__()
        self._raw, self._path = raw, path
        self._frame = None  # the decompressor of the frame being read; None between frames
        self._out, self._offset = b"", 0
        self._started = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._offset == len(self._out):
            data = self._raw.read(1 << 20)
            if not data:
                if self._frame is not None or not self._started:
                    where = "ends inside a zstd frame" if self._started else "is empty"
                    raise PrepareError(f"{self._path}: truncated: the file {where} (an interrupted download or "
                                       "copy?); get a complete copy")
                return 0
            self._started = True
            self._out, self._offset = self._decompress(data), 0
        n = min(len(buffer), len(self._out) - self._offset)
        buffer[:n] = self._out[self._offset:self._offset + n]
        self._offset += n
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._frame is None:
                self._frame = zstandard.ZstdDecompressor().decompressobj()
            try:
                out.append(self._frame.decompress(data))
            except zstandard.ZstdError as e:
                raise PrepareError(f"{self._path}: not valid zstd data ({e}); get a complete copy") from None
            data = self._frame.unused_data if self._frame.eof else b""
            if self._frame.eof:
                self._frame = None
        return b"".join(out)


def read_texts(path: Path, stats: Counter) -> Iterator[str]:
    """The `text` of each usable row; GitHub rows and malformed lines are counted in `stats` and skipped.

    Raises:
        PrepareError: the file is truncated: a `.zst` that ends inside a frame, or a last line that has no
            newline and is not valid JSON (names the file).
    """
    with open(path, "rb") as raw:
        stream = ZstdFrames(raw, path) if path.name.endswith(".zst") else raw
        for line in io.BufferedReader(stream, 1 << 20):
            if not line.strip():
                continue
            try:
                row = json.loads(line)  # bytes: invalid UTF-8 is a ValueError like bad JSON
            except ValueError:
                if not line.endswith(b"\n"):
                    raise PrepareError(f"{path}: truncated: its last line has no newline and is not valid JSON "
                                       "(an interrupted download or copy?); get a complete copy") from None
                stats["malformed"] += 1
                stats[MALFORMED_IN + str(path)] += 1
                continue
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str):
                stats["malformed"] += 1
                stats[MALFORMED_IN + str(path)] += 1
                continue
            meta = row.get("meta")
            if isinstance(meta, dict) and meta.get("redpajama_set_name") == "RedPajamaGithub":
                stats["github_skipped"] += 1
                continue
            yield text


SLIMPAJAMA = Corpus(name="slimpajama", splits=SPLITS, find_files=find_files,
                    layout="{split} files (" + " or ".join(PATTERNS) + ") under {root}/{split}/chunk*/",
                    read_texts=read_texts, skipped=(("github_skipped", "RedPajamaGithub rows"),),
                    malformed="malformed lines")


def prepare(source_path: Path, tokenizer_path: Path, destination_path: Path, split: str = "train",
            chunk_size: int = 2049 * 1024, num_processes: Optional[int] = None, block_size: int = 2049,
            progress: bool = True, percentage: float = 1.0) -> Dict:
    """Tokenise one split of SlimPajama (`lit_gpt.packing.prepare`); returns counts.

    Raises:
        PrepareError: bad input (before anything is written), a truncated input file, no complete block.
        OSError: a file could not be written (a full disk): nothing of the run is left behind.
    """
    return packing.prepare(SLIMPAJAMA, source_path, tokenizer_path, destination_path, split, chunk_size,
                           num_processes, block_size, percentage, progress=progress)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    packing.add_arguments(parser, SLIMPAJAMA, "SlimPajama root: the directory that holds train/ and validation/")
    args = parser.parse_args(argv)
    return exit_code(lambda: print(summary(prepare(args.source_path, args.tokenizer_path, args.destination_path,
                                                   args.split, args.chunk_size, args.num_processes,
                                                   args.block_size, percentage=args.percentage))))


if __name__ == "__main__":
    sys.exit(main())
