"""Downstream scores of a run along its training, as series of points, for eval/plot.py and eval/speedup.py.

Two sources hold them:
  - the JSON Lines file of `eval/run.py --run` (default RUN/eval.jsonl): one record per scored checkpoint, each
    the object eval/run.py writes for one checkpoint ({"checkpoint", "name", "config", "backend", "dtype",
    "tasks", "num_fewshot", "limit", "results", "growth", "training"}) plus "run" and "checkpoint_id";
    a single-checkpoint JSON of eval/run.py reads as one record;
  - metrics.csv columns `TASK/METRIC` (e.g. `sample_mc/acc`), written by pretrain/tinyllama.py --eval_tasks.

A point is {"step", "tokens", "flops", "scratch_tokens", "value"}: tokens are the run's own, flops are cumulative
with the base model's included (in the chosen convention, lit_gpt/flops.py), scratch_tokens are the target-model
tokens of equal compute in that convention. Metric names are lm-eval's without the filter (`acc`, `acc_norm`,
`word_perplexity`); a record's results key them as `METRIC,FILTER` (`acc,none`).

A run's series merges both sources by step, the record winning at a step both have (`run_points`); `reach`
finds where a series first gets to a score, interpolated linearly between points (`HIGHER_IS_BETTER` says which
way is better).
"""

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

METRICS = ("acc", "acc_norm", "word_perplexity", "perplexity", "byte_perplexity", "bits_per_byte")
HIGHER_IS_BETTER = {"acc": True, "acc_norm": True, "word_perplexity": False, "perplexity": False,
                    "byte_perplexity": False, "bits_per_byte": False}
Point = Dict[str, float]
POSITION = ("step", "tokens", "flops", "scratch_tokens")  # where along the run a point is


class SeriesError(ValueError):
    """Bad or missing eval data: one line naming the file and what to do."""


def read_records(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """The records of an eval/run.py output: JSON Lines (one object per line) or one JSON object.

    A last line without its newline is the record a killed `eval/run.py --run` was writing: it is left out.

    Raises:
        SeriesError: the file is missing, or a line is not a JSON object with `results` and `training`.
    """
    path = Path(path)
    if not path.is_file():
        raise SeriesError(f"{path}: no such file (score a run with `python eval/run.py --run RUN --tasks T`)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SeriesError(f"{path}: not a text file; expected the JSON Lines of eval/run.py --run") from None
    stripped = text.strip()
    if stripped.startswith("{") and "\n{" not in stripped:  # one object, possibly indented over many lines
        try:
            return [_check(json.loads(stripped), path, 1)]
        except json.JSONDecodeError:
            pass  # one line of JSON Lines cut short: read below
    lines = text.split("\n")
    complete = lines[:-1]  # the text after the last newline is empty, or a record being written
    records = []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            records.append(_check(json.loads(line), path, number))
        except json.JSONDecodeError as e:
            raise SeriesError(f"{path}, line {number}: not JSON ({e.msg}): not an output of eval/run.py (if it is "
                              "one, that line is damaged: delete it and score again)") from None
    return records


def _check(record: Any, path: Path, line: int) -> Dict[str, Any]:
    if not (isinstance(record, dict) and isinstance(record.get("results"), dict)
            and isinstance(record.get("training"), dict)):
        raise SeriesError(f"{path}, line {line}: not a record of eval/run.py (an object with results and training)")
    return record


def result_value(results: Dict[str, Any], task: str, metric: str) -> Optional[float]:
    """`metric` of `task` in lm-eval's results (the `none` filter first), or None if it is not there."""
    scores = results.get(task)
    if not isinstance(scores, dict):
        return None
    keys = [f"{metric},none"] + sorted(k for k in scores if k.startswith(f"{metric},") and k != f"{metric},none")
    for key in keys:
        value = scores.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def tasks_with(records: List[Dict[str, Any]], metric: str) -> List[str]:
    """The tasks (not groups) that report `metric`, in the order they first appear."""
    out: List[str] = []
    for record in records:
        for task in record["results"]:
            if task not in out and result_value(record["results"], task, metric) is not None:
                out.append(task)
    return out


def record_points(records: List[Dict[str, Any]], task: str, metric: str, convention: str = "exact",
                  where: str = "") -> List[Point]:
    """One point per step, from the last record of that step that scores `task` (a rerun after the run was
    trained again replaces the older score), sorted by step. Only records scored with the settings of the last
    one that scores the task (limit, few-shot, backend, dtype) make the curve: the others are left out with a
    `warning:` line on stderr, since a curve mixing them (a --limit smoke score beside full ones) would mislead.

    Raises:
        SeriesError: a scored record lacks the step, tokens or FLOPs of the convention (a checkpoint whose
            training.json predates them; `where` names the file).
    """
    scoring = [r for r in records if result_value(r["results"], task, metric) is not None]
    settings = _settings(scoring[-1]) if scoring else None
    kept = [r for r in scoring if _settings(r) == settings]
    if len(kept) < len(scoring):
        print(f"warning: {where}: {len(scoring) - len(kept)} record(s) of {task} scored with other settings than "
              f"the last one ({settings}) are left out of its curve", file=sys.stderr)
    by_step: Dict[float, Point] = {}
    for record in kept:
        value = result_value(record["results"], task, metric)
        by_step[_count(record, "step", where)] = {**_position(record, convention, where), "value": value}
    return [by_step[s] for s in sorted(by_step)]


def _settings(record: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {record.get(k)}" for k in ("limit", "num_fewshot", "backend", "dtype"))


def _position(record: Dict[str, Any], convention: str, where: str) -> Point:
    training = record["training"]
    flops_key = "flops" if convention == "exact" else "paper_flops"
    scratch = (training.get("scratch_tokens") or {}).get(convention)
    if scratch is None:
        raise SeriesError(f"{where}: the record of {record.get('checkpoint')} has no {convention} scratch-equivalent "
                          "tokens (its training.json predates them, or its base's cost is unknown); use --convention "
                          "exact, or export and score the checkpoint again")
    return {"step": _count(record, "step", where), "tokens": _count(record, "tokens", where),
            "flops": _count(record, flops_key, where), "scratch_tokens": float(scratch)}


def _count(record: Dict[str, Any], key: str, where: str) -> float:
    value = record["training"].get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise SeriesError(f"{where}: the record of {record.get('checkpoint')} has no usable training {key} "
                          f"({value!r}); delete its line from the file and score the checkpoint again with "
                          "eval/run.py")
    return float(value)


def metrics_columns(rows: List[Dict[str, Optional[float]]], metric: str) -> List[str]:
    """The tasks of metrics.csv columns `TASK/METRIC` (pretrain/tinyllama.py --eval_tasks) with values."""
    tasks: List[str] = []
    for row in rows:
        for key, value in row.items():
            task, _, name = key.rpartition("/")
            if task and name == metric and value is not None and task not in tasks:
                tasks.append(task)
    return tasks


def metrics_points(rows: List[Dict[str, Optional[float]]], task: str, metric: str,
                   scratch_fpt: float) -> List[Point]:
    """Points from metrics.csv rows that logged `TASK/METRIC`; `rows` already hold `flops` in the convention and
    `scratch_fpt` is the run's FLOPs per token in it (eval/speedup.py's `in_convention`, `flops_per_token`)."""
    column = f"{task}/{metric}"
    return [{"step": r["step"], "tokens": r["tokens"], "flops": r["flops"], "scratch_tokens": r["flops"] / scratch_fpt,
             "value": r[column]} for r in rows if r.get(column) is not None]


def how_to_score(metric: str, task: str = "T", run: str = "RUN") -> str:
    """What to run for `metric` scores of `task` along `run`: the end of an error line."""
    return (f"score checkpoints with `python eval/run.py --run {run} --tasks {task}` (it writes {run}/eval.jsonl), "
            f"or train with --eval_tasks {task} (metrics.csv columns {task}/{metric})")


def tasks_in(rows: List[Dict[str, Optional[float]]], records: List[Dict[str, Any]], metric: str) -> List[str]:
    """The tasks that report `metric` in a run's records or in its metrics.csv columns, records' first."""
    tasks = tasks_with(records, metric)
    return tasks + [t for t in metrics_columns(rows, metric) if t not in tasks]


def merge(from_records: List[Point], from_metrics: List[Point]) -> List[Point]:
    """The points of both sources, one per step, sorted by step: at a step both have, the record's (eval/run.py
    scored the saved checkpoint on its own; training's --eval_tasks may have scored only --eval_tasks_limit
    examples)."""
    by_step = {p["step"]: p for p in from_metrics}
    by_step.update((p["step"], p) for p in from_records)
    return [by_step[s] for s in sorted(by_step)]


def run_points(rows: List[Dict[str, Optional[float]]], records: List[Dict[str, Any]], task: str, metric: str,
               convention: str, scratch_fpt: float, where: str = "") -> List[Point]:
    """`metric` of `task` along a run: its records' points merged with its metrics.csv's (`merge`).

    `rows` hold `flops` in `convention` and `scratch_fpt` is the run's FLOPs per token in it (`metrics_points`).

    Raises:
        SeriesError: a record that scores the task lacks its step, tokens or FLOPs (`record_points`).
    """
    return merge(record_points(records, task, metric, convention, where),
                 metrics_points(rows, task, metric, scratch_fpt))


def default_eval_file(run: Union[str, Path]) -> Optional[Path]:
    """RUN/eval.jsonl (the default output of `eval/run.py --run RUN`) of a run directory, or of the directory of a
    run's metrics.csv, when it exists; else None."""
    run = Path(run)
    path = (run if run.is_dir() else run.parent) / "eval.jsonl"
    return path if path.is_file() else None


def run_records(run: Union[str, Path], given: Optional[str] = None) -> Tuple[List[Dict[str, Any]], str]:
    """The records of a run's eval file and the file's name ("" for none): `given` (a path; `-` for none), else
    RUN/eval.jsonl when it exists (`default_eval_file`), else none.

    Raises:
        SeriesError: the file is missing or not eval/run.py's output (`read_records`).
    """
    if given == "-":
        return [], ""
    path = Path(given) if given else default_eval_file(run)
    if path is None:
        return [], ""
    return read_records(path), str(path)


def reach(points: List[Point], level: float, higher_is_better: bool = True) -> Optional[Point]:
    """Where the series first gets to `level` (at least as good: >= when higher is better, else <=), its step,
    tokens, flops and scratch_tokens interpolated linearly between that point and the one before; the first
    point itself when it is already there (nothing earlier to interpolate from); None if the series never does.
    A noisy score that crosses the level and falls back counts at its first crossing."""
    sign = 1.0 if higher_is_better else -1.0
    prev = None
    for point in points:
        if sign * point["value"] >= sign * level:
            if prev is None:
                return {k: point[k] for k in POSITION}
            w = (level - prev["value"]) / (point["value"] - prev["value"])
            return {k: prev[k] + w * (point[k] - prev[k]) for k in POSITION}
        prev = point
    return None


def best(points: List[Point], higher_is_better: bool = True) -> float:
    """The best value of a non-empty series: its highest when higher is better, else its lowest."""
    values = [p["value"] for p in points]
    return max(values) if higher_is_better else min(values)
