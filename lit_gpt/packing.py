"""Tokenise a corpus into upstream TinyLlama's packed binary files: the pipeline behind every
`scripts/prepare_*.py`, which only say how their corpus is laid out and read (a `Corpus`).

Each document is its tokens followed by EOS, the document separator; no BOS is written (upstream's
`encode(bos=False, eos=True)`). P processes each own one output stream, DST/{split}_{name}_{proc}_{counter:010d}.bin
(upstream's names), and finally write their last partial chunk cut to whole blocks, so no padding is written
and at most one block per process is lost. Beside them go DST/{split}_{name}.record.json and a copy of the
tokenizer in DST/tokenizer/ (`lit_gpt.data_record`). Everything is written in a temporary folder inside DST and
moved into place when every input was read whole: a truncated or unreadable input, a full disk or Ctrl-C
leaves nothing of the run behind.
"""

import multiprocessing
import os
import queue
import signal
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm

from lit_gpt.data_record import check_destination, copy_tokenizer, tokenizer_entry, write_record
from lit_gpt.distributed import stop_with_parent
from lit_gpt.exits import TERMINATING
from lit_gpt.files import missing, os_error_line
from lit_gpt.packed_dataset import PackedDatasetBuilder
from lit_gpt.tokenizer import Tokenizer

MALFORMED_IN = "malformed in "  # + a file's path: its count of malformed rows, for the summary to name it
COUNTS = ("documents", "tokens_encoded", "tokens_written", "malformed", "files_written", "max_token_id")


class PrepareError(ValueError):
    """Bad input: reported as one `error:` line, and nothing of the run is left behind."""


@dataclass(frozen=True)
class Corpus:
    """How one corpus is laid out and read.

    name: its part of the output names, `{split}_{name}_{proc}_*.bin`.
    splits: the splits it has.
    find_files(source_path, split): its input files, sorted.
    layout: where `find_files` looks, for the error when it finds nothing (`{root}` and `{split}` filled in).
    read_texts(path, stats): each usable document's text; counts skipped rows in `stats` (`malformed`, and
        `MALFORMED_IN + path`, for rows without text; the keys of `skipped` for rows left out on purpose).
        Raises PrepareError for a truncated or unreadable file, naming it.
    skipped: (stats key, what it counts) of the rows left out on purpose, for the summary.
    malformed: what a malformed row is called in the summary.
    split_folders: whether each split is a folder of its own below the source path.
    """
    name: str
    splits: Tuple[str, ...]
    find_files: Callable[[Path, str], List[Path]]
    layout: str
    read_texts: Callable[[Path, Counter], Iterator[str]]
    skipped: Tuple[Tuple[str, str], ...] = ()
    malformed: str = "malformed rows"
    split_folders: bool = True

    def split_source(self, source_path: Path, split: str) -> Path:
        """Where a split's files are, as the data record names it."""
        return source_path / split if self.split_folders else source_path


def select_files(files: List[Path], percentage: float, source_path: Path,
                 filenames_subset: Optional[Sequence[str]] = None) -> List[Path]:
    """The files to read: those whose path below `source_path` contains one of `filenames_subset` (all when it
    is empty), then a share `percentage` of them, spread evenly over the sorted list (`floor(n * percentage)`
    files, the same ones on every run; upstream took the first files of an unsorted glob).

    Raises:
        PrepareError: `percentage` outside (0, 1], or nothing selected.
    """
    if not 0 < percentage <= 1:
        raise PrepareError(f"--percentage {percentage:g}: the share of files to read must be above 0 and at most 1")
    if filenames_subset:
        kept = [f for f in files if any(part in str(f.relative_to(source_path)) for part in filenames_subset)]
        if not kept:
            raise PrepareError(f"--filenames_subset {','.join(filenames_subset)}: none of the {len(files)} input "
                               f"files under {source_path} has one of these in its path")
        files = kept
    def upto(k: int) -> int:  # floor(k x percentage), without 0.29 x 100 = 28.999... rounding down to 28
        return int(k * percentage + 1e-9)

    chosen = [f for i, f in enumerate(files) if upto(i + 1) > upto(i)]
    if not chosen:
        raise PrepareError(f"--percentage {percentage:g} of {len(files)} files selects none; give at least "
                           f"{1 / len(files):.3g}")
    return chosen


def split_by_size(files: List[Path], n: int) -> List[List[Path]]:
    """Largest file first to the least loaded process, so processes finish together; each share in path order."""
    shares: List[List[Path]] = [[] for _ in range(n)]
    loads = [0] * n
    for path in sorted(files, key=lambda p: (-p.stat().st_size, str(p))):
        i = loads.index(min(loads))
        shares[i].append(path)
        loads[i] += path.stat().st_size
    return [sorted(share) for share in shares]


def tokenize_files(corpus: Corpus, proc: int, files: List[Path], tokenizer_path: Path, destination_path: Path,
                   split: str, chunk_size: int, block_size: int, report: Callable[[int], None]) -> Counter:
    """One process's work: its files, in order, into its own builder; `report(documents)` after each file."""
    tokenizer = Tokenizer(tokenizer_path)
    builder = PackedDatasetBuilder(destination_path, f"{split}_{corpus.name}_{proc}", chunk_size,
                                   sep_token=tokenizer.bos_id, vocab_size=tokenizer.vocab_size)
    stats = Counter()
    for path in files:
        documents = 0
        for text in corpus.read_texts(path, stats):
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
    # the parent ends its workers with SIGTERM: they die quietly, and with the parent, even one killed by SIGKILL
    for sig in TERMINATING:
        signal.signal(sig, signal.SIG_DFL)
    stop_with_parent()
    try:
        stats = tokenize_files(args[0], proc, *args[1:], report=lambda documents: messages.put(("file", documents)))
        messages.put(("done", dict(stats)))
    except (ValueError, OSError) as e:  # bad input or a failed write: the parent reports it as one line
        messages.put(("failed", os_error_line(e) if isinstance(e, OSError) else str(e)))
    except BaseException as e:  # the parent must hear of any failure, or it would wait forever
        messages.put(("error", f"process {proc}: {type(e).__name__}: {e}"))


def _run_processes(corpus: Corpus, shares: List[List[Path]], args: tuple, report: Callable[[int], None]) -> Counter:
    # fork: children reuse the imported modules, and a script loaded from a path needs no re-import
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    messages = context.Queue()
    procs = [context.Process(target=_worker, args=(i, messages, (corpus, share, *args)), daemon=True)
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


def _check_input(corpus: Corpus, source_path: Path, tokenizer_path: Path, destination_path: Path, split: str,
                 chunk_size: int, num_processes: int, block_size: int) -> Tuple[List[Path], Dict]:
    """The input files found and the tokenizer's record entry. Raises PrepareError on bad input."""
    if split not in corpus.splits:
        raise PrepareError(f"unknown split {split!r} for {corpus.name}; choose {' or '.join(corpus.splits)}")
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
    if why := missing(source_path, "directory"):
        raise PrepareError(f"--source_path {source_path}: {why}")
    files = corpus.find_files(source_path, split)
    if not files:
        raise PrepareError("no " + corpus.layout.format(root=source_path, split=split))
    if destination_path.exists() and not destination_path.is_dir():
        raise PrepareError(f"--destination_path {destination_path} is a file, not a directory")
    prefix = f"{split}_{corpus.name}"
    existing = sorted(destination_path.glob(f"{prefix}_*")) if destination_path.is_dir() else []
    if existing:
        raise PrepareError(f"{destination_path} already holds {len(existing)} {prefix}_* files "
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


def _publish(tmp: Path, destination_path: Path, source: Path, tokenizer_path: Path, prefix: str, totals: Counter,
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
        write_record(destination_path, prefix, totals["files_written"], totals["tokens_written"],
                     totals["max_token_id"], source, entry)
    except BaseException:
        for path in placed:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        raise


def prepare(corpus: Corpus, source_path: Path, tokenizer_path: Path, destination_path: Path, split: str = "train",
            chunk_size: int = 2049 * 1024, num_processes: Optional[int] = None, block_size: int = 2049,
            percentage: float = 1.0, filenames_subset: Optional[Sequence[str]] = None,
            progress: bool = True) -> Dict:
    """Tokenise one split of `corpus` (module docstring); returns counts (tokens, documents, files, seconds).

    Raises:
        PrepareError: bad input (before anything is written), a truncated input file, no complete block.
        OSError: a file could not be written (a full disk): nothing of the run is left behind.
    """
    source_path, tokenizer_path, destination_path = Path(source_path), Path(tokenizer_path), Path(destination_path)
    num_processes = (os.cpu_count() or 1) if num_processes is None else num_processes
    found, entry = _check_input(corpus, source_path, tokenizer_path, destination_path, split, chunk_size,
                                num_processes, block_size)
    files = select_files(found, percentage, source_path, filenames_subset)
    created = _created_dirs(destination_path)
    destination_path.mkdir(parents=True, exist_ok=True)
    shares = split_by_size(files, min(num_processes, len(files)))
    prefix = f"{split}_{corpus.name}"
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f".{prefix}.tmp-", dir=destination_path) as tmp:
            args = (tokenizer_path, Path(tmp), split, chunk_size, block_size)
            totals = _tokenize(corpus, shares, args, split, progress)
            if not totals["tokens_written"]:
                raise PrepareError(f"{corpus.split_source(source_path, split)}: {totals['documents']} documents gave "
                                   f"{totals['tokens_encoded']} tokens, less than one block of {block_size}: nothing "
                                   "to write")
            _publish(Path(tmp), destination_path, corpus.split_source(source_path, split), tokenizer_path, prefix,
                     totals, entry)
    except BaseException:
        for directory in created:
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        raise
    return {"corpus": corpus.name, "split": split, "destination": str(destination_path), "input_files": len(files),
            "found_files": len(found), "processes": len(shares), "seconds": time.perf_counter() - start,
            **{key: totals[key] for key in COUNTS + tuple(key for key, _ in corpus.skipped)},
            "malformed_files": {k[len(MALFORMED_IN):]: v for k, v in totals.items() if k.startswith(MALFORMED_IN)},
            "tokens_dropped": totals["tokens_encoded"] - totals["tokens_written"],
            "skipped": corpus.skipped, "malformed_name": corpus.malformed}


def _tokenize(corpus: Corpus, shares: List[List[Path]], args: tuple, split: str, progress: bool) -> Counter:
    """Every share tokenised (in this process when there is one, else one process each), with a progress bar."""
    # leave=False: the bar is gone when the run ends, so a failure is the one line left on the terminal
    # disable=None: no bar when stderr is a log file, where it would run into the error line
    with tqdm(total=sum(map(len, shares)), desc=f"tokenising {split}_{corpus.name}", unit="file",
              disable=True if not progress else None, leave=False) as bar:
        documents = 0

        def report(file_documents: int) -> None:
            nonlocal documents
            documents += file_documents
            bar.update(1)
            bar.set_postfix(documents=documents)

        if len(shares) == 1:
            return tokenize_files(corpus, 0, shares[0], *args, report=report)
        return _run_processes(corpus, shares, args, report)


def summary(stats: Dict) -> str:
    """One line: what `prepare` read, wrote and skipped."""
    chosen = (f" ({stats['input_files']} of {stats['found_files']} found)"
              if stats.get("found_files", stats["input_files"]) != stats["input_files"] else "")
    skipped = [f"{stats[key]:,} {what}" for key, what in stats.get("skipped", ())]
    skipped.append(f"{stats['malformed']:,} {stats.get('malformed_name', 'malformed rows')}"
                   + _where(stats.get("malformed_files") or {}))
    return (f"{stats['split']}: {stats['documents']:,} documents from {stats['input_files']} input files{chosen}, "
            f"tokenised by {stats['processes']} processes in {stats['seconds']:.1f} s; "
            f"{stats['tokens_written']:,} tokens written to {stats['files_written']} files in "
            f"{stats['destination']} ({stats['tokens_dropped']:,} tokens of unfinished last blocks dropped); "
            f"skipped {' and '.join(skipped)}.")


def _where(counts: Dict[str, int]) -> str:
    """The files that held malformed rows, most first (three at most)."""
    if not counts:
        return ""
    worst = sorted(counts.items(), key=lambda item: -item[1])
    shown = ", ".join(f"{n:,} in {path}" for path, n in worst[:3])
    return f" ({shown}{f', and {len(worst) - 3} more files' if len(worst) > 3 else ''})"


def add_arguments(parser, corpus: Corpus, source_help: str) -> None:
    """The flags every prepare script shares (upstream's names, plus ours)."""
    parser.add_argument("--source_path", type=Path, required=True, help=source_help)
    parser.add_argument("--tokenizer_path", "--tokenizer_dir", type=Path, required=True,
                        help="directory with tokenizer.model (SentencePiece) or tokenizer.json (upstream's "
                             "data/llama; a path to the file itself is taken as its directory)")
    parser.add_argument("--destination_path", "--out_dir", type=Path, required=True,
                        help="output directory for the .bin files (created; must not already hold this split's); "
                             "other splits and corpora may be there if made with the same tokenizer")
    parser.add_argument("--split", default="train", help=f"which split to read: {' or '.join(corpus.splits)}")
    parser.add_argument("--percentage", type=float, default=1.0,
                        help="share of the input files to read, in (0, 1]: floor(files x share) of them, spread "
                             "evenly over the sorted file list, so reruns read the same files (default 1.0: all)")
    parser.add_argument("--chunk_size", type=int, default=2049 * 1024,
                        help="tokens per output file, a multiple of --block_size (default 2049*1024: 1024 blocks)")
    parser.add_argument("--num_processes", type=int, default=None,
                        help="tokenizer processes, each writing its own files (default: all CPU cores)")
    parser.add_argument("--block_size", type=int, default=2049,
                        help="training block in tokens (model block_size + 1): each process's last file is cut "
                             "to whole blocks of this size (default 2049)")
