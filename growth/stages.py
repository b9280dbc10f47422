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
Before a stage first runs, what it will run is recorded in out_dir/NAME/stage.json: its model config, its
training flags, its grow options and what it grows from (the source stage's own record). A later run whose
recipe gives that stage something else (a new budget, another operator, a retrained source stage, an edited
model config) is refused before anything runs, naming the change; `--force` deletes that stage's outputs and
those of every stage built on it, and reruns them. Flags that change how a stage runs, not what it computes
(devices, strategy, compile, logging, checkpoint cadence), are not compared.
"""

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


from growth.grow import OPERATORS, check_options
from growth.operators import check_no_shrink
from lit_gpt.cli import ArgumentParser, convert_values, read_recipe
from lit_gpt.config import Config
from lit_gpt.convert import expected_shapes
from lit_gpt.files import write_text
from pretrain.train_args import TrainArgs
from pretrain.trainable import trainable_names

ROOT = Path(__file__).resolve().parents[1]
GROW_KEYS = {"op", "layers", "noise", "seed", "split", "init", "clone_noise", "src"}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainArgs)}
# how a stage runs, not what it computes: changing these after a stage ran does not make it stale
RUN_ONLY_KEYS = {"devices", "num_nodes", "strategy", "compile", "activation_checkpointing", "collective_timeout",
                 "keep_last", "save_interval", "log_interval", "logger", "resume", "eval_tasks",
                 "eval_tasks_interval", "eval_tasks_limit"}
RECORD = "stage.json"


@dataclasses.dataclass
class Step:
    kind: str  # "grow" or "train"
    stage: str
    command: List[str]
    done_file: Path
    record: Dict[str, Any] = dataclasses.field(default_factory=dict)  # what the stage runs (module docstring)
    outputs: List[Path] = dataclasses.field(default_factory=list)  # the stage's directories; [0] holds RECORD

    @property
    def done(self) -> bool:
        return self.done_file.is_file()

    @property
    def record_file(self) -> Path:
        return self.outputs[0] / RECORD


def load_recipe(path: Path, out_dir: Optional[Path] = None) -> Dict[str, Any]:
    """The recipe's mapping, with `out_dir` overriding its own.

    Raises:
        ValueError: one line naming `path`: missing, not YAML, unknown top-level keys, no stages or no out_dir.
    """
    recipe = read_recipe(path, str(path), "a mapping with out_dir, train and stages")
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


def plan(recipe: Dict[str, Any], launcher: Sequence[str] = (), source: str = "recipe") -> List[Step]:
    """The grow and train commands of every stage, in order, with the file that marks each one done and the
    stage's record. Training values are checked as `pretrain/tinyllama.py` checks its flags.

    Raises:
        ValueError: one line naming `source` and the stage: unknown keys, a value its flag refuses, no
            model_name, a grow without a source, a repeated name.
    """
    # commands run from the repository root, so relative paths (out_dir, data) are read from there too
    out_dir, shared = ROOT / recipe["out_dir"], recipe.get("train") or {}
    if not isinstance(shared, dict):
        raise ValueError(f"{source}: train must be a mapping of training flags to values, got {shared!r}")
    shared = convert_values(TrainArgs, shared, f"{source}: train")
    steps, previous, names = [], None, set()
    for k, stage in enumerate(recipe["stages"], 1):
        if not isinstance(stage, dict):
            raise ValueError(f"{source}: stage {k} must be a mapping of a name, grow options and flags, got {stage!r}")
        stage = dict(stage)
        name = str(stage.pop("name", f"stage-{k}"))
        if name in names:
            raise ValueError(f"{source}: stage {k}: the name {name!r} is used twice")
        names.add(name)
        grow = stage.pop("grow", None)
        where = f"{source}: stage {name!r}"
        _check_keys(stage, TRAIN_KEYS - {"out_dir", "initial_checkpoint"}, where)
        # an interrupted stage resumes
        args = {"resume": "auto", **shared, **convert_values(TrainArgs, stage, where), "out_dir": str(out_dir / name)}
        if args.get("model_name") is None:
            raise ValueError(f"{where}: no model_name")
        try:  # the flag checks of pretrain/tinyllama.py (negative steps, batch split, ...), before any stage runs
            TrainArgs(**args).check()
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        config = Config.load(_rooted(args["model_name"]))
        try:  # --trainable against this stage's model, before any stage runs
            if args.get("trainable", "all") == "new" and not grow:
                raise ValueError("trainable: new needs a stage that grows (a grow: entry), whose growth record names "
                                 "the layers it created")
            if args.get("trainable", "all") not in ("new", "all"):
                trainable_names(args["trainable"], expected_shapes(config), None)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        try:  # growth never shrinks: found now, not after the stages before it have trained
            if isinstance(grow, dict) and not grow.get("src") and previous is not None:
                check_no_shrink(Config(**previous.record["model"]), config)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        record = {"model": dataclasses.asdict(config),
                  "train": {k: v for k, v in args.items() if k not in RUN_ONLY_KEYS | {"out_dir", "model_name"}},
                  "grow": None, "source": None}
        outputs = [out_dir / name]
        if grow is not None:
            options = _grow_options(grow, where)
            src = options.pop("src", None)
            if src is None and previous is None:
                raise ValueError(f"{where} grows, but there is no earlier stage; give grow.src")
            record["grow"] = options
            record["source"] = {"path": src} if src else {"stage": previous.stage, "record": previous.record}
            grown = out_dir / f"{name}-grown"
            command = [sys.executable, "-m", "growth", "grow", "--src", src or str(out_dir / previous.stage / "final"),
                       "--target", str(args["model_name"]), "--out_dir", str(grown), "--force", *_flags(options)]
            outputs.append(grown)
            steps.append(Step("grow", name, command, grown / "growth.json", record, outputs))
            args["initial_checkpoint"] = str(grown)
        train = [*launcher, sys.executable, str(ROOT / "pretrain" / "tinyllama.py"), *_flags(args)]
        previous = Step("train", name, train, out_dir / name / "final" / "training.json", record, outputs)
        steps.append(previous)
    return steps


def _rooted(path: str) -> str:
    """A model_name as the stage's process (run from the repository root) reads it."""
    return str(ROOT / path) if not Path(path).is_absolute() and (ROOT / path).exists() else path


def _grow_options(grow: Any, where: str) -> Dict[str, str]:
    """A stage's grow options as the grow command gets them (strings).

    Raises:
        ValueError: one line naming `where`: not a mapping, an unknown key or an unknown operator.
    """
    if not isinstance(grow, dict):
        raise ValueError(f"{where}: grow must be a mapping such as {{op: stack}}, got {grow!r}")
    _check_keys(grow, GROW_KEYS, f"{where} grow")
    if grow.get("op") not in OPERATORS:
        raise ValueError(f"{where}: grow.op must be one of {', '.join(OPERATORS)}, got {grow.get('op')!r}")
    numbers = {}
    for key in ("noise", "clone_noise"):
        value = grow.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{where}: grow.{key} must be a number, got {value!r}")
        numbers[key] = None if value is None else float(value)
    try:
        check_options(grow["op"], str(grow.get("layers") or "cyclic"), numbers["noise"] or 0.0, grow.get("split"),
                      grow.get("init"), numbers["clone_noise"])
    except ValueError as e:
        raise ValueError(f"{where}: grow: {str(e).replace('--', '')}") from None
    return {k: _text(v) for k, v in grow.items() if v is not None}


def changes(step: Step) -> Optional[str]:
    """What the recipe now gives `step`'s stage that differs from what its outputs were made with, or None when
    it matches, the stage has made nothing yet (no grown model, no checkpoint: it never ran, or failed before
    its first step), or it ran before records were kept."""
    train_dir, *grown = step.outputs
    trained = train_dir.is_dir() and any(p.name == "final" or p.name.startswith("step-") for p in train_dir.iterdir())
    if not step.record_file.is_file() or not (trained or any(p.exists() for p in grown)):
        return None
    try:
        ran = json.loads(step.record_file.read_text())
    except (ValueError, UnicodeDecodeError):
        return f"its {step.record_file} is unreadable"
    now = json.loads(json.dumps(step.record))  # tuples as lists, as read back
    if not trained:  # only a grown model so far, which does not depend on the training settings
        ran, now = ({k: v for k, v in record.items() if k != "train"} for record in (ran, now))
    if ran == now:
        return None
    found = []
    for part in ("model", "train", "grow"):
        old, new = ran.get(part) or {}, now.get(part) or {}
        found += [f"{'' if part == 'train' else part + '.'}{k} {_show(old, k)} -> {_show(new, k)}"
                  for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if ran.get("source") != now.get("source"):
        source = now.get("source") or {}
        found.append(f"its source stage {source['stage']!r} changed" if "stage" in source else "its source changed")
    return ", ".join(found) or "its record differs"


def _show(values: Dict[str, Any], key: str) -> str:
    return json.dumps(values[key]) if key in values else "unset"


def _check_keys(options: Dict[str, Any], allowed: set, where: str) -> None:
    unknown = sorted(map(str, set(options) - allowed))
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")


def _flags(options: Dict[str, Any]) -> List[str]:
    flags = []
    for key, value in options.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        flags += [f"--{key}", *map(_text, values)]
    return flags


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from lit_gpt.exits import exit_code

    p = ArgumentParser(prog="python -m growth stages", description=__doc__)
    p.add_argument("recipe", type=Path, help="YAML recipe (format above)")
    p.add_argument("--out_dir", type=Path, default=None, help="override the recipe's out_dir")
    p.add_argument("--dry_run", action="store_true", help="print every stage's command and whether it is done")
    p.add_argument("--launcher", default="", help="prefix of the training commands, e.g. 'srun' inside an "
                   "sbatch job (growth runs once, on the batch host)")
    p.add_argument("--force", action="store_true", help="rerun the stages whose recipe entry changed since they ran "
                   "(their outputs, and those of the stages built on them, are deleted first)")
    args = p.parse_args(argv)

    failed = []

    def run() -> None:
        out_dir = args.out_dir.resolve() if args.out_dir else None
        steps = plan(load_recipe(args.recipe, out_dir), shlex.split(args.launcher), str(args.recipe))
        stale = {step.stage: change for step in steps if (change := changes(step))}
        if stale and not (args.force or args.dry_run):
            name, change = next(iter(stale.items()))
            more = f" ({len(stale) - 1} later stage(s) changed too)" if len(stale) > 1 else ""
            raise ValueError(f"{args.recipe}: stage {name!r} ran with other settings than the recipe gives now: "
                             f"{change}{more}; pass --force to delete its outputs and rerun it and the stages built "
                             "on it, or give a new --out_dir")
        for i, step in enumerate(steps, 1):
            if step.stage in stale and not args.dry_run:
                _clear(step, stale.pop(step.stage))
            status = "done" if step.done else ("to run" if args.dry_run else "running")
            if step.stage in stale:
                status = f"changed since it ran ({stale[step.stage]}); --force reruns it"
            print(f"[{i}/{len(steps)}] {step.kind} {step.stage}: {status}\n  {shlex.join(step.command)}", flush=True)
            if step.done or args.dry_run:
                continue
            write_text(step.record_file, json.dumps(step.record, indent=2) + "\n")  # what this run makes
            code = subprocess.run(step.command, cwd=ROOT).returncode
            if code == 0 and not step.done:  # saved and requeued by slurm: the requeued job resumes it
                print(f"stage {step.stage!r} stopped before its end and its job was requeued; the next run of this "
                      "recipe resumes it", flush=True)
                return
            if code > 128:  # the stage said what it saved, if anything: say only where it came from
                print(f"(the {step.kind} of stage {step.stage!r} was stopped by signal {code - 128}; rerunning the "
                      "recipe resumes it and skips the finished stages)", file=sys.stderr)
            elif code != 0:  # the stage printed its own error line: say only where it came from
                print(f"(from the {step.kind} of stage {step.stage!r}, exit {code}; once it is fixed, rerunning the "
                      "recipe skips the finished stages)", file=sys.stderr)
            if code != 0:
                failed.append(code)
                return

    return exit_code(run) or (failed[0] if failed else 0)


def _clear(step: Step, change: str) -> None:
    """--force on a changed stage: its outputs go, so that it runs again from scratch."""
    for path in step.outputs:
        if path.exists():
            shutil.rmtree(path)
    print(f"stage {step.stage!r} changed since it ran ({change}): deleted {', '.join(map(str, step.outputs))} "
          "(--force)", flush=True)
