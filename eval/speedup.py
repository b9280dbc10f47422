"""Speedup of a grown run over a scratch run at equal loss, from their metrics.csv files (paper §5.4).

    python eval/speedup.py --scratch out/scratch --grown out/gstack [--at_loss 2.45] [--convention paper]

speedup = FLOPs_scratch(L) / FLOPs_grown(L) - 1, where FLOPs_run(L) is the compute at which the run's loss first
reaches L, linearly interpolated between logged points. FLOPs follow --convention (lit_gpt/flops.py): `exact`
reads metrics.csv's `flops` (each model's own FLOPs per token, attention included), `paper` its `paper_flops`
(6 N D with N the target's parameters, the base costing d/g target tokens). Both columns of a grown run start
at the base model's cost (pretrain/tinyllama.py reads it from growth.json), so C = C_base + C_grown as in the
paper; its `tokens` column counts only its own tokens, so tokens are compared as scratch-equivalent tokens,
FLOPs / (the scratch run's FLOPs per token). The default L is the lowest loss both runs reach: usually the
scratch run's best, i.e. "how much sooner does the grown run get to where scratch ended" (the paper's 54.6%
headline is this measure at 300B scratch tokens).
"""

import csv
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: lit_gpt is imported from the repository root
    sys.path.insert(0, str(ROOT))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.flops import CONVENTION_HELP, CONVENTION_NOTE, CONVENTIONS  # noqa: E402

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
            rows = [{k: (float(v) if v not in ("", None) else None) for k, v in r.items() if k} for r in reader]
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file; expected a metrics.csv written by pretrain/tinyllama.py") from None
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"{path}: not a number in a metrics row ({e})") from None
    if not rows:
        raise UsageError(f"{path}: no rows")
    if any(r[c] is None for r in rows for c in REQUIRED):
        raise UsageError(f"{path}: a row without {'/'.join(REQUIRED)}")
    check_counts(rows, path)
    return rows


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


def speedup(scratch: Rows, grown: Rows, loss: Optional[float] = None, column: str = "val_loss",
            smooth: int = 1, convention: str = "exact") -> dict:
    """The paper's speedup FLOPs_scratch / FLOPs_grown - 1 at equal loss; ValueError if a run never gets there.

    `scratch` and `grown` already hold `flops` in `convention` (`in_convention`); it is recorded in the result."""
    runs = {"scratch": scratch, "grown": grown}
    best = {name: lowest(rows, column, smooth, name) for name, rows in runs.items()}
    target = max(best.values()) if loss is None else loss
    fpt = flops_per_token(scratch)
    out = {"convention": convention, "column": column, "loss": target, "loss_is_default": loss is None,
           "smooth": smooth}
    for name, rows in runs.items():
        hit = reach(rows, target, column, smooth)
        if hit is None:
            raise ValueError(f"the {name} run never reaches {column} {target:.4f} (its lowest is {best[name]:.4f})")
        out[name] = {**hit, "scratch_equivalent_tokens": hit["flops"] / fpt, "base_flops": base_flops(rows)}
    out["speedup"] = out["scratch"]["flops"] / out["grown"]["flops"] - 1
    out["warnings"] = [f"the {name} run is at {column} {target:.4f} already at its first logged point (step "
                       f"{out[name]['step']:g}): its FLOPs to reach it are only an upper bound, set by when it logged"
                       for name in runs if out[name]["step"] == _first_logged_step(runs[name], column)]
    return out


def _first_logged_step(rows: Rows, column: str) -> Optional[float]:
    return next((r["step"] for r in rows if r.get(column) is not None), None)


def format_report(res: dict, dirs: Dict[str, str]) -> str:
    how = " (default: the lowest loss both runs reach)" if res["loss_is_default"] else ""
    smooth = f", trailing mean of {res['smooth']} points" if res["smooth"] > 1 else ""
    lines = [f"target: {res['column']} = {res['loss']:.4f}{how}{smooth}",
             f"{'run':8} {'FLOPs':>10} {'base FLOPs':>10} {'tokens':>10} {'scratch-eq tokens':>17} {'step':>8}  dir"]
    for name in ("scratch", "grown"):
        r = res[name]
        lines.append(f"{name:8} {r['flops']:10.3e} {r['base_flops']:10.3e} {r['tokens']:10.3e} "
                     f"{r['scratch_equivalent_tokens']:17.3e} {r['step']:8.1f}  {dirs[name]}")
    base = ("the base model's FLOPs counted" if res["grown"]["base_flops"] > 1e-6 * res["grown"]["flops"]
            else "no base model's FLOPs in the grown run's log")
    lines.append(f"speedup: {res['speedup']:.1%} (FLOPs_scratch / FLOPs_grown - 1, {base}; "
                 f"{CONVENTION_NOTE[res['convention']]})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = ArgumentParser(description="FLOPs each run needs to first reach a loss, and the paper's speedup "
                           "FLOPs_scratch / FLOPs_grown - 1 (reference stacking-paper.md §5.4).")
    p.add_argument("--scratch", required=True, help="run directory (or its metrics.csv) trained from scratch")
    p.add_argument("--grown", required=True, help="run directory (or its metrics.csv) started from a grown model")
    p.add_argument("--at_loss", type=float, help="the loss L to compare at (default: the lowest loss both reach)")
    p.add_argument("--column", default="val_loss", choices=LOSS_COLUMNS, help="loss column (default val_loss)")
    p.add_argument("--smooth", type=int, default=1, help="trailing mean over this many logged points before "
                                                         "finding L, for noisy train_loss (default 1: raw)")
    p.add_argument("--add_base_flops", type=float, default=0.0, help="FLOPs to add to the grown run, in the "
                   "chosen --convention, for runs whose metrics.csv lacks the base model's cost (a warning when it "
                   "already starts above 0)")
    p.add_argument("--convention", choices=CONVENTIONS, default="exact", help=CONVENTION_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    args = p.parse_args(argv)

    def run() -> None:
        if args.smooth < 1:
            raise UsageError("--smooth must be at least 1")
        scratch, grown = (in_convention(read_metrics(path), args.convention, path)
                          for path in (args.scratch, args.grown))
        for name in ("at_loss", "add_base_flops"):
            value = getattr(args, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UsageError(f"--{name} must be a finite number of at least 0, got {value}")
        added = []  # a base's cost given twice: once in the log (growth.json's, since training reads it), once here
        if args.add_base_flops and len(grown) > 1 and base_flops(grown) > 1e-6 * grown[-1]["flops"]:
            added.append(f"{args.grown}: FLOPs already start at {base_flops(grown):.3e} (the base model's cost, "
                         "which training logs when growth.json records it), so --add_base_flops "
                         f"{args.add_base_flops:.3e} counts a base's cost again; leave it out for such a run")
        for r in grown:
            r["flops"] += args.add_base_flops
        res = speedup(scratch, grown, args.at_loss, args.column, args.smooth, args.convention)
        warnings = res["warnings"]  # printed, and in the JSON
        warnings.extend(added)
        if len(grown) > 1 and res["grown"]["base_flops"] <= 1e-6 * grown[-1]["flops"]:
            warnings.append(f"{args.grown}: FLOPs start at 0, so the base model's cost is not counted "
                            "(see --add_base_flops)")
        if Path(args.scratch).resolve() == Path(args.grown).resolve():
            warnings.append("--scratch and --grown are the same run")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(json.dumps(res, indent=2) if args.json else format_report(res, {"scratch": args.scratch,
                                                                              "grown": args.grown}))

    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
