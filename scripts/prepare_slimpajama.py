"""Tokenise SlimPajama into upstream TinyLlama's packed binary files.

Reads SRC/{split}/chunk*/**/*.jsonl.zst (and *.jsonl): JSON lines with `text` and `meta.redpajama_set_name`.
RedPajamaGithub rows are skipped (the code data comes from StarCoder). Each document is its tokens followed
by EOS, the document separator; no BOS is written. P processes each own one output stream,
DST/{split}_slimpajama_{proc}_{counter:010d}.bin, and finally write their last partial chunk cut to whole
blocks, so no padding is written and at most one block per process is lost.

Beside them go DST/{split}_slimpajama.record.json (which tokenizer made the data, its largest token id) and a
copy of the tokenizer in DST/tokenizer/ (lit_gpt/data_record.py); training checks its tokenizer and model
against them. The files are written in a temporary folder inside DST and moved into place when every input
was read whole: a truncated or unreadable input, a full disk or Ctrl-C leaves nothing of the run behind.

    python scripts/prepare_slimpajama.py --source_path data/SlimPajama-627B --tokenizer_path data/llama \\
        --destination_path data/slim_star_combined --split train
"""

import io
import json
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

import zstandard  # noqa: E402

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt import Tokenizer  # noqa: E402
from lit_gpt.data_record import check_destination, copy_tokenizer, tokenizer_entry, write_record  # noqa: E402
from lit_gpt.files import os_error_line  # noqa: E402
from lit_gpt.packed_dataset import PackedDatasetBuilder  # noqa: E402

SPLITS = ("train", "validation")
PATTERNS = ("*.jsonl.zst", "*.jsonl")


class PrepareError(ValueError):
    """Bad input: reported as one `error:` line, and nothing of the run is left behind."""


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


MALFORMED_IN = "malformed in "  # + a file's path: its count of malformed lines, for the summary to name it


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
    stats["max_token_id"] = builder.max_token_id
    return stats


def _worker(proc: int, messages, args) -> None:
    try:
        stats = tokenize_files(proc, *args, report=lambda documents: messages.put(("file", documents)))
        messages.put(("done", dict(stats)))
    except (ValueError, OSError) as e:  # bad input or a failed write: the parent reports it as one line
        messages.put(("failed", os_error_line(e) if isinstance(e, OSError) else str(e)))
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
                    raise PrepareError(f"a tokenizer process died with exit code {dead[0]} (out of memory?)") from None
                continue
            if kind == "failed":
                raise PrepareError(payload)
            if kind == "error":
                raise RuntimeError(payload)
            if kind == "file":
                report(payload)
            else:
                total.update({k: v for k, v in payload.items() if k != "max_token_id"})
                total["max_token_id"] = max(total.get("max_token_id", -1), payload["max_token_id"])
                finished += 1
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    return total


def _check_input(source_path: Path, tokenizer_path: Path, destination_path: Path, split: str, chunk_size: int,
                 num_processes: int, block_size: int) -> Tuple[List[Path], Dict]:
    """The input files and the tokenizer's record entry. Raises PrepareError on bad input."""
    if split not in SPLITS:
        raise PrepareError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if block_size < 1 or chunk_size < block_size or chunk_size % block_size:
        raise PrepareError(f"chunk_size ({chunk_size}) must be a positive multiple of block_size ({block_size}): "
                           "blocks do not cross files")
    if num_processes < 1:
        raise PrepareError(f"num_processes must be positive, got {num_processes}")
    try:
        entry = tokenizer_entry(tokenizer_path)
    except (ValueError, OSError) as e:  # no tokenizer there, or a damaged one
        raise PrepareError(f"cannot load a tokenizer from {tokenizer_path}: {e}") from None
    if entry["eos_id"] is None:
        raise PrepareError(f"the tokenizer in {tokenizer_path} has no EOS token to separate documents")
    files = find_files(source_path, split)
    if not files:
        raise PrepareError(f"no {' or '.join(PATTERNS)} files under {source_path / split}/chunk*/")
    if destination_path.exists() and not destination_path.is_dir():
        raise PrepareError(f"--destination_path {destination_path} is a file, not a directory")
    existing = sorted(destination_path.glob(f"{split}_slimpajama_*")) if destination_path.is_dir() else []
    if existing:
        raise PrepareError(f"{destination_path} already holds {len(existing)} {split}_slimpajama_* files "
                           f"(e.g. {existing[0].name}); remove them or choose another destination")
    if destination_path.is_dir():
        check_destination(destination_path, entry)
    return files, entry


def _created_dirs(path: Path) -> List[Path]:
    """The folders that `path.mkdir(parents=True)` would create, deepest first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


def _publish(tmp: Path, destination_path: Path, source: Path, tokenizer_path: Path, split: str, totals: Counter,
             entry: Dict) -> None:
    """Moves the finished .bin files from `tmp` into place, with the tokenizer copy and the record; on failure
    removes what it put there."""
    placed: List[Path] = []
    try:
        copy = copy_tokenizer(tokenizer_path, destination_path)
        placed += [copy] if copy else []
        for f in sorted(tmp.glob("*.bin")):
            os.replace(f, destination_path / f.name)
            placed.append(destination_path / f.name)
        write_record(destination_path, f"{split}_slimpajama", totals["files_written"], totals["tokens_written"],
                     totals["max_token_id"], source, entry)
    except BaseException:
        for path in placed:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        raise


def prepare(source_path: Path, tokenizer_path: Path, destination_path: Path, split: str = "train",
            chunk_size: int = 2049 * 1024, num_processes: Optional[int] = None, block_size: int = 2049,
            progress: bool = True) -> Dict:
    """Tokenise one split; returns counts.

    Raises:
        PrepareError: bad input (before anything is written), a truncated input file, no complete block.
        OSError: a file could not be written (a full disk): nothing of the run is left behind.
    """
    source_path, tokenizer_path, destination_path = Path(source_path), Path(tokenizer_path), Path(destination_path)
    num_processes = (os.cpu_count() or 1) if num_processes is None else num_processes
    files, entry = _check_input(source_path, tokenizer_path, destination_path, split, chunk_size, num_processes,
                                block_size)
    created = _created_dirs(destination_path)
    destination_path.mkdir(parents=True, exist_ok=True)
    shares = split_by_size(files, min(num_processes, len(files)))
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f".{split}_slimpajama.tmp-", dir=destination_path) as tmp:
            args = (tokenizer_path, Path(tmp), split, chunk_size, block_size)
            totals = _tokenize(shares, args, split, progress)
            if not totals["tokens_written"]:
                raise PrepareError(f"{source_path / split}: {totals['documents']} documents gave "
                                   f"{totals['tokens_encoded']} tokens, less than one block of {block_size}: nothing "
                                   "to write")
            _publish(Path(tmp), destination_path, source_path / split, tokenizer_path, split, totals, entry)
    except BaseException:
        for directory in created:
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        raise
    return {"split": split, "destination": str(destination_path), "input_files": len(files),
            "processes": len(shares), "seconds": time.perf_counter() - start,
            **{key: totals[key] for key in ("documents", "tokens_encoded", "tokens_written", "github_skipped",
                                            "malformed", "files_written", "max_token_id")},
            "malformed_files": {k[len(MALFORMED_IN):]: v for k, v in totals.items() if k.startswith(MALFORMED_IN)},
            "tokens_dropped": totals["tokens_encoded"] - totals["tokens_written"]}


def _tokenize(shares: List[List[Path]], args: tuple, split: str, progress: bool) -> Counter:
    """Every share tokenised (in this process when there is one, else one process each), with a progress bar."""
    # leave=False: the bar is gone when the run ends, so a failure is the one line left on the terminal
    # disable=None: no bar when stderr is a log file, where it would run into the error line
    with tqdm(total=sum(map(len, shares)), desc=f"tokenising {split}", unit="file",
              disable=True if not progress else None, leave=False) as bar:
        documents = 0

        def report(file_documents: int) -> None:
            nonlocal documents
            documents += file_documents
            bar.update(1)
            bar.set_postfix(documents=documents)

        if len(shares) == 1:
            return tokenize_files(0, shares[0], *args, report=report)
        return _run_processes(shares, args, report)


def summary(stats: Dict) -> str:
    return (f"{stats['split']}: {stats['documents']:,} documents from {stats['input_files']} input files, "
            f"tokenised by {stats['processes']} processes in {stats['seconds']:.1f} s; "
            f"{stats['tokens_written']:,} tokens written to {stats['files_written']} files in "
            f"{stats['destination']} ({stats['tokens_dropped']:,} tokens of unfinished last blocks dropped); "
            f"skipped {stats['github_skipped']:,} RedPajamaGithub rows and {stats['malformed']:,} malformed lines"
            + _where(stats.get("malformed_files") or {}) + ".")


def _where(counts: Dict[str, int]) -> str:
    """The files that held malformed lines, most first (three at most)."""
    if not counts:
        return ""
    worst = sorted(counts.items(), key=lambda item: -item[1])
    shown = ", ".join(f"{n:,} in {path}" for path, n in worst[:3])
    return f" ({shown}{f', and {len(worst) - 3} more files' if len(worst) > 3 else ''})"


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--source_path", type=Path, required=True,
                        help="SlimPajama root: the directory that holds train/ and validation/")
    parser.add_argument("--tokenizer_path", "--tokenizer_dir", type=Path, required=True,
                        help="directory with tokenizer.model (SentencePiece) or tokenizer.json")
    parser.add_argument("--destination_path", "--out_dir", type=Path, required=True,
                        help="output directory for the .bin files (created; must not already hold this split's); "
                             "the other split may be there if made with the same tokenizer")
    parser.add_argument("--split", default="train", help=f"which split to read: {' or '.join(SPLITS)}")
    parser.add_argument("--chunk_size", type=int, default=2049 * 1024,
                        help="tokens per output file, a multiple of --block_size (default 2049*1024: 1024 blocks)")
    parser.add_argument("--num_processes", type=int, default=None,
                        help="tokenizer processes, each writing its own files (default: all CPU cores)")
    parser.add_argument("--block_size", type=int, default=2049,
                        help="training block in tokens (model block_size + 1): each process's last file is cut "
                             "to whole blocks of this size (default 2049)")
    args = parser.parse_args(argv)
    return exit_code(lambda: print(summary(prepare(args.source_path, args.tokenizer_path, args.destination_path,
                                                   args.split, args.chunk_size, args.num_processes,
                                                   args.block_size))))


if __name__ == "__main__":
    sys.exit(main())
