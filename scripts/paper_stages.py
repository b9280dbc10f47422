"""An experiment as an ordered graph of stages (scripts/stage_jobs.py's Stage): the training runs with their grow or
learn stages, mid-run snapshot exports, gradual-stacking recipes, evals, speedups, tables and the loss plot, each
with the stages it waits for and the file whose existence marks it done; `micro_for` fits each run's micro-batch to
the number of GPUs.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import List, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from paper_experiments import Experiment  # noqa: E402
from paper_recipes import grown_dir, out_dir, recipe_path, stages_recipe_out  # noqa: E402
from paper_runs import CONFIG_DIR, DEFAULT_OUT, RUNS, Run, UsageError, budget, format_tokens  # noqa: E402
from stage_jobs import Stage  # noqa: E402


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
                             "--convention", convention, "--json"],
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
    return stages


def _train_id(key: str) -> str:
    run = RUNS[key]
    return f"stages:{run.recipe}" if run.recipe else f"train:{key}"


def _present(ids: Sequence[str], stages: Sequence[Stage]) -> List[str]:
    have = {s.id for s in stages}
    return [i for i in ids if i in have]
