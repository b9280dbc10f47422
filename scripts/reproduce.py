"""Every experiment of Du et al. 2024 ("Stacking Your Transformers") as an ordered list of stages, with budgets.

    python scripts/reproduce.py list                                  # the experiments, their FLOPs and GPU-hours
    python scripts/reproduce.py operators-1.1b --dry_run              # stages, budgets and the exact commands
    python scripts/reproduce.py small-gpu                             # run it (sbatch if on PATH, else locally)
    python scripts/reproduce.py smoke --launcher sbatch --partition P # minutes on CPU: check a cluster set-up
    python scripts/reproduce.py scaling-7b --nodes 8 --gpus_per_node 8 --mfu 0.40 --dry_run
    python scripts/reproduce.py write-configs                         # regenerate pretrain/configs/paper/ from RUNS

One table (RUNS, in scripts/paper_runs.py) holds every training run of the paper: model, tokens, learning rate, the base it grows from
and the operator. `write-configs` writes each run as a `--config` recipe of pretrain/configs/paper/ (the recipes are
committed, so a user can run any stage by hand; tests/test_reproduce.py checks they match this table). An
experiment is a list of runs plus evals and reports; a run shared by several experiments (the 6L base, the 1.1B
scratch baseline, G_stack itself) has one recipe and one output directory, so it is trained once.

Stages: train (pretrain/tinyllama.py), grow (`python -m growth grow`) or learn (`python -m growth learn`, G_learn),
export (a mid-run checkpoint as weights), stages (`python -m growth stages`, gradual stacking), eval (eval/run.py),
speedup (eval/speedup.py, at 5 loss levels), table (eval/table.py), plot (eval/plot.py), then the curves: score
(`eval/run.py --run`: every task's score at the run's checkpoints, one JSON line each, into
<family>/eval/<run>-along.jsonl) and figure (eval/plot.py: accuracy and perplexity per task against FLOPs and
scratch-equivalent tokens, report/<experiment>/<metric>-vs-<x>-<convention>.png). The paper's recipes also score
their run during training (eval_tasks: paper every K steps, K per run in scripts/paper_runs.py: ~10-16 points),
into metrics.csv's TASK/METRIC columns, which the figures merge with the score stages' records: the recipes keep
only the last 2 checkpoints (keep_last), so scoring after training alone gives 2 points (the smoke recipes, which
do not score during training). The dry run's last "expected" line gives K and the points per run. A stage whose output exists is skipped:
final/training.json at the run's last step, growth.json, the result JSON or report file, for a score stage a
record of the run's last step. Without --dry_run the stages are submitted with `sbatch --dependency=afterok:...`
when sbatch is on PATH, else run here one after the other (scripts/stage_jobs.py). Rerun the same command after a
failure: jobs still queued from an earlier call are kept, a failed or cancelled stage is submitted again together
with every stage downstream of it (their stale jobs, which wait on the dead one for ever, are cancelled). Nothing
is submitted unless the data, the tokenizer and the disk space for the checkpoints the runs keep are there
(--skip_checks to skip the check). --partition, --account, --qos and --time go to every job; the exit code of a
local run is the failing stage's (128 + N: it was stopped by signal N after saving; rerun to resume).

Budgets: FLOPs = lit_gpt.flops.flops_per_token(config, the family's sequence length) x tokens (6 N + 6 L T d per token, what
metrics.csv and MFU use). A grown run's compute includes its base's, C = C_base + C_grown (paper §5.4). Tokens are
given in both accountings: the paper's, where a base of d tokens costs d/g target tokens (g = the growth factor in
non-embedding parameters), and the exact one, C / flops_per_token(target), which is larger because embeddings and
the LM head do not shrink with the base (reference stacking-paper.md §5.4). The recipes follow the paper's token
numbers (d = 10B, D = 97.5B for the 1.1B target), so in exact FLOPs a G_stack run costs slightly more than its
scratch baseline (100.3B instead of 100B scratch tokens at 1.1B); the small-gpu recipe, where embeddings dominate,
sets D from the exact FLOPs instead. GPU-hours = FLOPs / (MFU x peak FLOP/s); wall-clock = that / GPUs. No MFU has
been measured on a GPU for this code: the default 0.45 of an H100's 989 TFLOP/s bf16 dense peak is an assumption.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lit_gpt.exits import guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from paper_experiments import EXPERIMENTS, Experiment  # noqa: E402
from paper_recipes import write_configs  # noqa: E402
from paper_runs import DEFAULT_OUT, RUNS, UsageError, budget, format_tokens  # noqa: E402
from paper_stages import build_stages  # noqa: E402
from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.files import missing  # noqa: E402
from lit_gpt.flops import CONVENTION_HELP, CONVENTIONS  # noqa: E402
from stage_jobs import (SlurmOptions, Stage, display, local_argv, preflight, run_locally, sbatch_argv,  # noqa: E402
                        shell_join, submit)

DEFAULT_MFU = 0.45
DEFAULT_PEAK = 989e12  # H100 SXM bf16 dense


# ------------------------------------------------------------------------------------------------ output


def _sci(x: float) -> str:
    return f"{x:.3g}".replace("e+", "e")


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 10 else f"{h:.1f}"


def gpu_hours(flops: float, mfu: float, peak: float) -> float:
    return flops / (mfu * peak) / 3600


def print_budget(exp: Experiment, stages: List[Stage], mfu: float, peak: float, world: int) -> None:
    print(f"budget: FLOPs = flops_per_token(config, {exp.runs and RUNS[exp.runs[0]].family.seq}) x tokens; a grown "
          "run's total includes its base's "
          "(C = C_base + C_grown, §5.4)")
    print("  scratch-eq tokens = total / flops_per_token(target) (exact) | d/g + D (the paper's accounting)")
    head = f"  {'run':<30} {'model':<25} {'tokens':>8} {'FLOPs':>9} {'total':>9} {'exact':>8} {'paper':>8} {'GPU-h':>8}"
    print(head)
    seen = []
    for key in exp.runs + tuple(r.key for name in exp.stages_recipes for r in RUNS.values() if r.recipe == name):
        run = RUNS[key]
        b = budget(run)
        model = Path(run.model).stem if run.model.endswith(".json") else run.model
        total = f"{_sci(b.total):>9}" if run.grow else f"{'':>9}"
        eq = (f"{format_tokens(b.exact_tokens):>8} {format_tokens(b.paper_tokens):>8}" if run.grow
              else f"{'':>8} {'':>8}")
        print(f"  {key:<30} {model:<25} {format_tokens(run.trained_tokens):>8} {_sci(b.flops):>9} {total} {eq} "
              f"{_hours(gpu_hours(b.flops, mfu, peak)):>8}")
        seen.append(b.flops)
    total = sum(seen)
    left = sum(s.flops for s in stages if s.kind in ("train", "stages") and not s.done())
    h = gpu_hours(total, mfu, peak)
    print(f"  total training: {_sci(total)} FLOPs = {h:,.0f} GPU-hours = {h / world:,.1f} h on {world} "
          f"GPU{'s' if world > 1 else ''} run one after another; not done yet: {gpu_hours(left, mfu, peak):,.0f} "
          "GPU-hours")
    print("  growth runs on CPU (minutes), G_learn's fit and each eval take about a GPU-hour or less: not counted")


def print_stages(stages: List[Stage], options: SlurmOptions, launcher: str, nodes: int, gpus: int) -> None:
    where = f"python = {sys.executable}" if launcher == "local" else "jobs run $PYTHON, default .venv/bin/python"
    print(f"stages ({launcher}; {where}):")
    index = {s.id: i for i, s in enumerate(stages, 1)}
    for i, stage in enumerate(stages, 1):
        status = "done" if stage.done() else "to run"
        after = f" after {', '.join(str(index[n]) for n in stage.needs)}" if stage.needs else ""
        print(f"  [{i}] {stage.id}: {status}{after}")
        if launcher == "sbatch":
            deps = [f"$J{index[n]}" for n in stage.needs if not stages[index[n] - 1].done()]
            print(f"    J{i}=$({shell_join(sbatch_argv(stage, options, nodes, gpus, deps))})")
        else:
            argv, env = local_argv(stage, gpus)
            print(f"    {display(argv, env, stage.stdout)}")


def print_expected(exp: Experiment) -> None:
    print("expected (the paper's numbers, eval/paper_numbers.json and reference/paper-numbers.json):")
    for line in exp.expected:
        print(f"  - {line}")


# ------------------------------------------------------------------------------------------------ CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def list_experiments(mfu: float, peak: float) -> None:
    print(f"experiments (GPU-hours at an ASSUMED MFU of {mfu:g} x {_sci(peak)} FLOP/s; see --help):")
    for exp in EXPERIMENTS.values():
        keys = exp.runs + tuple(r.key for n in exp.stages_recipes for r in RUNS.values() if r.recipe == n)
        flops = sum(budget(RUNS[k]).flops for k in keys)
        print(f"  {exp.name:<17} {len(keys):>2} runs {_sci(flops):>8} FLOPs {gpu_hours(flops, mfu, peak):>9,.0f} "
              f"GPU-h  {exp.title.split(':')[0]}")
    print("  write-configs     regenerate pretrain/configs/paper/ from the run table")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(prog="python scripts/reproduce.py", description=__doc__)
    p.add_argument("experiment", help=f"list, write-configs or one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--dry_run", action="store_true", help="print the stages and commands, run nothing")
    p.add_argument("--nodes", type=_positive_int, default=None, help="nodes per training job (default: the "
                   "experiment's, 4 for the paper's runs as in its scripts, 1 for small-gpu)")
    p.add_argument("--gpus_per_node", type=_positive_int, default=None,
                   help="GPUs per node (default 8; 1 for small-gpu)")
    p.add_argument("--convention", choices=CONVENTIONS, default="exact", help="FLOPs convention of the speedup "
                   "and plot stages (their files are named for it); the budget printed shows both. "
                   + CONVENTION_HELP.partition(": ")[2])
    p.add_argument("--mfu", type=_positive_float, default=DEFAULT_MFU, help=f"model FLOPs utilisation for the "
                   f"GPU-hour estimate (default {DEFAULT_MFU}: ASSUMED, not measured)")
    p.add_argument("--gpu_flops", type=_positive_float, default=DEFAULT_PEAK, help="peak bf16 FLOP/s of one GPU "
                   "(default 989e12, H100 SXM dense)")
    p.add_argument("--out_dir", default=DEFAULT_OUT, help=f"root of every run's output (default {DEFAULT_OUT}, the "
                   "recipes' own paths)")
    p.add_argument("--launcher", choices=("auto", "sbatch", "local"), default="auto",
                   help="auto: sbatch when it is on PATH, else run here in order")
    for name, what, env in (("partition", "partition", "PARTITION"), ("account", "account to charge", "ACCOUNT"),
                            ("qos", "quality of service", "QOS"),
                            ("time", "time limit, e.g. 48:00:00 (training jobs requeue themselves before it)",
                             "TIMELIMIT")):
        p.add_argument(f"--{name}", default=None, help=f"slurm {what} of every job submitted, --wrap jobs included "
                       f"(default: SBATCH_{env} if set, else the templates' #SBATCH lines)")
    p.add_argument("--log_dir", default="logs", help="where slurm writes each job's log, %%x-%%j.out (default logs/, "
                   "created here: slurm does not create it)")
    p.add_argument("--skip_checks", action="store_true", help="submit without checking data, tokenizer and free "
                   "disk first (e.g. when the data is visible only from compute nodes)")
    try:
        args = p.parse_args(argv)
        if args.mfu > 1:
            raise UsageError(f"--mfu is a fraction of the peak, at most 1, got {args.mfu}")
        if args.experiment == "list":
            list_experiments(args.mfu, args.gpu_flops)
            return 0
        if args.experiment == "write-configs":
            return write_configs(args.dry_run)
        if args.experiment not in EXPERIMENTS:
            raise UsageError(f"unknown experiment {args.experiment!r}; known: {', '.join(EXPERIMENTS)} (or list)")
        exp = EXPERIMENTS[args.experiment]
        nodes = args.nodes or exp.nodes
        gpus = args.gpus_per_node or exp.gpus_per_node
        local_note = ""
        launcher = args.launcher if args.launcher != "auto" else ("sbatch" if shutil.which("sbatch") else "local")
        if launcher == "local" and nodes > 1:
            if args.nodes is None and not args.dry_run:
                raise UsageError(f"{exp.name} defaults to {nodes} nodes, which needs slurm (sbatch is not on PATH); "
                                 "pass --nodes 1 to run here")
            if args.nodes is not None:
                raise UsageError("--nodes above 1 needs slurm: sbatch is not on PATH (or pass --launcher sbatch)")
            nodes = 1
            local_note = (f"note: sbatch is not on PATH, so these are the commands for one machine; --launcher "
                          f"sbatch prints the sbatch lines for {exp.nodes} nodes")
        # a given --out_dir is read from where the user stands; the stages run in the repository root
        root = DEFAULT_OUT if args.out_dir == DEFAULT_OUT else str(Path(args.out_dir).resolve())
        if (ROOT / root).exists() and (why := missing(ROOT / root, "directory")):
            raise UsageError(f"--out_dir {args.out_dir}: {why}; give the directory the runs are written under")
        stages = build_stages(exp, root, nodes * gpus, args.convention)
    except SystemExit as exit_:  # --help, or bad flags (one line printed, 2)
        return int(exit_.code or 0)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{exp.name}: {exp.title}")
    if local_note:
        print(local_note)
    print(f"resources: {nodes} node{'s' if nodes > 1 else ''} x {gpus} GPU{'s' if gpus > 1 else ''} per training job; "
          f"outputs under {root}/")
    if Path.cwd().resolve() != ROOT:
        print(f"the commands below run from the repository root, {ROOT} (cd there to run one by hand)")
    print(f"GPU-hours assume MFU {args.mfu:g} of {_sci(args.gpu_flops)} FLOP/s per GPU"
          + (" (ASSUMED: no MFU measured on a GPU for this code yet; H100 bf16 dense peak)"
             if (args.mfu, args.gpu_flops) == (DEFAULT_MFU, DEFAULT_PEAK) else " (given)")
          + "; override with --mfu and --gpu_flops")
    print_budget(exp, stages, args.mfu, args.gpu_flops, nodes * gpus)
    options = SlurmOptions(args.partition, args.account, args.qos, args.time, args.log_dir)
    print_stages(stages, options, launcher, nodes, gpus)
    print_expected(exp)
    problems = [] if args.skip_checks else preflight(stages, root)
    if args.dry_run:
        for problem in problems:
            print(f"warning: {problem}")
        return 0
    if problems:
        print(f"error: nothing submitted: {problems[0]}" + (f" (and {len(problems) - 1} more: "
              + "; ".join(problems[1:]) + ")" if len(problems) > 1 else "") + "; --skip_checks submits anyway",
              file=sys.stderr)
        return 1
    print()
    return submit(stages, options, nodes, gpus, root) if launcher == "sbatch" else run_locally(stages, gpus)


if __name__ == "__main__":
    sys.exit(main())
