"""A run's metrics.csv (written by pretrain/tinyllama.py), read and checked, and the arithmetic on its loss curve.

`read_metrics` reads a run directory's metrics.csv (or the csv itself) as rows of floats, None where a cell is
empty, and refuses one that is damaged (`check_counts`: step, tokens and FLOPs finite, >= 0, tokens and FLOPs
cumulative). `in_convention` sets each row's `flops` to the chosen FLOPs convention (lit_gpt/flops.py: `exact`
reads the `flops` column, `paper` the `paper_flops` column). On those rows: `losses` (a loss column, optionally a
trailing mean), `lowest`, `reach` and `flops_to_reach` (where the loss first gets to a level, interpolated
linearly between logged points), `flops_per_token`, `base_flops` (the base model's cost a grown run starts at) and
`scratch_equivalent_tokens` (FLOPs in tokens of a reference run's model). Used by eval/speedup.py and eval/plot.py.
Problems are `UsageError`: one line naming the file and what to do.
"""

import csv
import math
from pathlib import Path
from typing import Dict, List, Optional

REQUIRED = ("step", "tokens", "flops")
CONVENTION_COLUMNS = {"exact": "flops", "paper": "paper_flops"}
COUNTS = ("step", "tokens", "flops", "paper_flops")  # finite and >= 0; tokens and FLOPs cumulative
LOSS_COLUMNS = ("val_loss", "train_loss")
Rows = List[Dict[str, Optional[float]]]


class UsageError(ValueError):
    pass


def read_metrics(path) -> Rows:
    """metrics.csv of a run directory (or the csv itself) as rows of floats, None where a cell is empty."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise UsageError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = [_numbers(r, path, number) for number, r in enumerate(reader, 2)]
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file; expected a metrics.csv written by pretrain/tinyllama.py") from None
    if not rows:
        raise UsageError(f"{path}: no rows")
    if any(r[c] is None for r in rows for c in REQUIRED):
        raise UsageError(f"{path}: a row without {'/'.join(REQUIRED)}")
    check_counts(rows, path)
    return rows


def _numbers(row: Dict[str, Optional[str]], path: Path, line: int) -> Dict[str, Optional[float]]:
    out = {}
    for key, value in row.items():
        if not key:
            continue
        try:
            out[key] = float(value) if value not in ("", None) else None
        except ValueError:
            raise UsageError(f"{path}, line {line}: column {key} holds {value!r}, not a number (a damaged or "
                             "hand-edited metrics.csv: correct or empty that cell)") from None
    return out


def check_counts(rows: Rows, path) -> None:
    """Refuses a metrics.csv whose step, tokens or FLOPs (`COUNTS`) are not finite numbers >= 0, or whose cumulative
    tokens and FLOPs go down from one row to the next, or whose FLOPs stand still while tokens grow.

    Raises:
        UsageError: one line naming `path`, the row's step and the column."""
    last: Dict[str, Dict[str, Optional[float]]] = {}  # column -> the last row that has it
    for r in rows:
        for column in COUNTS:
            value = r.get(column)
            if value is None:
                continue
            where = f"{path}: the row of step {r['step']:g}" if column != "step" else f"{path}: a row"
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"{where} has {column} {value:g}; it must be a finite number >= 0 (a damaged "
                                 "metrics.csv: correct or delete that row)")
            prev = last.get(column)
            if column != "step" and prev is not None:
                if value < prev[column]:
                    raise UsageError(f"{where} has {column} {value:g}, less than {prev[column]:g} at step "
                                     f"{prev['step']:g}; {column} is cumulative and never goes down (a damaged "
                                     "metrics.csv or two runs' rows in one: correct or delete the rows out of order)")
                if column != "tokens" and value == prev[column] and r["tokens"] > prev["tokens"]:
                    raise UsageError(f"{where} has {column} {value:g}, as at step {prev['step']:g}, though tokens "
                                     f"grew from {prev['tokens']:g} to {r['tokens']:g}; training costs FLOPs (a "
                                     "damaged metrics.csv: correct or delete that row)")
            last[column] = r


def in_convention(rows: Rows, convention: str, path) -> Rows:
    """The rows with `flops` in the given convention (`CONVENTION_COLUMNS`).

    Raises UsageError naming `path` when rows of its metrics.csv have no value for the convention: runs trained
    before pretrain/tinyllama.py logged `paper_flops` (all rows, or the rows before a resume across that upgrade)
    and grown runs whose base's cost is unknown leave it empty; every row has the exact `flops`."""
    column = CONVENTION_COLUMNS[convention]
    lacking = [r for r in rows if r.get(column) is None]
    if not lacking:
        return [{**r, "flops": r[column]} for r in rows]
    fix = (f"use --convention exact, which every row has ({column} is empty in rows logged before that column "
           "existed, and in a grown run whose growth record does not give its base's cost)")
    if len(lacking) == len(rows):
        raise UsageError(f"{path}: metrics.csv has no {column} values; {fix}")
    first, last = lacking[0]["step"], lacking[-1]["step"]
    steps = f"step {first:g}" if first == last else f"steps {first:g} to {last:g}"
    since = next(r["step"] for r in rows if r.get(column) is not None)
    span = (f"it has them from step {since:g} on" if since > last
            else f"rows have them from step {since:g}, but not all after it")
    raise UsageError(f"{path}: {len(lacking)} of {len(rows)} rows of metrics.csv have no {column} ({steps}); "
                     f"{span}; {fix}")


def losses(rows: Rows, column: str, smooth: int = 1) -> Rows:
    """Rows that logged `column`, with `loss` set to the trailing mean over `smooth` logged values."""
    logged = [r for r in rows if r.get(column) is not None]
    out = []
    for i, r in enumerate(logged):
        window = [x[column] for x in logged[max(0, i - smooth + 1):i + 1]]
        out.append({**r, "loss": sum(window) / len(window)})
    return out


def lowest(rows: Rows, column: str, smooth: int = 1, name: str = "given") -> float:
    logged = losses(rows, column, smooth)
    if not logged:
        hint = " (try --column train_loss)" if column == "val_loss" else ""
        raise UsageError(f"the {name} run logged no {column} values{hint}")
    return min(r["loss"] for r in logged)


def reach(rows: Rows, loss: float, column: str = "val_loss", smooth: int = 1) -> Optional[Dict[str, float]]:
    """step, tokens and flops where the loss first gets to `loss` (interpolated), or None if it never does."""
    prev = None
    for r in losses(rows, column, smooth):
        if r["loss"] <= loss:
            if prev is None:  # already there at the first logged point: nothing earlier to interpolate from
                return {k: r[k] for k in REQUIRED}
            w = (prev["loss"] - loss) / (prev["loss"] - r["loss"])
            return {k: prev[k] + w * (r[k] - prev[k]) for k in REQUIRED}
        prev = r
    return None


def flops_to_reach(rows: Rows, loss: float, column: str = "val_loss", smooth: int = 1) -> float:
    hit = reach(rows, loss, column, smooth)
    if hit is None:
        raise ValueError(f"the run never reaches {column} {loss:.4f}")
    return hit["flops"]


def flops_per_token(rows: Rows) -> float:
    """The run's own FLOPs per token: the slope of flops over tokens (an offset is the base model's cost)."""
    first, last = rows[0], rows[-1]
    if last["tokens"] != first["tokens"]:
        return (last["flops"] - first["flops"]) / (last["tokens"] - first["tokens"])
    if not last["tokens"]:
        raise UsageError("a run with no tokens trained")
    return last["flops"] / last["tokens"]


def base_flops(rows: Rows) -> float:
    """FLOPs a run started with: the base model's in a grown run, about 0 for a scratch run."""
    return rows[0]["flops"] - rows[0]["tokens"] * flops_per_token(rows)


def scratch_equivalent_tokens(rows: Rows, reference: Optional[Rows] = None) -> List[float]:
    """Each row's FLOPs in tokens of the reference run's model (default: the run's own model, as the paper's
    token axes do: a G_stack curve starts at the base model's cost, e.g. 2.5B for d = 10B with g = 4)."""
    fpt = flops_per_token(reference or rows)
    return [r["flops"] / fpt for r in rows]
