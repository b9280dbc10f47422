"""Peak host memory (RSS) of every process for one FSDP training step, at 1, 2 and 4 CPU processes.

    python scripts/bench/fsdp_memory.py [--processes 1 2 4] [--n_layer 16] [--seq 256]

The model is ~271M parameters (16 layers, 1024 wide, 32000-token vocabulary; `--n_layer` changes it). Each rank
builds it exactly as `pretrain/tinyllama.py` does (`pretrain.parallel.setup_model`: meta device, FSDP2 shards,
init of its own shards), then runs one forward/backward/AdamW step on random tokens (micro-batch 1 x `--seq`)
and reports its peak RSS (VmHWM of its own, freshly exec'd process: interpreter, torch and gloo included).
Printed: every rank's peak and the largest rank's against the single process. Goal (issue 10): the largest rank
at 4 processes at most 0.40x the single process.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lit_gpt.cli import ArgumentParser  # noqa: E402


def vm_hwm() -> int:
    """This process's peak resident set size in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def worker(args: argparse.Namespace) -> int:
    from lit_gpt.distributed import externally_launched, launch_local

    if args.devices > 1 and not externally_launched():
        return launch_local(args.devices, sys.argv)
    import torch

    from lit_gpt import Config, FusedCrossEntropyLoss
    from pretrain.parallel import make_fabric, setup_model
    from pretrain.train_args import TrainArgs

    config = Config(name="bench-271M", block_size=args.seq, vocab_size=32000, n_layer=args.n_layer, n_head=16,
                    n_embd=1024, n_query_groups=16, intermediate_size=2816)
    train = TrainArgs(devices=args.devices, strategy="fsdp" if args.devices > 1 else "single", micro_batch_size=1,
                      global_batch_size=args.devices, max_steps=1)
    fabric, strategy = make_fabric(train)

    def step(_) -> None:
        model, optimizer, _ = setup_model(fabric, train, config, strategy)
        tokens = torch.randint(0, config.vocab_size, (1, args.seq + 1), generator=torch.Generator().manual_seed(0))
        loss = FusedCrossEntropyLoss()(model(tokens[:, :-1]), tokens[:, 1:])
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        params = sum(p.numel() for p in model.parameters())  # global count (DTensor shapes are global)
        report = {"rank": fabric.global_rank, "peak_rss": vm_hwm(), "params": params}
        (Path(args.report) / f"rank{fabric.global_rank}.json").write_text(json.dumps(report))

    fabric.launch(step)
    return 0


def main() -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4], help="process counts to measure")
    p.add_argument("--n_layer", type=int, default=16, help="layers of the 1024-wide model (16: ~271M parameters)")
    p.add_argument("--seq", type=int, default=256, help="tokens per micro-batch")
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--report", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.report:
        return worker(args)
    peaks = {}
    for n in args.processes:
        with tempfile.TemporaryDirectory() as report:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, __file__, "--devices", str(n), "--n_layer", str(args.n_layer), "--seq",
                   str(args.seq), "--report", report]
            result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
            if result.returncode != 0:
                print(result.stdout[-2000:] + result.stderr[-4000:], file=sys.stderr)
                return 1
            ranks = [json.loads(f.read_text()) for f in sorted(Path(report).glob("rank*.json"))]
        peaks[n] = [r["peak_rss"] for r in sorted(ranks, key=lambda r: r["rank"])]
        print(f"{n} process{'es' if n > 1 else ''} ({ranks[0]['params'] / 1e6:.0f}M parameters): peak RSS per rank "
              + ", ".join(f"{b / 2**30:.2f}" for b in peaks[n]) + " GiB", flush=True)
    if 1 in peaks:
        single = peaks[1][0]
        for n, ranks in peaks.items():
            if n > 1:
                print(f"largest rank at {n} processes: {max(ranks) / single:.2f}x the single process "
                      f"({max(ranks) / 2**30:.2f} / {single / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
