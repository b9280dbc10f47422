"""Scoring the checkpoints of a training run (eval/run.py --run): which ones, in what order, and the JSON Lines
file that holds one record per scored checkpoint.

A run's checkpoints are its complete step-NNNNNNNN directories (meta.json written last, so a checkpoint being
saved is not seen) and, where no step checkpoint has its step, its final/ export. A step checkpoint is read into
memory (lit_gpt.consolidate) and scored from there: nothing is written beside the run. A record is
the JSON of eval/run.py for one checkpoint plus `run` and `checkpoint_id` (a hash of the checkpoint's meta.json
or training.json): with the scoring settings it says whether a checkpoint was scored already, so a rerun scores
only what is new, and a run trained again into the same out_dir (--force) is scored again.
"""

import fcntl
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lit_gpt.checkpoint import STEP_DIR  # noqa: E402
from lit_gpt.records import check_training_record  # noqa: E402
from lit_gpt.utils import CheckpointError  # noqa: E402


@dataclass(frozen=True)
class Candidate:
    step: int
    tokens: int
    path: Path
    kind: str  # "step" (a training checkpoint) or "final" (the run's export)
    checkpoint_id: str


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_checkpoints(run: Path) -> List[Candidate]:
    """The run's scorable checkpoints, by step.

    Raises:
        CheckpointError: `run` is not a run's out_dir (no step-* checkpoint, no final/), or a meta.json or
            training.json cannot be read (one line naming it)."""
    if not run.is_dir():
        what = "a file, not a directory" if run.exists() else "no such directory"
        raise CheckpointError(f"--run {run}: {what}; give a run's --out_dir")
    found: Dict[int, Candidate] = {}
    for path in run.iterdir():
        if not (STEP_DIR.match(path.name) and (path / "meta.json").is_file()):
            continue
        meta = _read(path / "meta.json")
        found[int(meta["step"])] = Candidate(int(meta["step"]), int(meta["tokens"]), path, "step",
                                             _digest(path / "meta.json"))
    step = final_step(run)
    if step is not None and step not in found:
        final = run / "final" / "training.json"
        found[step] = Candidate(step, int(_read(final).get("tokens") or 0), final.parent, "final", _digest(final))
    if not found:
        hint = " (it holds final/ without training.json: score it with --checkpoint_dir)" if (run / "final").is_dir() \
            else ""
        raise CheckpointError(f"--run {run}: no complete step-NNNNNNNN checkpoint and no final/training.json; give a "
                              f"run's --out_dir{hint}")
    return [found[s] for s in sorted(found)]


def final_step(run: Path) -> Optional[int]:
    """The step of the run's final/ export (its training.json), None without one.

    Raises:
        CheckpointError: a damaged training.json."""
    final = run / "final" / "training.json"
    return int(_read(final)["step"]) if final.is_file() else None


def _read(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        check_training_record(data, str(path))
        if not isinstance(data.get("step"), int):
            raise ValueError(f"{path}: no step")
        return data
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); the checkpoint is damaged: delete it or pick "
                              "others with --steps") from None


def choose(candidates: List[Candidate], every: Optional[int], steps: Optional[List[int]]) -> List[Candidate]:
    """`steps`: exactly those; `every` (tokens of the run's own): the first checkpoint at or past each multiple,
    and the last one; neither: all.

    Raises:
        ValueError: a step in `steps` has no checkpoint (the line lists those there)."""
    if steps is not None:
        by_step = {c.step: c for c in candidates}
        absent = [s for s in steps if s not in by_step]
        if absent:
            there = ", ".join(str(c.step) for c in candidates[:20]) + (", ..." if len(candidates) > 20 else "")
            raise ValueError(f"--steps: no checkpoint of step {', '.join(map(str, absent))} in the run (there: "
                             f"{there})")
        return [by_step[s] for s in sorted(set(steps))]
    if every is None:
        return list(candidates)
    chosen, mark = [], every
    for c in candidates:
        if c.tokens >= mark:
            chosen.append(c)
            mark = (c.tokens // every + 1) * every
    if candidates[-1] not in chosen:
        chosen.append(candidates[-1])
    return chosen


def settings_key(record: Dict[str, Any]) -> str:
    keys = ("checkpoint_id", "backend", "dtype", "tasks", "num_fewshot", "limit")
    return json.dumps([record.get(k) for k in keys])


class Output:
    """The JSON Lines file of one scoring, held open and locked (flock) from start to end: a second scoring of the
    same file is refused instead of writing every record twice. `records` are the complete records already in it.

    A last line without its newline: a whole record (its newline lost) gets its newline; the start of one (a
    scoring killed while writing it) is cut off, with a warning; anything else means the file is not ours.

    Raises (at construction):
        ValueError: another scoring holds the file, or it holds lines that are not records of eval/run.py --run
            (nothing touched)."""

    PREFIX = b'{"run": '  # how every record's line starts (`append` writes "run" first)

    def __init__(self, path: Path, warn: Callable[[str], None]) -> None:
        self.path, self.created = path, not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"--out {path} is being written by another eval/run.py --run; let it finish (it "
                                 "scores what this one would), or give another --out") from None
            self.records = self._read(warn)
        except BaseException:
            self.close()
            raise

    def _read(self, warn: Callable[[str], None]) -> List[Dict[str, Any]]:
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]
        records = [self._record(line, number) for number, line in enumerate(complete.split(b"\n")[:-1], 1)
                   if line.strip()]
        partial = data[len(complete):]
        if not partial.strip():
            return records
        number = complete.count(b"\n") + 1
        if not partial.startswith(self.PREFIX):
            self._record(partial, number)  # raises: not ours
        try:
            records.append(self._record(partial, number))
            os.write(self.fd, b"\n")
            warn(f"warning: {self.path}: its last record had no newline; added one")
        except ValueError:
            os.ftruncate(self.fd, len(complete))
            warn(f"warning: {self.path}: dropped an incomplete last line (a scoring stopped while writing it)")
        return records

    def _record(self, line: bytes, number: int) -> Dict[str, Any]:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and "checkpoint_id" in record and "results" in record):
            raise ValueError(f"--out {self.path}, line {number}: not a record of eval/run.py --run; give another "
                             "--out (this file is left as it is)")
        return record

    def append(self, record: Dict[str, Any]) -> None:
        """One line, on disk (fsync) before the next checkpoint is read: a kill loses at most the record being
        scored.

        Raises:
            OSError: the write failed (a full disk): names the file; the part written is cut off again."""
        line = memoryview((json.dumps(record, allow_nan=False) + "\n").encode())
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            while line:
                line = line[os.write(self.fd, line):]
            os.fsync(self.fd)
        except OSError as e:
            os.ftruncate(self.fd, start)
            raise OSError(e.errno, f"cannot append a record: {e.strerror or e}; free space or give another --out",
                          str(self.path)) from None

    def close(self) -> None:
        """Releases the file; one this scoring created and wrote nothing into is removed."""
        if self.fd < 0:
            return
        try:
            if self.created and os.fstat(self.fd).st_size == 0:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_candidate(candidate: Candidate, tokenizer_dir: Optional[Path]):
    """(state, config, tokenizer_dir, info) of a step checkpoint read into memory; info is eval/run.py's
    {"config", "growth", "training"} from its meta.json.

    Raises:
        CheckpointError: damage, masks still ramping (check_masks_settled), no tokenizer to be found."""
    from growth.io import run_tokenizer
    from lit_gpt.checkpoint import check_masks_settled, run_growth
    from lit_gpt.consolidate import consolidate
    from lit_gpt.config import Config

    path = candidate.path
    meta = json.loads((path / "meta.json").read_text())
    check_masks_settled(path)
    config = Config.from_json(path / "lit_config.json")
    tokenizer = tokenizer_dir or run_tokenizer(path, meta.get("hparams") or {})
    if tokenizer is None:
        raise CheckpointError(f"{path}: the tokenizer its run trained with is not found; give --tokenizer_dir")
    state = consolidate(path)
    scratch = meta.get("scratch_tokens") or {}
    info = {"config": config.name, "growth": run_growth(meta, path / "meta.json"),
            "training": {"step": meta["step"], "tokens": meta["tokens"], "flops": meta["flops"],
                         "paper_flops": meta.get("paper_flops"), "total_tokens": meta.get("total_tokens"),
                         "scratch_tokens": {"exact": scratch.get("exact"), "paper": scratch.get("paper")}}}
    return state, config, Path(tokenizer), info
