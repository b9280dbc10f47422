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

Along the curve (the paper's speedups at several points): `--levels N` compares at N losses evenly spaced from
just below the lower of the two runs' first logged losses down to that default target (`loss_levels`; the
target alone, with a warning, where a grown run starts below it), and `--at_loss L1,L2,...` at given ones; one
row per level, in the order training reaches them. --json prints the last level's result (the keys of a single
comparison) with `levels`: [{level, scratch, grown, speedup}, ...].

    python eval/speedup.py --scratch out/scratch --grown out/gstack --levels 5

On downstream scores instead of loss (`--task T --metric acc|acc_norm|word_perplexity|...`): the FLOPs at which
each run first reaches a score, interpolated linearly between its scored checkpoints (higher is better for
accuracies, lower for perplexities: eval/series.py HIGHER_IS_BETTER). The scores come from each run's eval/run.py
records (--scratch_eval, --grown_eval; default RUN/eval.jsonl when it exists) merged by step with its metrics.csv
TASK/METRIC columns (training with --eval_tasks), the record winning at a step both have. The default levels end
at the best score both runs reach (`score_levels`); `--at_score` gives them. A handful of noisy points makes this
coarse, and the command says so.

    python eval/speedup.py --scratch out/scratch --grown out/gstack --task arc_easy --metric acc_norm --levels 4

Reading and checking metrics.csv, and the arithmetic on its loss curve (`reach`, `flops_per_token`, ...), are in
eval/metrics_log.py; the names other code takes from here (`read_metrics`, `losses`, `reach`, ...) are re-exported.
"""

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

if __package__:
    from . import series
    from .metrics_log import (LOSS_COLUMNS, Rows, UsageError, base_flops, flops_per_token, in_convention, losses,
                              lowest, reach, read_metrics)
    from .metrics_log import flops_to_reach, scratch_equivalent_tokens  # noqa: F401 (re-exported for importers)
else:  # run as a script: eval/ is sys.path[0]
    import series
    from metrics_log import (LOSS_COLUMNS, Rows, UsageError, base_flops, flops_per_token, in_convention, losses,
                             lowest, reach, read_metrics)
    from metrics_log import flops_to_reach, scratch_equivalent_tokens  # noqa: F401 (re-exported for importers)

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.flops import CONVENTION_HELP, CONVENTION_NOTE, CONVENTIONS  # noqa: E402


class NoRange(UsageError):
    """No span of losses (scores) that both runs cross after their first point, to space --levels over."""


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


def parse_values(text: str, flag: str) -> List[float]:
    """Comma-separated levels (`--at_loss 2.9,2.8`).

    Raises:
        UsageError: one that is not a finite number >= 0 (`flag` names the option)."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{flag} must be finite numbers of at least 0, comma-separated; got {item.strip()!r}")
        values.append(value)
    return values


def spaced(start: float, end: float, n: int) -> List[float]:
    """`n` values evenly spaced from `start` (excluded) to `end` (included): start + (end - start) * i / n."""
    return [start + (end - start) * i / n for i in range(1, n + 1)]


def loss_levels(scratch: Rows, grown: Rows, n: int, column: str = "val_loss", smooth: int = 1) -> List[float]:
    """`n` losses evenly spaced from the lower of the two runs' first logged losses (excluded: both runs get below
    it after their first point, so their FLOPs are interpolated, not bounds set by when they logged) down to the
    lowest loss both reach (included: the default target of `speedup`). One level is that target alone.

    Raises:
        UsageError: a run logged no `column`; NoRange: n > 1 and the lowest loss both reach is not below both
            first losses (a grown run that starts below where scratch ends: there is no range to space levels over)."""
    runs = {"scratch": scratch, "grown": grown}
    end = max(lowest(rows, column, smooth, name) for name, rows in runs.items())
    if n == 1:
        return [end]
    start = min(losses(rows, column, smooth)[0]["loss"] for rows in runs.values())
    if end >= start:
        raise NoRange(f"no {column} range for {n} levels: the lowest {column} both runs reach ({end:.4f}) is not "
                      f"below the lower of their first logged values ({start:.4f})")
    return spaced(start, end, n)


def speedup_levels(scratch: Rows, grown: Rows, levels: Optional[List[float]] = None, n: int = 1,
                   column: str = "val_loss", smooth: int = 1, convention: str = "exact") -> dict:
    """`speedup` at each loss level (`levels`, else `n` of `loss_levels`), in the order training reaches them
    (highest loss first): the last level's result, keys as `speedup` has them, plus `levels` (one {"level",
    "scratch", "grown", "speedup"} each) and the warnings of all levels.

    Without a range for `n` levels (`loss_levels`' NoRange) it compares at the default target alone and warns:
    a pipeline asking for a curve still gets the comparison that exists.

    Raises:
        ValueError: a run reaches none of the levels (a level that one run never reaches is a row with
            `unreached`, the reason, and None for the rest); UsageError: a run logged no `column`."""
    skipped = []
    if levels is None:
        try:  # the last level is the default target: computed and reported as such (loss_is_default)
            levels = loss_levels(scratch, grown, n, column, smooth)[:-1] + [None]
        except NoRange as e:
            levels, skipped = [None], [f"{e}, so the comparison is at that lowest loss only (--at_loss gives levels)"]
    else:
        levels = sorted(levels, reverse=True)
    rows, results = [], []
    for level in levels:
        try:
            r = speedup(scratch, grown, level, column, smooth, convention)
        except UsageError:
            raise
        except ValueError as e:  # this level is not reached: a row that says so, the others still compared
            rows.append({"level": level, "scratch": None, "grown": None, "speedup": None, "unreached": str(e)})
            continue
        results.append(r)
        rows.append({"level": r["loss"], "scratch": r["scratch"], "grown": r["grown"], "speedup": r["speedup"]})
    if not results:
        raise ValueError(rows[0]["unreached"] + (" (nor any other level given)" if len(rows) > 1 else ""))
    out = dict(results[-1])
    out["levels"] = rows
    out["warnings"] = list(dict.fromkeys([w for r in results for w in r["warnings"]] + skipped))
    return out


def score_levels(points: Dict[str, List[series.Point]], n: int, higher_is_better: bool = True) -> List[float]:
    """`n` scores evenly spaced from the better of the two runs' first scores (excluded, as in `loss_levels`) to the
    best score both reach (included), in the order training reaches them. One level is that best score alone.

    Raises:
        NoRange: n > 1 and one run never scores better than the other's first score."""
    sign = 1.0 if higher_is_better else -1.0
    end = sign * min(sign * series.best(p, higher_is_better) for p in points.values())
    if n == 1:
        return [end]
    start = sign * max(sign * p[0]["value"] for p in points.values())
    if sign * end <= sign * start:
        raise NoRange(f"no range of scores for {n} levels: the best both runs reach ({end:.4f}) is not better than "
                      f"the better of their first scores ({start:.4f})")
    return spaced(start, end, n)


def score_speedup(scratch: Rows, grown: Rows, points: Dict[str, List[series.Point]], task: str, metric: str,
                  levels: Optional[List[float]] = None, n: int = 1, convention: str = "exact") -> dict:
    """The paper's speedup FLOPs_scratch / FLOPs_grown - 1 at equal downstream score: the FLOPs at which each run
    first reaches each level (`series.reach`, linear between scored points) of `metric` on `task`.

    `points` are each run's series ({"scratch": [...], "grown": [...]}, `series.run_points`); `scratch` and
    `grown` are their metrics.csv rows with `flops` in `convention` (the scratch run's FLOPs per token gives the
    scratch-equivalent tokens; the grown run's first row its base's FLOPs). Levels: `levels`, else `n` of
    `score_levels`, or the best score both reach alone, with a warning, where they have no range. Returns the
    last level's {"value", "scratch", "grown", "speedup"} with "levels" (one row each, as `speedup_levels`) and
    "warnings".

    Raises:
        ValueError: a run never reaches a level."""
    higher = series.HIGHER_IS_BETTER[metric]
    sign = 1.0 if higher else -1.0
    default = levels is None
    rows, warnings = [], []
    if default:
        try:
            levels = score_levels(points, n, higher)
        except NoRange as e:
            levels = score_levels(points, 1, higher)
            warnings.append(f"{e}, so the comparison is at that best score only (--at_score gives levels)")
    else:
        levels = sorted(levels, key=lambda v: sign * v)
    fpt = flops_per_token(scratch)
    for level in levels:
        row = {"level": level}
        for name, pts in points.items():
            hit = series.reach(pts, level, higher)
            if hit is None:
                raise ValueError(f"the {name} run never reaches {task} {metric} {level:.4f} (its best is "
                                 f"{series.best(pts, higher):.4f})")
            row[name] = {"step": hit["step"], "tokens": hit["tokens"], "flops": hit["flops"],
                         "scratch_equivalent_tokens": hit["flops"] / fpt}
            if hit["step"] == pts[0]["step"]:
                warnings.append(f"the {name} run is at {task} {metric} {level:.4f} already at its first scored point "
                                f"(step {hit['step']:g}): its FLOPs to reach it are only an upper bound, set by when "
                                "it was scored")
        row["speedup"] = row["scratch"]["flops"] / row["grown"]["flops"] - 1
        rows.append(row)
    counts = {name: len(pts) for name, pts in points.items()}
    warnings.append(f"{task} {metric} has {counts['scratch']} scored points in the scratch run and {counts['grown']} "
                    "in the grown run: the FLOPs between points are linear interpolations and a noisy score can "
                    "cross a level early, so these speedups are coarse")
    last = rows[-1]
    out = {"convention": convention, "task": task, "metric": metric, "higher_is_better": higher,
           "value": last["level"], "value_is_default": default, "points": counts}
    for name, run_rows in (("scratch", scratch), ("grown", grown)):
        out[name] = {**last[name], "base_flops": base_flops(run_rows)}
    out.update(speedup=last["speedup"], levels=rows, warnings=list(dict.fromkeys(warnings)))
    return out


def format_levels(res: dict, dirs: Dict[str, str], how: str) -> str:
    """The table of `speedup_levels` or `score_speedup`: one row per level; `how` says where the levels come from."""
    measure = f"{res['task']} {res['metric']}" if "task" in res else res["column"]
    lines = [f"levels of {measure}: {how}",
             f"{'level':>10} {'scratch FLOPs':>13} {'grown FLOPs':>13} {'scratch eq-tokens':>17} "
             f"{'grown eq-tokens':>17} {'speedup':>8}"]
    for row in res["levels"]:
        s, g = row["scratch"], row["grown"]
        if row["speedup"] is None:
            lines.append(f"{row['level']:10.4f}  not compared: {row['unreached']}")
            continue
        lines.append(f"{row['level']:10.4f} {s['flops']:13.3e} {g['flops']:13.3e} "
                     f"{s['scratch_equivalent_tokens']:17.3e} {g['scratch_equivalent_tokens']:17.3e} "
                     f"{row['speedup']:8.1%}")
    lines.append(f"speedup = FLOPs_scratch / FLOPs_grown - 1 ({_base_note(res)}; "
                 f"{CONVENTION_NOTE[res['convention']]}); eq-tokens = FLOPs / the scratch run's FLOPs per token")
    lines += [f"{name}: {dirs[name]}" for name in ("scratch", "grown")]
    return "\n".join(lines)


def _base_note(res: dict) -> str:
    return ("the base model's FLOPs counted" if res["grown"]["base_flops"] > 1e-6 * res["grown"]["flops"]
            else "no base model's FLOPs in the grown run's log")


def format_report(res: dict, dirs: Dict[str, str]) -> str:
    how = " (default: the lowest loss both runs reach)" if res["loss_is_default"] else ""
    smooth = f", trailing mean of {res['smooth']} points" if res["smooth"] > 1 else ""
    lines = [f"target: {res['column']} = {res['loss']:.4f}{how}{smooth}",
             f"{'run':8} {'FLOPs':>10} {'base FLOPs':>10} {'tokens':>10} {'scratch-eq tokens':>17} {'step':>8}  dir"]
    for name in ("scratch", "grown"):
        r = res[name]
        lines.append(f"{name:8} {r['flops']:10.3e} {r['base_flops']:10.3e} {r['tokens']:10.3e} "
                     f"{r['scratch_equivalent_tokens']:17.3e} {r['step']:8.1f}  {dirs[name]}")
    lines.append(f"speedup: {res['speedup']:.1%} (FLOPs_scratch / FLOPs_grown - 1, {_base_note(res)}; "
                 f"{CONVENTION_NOTE[res['convention']]})")
    return "\n".join(lines)


def _check_flags(args) -> None:
    """Refuses flags of the other mode (loss or --task scores): they would change nothing, silently.

    Raises:
        UsageError: one line naming the flags."""
    if args.smooth < 1:
        raise UsageError("--smooth must be at least 1")
    if args.levels < 1:
        raise UsageError(f"--levels must be at least 1, got {args.levels}")
    loss_only = {"--at_loss": args.at_loss, "--column": args.column,
                 "--smooth": args.smooth if args.smooth != 1 else None}
    score_only = {"--metric": args.metric, "--scratch_eval": args.scratch_eval, "--grown_eval": args.grown_eval,
                  "--at_score": args.at_score}
    wrong = [flag for flag, value in (score_only if args.task is None else loss_only).items() if value is not None]
    if wrong:
        where = "with --task T (downstream scores)" if args.task is None else "to losses, not with --task"
        raise UsageError(f"{' and '.join(wrong)} appl{'ies' if len(wrong) == 1 else 'y'} only {where}")
    flag, given = ("--at_loss", args.at_loss) if args.task is None else ("--at_score", args.at_score)
    if given is not None and args.levels > 1:
        raise UsageError(f"give either --levels {args.levels} or the levels themselves in {flag}, not both")


def _score_points(name: str, run: str, rows: Rows, given: Optional[str], task: str, metric: str, convention: str,
                  added: float = 0.0) -> List[series.Point]:
    """The `metric` series of `task` along a run: its eval/run.py records (`given`, else RUN/eval.jsonl) merged with
    its metrics.csv columns (`series.run_points`); `added` (--add_base_flops) goes onto the records' FLOPs, as it
    went onto the rows'.

    Raises:
        UsageError: the run has no such scores (the line lists its tasks with `metric`, and how to score it);
        SeriesError: an eval file is missing or damaged (eval/series.py)."""
    records, where = series.run_records(run, given)
    fpt = flops_per_token(rows)
    scored = series.record_points(records, task, metric, convention, where)
    for point in scored:
        point["flops"] += added
        point["scratch_tokens"] += added / fpt
    points = series.merge(scored, series.metrics_points(rows, task, metric, fpt))
    if not points:
        there = series.tasks_in(rows, records, metric)
        found = (f"its tasks with {metric}: {', '.join(there)}" if there
                 else f"none in {where} or {run}'s metrics.csv" if where
                 else f"no eval file, and none in {run}'s metrics.csv")
        raise UsageError(f"the {name} run has no {task} {metric} scores ({found}); "
                         f"{series.how_to_score(metric, task, run)}")
    return points


def main(argv=None) -> int:
    p = ArgumentParser(description="FLOPs each run needs to first reach a loss (or a downstream score with --task), "
                                   "and the paper's speedup FLOPs_scratch / FLOPs_grown - 1 (reference "
                                   "stacking-paper.md §5.4), at one level or several along the curve (--levels).")
    p.add_argument("--scratch", required=True, help="run directory (or its metrics.csv) trained from scratch")
    p.add_argument("--grown", required=True, help="run directory (or its metrics.csv) started from a grown model")
    p.add_argument("--at_loss", metavar="L[,L...]", help="the loss L to compare at, or comma-separated losses, "
                                                         "one row each (default: the lowest loss both reach)")
    p.add_argument("--levels", type=int, default=1, metavar="N", help="compare at N levels evenly spaced from just "
                   "below the lower of the runs' first logged losses (past the better first score with --task) to the "
                   "default target (default 1: the target alone)")
    p.add_argument("--column", choices=LOSS_COLUMNS, help="loss column (default val_loss)")
    p.add_argument("--smooth", type=int, default=1, help="trailing mean over this many logged points before "
                                                         "finding L, for noisy train_loss (default 1: raw)")
    p.add_argument("--task", help="compare at downstream scores of this task (eval/run.py records, metrics.csv "
                                  "TASK/METRIC columns) instead of loss")
    p.add_argument("--metric", choices=series.METRICS, help="with --task: the score (default acc; higher is better, "
                                                            "lower for perplexities)")
    p.add_argument("--scratch_eval", help="with --task: the scratch run's eval/run.py output (JSON Lines of --run, or "
                                          "one JSON; - for none; default SCRATCH/eval.jsonl when it exists)")
    p.add_argument("--grown_eval", help="with --task: the grown run's, as --scratch_eval")
    p.add_argument("--at_score", metavar="S[,S...]", help="with --task: the score(s) to compare at, "
                                                           "comma-separated (default: the best score both reach)")
    p.add_argument("--add_base_flops", type=float, default=0.0, help="FLOPs to add to the grown run, in the "
                   "chosen --convention, for runs whose metrics.csv lacks the base model's cost (a warning when it "
                   "already starts above 0)")
    p.add_argument("--convention", choices=CONVENTIONS, default="exact", help=CONVENTION_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table (the last "
                                                       "level's keys, and `levels`: one row per level)")
    args = p.parse_args(argv)

    def run() -> None:
        _check_flags(args)
        scratch, grown = (in_convention(read_metrics(path), args.convention, path)
                          for path in (args.scratch, args.grown))
        value = args.add_base_flops
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--add_base_flops must be a finite number of at least 0, got {value}")
        added = []  # a base's cost given twice: once in the log (growth.json's, since training reads it), once here
        if args.add_base_flops and len(grown) > 1 and base_flops(grown) > 1e-6 * grown[-1]["flops"]:
            added.append(f"{args.grown}: FLOPs already start at {base_flops(grown):.3e} (the base model's cost, "
                         "which training logs when growth.json records it), so --add_base_flops "
                         f"{args.add_base_flops:.3e} counts a base's cost again; leave it out for such a run")
        for r in grown:
            r["flops"] += args.add_base_flops
        dirs = {"scratch": args.scratch, "grown": args.grown}
        if args.task is None:
            levels = parse_values(args.at_loss, "--at_loss") if args.at_loss is not None else None
            column = args.column or "val_loss"
            res = speedup_levels(scratch, grown, levels, args.levels, column, args.smooth, args.convention)
            smooth = f" (trailing mean of {args.smooth} points)" if args.smooth > 1 else ""
            how = ("given with --at_loss" if levels else f"{args.levels} evenly spaced from just below the lower of "
                   "the two runs' first logged values down to the lowest both reach") + smooth
            table = len(res["levels"]) > 1
        else:
            metric = args.metric or "acc"
            points = {name: _score_points(name, dirs[name], rows, given, args.task, metric, args.convention,
                                          args.add_base_flops if name == "grown" else 0.0)
                      for name, rows, given in (("scratch", scratch, args.scratch_eval),
                                                ("grown", grown, args.grown_eval))}
            levels = parse_values(args.at_score, "--at_score") if args.at_score is not None else None
            res = score_speedup(scratch, grown, points, args.task, metric, levels, args.levels, args.convention)
            better = "higher" if res["higher_is_better"] else "lower"
            how = ("given with --at_score" if levels else f"{args.levels} evenly spaced from just past the better of "
                   f"the two runs' first scores to the best both reach") + f" ({better} is better)"
            table = True
        warnings = res["warnings"]  # printed, and in the JSON
        warnings.extend(added)
        if len(grown) > 1 and res["grown"]["base_flops"] <= 1e-6 * grown[-1]["flops"]:
            warnings.append(f"{args.grown}: FLOPs start at 0, so the base model's cost is not counted "
                            "(see --add_base_flops)")
        if Path(args.scratch).resolve() == Path(args.grown).resolve():
            warnings.append("--scratch and --grown are the same run")
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            print(format_levels(res, dirs, how) if table else format_report(res, dirs))

    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
