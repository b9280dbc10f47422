"""Running the stages of `scripts/reproduce.py`: as a chain of sbatch jobs, or one after another on this machine,
after checking that the data, the tokenizer and the disk space they need are there.

sbatch: every stage is a job that starts `--dependency=afterok` on the jobs of the stages it needs. A rerun skips
finished stages and keeps jobs still queued or running; a stage whose job failed or was cancelled is submitted
again, and so is every stage downstream of it: their queued jobs wait on the dead job (slurm leaves them pending
forever, reason DependencyNeverSatisfied), so they are cancelled and replaced by jobs that wait on the new one.
Locally, stages run in order and the first one that fails (or is stopped: exit 128 + signal) ends the run.

A stage is done when its output file exists (a train stage: final/training.json at the run's last step). A score
stage (`eval/run.py --run`, which appends one JSON line per scored checkpoint) is done only when its JSON Lines file
holds a complete record (a whole line that parses) of a checkpoint at or past the run's last step: eval/run.py
scores the checkpoints in step order, the last step last, so a job killed half-way leaves a file that is not done,
and its rerun scores only what is missing. Score stages, like eval stages, are jobs of scripts/slurm/eval.sbatch
(one GPU, its 12-hour #SBATCH --time unless --time is given: a job cut off by it is resubmitted by the next call).
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
SLURM = Path("scripts/slurm")
CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two fp32 moments (DCP shards)
EXPORT_BYTES_PER_PARAM = 4  # final/ and a grown model: fp32 weights


@dataclass
class Stage:
    id: str
    kind: str  # train, grow, learn, export, stages, eval, speedup, table, plot, score, figure
    args: List[str]  # after `python`: a script or -m module, then its flags
    done_file: Path
    needs: List[str] = field(default_factory=list)
    # train: training.json must record at least this step; score: a record of a checkpoint at or past it
    min_step: Optional[int] = None
    stdout: Optional[Path] = None  # speedup: its JSON goes to this file
    run: Optional[object] = None  # paper_runs.Run
    tokens: int = 0
    flops: float = 0.0

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else ROOT / p

    def done(self) -> bool:
        path = self.path(self.done_file)
        if not path.is_file():
            return False
        if self.kind == "score":
            return scored_through(path, self.min_step)
        if self.min_step is None:
            return True
        try:
            return int(json.loads(path.read_text()).get("step", -1)) >= self.min_step
        except (ValueError, AttributeError):
            return False


def scored_through(path: Path, min_step: Optional[int]) -> bool:
    """Whether the JSON Lines of `eval/run.py --run` at `path` hold a complete record (a line ending in a newline
    that parses as a JSON object) whose training.step is at least `min_step` (any record for None)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    for line in text.split("\n")[:-1]:  # after the last newline: nothing, or the record a killed job was writing
        try:
            record = json.loads(line)
        except ValueError:
            continue
        training = record.get("training") if isinstance(record, dict) else None
        step = training.get("step") if isinstance(training, dict) else None
        if isinstance(step, (int, float)) and not isinstance(step, bool) and (min_step is None or step >= min_step):
            return True
    return False


@dataclass
class SlurmOptions:
    """sbatch options given to every job (unset ones: the template's #SBATCH line or SBATCH_* variables)."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: Optional[str] = None
    log_dir: str = "logs"

    def flags(self) -> List[str]:
        named = (("partition", self.partition), ("account", self.account), ("qos", self.qos), ("time", self.time))
        return [f"--{k}={v}" for k, v in named if v] + [f"--output={self.log_dir}/%x-%j.out"]


def local_argv(stage: Stage, gpus: int, python: str = "python") -> Tuple[List[str], Dict[str, str]]:
    if stage.kind == "stages":
        return ["bash", str(SLURM / "stages.sbatch"), *stage.args], {"GPUS_PER_NODE": str(gpus)}
    argv = [python, *stage.args]
    if stage.kind == "train":
        argv += ["--devices", str(gpus), "--resume", "auto"]
    return argv, {}


def sbatch_argv(stage: Stage, options: SlurmOptions, nodes: int, gpus: int, deps: Sequence[str]) -> List[str]:
    job = f"--job-name=rp-{stage.id.replace(':', '-').replace('/', '-').replace('@', '-')}"
    argv = ["sbatch", "--parsable", job, *options.flags()]
    if deps:
        argv.append(f"--dependency=afterok:{':'.join(deps)}")
    if stage.kind in ("train", "stages"):
        argv += [f"--nodes={nodes}", f"--ntasks-per-node={gpus}", f"--gpus-per-node={gpus}"]
        script = "pretrain.sbatch" if stage.kind == "train" else "stages.sbatch"
        return argv + [str(SLURM / script), *(stage.args[1:] if stage.kind == "train" else stage.args)]
    if stage.kind in ("grow", "learn"):
        if stage.kind == "learn":
            argv.append("--gpus-per-node=1")
        return argv + [str(SLURM / "grow.sbatch"), *stage.args[2:]]
    if stage.kind in ("eval", "score"):  # one GPU (the template's #SBATCH lines)
        return argv + [str(SLURM / "eval.sbatch"), *stage.args[1:]]
    command = shlex.join(stage.args)
    if stage.stdout is not None:  # written whole or not at all: a half file would mark the stage done
        tmp = f"{stage.stdout}.tmp"
        command = (f"\"${{PYTHON:-.venv/bin/python}}\" {command} > {shlex.quote(tmp)} && "
                   f"mv {shlex.quote(tmp)} {shlex.quote(str(stage.stdout))}")
    else:
        command = f"\"${{PYTHON:-.venv/bin/python}}\" {command}"
    return argv + [f"--wrap={command}"]


def shell_join(argv: Sequence[str]) -> str:
    """shlex.join, but job-id variables in --dependency stay unquoted so that the shell expands them."""
    return " ".join(a if a.startswith("--dependency=afterok:$J") else shlex.quote(a) for a in argv)


def display(argv: Sequence[str], env: Dict[str, str], stdout: Optional[Path] = None) -> str:
    text = " ".join([*(f"{k}={v}" for k, v in env.items()), shlex.join(argv)])
    return text + (f" > {shlex.quote(str(stdout))}" if stdout else "")


def job_file(jobs_dir: Path, stage: Stage) -> Path:
    """Keyed by the stage's output, which experiments sharing a run share (and report stages do not)."""
    return jobs_dir / str(stage.path(stage.done_file)).strip("/").replace("/", "__")


def queued_job(jobs_dir: Path, stage: Stage) -> Optional[Tuple[str, str, str]]:
    """(id, state, reason) of the job an earlier call submitted for this stage, if slurm still has it queued or
    running; None if it ended (finished, failed or cancelled) or none was submitted."""
    path = job_file(jobs_dir, stage)
    if not path.is_file() or shutil.which("squeue") is None:
        return None
    job = path.read_text().strip()
    result = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True)
    fields = result.stdout.split() if result.returncode == 0 else []  # an unknown id: exit 1
    return (job, fields[0], fields[1] if len(fields) > 1 else "") if fields else None


def submit(stages: List[Stage], options: SlurmOptions, nodes: int, gpus: int, root: str) -> int:
    """Submits every unfinished stage (module docstring: reruns). Returns 0, or 1 when sbatch refuses a job."""
    jobs_dir = (ROOT / root if not Path(root).is_absolute() else Path(root)) / ".jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    (ROOT / options.log_dir).mkdir(parents=True, exist_ok=True)  # slurm does not create the log directory
    env = {**os.environ, "PYTHON": sys.executable}
    ids: Dict[str, str] = {}
    fresh = set()  # stages submitted by this call: jobs queued before them wait on something else
    for stage in stages:
        if stage.done():
            print(f"done     {stage.id}")
            continue
        queued = queued_job(jobs_dir, stage)
        renewed = [n for n in stage.needs if n in fresh]
        if queued and not renewed and queued[2] != "DependencyNeverSatisfied":
            print(f"queued   {stage.id}: job {queued[0]} ({queued[1].lower()}, from an earlier call)")
            ids[stage.id] = queued[0]
            continue
        if queued:
            subprocess.run(["scancel", queued[0]], capture_output=True)
            why = f"it waited on the failed job of {', '.join(renewed)}" if renewed else "its dependency failed"
            print(f"cancel   {stage.id}: job {queued[0]} ({why})")
        make_output_dir(stage)
        argv = sbatch_argv(stage, options, nodes, gpus, [ids[n] for n in stage.needs if n in ids])
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"error: sbatch refused {stage.id}: {result.stderr.strip() or result.stdout.strip()}",
                  file=sys.stderr)
            return 1
        job = result.stdout.strip().split(";")[0]
        earlier = job_file(jobs_dir, stage).read_text().strip() if job_file(jobs_dir, stage).is_file() else None
        job_file(jobs_dir, stage).write_text(job + "\n")
        ids[stage.id] = job
        fresh.add(stage.id)
        ended = f" (job {earlier} ended without finishing it)" if earlier and not queued else ""
        print(f"{'resubmit' if earlier else 'queued  '} {stage.id}: job {job}{ended}")
    return 0


def make_output_dir(stage: Stage) -> None:
    """eval, score, table, plot, figure and speedup write into a directory they expect to exist."""
    if stage.kind in ("eval", "score", "table", "plot", "figure", "speedup"):
        stage.path(stage.done_file).parent.mkdir(parents=True, exist_ok=True)


def run_locally(stages: List[Stage], gpus: int) -> int:
    """Runs the unfinished stages in order; the first that fails or is stopped ends the run with its exit code.
    SIGTERM, SIGUSR1 and SIGINT go to the running stage (a training run saves and stops) instead of ending this
    process and leaving the stage to run on unwatched."""
    child: List[subprocess.Popen] = []

    def forward(signum, frame) -> None:
        if child and child[0].poll() is None:
            child[0].send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, forward)
    for stage in stages:
        if stage.done():
            print(f"done     {stage.id}", flush=True)
            continue
        make_output_dir(stage)
        argv, extra_env = local_argv(stage, gpus, sys.executable)
        print(f"running  {stage.id}\n  {display(local_argv(stage, gpus)[0], extra_env, stage.stdout)}", flush=True)
        env = {**os.environ, "PYTHON": sys.executable, **extra_env}
        if stage.stdout is not None:
            out = stage.path(stage.stdout)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            with tmp.open("w") as f:
                child[:] = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f)]
                code = child[0].wait()
            if code == 0:
                tmp.replace(out)
            else:
                tmp.unlink(missing_ok=True)
        else:
            child[:] = [subprocess.Popen(argv, cwd=ROOT, env=env)]
            code = child[0].wait()
        if code != 0:
            code = code if code > 0 else 128 - code  # killed by a signal
            what = "was stopped after saving a checkpoint" if code > 128 else "failed"
            print(f"error: {stage.id} {what} (exit {code}); rerun: finished stages are skipped and an interrupted "
                  "run resumes", file=sys.stderr)
            return code
    return 0


def preflight(stages: List[Stage], root: str) -> List[str]:
    """What would make the unfinished stages fail hours from now: data directories without packed files, no
    tokenizer beside the data, less free disk under `root` than the checkpoints and exports they keep (each
    step-* checkpoint holds CHECKPOINT_BYTES_PER_PARAM bytes per parameter; keep_last + 1 of them exist while the
    newest is written). Returns one line per problem; reading a recipe or config raises ValueError.

    Not checked: the datasets of a recipe's eval_tasks (scored during training; rank 0 loads them at start-up, so a
    node without them fails the job at once, not hours in). They live in the HF datasets cache of the compute nodes,
    which this machine may not see; the dry run's curves line says how to fill it."""
    problems: List[str] = []
    needed = 0
    for stage in stages:
        if stage.done():
            continue
        if stage.kind in ("train", "stages"):
            for args in _train_args(stage):
                problems += _data_problems(args)
                needed += _disk_need(args)
        elif stage.kind in ("grow", "learn"):
            target = stage.args[stage.args.index("--target") + 1]
            needed += EXPORT_BYTES_PER_PARAM * _params(target)
            if stage.kind == "learn":
                data = stage.args[stage.args.index("--train_data_dir") + 1]
                if not list(_rooted(data).glob("*.bin")):
                    problems.append(f"{stage.id}: no packed *.bin files in {data}")
    free = shutil.disk_usage(_existing(_rooted(root))).free
    if needed > free:
        problems.append(f"the runs still to do keep up to {needed / 1e9:,.1f} GB of checkpoints and exports, but "
                        f"{root} has {free / 1e9:,.1f} GB free: free space, lower keep_last in the recipes, or pick "
                        "another --out_dir")
    return list(dict.fromkeys(problems))


def _rooted(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else ROOT / path


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _train_args(stage: Stage) -> list:
    from lit_gpt.cli import from_values, parse, read_recipe
    from pretrain.train_args import TrainArgs

    if stage.kind == "train":  # the recipe path is relative to the repository root, where the stage runs
        args = [str(_rooted(a)) if a.endswith(".yaml") else a for a in stage.args[1:]]
        try:
            return [parse(TrainArgs, args)]
        except SystemExit:
            raise ValueError(f"{stage.id}: its flags do not parse: {' '.join(stage.args)}") from None
    recipe = read_recipe(_rooted(stage.args[0]), stage.args[0])
    shared = recipe.get("train") or {}
    return [from_values(TrainArgs, {**shared, **{k: v for k, v in s.items() if k not in ("name", "grow")}},
                        f"{stage.args[0]}: stage {s.get('name', i)!r}")
            for i, s in enumerate(recipe.get("stages") or (), 1)]


def _data_problems(args) -> List[str]:
    from lit_gpt.tokenizer import TOKENIZER_FILES

    problems = []
    train = _rooted(args.train_data_dir)
    for prefix in args.data_prefixes:
        if not list(train.glob(f"{prefix}*.bin")):
            how = ("python scripts/prepare_sample_data.py --out_dir data/sample" if "data/sample" in args.train_data_dir
                   else "scripts/prepare_slimpajama.py, README \"Data\"")
            problems.append(f"no {prefix}*.bin files in {args.train_data_dir}: prepare the data first ({how})")
    val = args.val_data_dir or args.train_data_dir
    if args.eval_interval and not list(_rooted(val).glob(f"{args.val_prefix}*.bin")):
        problems.append(f"no {args.val_prefix}*.bin files in {val}: prepare the validation split first")
    # where training looks when no tokenizer_dir is set: the copy prepare_slimpajama.py keeps beside the data,
    # or <train_data_dir>/../tokenizer (lit_gpt.data_record.check_training_data)
    places = [_rooted(args.tokenizer_dir)] if args.tokenizer_dir else [train / "tokenizer", train.parent / "tokenizer"]
    if not any((place / name).is_file() for place in places for name in TOKENIZER_FILES):
        problems.append(f"no tokenizer in {' or '.join(map(str, places))}: put the tokenizer the data was made "
                        "with there (or set tokenizer_dir in the recipe)")
    return problems


def _config(model: str):
    from lit_gpt.config import Config

    return Config.load(str(_rooted(model)) if model.endswith(".json") else model)


def _params(model: str) -> int:
    from lit_gpt.config import param_count

    return param_count(_config(model))


def _disk_need(args) -> int:
    """Bytes a training run keeps at its peak: the step-* checkpoints that coexist, and final/."""
    from pretrain.train_args import DEFAULT_MODEL

    model = args.model_name or DEFAULT_MODEL
    config = _config(model)
    steps = args.max_steps if args.max_steps is not None else (
        args.max_tokens // (args.global_batch_size * (args.block_size or config.block_size)))
    written = steps // args.save_interval + 1 if args.save_interval else 1
    kept = min(written, args.keep_last + 1) if args.keep_last else written
    params = _params(model)
    return kept * CHECKPOINT_BYTES_PER_PARAM * params + EXPORT_BYTES_PER_PARAM * params
