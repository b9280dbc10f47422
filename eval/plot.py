"""Curves of training runs like the paper's figures: loss, or downstream scores per task, against tokens or FLOPs.

    python eval/plot.py out/scratch out/gstack --x flops --labels scratch,G_stack --out loss.png
    python eval/plot.py out/scratch out/gstack --metric acc --out acc.png          # one panel per task, 4 a row
    python eval/plot.py out/scratch out/gstack --metric acc_norm --task arc_easy --out arc.png

x axes (--x): `scratch_tokens` (default) is scratch-equivalent tokens, FLOPs / the run's FLOPs per token, as in
the paper: a grown run's curve starts at its base model's cost, not at 0. `tokens` is each run's own training
tokens (a grown run's curve starts at 0). `flops` is cumulative training FLOPs, the base model's included.
FLOPs follow --convention (lit_gpt/flops.py): `exact` counts each model at its own FLOPs per token (a 6L2048H
base trained on 10B tokens costs 2.85B 24L2048H tokens), `paper` is 6 N D with the base at d/g target tokens
(2.5B for d = 10B and g = 4, reference stacking-paper.md §5.4). The axis label names the convention.

--metric loss (default) draws the --y column of each run's metrics.csv in one panel. A downstream metric (acc,
acc_norm, word_perplexity, ...) draws one panel per task that reports it in any run (or only --task), one line
per run with a marker at each scored checkpoint. The scores come from the run's eval/run.py records (--evals;
default RUN/eval.jsonl when it exists, eval/series.py) and from its metrics.csv's TASK/METRIC columns (training
with --eval_tasks), merged by step, the record winning at a step both have. A run without scores for a task is
left out of that panel.
"""

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: lit_gpt is imported from the repository root
    sys.path.insert(0, str(ROOT))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch (lit_gpt.flops imports it): Ctrl-C is one line
    guard_command()

if __package__:
    from . import series
    from .metrics_log import LOSS_COLUMNS, UsageError, flops_per_token, in_convention, losses, read_metrics
else:  # run as a script: eval/ is sys.path[0]
    import series
    from metrics_log import LOSS_COLUMNS, UsageError, flops_per_token, in_convention, losses, read_metrics

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.files import atomic_file, check_keeps_inputs, check_writable_target  # noqa: E402
from lit_gpt.flops import CONVENTION_HELP, CONVENTIONS  # noqa: E402

AXES = {"scratch_tokens": "tokens (scratch-equivalent, {})", "tokens": "training tokens (each run's own)",
        "flops": "training FLOPs (base model included, {})"}
AXIS_CONVENTION = {"exact": "exact FLOPs", "paper": "paper's 6ND, base at d/g"}
METRICS = ("loss",) + series.METRICS
MAX_COLUMNS = 4  # the paper's 2 x 4 grid for its 8 tasks


def axis_label(x: str, convention: str) -> str:
    return AXES[x].format(AXIS_CONVENTION[convention])


def run_rows(run, convention: str):
    """A run's metrics.csv rows, `flops` in `convention`, with `scratch_tokens` (FLOPs / its FLOPs per token).

    Raises:
        UsageError: a missing or damaged metrics.csv, or one without the convention's FLOPs (metrics_log.py)."""
    rows = in_convention(read_metrics(run), convention, run)
    fpt = flops_per_token(rows)
    return [{**r, "scratch_tokens": r["flops"] / fpt} for r in rows]


def curves(runs, x: str = "scratch_tokens", y: str = "val_loss", smooth: int = 1, convention: str = "exact"):
    """(xs, ys) of the loss `y` per run directory or metrics.csv, only at the rows that logged it; xs in `x`
    (`AXES`: tokens are the run's own, scratch_tokens and flops count a grown run's base), FLOPs in `convention`.

    Raises:
        UsageError: a run logged no `y`, or its metrics.csv is missing or damaged."""
    out = []
    for run in runs:
        logged = losses(run_rows(run, convention), y, smooth)
        if not logged:
            raise UsageError(f"{run}: no {y} values logged" + (" (try --y train_loss)" if y == "val_loss" else ""))
        out.append(([r[x] for r in logged], [r["loss"] for r in logged]))
    return out


def eval_records(runs, evals=None):
    """The eval/run.py records of each run: `evals` lists a file per run (`-` for none); by default each run's
    RUN/eval.jsonl when it exists (eval/series.py `run_records`). Returns [(records, file name or "")] per run.

    Raises:
        UsageError: `evals` does not list one file per run.
        SeriesError: a listed file is missing or not eval/run.py's output."""
    files = [None] * len(runs) if evals is None else list(evals)
    if len(files) != len(runs):
        raise UsageError(f"--evals has {len(files)} files for {len(runs)} runs (one per run, in order; - for a run "
                         "with none)")
    return [series.run_records(run, given) for run, given in zip(runs, files)]


def score_curves(runs, metric: str, task=None, x: str = "scratch_tokens", convention: str = "exact", evals=None):
    """{task: [(xs, ys) or None per run]} of a downstream `metric` for every task that reports it in any run's
    records or metrics.csv columns (only `task` when given), in the order they first appear; None where a run has
    no score for the task. Records and metrics.csv merge by step, the record winning (eval/series.py).

    Raises:
        UsageError: no run has any `metric` score (the line says how to get them), or none has `task` (the line
            lists the tasks there are); `evals` does not list one file per run.
        SeriesError: an eval file is missing or damaged, or a record lacks its step, tokens or FLOPs."""
    sources = []
    for run, (records, where) in zip(runs, eval_records(runs, evals)):
        rows = run_rows(run, convention)
        sources.append((rows, records, where or str(run)))
    tasks = []
    for rows, records, _ in sources:
        tasks += [t for t in series.tasks_in(rows, records, metric) if t not in tasks]
    if not tasks:
        raise UsageError(f"no run has {metric} scores to plot: {series.how_to_score(metric)} (--evals names "
                         "eval files other than RUN/eval.jsonl)")
    if task is not None and task not in tasks:
        raise UsageError(f"no run has {metric} scores of task {task}; tasks with {metric}: {', '.join(tasks)}")
    out = {}
    for name in [task] if task is not None else tasks:
        out[name] = []
        for rows, records, where in sources:
            points = series.run_points(rows, records, name, metric, convention, flops_per_token(rows), where)
            out[name].append(([p[x] for p in points], [p["value"] for p in points]) if points else None)
    return out


def grid(panels: int):
    """(rows, columns) of a figure of `panels` panels: at most MAX_COLUMNS a row."""
    columns = min(MAX_COLUMNS, panels)
    return math.ceil(panels / columns), columns


def _draw(ax, data, labels, loss: bool):
    """Draws one panel's curves (None: the run is not in this panel); returns {label: line} of those drawn."""
    lines = {}
    for i, (curve, label) in enumerate(zip(data, labels)):
        if curve is not None:
            # the colour is the run's, not the panel's next: a run keeps it where an earlier run is absent;
            # downstream scores have few checkpoints, so each one is marked
            lines[label], = ax.plot(*curve, label=label, color=f"C{i % 10}", linewidth=1.5,
                                    marker=None if loss else "o", markersize=3)
    return lines


def plot(runs, out: Path, x: str = "scratch_tokens", y: str = "val_loss", labels=None, logx: bool = False,
         smooth: int = 1, title: str = "", convention: str = "exact", metric: str = "loss", task=None, evals=None):
    """Writes the PNG `out` atomically: the loss `y` in one panel (`metric` loss), or a downstream `metric` in one
    panel per task (`score_curves`) laid out by `grid` with one legend for all. Returns the panels' titles (the
    tasks; "" for the loss panel without --title).

    Raises:
        UsageError: no matplotlib, --labels not one per run, or what `curves` / `score_curves` raise."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install -r requirements-eval.txt") from None
    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    labels = labels or [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    if len(labels) != len(runs):
        raise UsageError(f"--labels has {len(labels)} names for {len(runs)} runs")
    if metric == "loss":
        panels = {title: curves(runs, x, y, smooth, convention)}
        ylabel = y.replace("_", " ") + (f" (mean of {smooth})" if smooth > 1 else "")
    else:
        panels = score_curves(runs, metric, task, x, convention, evals)
        ylabel = metric.replace("_", " ")
    rows, columns = grid(len(panels))
    single = len(panels) == 1
    fig, axes = plt.subplots(rows, columns, figsize=(6, 4) if single else (4.6 * columns, 3.2 * rows), dpi=120,
                             squeeze=False)
    handles = {}  # label -> line, for one legend over all panels (a run may be absent from some)
    for ax, (name, data) in zip(axes.flat, panels.items()):
        handles.update((k, v) for k, v in _draw(ax, data, labels, metric == "loss").items() if k not in handles)
        ax.set_xlabel(axis_label(x, convention))
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        else:  # 2T, 400k on the ticks: matplotlib's 1e12 offset text would sit on the axis label
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        if metric.endswith("perplexity"):  # perplexities fall by orders of magnitude early in training
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if name:
            ax.set_title(name)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    if single:
        axes.flat[0].legend()
    else:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6))
    if title and metric != "loss":  # panels carry their task's name: the title goes above them all
        fig.suptitle(title)
    fig.tight_layout(rect=None if single else (0, 0.45 / fig.get_figheight(), 1, 1))  # 0.45 in below: the legend
    drawn = [ax.get_title() for ax in axes.flat if ax.get_visible()]
    try:  # a reader never sees a half-written PNG
        with atomic_file(out) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return drawn


def _attached(argv, flag: str = "--evals"):
    """`argv` with `--evals -,F` written as `--evals=-,F`: argparse takes a value that starts with `-` and holds
    more than the dash for an unknown flag ("expected one argument"), and `-` is how a run without evals is named."""
    out = []
    for arg in argv:
        if out and out[-1] == flag and arg.startswith("-,"):
            out[-1] = f"{flag}={arg}"
        else:
            out.append(arg)
    return out


def main(argv=None) -> int:
    p = ArgumentParser(description="Plot curves of runs (one line each) to a PNG: loss from their metrics.csv, or "
                                   "downstream scores per task from their eval/run.py records and metrics.csv.")
    p.add_argument("runs", nargs="+", help="run directories (or their metrics.csv files)")
    p.add_argument("--x", default="scratch_tokens", choices=sorted(AXES),
                   help="x axis: scratch_tokens (FLOPs / the run's FLOPs per token, a grown run starting at its base's "
                        "cost; default), tokens (each run's own, from 0) or flops (cumulative, base model included)")
    p.add_argument("--convention", choices=CONVENTIONS, default="exact", help=CONVENTION_HELP)
    p.add_argument("--metric", default="loss", choices=METRICS,
                   help="loss (the --y column; default) or a downstream metric, one panel per task")
    p.add_argument("--task", help="with a downstream --metric: only this task's panel, or all (default: a panel "
                                  "for every task that reports the metric)")
    p.add_argument("--evals", help="with a downstream --metric: comma-separated eval/run.py outputs (JSON Lines of "
                                   "--run, or one JSON), one per run in order, - for a run with none, empty for the "
                                   "default (RUN/eval.jsonl where it exists)")
    p.add_argument("--y", choices=LOSS_COLUMNS, help="with --metric loss: the loss column (default val_loss)")
    p.add_argument("--labels", help="comma-separated legend names, one per run (default: run directory names)")
    p.add_argument("--logx", action="store_true", help="logarithmic x axis")
    p.add_argument("--smooth", type=int, default=1, help="with --metric loss: trailing mean over this many logged "
                                                          "points (default 1)")
    p.add_argument("--title", default="", help="plot title")
    p.add_argument("--out", required=True, help="PNG file to write (atomically)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = p.parse_args(_attached(sys.argv[1:] if argv is None else list(argv)))

    def run() -> None:
        if args.smooth < 1:
            raise UsageError("--smooth must be at least 1")
        loss_only = {"--y": args.y is not None, "--smooth": args.smooth != 1}
        task = None if args.task == "all" else args.task
        score_only = {"--task": task is not None, "--evals": args.evals is not None}
        wrong = [f for f, given in (score_only if args.metric == "loss" else loss_only).items() if given]
        if wrong:  # a flag that would change nothing is a mistake worth a line, not a silent plot
            need = "a downstream --metric (acc, acc_norm, ...)" if args.metric == "loss" else "--metric loss"
            raise UsageError(f"{' and '.join(wrong)} appl{'ies' if len(wrong) == 1 else 'y'} only with {need}")
        labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
        evals = [s.strip() for s in args.evals.split(",")] if args.evals is not None else None
        inputs = [("the run", r) for r in args.runs] + [("the eval file", f) for f in evals or [] if f != "-"]
        for name, path in inputs:
            check_keeps_inputs(args.out, {name: path}, f"--out {args.out}")
        check_writable_target(args.out, args.force)
        plot(args.runs, Path(args.out), args.x, args.y or "val_loss", labels, args.logx, args.smooth, args.title,
             args.convention, args.metric, task, evals)
        print(f"wrote {args.out} (x: {axis_label(args.x, args.convention)})")

    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
