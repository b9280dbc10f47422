"""An experiment as an ordered graph of stages (scripts/stage_jobs.py's Stage): the training runs with their grow or
learn stages, mid-run snapshot exports, gradual-stacking recipes, evals, speedups, tables and the loss plot, then
the curves: score stages and the figures drawn from them. Each stage has the stages it waits for and the file whose
existence marks it done; `micro_for` fits each run's micro-batch to the number of GPUs.

Curves, the paper's main evidence. Their points come mostly from training itself: every paper recipe scores its run
on the paper's tasks every K steps and at its last step (eval_tasks, eval_tasks_interval; K per run from
scripts/paper_runs.py's eval_tasks_interval: 5000 at 1.1B, every checkpoint; 1250 for the 40B-token ablations; 25000
at 410M; 10000 at 3B and 7B; 1000 for small-gpu: 9-16 points a run), into its metrics.csv. Rank 0 loads those tasks
when the run starts, so they must be in the compute nodes' HF datasets cache (HF_DATASETS_OFFLINE=1 after one
download, eval/run.py's docstring), or the training job fails at once. Then a `score:RUN` stage per run of
`curve_runs` (scripts/paper_experiments.py) runs `eval/run.py --run OUT_DIR --every N` after the run's training: it
scores the run's step-* checkpoints still on disk (the first at or past every N of the run's own tokens, N =
`score_every` of its family) and final/, one JSON record each, into <root>/<family>/eval/<run>-along.jsonl, on the
experiment's eval tasks; a rerun skips what is scored, so a killed job resumes. It is done when that file holds a
complete record of the run's last step (stage_jobs.Stage.done). The recipes keep only the last keep_last = 2
checkpoints, so it scores those two and final/, at steps training scored too, mostly, but on the experiment's tasks
(scaling-7b's add boolq, hellaswag and openbookqa); the smoke recipes are not scored during training (minutes on
CPU), so its curves have just those 2 points. The dry run's last `expected` line gives each experiment's K, its
points per run and what the HF cache needs. `figure:EXP:WHAT` stages, after all the experiment's score stages, draw
eval/plot.py figures into <root>/report/<exp>/, one panel per task that reports the metric (no --task: all of them):
accuracy against FLOPs (acc-vs-flops-<convention>.png, the 2 x 4 grid of the paper's tasks), perplexity against
FLOPs (word_perplexity-vs-flops-<convention>.png: Wikitext's, or sample_ppl's for the smoke experiment) and accuracy
against scratch-equivalent tokens (acc-vs-scratch_tokens-<convention>.png), FLOPs with the base's included, in the
--convention of the speedup and plot stages. eval/plot.py reads the runs' metrics.csv too, so the scores logged
during training join the points of the score stages (a score-stage record wins at a step both have). The speedup
stages compare at SPEEDUP_LEVELS losses along the curves (eval/speedup.py --levels; the JSON keeps the last level's
keys, so nothing that reads it changes).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from paper_experiments import Experiment, curve_label, curve_runs, score_every  # noqa: E402
from paper_recipes import grown_dir, out_dir, recipe_path, stages_recipe_out  # noqa: E402
from paper_runs import CONFIG_DIR, DEFAULT_OUT, RUNS, Run, UsageError, budget, format_tokens  # noqa: E402
from stage_jobs import Stage  # noqa: E402


SPEEDUP_LEVELS = 5  # eval/speedup.py --levels: the speedup at 5 losses along the curve, the last the default one
# (metric, x axis) of the figures: every task's accuracy and Wikitext's perplexity against FLOPs (the base's
# included), and accuracy against scratch-equivalent tokens
FIGURES: Tuple[Tuple[str, str], ...] = (("acc", "flops"), ("word_perplexity", "flops"), ("acc", "scratch_tokens"))


def micro_for(micro: int, batch: int, world: int) -> int:
    """The largest micro-batch <= micro (halving) that divides the global batch over `world` GPUs."""
    m = micro
    while m >= 1:
        if batch % (m * world) == 0:
            return m
        m //= 2
    raise UsageError(f"the global batch of {batch} sequences cannot be split over {world} GPUs; use a power of two "
                     "number of GPUs that divides it")


def build_stages(exp: Experiment, root: str, world: int, convention: str = "exact") -> List[Stage]:
    stages: List[Stage] = []
    default_root = root == DEFAULT_OUT

    def train_args(run: Run) -> List[str]:
        args = ["pretrain/tinyllama.py", "--config", str(recipe_path(run))]
        if not default_root:
            args += ["--out_dir", out_dir(run, root)]
            if run.grow:
                args += ["--initial_checkpoint", grown_dir(run, root)]
        micro = micro_for(run.micro, run.family.batch, world)
        if micro != run.micro:
            args += ["--micro_batch_size", str(micro)]
        return args

    for key in exp.runs:
        run = RUNS[key]
        needs = []
        if run.grow:
            base = RUNS[run.grow.base]
            src = f"{out_dir(base, root)}/final"
            learn = run.grow.op.startswith("learn")
            args = ["-m", "growth", "learn" if learn else "grow", "--src", src, "--target", run.model,
                    "--op", run.grow.op]
            args += run.grow.flags()
            if learn:
                args += ["--train_data_dir", run.family.train_data, "--steps", str(run.grow.learn_steps),
                         "--device", "cuda"]
            args += ["--out_dir", grown_dir(run, root), "--force"]
            grow_needs = [f"train:{base.key}"] if f"train:{base.key}" in {s.id for s in stages} else []
            stages.append(Stage(f"grow:{key}", "learn" if learn else "grow", args,
                                Path(grown_dir(run, root)) / "growth.json", grow_needs, run=run))
            needs = [f"grow:{key}"]
        full = budget(run)
        if run.snapshot:
            part = dataclasses.replace(run, tokens=run.snapshot)
            step = part.steps
            stages.append(Stage(f"train:{key}@{format_tokens(run.snapshot)}", "train",
                                train_args(run) + ["--max_tokens", str(run.snapshot)],
                                Path(out_dir(run, root)) / f"step-{step:08d}" / "meta.json", needs, run=run,
                                tokens=part.trained_tokens, flops=part.trained_tokens * run.fpt))
            stages.append(Stage(f"export:{key}@{format_tokens(run.snapshot)}", "export",
                                ["scripts/export_checkpoint.py", "--checkpoint_dir",
                                 f"{out_dir(run, root)}/step-{step:08d}", "--out_dir",
                                 f"{out_dir(run, root)}-{format_tokens(run.snapshot)}", "--tokenizer_dir",
                                 str(Path(run.family.train_data).parent / "tokenizer")],
                                Path(f"{out_dir(run, root)}-{format_tokens(run.snapshot)}") / "training.json",
                                [f"train:{key}@{format_tokens(run.snapshot)}"], run=run))
            # the export too: the continued run prunes old checkpoints (keep_last), the snapshot's among them
            needs = [f"train:{key}@{format_tokens(run.snapshot)}", f"export:{key}@{format_tokens(run.snapshot)}"]
            stages.append(Stage(f"train:{key}", "train", train_args(run), Path(out_dir(run, root)) / "final" /
                                "training.json", needs, run.steps, run=run,
                                tokens=run.trained_tokens - part.trained_tokens,
                                flops=full.flops - part.trained_tokens * run.fpt))
        else:
            stages.append(Stage(f"train:{key}", "train", train_args(run),
                                Path(out_dir(run, root)) / "final" / "training.json", needs, run.steps, run=run,
                                tokens=run.trained_tokens, flops=full.flops))
    for name in exp.stages_recipes:
        runs = [r for r in RUNS.values() if r.recipe == name]
        for r in runs:
            micro_for(r.micro, r.family.batch, world)  # the recipe's micro-batches are fixed: refuse early
            if micro_for(r.micro, r.family.batch, world) != r.micro:
                raise UsageError(f"{name}: micro_batch_size {r.micro} of stage {r.name} does not divide the global "
                                 f"batch over {world} GPUs; edit pretrain/configs/paper/{name}.yaml")
        args = [str(CONFIG_DIR / f"{name}.yaml")]
        if not default_root:
            args += ["--out_dir", stages_recipe_out(name, root)]
        last = runs[-1]
        stages.append(Stage(f"stages:{name}", "stages", args, Path(out_dir(last, root)) / "final" / "training.json",
                            [], last.steps, run=last, tokens=sum(r.trained_tokens for r in runs),
                            flops=sum(r.trained_tokens * r.fpt for r in runs)))
    results = {}
    for key, label in exp.evals:
        run_key, _, snap = key.partition("@")
        run = RUNS[run_key]
        if snap:
            checkpoint, need = f"{out_dir(run, root)}-{snap}", f"export:{run_key}@{snap}"
        else:
            checkpoint = f"{out_dir(run, root)}/final"
            need = f"stages:{run.recipe}" if run.recipe else f"train:{run_key}"
        result = f"{root}/{run.family.name}/eval/{run.name.replace('/', '-')}{'-' + snap if snap else ''}.json"
        results[label] = result
        stages.append(Stage(f"eval:{key}", "eval",
                            ["eval/run.py", "--checkpoint_dir", checkpoint, "--tasks", exp.eval_tasks, "--device",
                             exp.eval_device[0], "--dtype", exp.eval_device[1], "--name", label, "--out", result],
                            Path(result), _present([need], stages)))
    report = f"{root}/report/{exp.name}"
    for ref, other in exp.speedups:
        r, o = RUNS[ref], RUNS[other]
        result = Path(f"{report}/speedup-{o.name.replace('/', '-')}-{convention}.json")
        stages.append(Stage(f"speedup:{other}", "speedup",
                            ["eval/speedup.py", "--scratch", out_dir(r, root), "--grown", out_dir(o, root),
                             "--convention", convention, "--levels", str(SPEEDUP_LEVELS), "--json"],
                            result, _present([_train_id(ref), _train_id(other)], stages), stdout=result))
    for stem, labels, paper in exp.tables:
        args = ["eval/table.py", *[results[label] for label in labels]] + (["--paper", paper] if paper else [])
        stages.append(Stage(f"table:{stem}", "table", args + ["--out", f"{report}/{stem}.md"],
                            Path(f"{report}/{stem}.md"), _present([f"eval:{k}" for k, lb in exp.evals
                                                                   if lb in labels], stages)))
    trained = list(dict.fromkeys([RUNS[k.partition("@")[0]] for k, _ in exp.evals]))
    stages.append(Stage(f"plot:{exp.name}", "plot",
                        ["eval/plot.py", *[out_dir(r, root) for r in trained], "--x", "flops", "--convention",
                         convention, "--labels", ",".join(lb for k, lb in exp.evals if "@" not in k), "--out",
                         f"{report}/loss-vs-flops-{convention}.png"],
                        Path(f"{report}/loss-vs-flops-{convention}.png"),
                        _present([_train_id(r.key) for r in trained], stages)))
    stages += curve_stages(exp, root, convention, _present([_train_id(k) for k in curve_runs(exp)], stages))
    return stages


def along_file(run: Run, root: str) -> str:
    """The JSON Lines of `eval/run.py --run` along the run: one per run, shared by the experiments that score it."""
    return f"{root}/{run.family.name}/eval/{run.name.replace('/', '-')}-along.jsonl"


def curve_stages(exp: Experiment, root: str, convention: str, trained: Sequence[str]) -> List[Stage]:
    """The score stage of each run of `curve_runs(exp)` (after its training stage, when `trained` has it), then
    the experiment's figures (module docstring)."""
    stages, results, labels, dirs = [], [], [], []
    for key in curve_runs(exp):
        run = RUNS[key]
        result, label = along_file(run, root), curve_label(exp, key)
        stages.append(Stage(f"score:{key}", "score",
                            ["eval/run.py", "--run", out_dir(run, root), "--tasks", exp.eval_tasks, "--every",
                             str(score_every(run.family)), "--device", exp.eval_device[0], "--dtype",
                             exp.eval_device[1], "--name", label, "--out", result],
                            Path(result), [n for n in [_train_id(key)] if n in trained], run.steps, run=run))
        results.append(result)
        labels.append(label)
        dirs.append(out_dir(run, root))
    report = f"{root}/report/{exp.name}"
    for metric, x in FIGURES:
        out = f"{report}/{metric}-vs-{x}-{convention}.png"
        stages.append(Stage(f"figure:{exp.name}:{metric}-vs-{x}", "figure",
                            ["eval/plot.py", *dirs, "--evals", ",".join(results), "--metric", metric, "--x", x,
                             "--convention", convention, "--labels", ",".join(labels), "--out", out],
                            Path(out), [s.id for s in stages if s.kind == "score"]))
    return stages


def _train_id(key: str) -> str:
    run = RUNS[key]
    return f"stages:{run.recipe}" if run.recipe else f"train:{key}"


def _present(ids: Sequence[str], stages: Sequence[Stage]) -> List[str]:
    have = {s.id for s in stages}
    return [i for i in ids if i in have]
