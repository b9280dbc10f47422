"""Write the weights of a training checkpoint in one of two formats. Runs in one process whatever the number
of ranks that saved the checkpoint.

--format lit (the default) writes a directory with `lit_model.pth` + `lit_config.json` (what growth, the
converters and eval read) and beside them training.json (step, tokens, FLOPs, the growth record, total and
scratch-equivalent tokens and paper FLOPs, the position in the training stream, as far as meta.json records
them) and, for a grown run, growth.json:

    python scripts/export_checkpoint.py --checkpoint_dir out/run/step-00001000 --out_dir out/run/export-1000

The directory is written whole under a temporary name and renamed into place (the umask applies); an existing
non-empty one is replaced only with --force.

--format upstream writes upstream TinyLlama's single-file checkpoint, OUT_DIR/iter-NNNNNN-ckpt.pth, for tools
made for upstream's files (its scripts/convert_lit_checkpoint.py; ours takes it with --checkpoint_name):

    python scripts/export_checkpoint.py --checkpoint_dir out/run --format upstream --out_dir out/run/upstream

It is torch.save of {"model": the full state dict (upstream's keys; every tensor its own contiguous storage, a
tied LM head included), "iter_num": micro-iterations per process as upstream counts them (step x
gradient-accumulation steps, from the run's batch sizes in meta.json), "step_count": optimizer steps, "hparams":
the run's flags}; `torch.load(weights_only=True)` reads it. Unlike upstream's it holds no optimizer state, so it
is a start for --initial_checkpoint, not a resume. The file is written under a temporary name and renamed into
place; an existing one is replaced only with --force.
"""

import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.checkpoint import (check_intact, check_masks_settled, find_latest, own_storages,  # noqa: E402
                                run_growth, write_weights)
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.consolidate import consolidate  # noqa: E402
from lit_gpt.files import atomic_file, check_writable_target, missing, save_torch  # noqa: E402
from lit_gpt.utils import CheckpointError  # noqa: E402

def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint_dir", type=Path, required=True,
                        help="a step-NNNNNNNN directory, or a run's out_dir (its newest checkpoint is taken)")
    parser.add_argument("--format", choices=["lit", "upstream"], default="lit", help=(
        "lit: a directory of lit_model.pth, lit_config.json, training.json; upstream: one iter-NNNNNN-ckpt.pth "
        "file as upstream TinyLlama saves (default: lit)"))
    parser.add_argument("--out_dir", type=Path, default=None, help=(
        "lit: the directory to write (default: <checkpoint>/export); upstream: the folder to put "
        "iter-NNNNNN-ckpt.pth in, created if missing (default: <checkpoint>/upstream); <checkpoint> is the "
        "step-NNNNNNNN directory exported"))
    parser.add_argument("--tokenizer_dir", type=Path, default=None,
                        help="lit only: tokenizer files to copy beside the weights")
    parser.add_argument("--force", action="store_true", help=(
        "lit: replace a non-empty --out_dir; upstream: replace an existing iter-NNNNNN-ckpt.pth there"))
    args = parser.parse_args(argv)
    if args.format == "upstream":
        if args.tokenizer_dir is not None:
            parser.error("--tokenizer_dir goes with --format lit: upstream's checkpoint is one file of weights")
        return exit_code(lambda: export_upstream(args.checkpoint_dir, args.out_dir, args.force))
    return exit_code(lambda: export(args.checkpoint_dir, args.out_dir, args.tokenizer_dir, args.force))


def checkpoint_in(checkpoint_dir: Path) -> Path:
    """`checkpoint_dir` itself when it is a training checkpoint, else the newest complete one inside it.

    Raises:
        CheckpointError: neither (one line naming `checkpoint_dir`).
    """
    if why := missing(checkpoint_dir, "directory"):
        raise CheckpointError(f"--checkpoint_dir {checkpoint_dir}: {why}")
    if (checkpoint_dir / "meta.json").is_file():
        return checkpoint_dir
    latest = find_latest(checkpoint_dir) if checkpoint_dir.is_dir() else None
    if latest is None:
        raise CheckpointError(f"--checkpoint_dir {checkpoint_dir}: neither a training checkpoint (no meta.json) nor "
                              "a run's out_dir holding one (step-NNNNNNNN/ with meta.json)")
    return latest


def export(checkpoint_dir: Path, out_dir: Optional[Path] = None, tokenizer_dir: Optional[Path] = None,
           force: bool = False) -> None:
    """--format lit. Raises CheckpointError (a missing or damaged checkpoint), ValueError (an existing output
    without `force`) or OSError (a failed write; nothing is left behind)."""
    path = checkpoint_in(checkpoint_dir)
    out = out_dir or path / "export"
    # before the reading, which may take minutes
    check_writable_target(out, force, inputs={"the checkpoint": path}, what=f"--out_dir {out}")
    if tokenizer_dir is not None and not tokenizer_dir.is_dir():
        raise ValueError(f"--tokenizer_dir {tokenizer_dir}: not a directory")
    meta = check_intact(path)
    check_masks_settled(path)
    state = consolidate(path)
    growth = run_growth(meta, path / "meta.json")
    training = {k: meta[k] for k in ("step", "tokens", "flops", "total_tokens", "paper_flops",
                                     "scratch_tokens") if k in meta}
    training["growth"] = growth
    # where a model grown from this export continues the stream, as final/training.json says
    training["stream_tokens"] = meta.get("skipped_tokens", 0) + meta.get("tokens", 0)
    write_weights(state, Config.from_json(path / "lit_config.json"), out, tokenizer_dir, training, growth)
    print(f"wrote {out / 'lit_model.pth'} from {path}", file=sys.stderr)


def export_upstream(checkpoint_dir: Path, out_dir: Optional[Path] = None, force: bool = False) -> Path:
    """--format upstream: writes `out_dir/iter-NNNNNN-ckpt.pth` (default out_dir: <checkpoint>/upstream) and
    returns its path. Without batch sizes in meta.json's hparams, iter_num is the step, with a warning line.

    Raises:
        CheckpointError: a missing or damaged checkpoint, or one whose growth masks still ramp.
        ValueError: the file exists and `force` is not set (one line naming it).
        OSError: a failed write (the error names the file); nothing is left behind.
    """
    path = checkpoint_in(checkpoint_dir)
    meta = check_intact(path)
    step, accumulation = meta["step"], micro_batches_per_step(meta.get("hparams") or {})
    if accumulation is None:
        print(f"warning: {path / 'meta.json'} records no batch sizes (hparams); iter_num is the step number {step}, "
              "not upstream's micro-iterations", file=sys.stderr)
    iter_num = step * (accumulation or 1)
    target = (out_dir or path / "upstream") / f"iter-{iter_num:06d}-ckpt.pth"
    check_writable_target(target, force)  # before the reading, which may take minutes
    check_masks_settled(path)
    state = own_storages(consolidate(path))
    with atomic_file(target) as tmp:
        save_torch({"model": state, "iter_num": iter_num, "step_count": step, "hparams": meta.get("hparams") or {}},
                   tmp)
    print(f"wrote {target} from {path} (step {step}, iter_num {iter_num})", file=sys.stderr)
    return target


def micro_batches_per_step(hparams: dict) -> Optional[int]:
    """Gradient-accumulation steps of a run, global_batch_size / (micro_batch_size x devices x num_nodes) from its
    flags, or None when they are missing or do not divide."""
    sizes = [hparams.get(k) for k in ("global_batch_size", "micro_batch_size", "devices", "num_nodes")]
    if not all(isinstance(v, int) and v > 0 for v in sizes):
        return None
    batch, micro, devices, nodes = sizes
    return batch // (micro * devices * nodes) if batch % (micro * devices * nodes) == 0 else None


if __name__ == "__main__":
    sys.exit(main())
