"""Tokens/s of one training step (forward, loss, backward, AdamW) of lit_gpt's GPT against
transformers' LlamaForCausalLM holding the same weights, on the same batch, in one process.

    python scripts/bench/model_step.py                      # small CPU config, eager
    python scripts/bench/model_step.py --compile            # ours under torch.compile too
    python scripts/bench/model_step.py --model_name tiny_LLaMA_1b --device cuda --dtype bfloat16 --batch_size 4 --seq_len 2048

Steps of the two models alternate, so background load hits both alike; the median step time after warm-up
is reported, with the ratio ours / HF in tokens per second.
"""

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt import GPT, Config, FusedCrossEntropyLoss  # noqa: E402
from lit_gpt.convert import copy_weights_llama, lit_config_to_hf  # noqa: E402


def build_models(config: Config, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ours = GPT(config).to(device=device, dtype=dtype)
    hf_config = LlamaConfig(**lit_config_to_hf(config, dtype))
    hf_config._attn_implementation = "sdpa"
    hf = LlamaForCausalLM(hf_config).to(device=device, dtype=dtype)
    hf.load_state_dict(copy_weights_llama(config, ours.state_dict()))
    return ours, hf


def make_step(model, logits_fn, loss_fn, fused_adamw: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused_adamw)

    def step(x, y):
        loss = loss_fn(logits_fn(model, x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def hf_loss(logits, y):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def timed(step, x, y, device) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(x, y).item()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model_name", default="8L256H", help="config name or lit_config.json (default: 8L256H)")
    p.add_argument("--batch_size", type=int, default=8, help="sequences per step (default: 8)")
    p.add_argument("--seq_len", type=int, default=256, help="tokens per sequence (default: 256)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model (default: 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first (default: 3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="parameter and compute dtype (default: float32)")
    p.add_argument("--compile", action="store_true", help="also time our model under torch.compile")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    config = Config.load(args.model_name)
    if args.seq_len > config.block_size:
        p.error(f"--seq_len {args.seq_len} exceeds the model's block_size {config.block_size}")
    ours, hf = build_models(config, args.device, dtype)
    fused_adamw = args.device.startswith("cuda") or args.device == "cpu"
    ce = FusedCrossEntropyLoss()
    runs = {"lit_gpt": make_step(ours, lambda m, x: m(x), ce, fused_adamw),
            "hf": make_step(hf, lambda m, x: m(input_ids=x).logits, hf_loss, fused_adamw)}
    if args.compile:
        compiled = torch.compile(ours)
        runs["lit_gpt+compile"] = make_step(compiled, lambda m, x: m(x), ce, fused_adamw)

    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), generator=g).to(args.device)
    x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
    for name, step in runs.items():
        for _ in range(args.warmup):
            step(x, y)
    times = {name: [] for name in runs}
    for _ in range(args.steps):
        for name, step in runs.items():
            times[name].append(timed(step, x, y, args.device))

    tokens = args.batch_size * args.seq_len
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU x{torch.get_num_threads()}"
    print(f"{config.name}, batch {args.batch_size} x {args.seq_len}, {args.dtype}, {device_name}, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    hf_tps = tokens / statistics.median(times["hf"])
    for name, t in times.items():
        tps = tokens / statistics.median(t)
        print(f"  {name:16s} {statistics.median(t) * 1e3:9.1f} ms/step {tps:11.0f} tokens/s   {tps / hf_tps:5.2f}x HF")
    return 0


if __name__ == "__main__":
    sys.exit(main())
