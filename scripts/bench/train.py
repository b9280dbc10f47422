"""Overhead of the training loop: tokens/s of `pretrain/tinyllama.py` (data loading, LR schedule, loss
all-reduce, metrics, progress) against the bare model step of the same model, batch and optimizer.

    python scripts/bench/train.py                 # 4L128H on the sample data (make demo prepares it)

Both run in one process on this machine; the loop's tokens/s is the median over its steps after warm-up,
read from metrics.csv; the goal is a loop within 10% of the bare step (ratio >= 0.90).
"""

import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt import GPT, Config, FusedCrossEntropyLoss  # noqa: E402


def bare_step_tokens_per_sec(config: Config, batch: int, seq: int, micro: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))
    loss_fn = FusedCrossEntropyLoss()
    data = torch.randint(0, config.vocab_size, (batch, seq + 1))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        for mb in data.split(micro):
            (loss_fn(model(mb[:, :-1]), mb[:, 1:]) / (batch // micro)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return batch * seq / statistics.median(times)


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model_name", default="4L128H")
    p.add_argument("--data_dir", type=Path, default=ROOT / "data" / "sample" / "packed")
    p.add_argument("--global_batch_size", type=int, default=16)
    p.add_argument("--micro_batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    if not any(args.data_dir.glob("train_*.bin")):
        p.error(f"no packed training data in {args.data_dir}; run: python scripts/prepare_sample_data.py")
    config = Config.load(args.model_name)
    seq = config.block_size
    bare = bare_step_tokens_per_sec(config, args.global_batch_size, seq, args.micro_batch_size, args.steps, args.warmup)
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, str(ROOT / "pretrain" / "tinyllama.py"), "--model_name", args.model_name,
                        "--train_data_dir", str(args.data_dir), "--out_dir", out, "--global_batch_size",
                        str(args.global_batch_size), "--micro_batch_size", str(args.micro_batch_size),
                        "--max_steps", str(args.warmup + args.steps), "--eval_interval", "0", "--save_interval", "0",
                        "--log_interval", "1"], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        with open(Path(out) / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    # the loop's own window average: steps after warm-up only
    loop = statistics.median(float(r["tokens_per_sec"]) for r in rows[args.warmup + 10:] if r["tokens_per_sec"])
    print(f"{config.name}, global batch {args.global_batch_size} x {seq}, micro {args.micro_batch_size}, "
          f"CPU x{torch.get_num_threads()}")
    print(f"  bare model step  {bare:10.0f} tokens/s")
    print(f"  training loop    {loop:10.0f} tokens/s   {loop / bare:5.2f}x the bare step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
