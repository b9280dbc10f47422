"""Start-up checks of pretrain/tinyllama.py: everything that can be refused before processes start and memory is
spent (flags, out_dir, data files, tokenizer, initial and resumed checkpoints, --trainable, --eval_tasks), each
reported as one UsageError line by rank 0; every rank runs the same checks on the same input.
"""

import math
import os
import re
from dataclasses import fields
from pathlib import Path

from lit_gpt import Config
from lit_gpt import checkpoint as ckpt
from lit_gpt.convert import expected_shapes
from lit_gpt.data_record import DataTokenizer, check_training_data
from lit_gpt.distributed import check_launcher_layout, check_slurm_layout, externally_launched
from lit_gpt.files import missing
from lit_gpt.materialize import open_weights
from lit_gpt.packed_dataset import HDR_SIZE, read_header
from lit_gpt.utils import check_state_dict
from pretrain.downstream import check_tasks
from pretrain.parallel import initial_weights_path, model_config, resumed_checkpoint, trainable_growth
from pretrain.train_args import TrainArgs, UsageError
from pretrain.trainable import trainable_names


def data_files(directory: Path, prefix: str, check: bool = False) -> list:
    files = sorted(directory.glob(f"{prefix}*.bin"))
    if not files:
        raise UsageError(f"no {prefix}*.bin files in {directory}; prepare data with scripts/prepare_slimpajama.py "
                         "(or prepare_starcoder.py for train_starcoder)")
    for f in files if check else ():
        dtype, chunk_size = read_header(f)  # a corrupt header fails here, not hours into the run
        if f.stat().st_size != HDR_SIZE + chunk_size * dtype.itemsize:
            raise UsageError(f"{f}: {f.stat().st_size} bytes, its header promises {chunk_size} tokens; truncated?")
    return files


def check_mixture(args: TrainArgs) -> None:
    """Refuses a mixture that cannot be drawn from: weights that are not one per prefix, negative, not finite or
    all 0, and prefixes that name the same files twice (one prefix repeated, or the start of another)."""
    weights, prefixes = args.data_weights, args.data_prefixes
    if weights and len(weights) != len(prefixes):
        raise UsageError("--data_weights needs one weight per --data_prefixes entry")
    if weights and (not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0):
        raise UsageError(f"--data_weights {' '.join(f'{w:g}' for w in weights)}: each is a source's share, finite "
                         "and at least 0, and one must be above 0")
    for i, prefix in enumerate(prefixes):
        for other in prefixes[i + 1:]:
            if prefix.startswith(other) or other.startswith(prefix):
                raise UsageError(f"--data_prefixes {prefix} and {other} name the same files: each file may belong "
                                 "to one source only")


def left_out_sources(args: TrainArgs) -> list:
    """One warning per training source in --train_data_dir that --data_prefixes leaves out, such as upstream's
    train_starcoder files beside train_slimpajama in data/slim_star_combined (whose run trained on both)."""
    found = {}
    for path in Path(args.train_data_dir).glob("train_*.bin"):
        source = "_".join(path.name.split("_")[:-2])  # {split}_{name}_{proc}_{counter}.bin
        if source and not any(source.startswith(prefix) for prefix in args.data_prefixes):
            found[source] = found.get(source, 0) + 1
    return [f"{args.train_data_dir} also holds {n} {source}_*.bin files, which --data_prefixes "
            f"{' '.join(args.data_prefixes)} leaves out; add them with --data_prefixes and --data_weights "
            "(upstream's SlimPajama + StarCoder mixture: --config pretrain/configs/tinyllama_1b.yaml; UPSTREAM.md)"
            for source, n in sorted(found.items())]


def data_tokenizer(args: TrainArgs, config: Config) -> DataTokenizer:
    """The run's tokenizer (--tokenizer_dir, else the one the data's records name, else
    <train_data_dir>/../tokenizer), checked against the data's records and the model's vocabulary."""
    files = [f for prefix in args.data_prefixes for f in data_files(Path(args.train_data_dir), prefix)]
    if args.eval_interval:
        files += data_files(Path(args.val_data_dir or args.train_data_dir), args.val_prefix)
    return check_training_data(files, args.tokenizer_dir, config, Path(args.train_data_dir).parent / "tokenizer")


def validate(args: TrainArgs) -> Config:
    """Everything that can be checked before processes start and memory is spent."""
    args.check()
    check_resume_target(args)
    check_out_dir(args)
    config = model_config(args)
    args.check_schedule(args.run_steps(args.block_size or config.block_size))  # --max_tokens: steps known now
    for flag, d in (("--train_data_dir", args.train_data_dir), ("--val_data_dir", args.val_data_dir)):
        if d is not None and (why := missing(d, "directory")):
            raise UsageError(f"{flag} {d}: {why}; give the directory of the packed *.bin files")
    for prefix in args.data_prefixes:
        data_files(Path(args.train_data_dir), prefix, check=True)
    if args.eval_interval:
        data_files(Path(args.val_data_dir or args.train_data_dir), args.val_prefix, check=True)
    check_mixture(args)
    tokenizer = data_tokenizer(args, config)
    if args.eval_tasks is not None:
        try:
            check_tasks(args.eval_tasks)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if tokenizer.directory is None:
            raise UsageError("--eval_tasks scores with the run's tokenizer, and none was found: give --tokenizer_dir")
    try:
        check_slurm_layout(args.devices, args.num_nodes)
        check_launcher_layout(args.devices, args.num_nodes)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.num_nodes > 1 and not externally_launched():
        raise UsageError(f"--num_nodes {args.num_nodes} needs a launcher that starts the processes of every node: "
                         "srun (scripts/slurm/pretrain.sbatch) or torchrun --nnodes")
    if args.block_size and args.block_size > config.block_size:
        raise UsageError(f"--block_size {args.block_size} exceeds the model's block_size {config.block_size}")
    if args.initial_checkpoint:
        check_state_dict(open_weights(initial_weights_path(args)), expected_shapes(config),
                         f"--initial_checkpoint {args.initial_checkpoint}")
    if args.trainable != "all":  # building the names costs seconds per thousand layers: only when used
        trainable_names(args.trainable, expected_shapes(config), trainable_growth(args))
    moments = args.initial_checkpoint and initial_weights_path(args).parent / "optimizer_moments.pth"
    if args.optimizer_state == "carry" and not (moments and moments.is_file()):
        raise UsageError("--optimizer_state carry needs --initial_checkpoint DIR holding optimizer_moments.pth: "
                         "grow it with `python -m growth grow --carry_optimizer` from a training checkpoint")
    resumed = resumed_checkpoint(args)
    if resumed is not None and args.resume != "auto":
        try:
            ckpt.check_intact(resumed)  # damage is found here, before processes start and the model is built
        except ValueError as e:
            raise UsageError(f"--resume: {e}") from None
    if resumed is not None:
        ckpt.check_config(resumed, config)  # for auto, its warnings come from `resume_point`, once, on rank 0
        check_same_run(resumed, args)
    return config


def check_resume_target(args: TrainArgs) -> None:
    """Refuses `--resume FILE`: a resume reads a step-NNNNNNNN directory, and a single file, upstream TinyLlama's
    iter-NNNNNN-ckpt.pth above all, holds too little for one; and `--resume auto` (upstream's `True`) on an
    out_dir that holds upstream's checkpoints and none of ours, which would otherwise start afresh.

    Raises:
        UsageError: one line naming the file and the way to start from its weights instead.
    """
    out_dir = Path(args.out_dir)
    if args.resume == "auto" and out_dir.is_dir() and not any(out_dir.glob("step-*")):
        upstream = sorted(out_dir.glob("iter-*-ckpt.pth"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
        if upstream:
            raise UsageError(f"--resume auto: {out_dir} holds upstream TinyLlama's checkpoints ({len(upstream)} "
                             "iter-*-ckpt.pth) and none of ours (step-*), and upstream's cannot be resumed here; "
                             f"start from the newest's weights with --initial_checkpoint {upstream[-1]} and "
                             "--skip_tokens N to skip the data it saw (see UPSTREAM.md)")
    if args.resume in (None, "auto") or not Path(args.resume).is_file():
        return
    raise UsageError(f"--resume {args.resume} is a file: a single-file checkpoint (upstream TinyLlama's "
                     "iter-NNNNNN-ckpt.pth, or an export) holds no data-loader position, and upstream's optimizer "
                     "state is FSDP1's, so it cannot be resumed here; start from its weights with "
                     f"--initial_checkpoint {args.resume} (a fresh optimizer) and --skip_tokens N to skip the data it "
                     "saw (see UPSTREAM.md)")


def check_same_run(path: Path, args: TrainArgs) -> None:
    """What a resume needs from the command beyond the checkpoint: the same --trainable (its optimizer holds state
    for those parameters only), the same --data_prefixes (its data position is per source), and the
    --initial_checkpoint of a random-* grown run whose masks still ramp (they
    are built from the growth record and mask file beside it, not saved in the checkpoint)."""
    hparams = ckpt.run_hparams(path)
    saved = hparams.get("trainable", "all")
    if saved != args.trainable:
        raise UsageError(f"{path} was trained with --trainable {saved}, this run asks for {args.trainable}; resume "
                         f"with --trainable {saved} (its optimizer holds state for those parameters only), or start "
                         "a new run from its weights with --initial_checkpoint")
    prefixes = hparams.get("data_prefixes")
    if prefixes and list(prefixes) != list(args.data_prefixes):
        raise UsageError(f"{path} drew its data from --data_prefixes {' '.join(prefixes)}, this run asks for "
                         f"{' '.join(args.data_prefixes)}; resume with the same sources in the same order (the "
                         "checkpoint holds each one's position), or start a new run from its weights with "
                         "--initial_checkpoint")
    if not args.initial_checkpoint:
        try:
            ckpt.check_masks_settled(path)
        except ckpt.CheckpointError:
            raise UsageError(f"{path} is a run whose growth masks still ramp, built from the growth record beside "
                             f"its --initial_checkpoint: resume with --initial_checkpoint "
                             f"{hparams.get('initial_checkpoint')} as the run started") from None


FABRIC_CLI = {"devices": "LT_DEVICES", "num_nodes": "LT_NUM_NODES", "precision": "LT_PRECISION",
              "strategy": "LT_STRATEGY", "accelerator": "LT_ACCELERATOR"}


def adopt_fabric_cli(args: TrainArgs) -> None:
    """Under `fabric run` (upstream launched with `lightning run model`, its old name): takes the launcher's
    --devices, --num-nodes, --precision and --strategy, which it passes in LT_* variables, and removes the
    variables, so that Lightning does not refuse the Fabric this script builds from the same values. The
    launcher's values win over a recipe's; fabric run takes these flags wherever they stand on its command line,
    after the script's name too, so the script never sees its own.

    Raises:
        UsageError: a value this script does not take (fabric run --precision=16-mixed).
    """
    given = {name: os.environ.pop(env) for name, env in FABRIC_CLI.items() if env in os.environ}
    os.environ.pop("LT_CLI_USED", None)
    for name, value in given.items():
        if name == "accelerator":
            continue  # ours follows the machine: cuda where there is one
        theirs = int(value) if name in ("devices", "num_nodes") and value.isdigit() else value
        if name == "devices" and not isinstance(theirs, int):
            raise UsageError(f"fabric run --devices={value}: give the number of processes per node (e.g. 8)")
        allowed = next((f.metadata.get("choices") for f in fields(TrainArgs) if f.name == name), None)
        if allowed and theirs not in allowed:
            raise UsageError(f"fabric run --{name.replace('_', '-')}={value}: this script takes "
                             f"{', '.join(allowed)} (see UPSTREAM.md)")
        setattr(args, name, theirs)


def check_out_dir(args: TrainArgs) -> None:
    """Refuses to train over another run or over this run's own input: an out_dir holding step-* checkpoints or
    final/ needs --resume (continue it) or --force (overwrite it step by step); --initial_checkpoint inside
    out_dir/final or a step-* directory would be replaced by the run's own export, so it is refused always.

    Raises:
        UsageError: one line naming --out_dir and what it holds.
    """
    out_dir = Path(args.out_dir)
    if args.initial_checkpoint:
        initial = Path(args.initial_checkpoint).resolve()
        for owned in [out_dir / "final", *out_dir.glob("step-*")]:
            if initial == owned.resolve() or owned.resolve() in initial.parents:
                raise UsageError(f"--initial_checkpoint {args.initial_checkpoint} lies in {owned}, which this run "
                                 "writes; move it out of --out_dir or train into another --out_dir")
    # --resume auto, or a checkpoint of this out_dir, continues the run there; one from elsewhere would not
    continues = args.resume == "auto" or (args.resume and out_dir.resolve() in Path(args.resume).resolve().parents)
    if continues or args.force or not out_dir.is_dir():
        return
    held = sorted(p.name for p in out_dir.iterdir() if p.name == "final" or ckpt.STEP_DIR.match(p.name))
    if held:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        other = f" and --resume {args.resume} is not one of its checkpoints" if args.resume else ""
        raise UsageError(f"--out_dir {out_dir} holds another run ({shown}){other}; continue it with --resume auto, "
                         "train into another --out_dir, or pass --force to overwrite it")


def make_out_dir(out_dir: Path) -> None:
    """Raises UsageError naming --out_dir when it cannot be created (e.g. a path below a regular file)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "it or a directory above it is a regular file" if isinstance(
            e, (FileExistsError, NotADirectoryError)) else e.strerror or str(e)
        raise UsageError(f"--out_dir {out_dir} cannot be created: {reason}") from None
