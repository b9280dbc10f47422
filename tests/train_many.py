"""Test helper: several runs of `pretrain/tinyllama.py`'s `main` in one process group, so that a test matrix pays
for the start-up of its processes once, not once per run (most of the time of a tiny run).

    python tests/train_many.py OUT_ROOT EVAL_ITERS[,EVAL_ITERS...] [pretrain/tinyllama.py flags...]

Runs, each with the given flags and its own out_dir: OUT_ROOT/init (--max_tokens 0: the initial weights),
OUT_ROOT/reload (--max_tokens 0 from --initial_checkpoint OUT_ROOT/init/final: the weights loaded, shard by shard),
then OUT_ROOT/e{k} for each k of EVAL_ITERS (--eval_iters k). With --devices N > 1 it starts N ranks on this machine
exactly as the training script does.
"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.cli import parse  # noqa: E402
from lit_gpt.distributed import externally_launched, launch_local  # noqa: E402
from pretrain.parallel import make_fabric  # noqa: E402
from pretrain.tinyllama import main, validate  # noqa: E402
from pretrain.train_args import TrainArgs  # noqa: E402


def run_all(fabric, args: TrainArgs, config, strategy: str, root: Path, eval_iters) -> None:
    init = dataclasses.replace(args, max_steps=None, max_tokens=0, out_dir=str(root / "init"))
    main(fabric, init, config, strategy)
    reload = dataclasses.replace(init, out_dir=str(root / "reload"), initial_checkpoint=str(root / "init" / "final"))
    main(fabric, reload, config, strategy)
    for k in eval_iters:
        main(fabric, dataclasses.replace(args, eval_iters=k, out_dir=str(root / f"e{k}")), config, strategy)


def cli(argv) -> int:
    root, eval_iters, flags = Path(argv[0]), [int(k) for k in argv[1].split(",")], argv[2:]
    args = parse(TrainArgs, flags)
    config = validate(args)
    if args.devices > 1 and not externally_launched():
        return launch_local(args.devices, [__file__, *argv])
    fabric, strategy = make_fabric(args)
    fabric.launch(run_all, args, config, strategy, root, eval_iters)
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
