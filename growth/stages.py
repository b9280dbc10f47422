"""`python -m growth stages RECIPE.yaml`: multi-stage growth as a sequence of grow and train runs.

Gradual stacking (reference stacking-paper.md §4.4: 6 -> 12 -> 24 layers, train between) and MIDAS's
middle-block variant (§10) are recipes of this form. Every training stage is its own
`pretrain/tinyllama.py` process, so each stage gets a fresh optimizer, warm-up and FSDP wrap of the grown
model (the official gradual-stacking code grew layers after FSDP setup, so they were never sharded or
optimised, §4.4). FLOPs and the data position carry from stage to stage through growth.json.

Recipe:

    out_dir: out/gradual             # stage directories go here
    train:                           # pretrain/tinyllama.py flags shared by every stage
      train_data_dir: data/sample/packed
      global_batch_size: 16
    stages:
      - name: base                   # optional (default stage-K); trains out_dir/base
        model_name: 2L128H           # any other key: a training flag for this stage
        max_tokens: 400000
      - name: grow1
        grow: {op: stack, layers: top}   # grows the previous stage's final/ to this stage's model_name
        model_name: 4L128H
        max_tokens: 400000

A stage whose output exists (final/training.json, or growth.json of a grown model) is skipped, so an
interrupted recipe continues where it stopped; an interrupted training stage resumes from its checkpoint.
"""

import argparse
import dataclasses
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from growth.grow import OPERATORS
from pretrain.train_args import TrainArgs

ROOT = Path(__file__).resolve().parents[1]
GROW_KEYS = {"op", "layers", "noise", "seed", "split", "src"}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainArgs)}


@dataclasses.dataclass
class Step:
    kind: str  # "grow" or "train"
    stage: str
    command: List[str]
    done_file: Path

    @property
    def done(self) -> bool:
        return self.done_file.is_file()


def load_recipe(path: Path, out_dir: Optional[Path] = None) -> Dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"recipe not found: {path}")
    recipe = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(recipe) - {"out_dir", "train", "stages"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {', '.join(unknown)}; use out_dir, train, stages")
    if not recipe.get("stages"):
        raise ValueError(f"{path}: no stages")
    if out_dir is not None:
        recipe["out_dir"] = str(out_dir)
    if not recipe.get("out_dir"):
        raise ValueError(f"{path}: no out_dir (set it in the recipe or pass --out_dir)")
    return recipe


def plan(recipe: Dict[str, Any], launcher: Sequence[str] = ()) -> List[Step]:
    """The grow and train commands of every stage, in order, with the file that marks each one done."""
    # commands run from the repository root, so relative paths (out_dir, data) are read from there too
    out_dir, shared = ROOT / recipe["out_dir"], dict(recipe.get("train") or {})
    _check_keys(shared, TRAIN_KEYS, "train")
    steps, previous, names = [], None, set()
    for k, stage in enumerate(recipe["stages"], 1):
        stage = dict(stage)
        name = str(stage.pop("name", f"stage-{k}"))
        if name in names:
            raise ValueError(f"stage {k}: the name {name!r} is used twice")
        names.add(name)
        grow = stage.pop("grow", None)
        _check_keys(stage, TRAIN_KEYS - {"out_dir", "initial_checkpoint"}, f"stage {name!r}")
        args = {"resume": "auto", **shared, **stage, "out_dir": str(out_dir / name)}  # an interrupted stage resumes
        if "model_name" not in args:
            raise ValueError(f"stage {name!r}: no model_name")
        if grow is not None:
            src = grow.get("src") or (previous and str(out_dir / previous / "final"))
            if not src:
                raise ValueError(f"stage {name!r} grows, but there is no earlier stage; give grow.src")
            grown = out_dir / f"{name}-grown"
            steps.append(Step("grow", name, _grow_command(grow, src, args["model_name"], grown, name),
                              grown / "growth.json"))
            args["initial_checkpoint"] = str(grown)
        train = [*launcher, sys.executable, str(ROOT / "pretrain" / "tinyllama.py"), *_flags(args)]
        steps.append(Step("train", name, train, out_dir / name / "final" / "training.json"))
        previous = name
    return steps


def _grow_command(grow: Dict[str, Any], src: str, target: str, out: Path, name: str) -> List[str]:
    _check_keys(grow, GROW_KEYS, f"stage {name!r} grow")
    if grow.get("op") not in OPERATORS:
        raise ValueError(f"stage {name!r}: grow.op must be one of {', '.join(OPERATORS)}, got {grow.get('op')!r}")
    options = {k: v for k, v in grow.items() if k != "src"}
    return [sys.executable, "-m", "growth", "grow", "--src", src, "--target", str(target), "--out", str(out),
            "--force", *_flags(options)]


def _check_keys(options: Dict[str, Any], allowed: set, where: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")


def _flags(options: Dict[str, Any]) -> List[str]:
    flags = []
    for key, value in options.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        flags += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return flags


def main(argv: Optional[Sequence[str]] = None) -> int:
    from lit_gpt.utils import exit_code

    p = argparse.ArgumentParser(prog="python -m growth stages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path, help="YAML recipe (format above)")
    p.add_argument("--out_dir", type=Path, default=None, help="override the recipe's out_dir")
    p.add_argument("--dry_run", action="store_true", help="print every stage's command and whether it is done")
    p.add_argument("--launcher", default="", help="prefix of the training commands, e.g. 'srun' inside an "
                   "sbatch job (growth runs once, on the batch host)")
    args = p.parse_args(argv)

    failed = []

    def run() -> None:
        out_dir = args.out_dir.resolve() if args.out_dir else None
        steps = plan(load_recipe(args.recipe, out_dir), shlex.split(args.launcher))
        for i, step in enumerate(steps, 1):
            status = "done" if step.done else ("to run" if args.dry_run else "running")
            print(f"[{i}/{len(steps)}] {step.kind} {step.stage}: {status}\n  {shlex.join(step.command)}", flush=True)
            if step.done or args.dry_run:
                continue
            code = subprocess.run(step.command, cwd=ROOT).returncode
            if code == 0 and not step.done:  # saved and requeued by slurm: the requeued job resumes it
                print(f"stage {step.stage!r} stopped before its end and its job was requeued; the next run of this "
                      "recipe resumes it", flush=True)
                return
            if code != 0:
                what = "was stopped (it saved a checkpoint)" if code > 128 else "failed"
                print(f"error: {step.kind} of stage {step.stage!r} {what} (exit {code}); rerun the recipe: finished "
                      "stages are skipped, an interrupted one resumes", file=sys.stderr)
                failed.append(code)
                return

    return exit_code(run) or (failed[0] if failed else 0)
