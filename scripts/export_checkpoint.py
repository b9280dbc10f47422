"""Write the weights of a training checkpoint as `lit_model.pth` + `lit_config.json` (what growth, the
converters and eval read). Runs in one process whatever the number of ranks that saved the checkpoint.
Beside them: training.json (step, tokens, FLOPs, the growth record, total and scratch-equivalent tokens and
paper FLOPs, the position in the training stream, as far as meta.json records them) and, for a grown run,
growth.json.

    python scripts/export_checkpoint.py --checkpoint_dir out/run/step-00001000 --out_dir out/run/export-1000

The output directory is written whole under a temporary name and renamed into place (the umask applies);
an existing non-empty one is replaced only with --force.
"""

import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.checkpoint import (check_intact, check_masks_settled, find_latest, run_growth,  # noqa: E402
                                write_weights)
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.consolidate import consolidate  # noqa: E402
from lit_gpt.files import check_writable_target, missing  # noqa: E402
from lit_gpt.utils import CheckpointError  # noqa: E402

def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint_dir", type=Path, required=True,
                        help="a step-NNNNNNNN directory, or a run's out_dir (its newest checkpoint is taken)")
    parser.add_argument("--out_dir", type=Path, default=None, help="default: <checkpoint_dir>/export")
    parser.add_argument("--tokenizer_dir", type=Path, default=None, help="tokenizer files to copy beside the weights")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out_dir")
    args = parser.parse_args(argv)
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
    """Raises CheckpointError (a missing or damaged checkpoint), ValueError (an existing output without `force`)
    or OSError (a failed write; nothing is left behind)."""
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


if __name__ == "__main__":
    sys.exit(main())
