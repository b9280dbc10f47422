"""Loss curves of training runs against tokens or FLOPs, like the paper's figures, from their metrics.csv files.

    python eval/plot.py out/scratch out/gstack --x flops --labels scratch,G_stack --out loss.png

The token axis is scratch-equivalent tokens (FLOPs / the run's FLOPs per token), as in the paper: a grown run's
curve starts at its base model's cost, not at 0. FLOPs follow --convention (lit_gpt/flops.py): `exact` counts
each model at its own FLOPs per token (a 6L2048H base trained on 10B tokens costs 2.85B 24L2048H tokens),
`paper` is 6 N D with the base at d/g target tokens (2.5B for d = 10B and g = 4, reference stacking-paper.md
§5.4). The axis label names the convention.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: lit_gpt is imported from the repository root
    sys.path.insert(0, str(ROOT))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch (speedup imports it through lit_gpt.flops): Ctrl-C is one line
    guard_command()

if __package__:
    from .speedup import LOSS_COLUMNS, UsageError, in_convention, losses, read_metrics, scratch_equivalent_tokens
else:  # run as a script: eval/ is sys.path[0]
    from speedup import LOSS_COLUMNS, UsageError, in_convention, losses, read_metrics, scratch_equivalent_tokens

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.files import atomic_file, check_keeps_inputs, check_writable_target  # noqa: E402
from lit_gpt.flops import CONVENTION_HELP, CONVENTIONS  # noqa: E402

AXES = {"tokens": "tokens (scratch-equivalent, {})", "flops": "training FLOPs (base model included, {})"}
AXIS_CONVENTION = {"exact": "exact FLOPs", "paper": "paper's 6ND, base at d/g"}


def curves(runs, x: str = "tokens", y: str = "val_loss", smooth: int = 1, convention: str = "exact"):
    """(xs, ys) per run directory or metrics.csv, only at the rows that logged `y`; FLOPs in `convention`."""
    out = []
    for run in runs:
        rows = in_convention(read_metrics(run), convention, run)
        for r, eq in zip(rows, scratch_equivalent_tokens(rows)):
            r["eq_tokens"] = eq
        logged = losses(rows, y, smooth)
        if not logged:
            raise UsageError(f"{run}: no {y} values logged" + (" (try --y train_loss)" if y == "val_loss" else ""))
        out.append(([r["eq_tokens" if x == "tokens" else "flops"] for r in logged], [r["loss"] for r in logged]))
    return out


def plot(runs, out: Path, x: str = "tokens", y: str = "val_loss", labels=None, logx: bool = False,
         smooth: int = 1, title: str = "", convention: str = "exact") -> None:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install -r requirements-eval.txt") from None
    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    labels = labels or [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    if len(labels) != len(runs):
        raise UsageError(f"--labels has {len(labels)} names for {len(runs)} runs")
    data = curves(runs, x, y, smooth, convention)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for (xs, ys), label in zip(data, labels):
        ax.plot(xs, ys, label=label, linewidth=1.5)
    ax.set_xlabel(AXES[x].format(AXIS_CONVENTION[convention]))
    ax.set_ylabel(y.replace("_", " ") + (f" (mean of {smooth})" if smooth > 1 else ""))
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    try:  # a reader never sees a half-written PNG
        with atomic_file(out) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def main(argv=None) -> int:
    p = ArgumentParser(description="Plot loss curves of runs (one line each) from their metrics.csv to a PNG.")
    p.add_argument("runs", nargs="+", help="run directories (or their metrics.csv files)")
    p.add_argument("--x", default="tokens", choices=sorted(AXES),
                   help="x axis: tokens (scratch-equivalent; default) or flops (cumulative, base model included)")
    p.add_argument("--convention", choices=CONVENTIONS, default="exact", help=CONVENTION_HELP)
    p.add_argument("--y", default="val_loss", choices=LOSS_COLUMNS, help="loss column (default val_loss)")
    p.add_argument("--labels", help="comma-separated legend names, one per run (default: run directory names)")
    p.add_argument("--logx", action="store_true", help="logarithmic x axis")
    p.add_argument("--smooth", type=int, default=1, help="trailing mean over this many logged points (default 1)")
    p.add_argument("--title", default="", help="plot title")
    p.add_argument("--out", required=True, help="PNG file to write (atomically)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)

    def run() -> None:
        if args.smooth < 1:
            raise UsageError("--smooth must be at least 1")
        labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
        for run in args.runs:
            check_keeps_inputs(args.out, {"the run": run}, f"--out {args.out}")
        check_writable_target(args.out, args.force)
        plot(args.runs, Path(args.out), args.x, args.y, labels, args.logx, args.smooth, args.title, args.convention)
        print(f"wrote {args.out} (x: {AXES[args.x].format(AXIS_CONVENTION[args.convention])})")

    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
