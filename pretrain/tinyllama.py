"""Pretrain a lit_gpt model on packed data (TinyLlama's recipe), from scratch or from a grown checkpoint.

    python pretrain/tinyllama.py --config pretrain/configs/demo.yaml
    python pretrain/tinyllama.py --model_name tiny_LLaMA_1b --devices 8 --num_nodes 4 --resume auto ...

Single device, DDP or FSDP2 (lightning's ModelParallelStrategy, `fully_shard` per Block), on GPUs or on
CPU processes with gloo. Checkpoints in out_dir/step-NNNNNNNN/ hold everything a resume needs; SIGTERM and
SIGUSR1 save one and exit cleanly (slurm requeue).
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt import GPT, Config, FusedCrossEntropyLoss  # noqa: E402
from lit_gpt import checkpoint as ckpt  # noqa: E402
from lit_gpt.convert import expected_shapes  # noqa: E402
from lit_gpt.global_batches import GlobalBatchLoader  # noqa: E402
from lit_gpt.kernels import describe  # noqa: E402
from lit_gpt.model import set_width_ramps  # noqa: E402
from lit_gpt.packed_dataset import HDR_SIZE, CombinedDataset, PackedDataset, read_header  # noqa: E402
from lit_gpt.speed_monitor import MetricsLogger, Throughput, device_peak_flops, flops_per_token, format_duration  # noqa: E402,E501
from lit_gpt.utils import check_state_dict, exit_code, load_state_dict  # noqa: E402
from pretrain.train_args import TrainArgs  # noqa: E402


class UsageError(ValueError):
    """Bad input found before any work: reported as one line."""


def get_lr(step: int, args: TrainArgs, max_steps: int) -> float:
    """Linear warm-up to the peak, then cosine to min_lr over `lr_decay_steps` (the horizon, not the stop)."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / args.warmup_steps
    horizon = args.lr_decay_steps or max_steps
    if step >= horizon:
        return args.min_lr
    ratio = (step - args.warmup_steps) / max(1, horizon - args.warmup_steps)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.learning_rate - args.min_lr)


def data_files(directory: Path, prefix: str, check: bool = False) -> list:
    files = sorted(directory.glob(f"{prefix}*.bin"))
    if not files:
        raise UsageError(f"no {prefix}*.bin files in {directory}; prepare data with scripts/prepare_slimpajama.py")
    for f in files if check else ():
        dtype, chunk_size = read_header(f)  # a corrupt header fails here, not hours into the run
        if f.stat().st_size != HDR_SIZE + chunk_size * dtype.itemsize:
            raise UsageError(f"{f}: {f.stat().st_size} bytes, its header promises {chunk_size} tokens; truncated?")
    return files


def tokenizer_dir(args: TrainArgs) -> Optional[Path]:
    if args.tokenizer_dir:
        return Path(args.tokenizer_dir)
    guess = Path(args.train_data_dir).parent / "tokenizer"
    return guess if guess.is_dir() else None


def validate(args: TrainArgs) -> Config:
    """Everything that can be checked before processes start and memory is spent."""
    config = Config.load(args.model_name)
    for d in {args.train_data_dir, args.val_data_dir or args.train_data_dir}:
        if not Path(d).is_dir():
            raise UsageError(f"data directory not found: {d}")
    for prefix in args.data_prefixes:
        data_files(Path(args.train_data_dir), prefix, check=True)
    if args.eval_interval:
        data_files(Path(args.val_data_dir or args.train_data_dir), args.val_prefix, check=True)
    if args.data_weights and len(args.data_weights) != len(args.data_prefixes):
        raise UsageError("--data_weights needs one weight per --data_prefixes entry")
    tok = tokenizer_dir(args)
    if tok is not None:
        from lit_gpt import Tokenizer

        vocab = Tokenizer(tok).vocab_size
        if vocab > config.padded_vocab_size:
            raise UsageError(f"the tokenizer in {tok} has {vocab} tokens but model {config.name} has only "
                             f"{config.padded_vocab_size} embedding rows; pick a model with a larger vocab_size")
    world = args.devices * args.num_nodes
    if args.global_batch_size % (args.micro_batch_size * world):
        raise UsageError(f"--global_batch_size {args.global_batch_size} is not a multiple of micro_batch_size x "
                         f"processes = {args.micro_batch_size} x {world}")
    if (args.max_steps is None) == (args.max_tokens is None):
        raise UsageError("give exactly one of --max_steps and --max_tokens")
    if (args.max_steps or 0) < 0 or (args.max_tokens or 0) < 0:
        raise UsageError("--max_steps and --max_tokens cannot be negative")
    if args.keep_last is not None and args.keep_last < 1:
        raise UsageError("--keep_last must be at least 1 (the checkpoint a resume needs)")
    if args.block_size and args.block_size > config.block_size:
        raise UsageError(f"--block_size {args.block_size} exceeds the model's block_size {config.block_size}")
    if args.initial_checkpoint:
        check_state_dict(load_state_dict(initial_weights_path(args)), expected_shapes(config),
                         f"--initial_checkpoint {args.initial_checkpoint}")
    if args.optimizer_state == "carry" and not (args.initial_checkpoint and
                                                (initial_weights_path(args).parent / "optimizer_moments.pth").is_file()):
        raise UsageError("--optimizer_state carry needs --initial_checkpoint DIR holding optimizer_moments.pth: "
                         "grow it with `python -m growth grow --carry_optimizer` from a training checkpoint")
    if args.resume and args.resume != "auto":
        path = Path(args.resume)
        if not (path / "meta.json").is_file():
            raise UsageError(f"--resume {path}: not a complete training checkpoint (no meta.json)")
        ckpt.check_config(path, config)
    return config


def initial_weights_path(args: TrainArgs) -> Path:
    path = Path(args.initial_checkpoint)
    if path.is_dir():
        for name in ("lit_model.pth", "lit_model.safetensors"):
            if (path / name).is_file():
                return path / name
        raise UsageError(f"--initial_checkpoint {path}: no lit_model.pth or lit_model.safetensors in it")
    return path


def growth_record(args: TrainArgs) -> dict:
    """growth.json beside --initial_checkpoint: the base model's tokens and FLOPs (the paper counts
    C = C_base + C_grown, §5.4), or {} when starting from weights that were not grown."""
    if not args.initial_checkpoint:
        return {}
    growth = initial_weights_path(args).parent / "growth.json"
    return json.loads(growth.read_text()) if growth.is_file() else {}


def fsdp2(model: torch.nn.Module, device_mesh, activation_checkpointing: bool, compile: bool):
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh["data_parallel"]
    for i, block in enumerate(model.transformer.h):
        model.transformer.h[i] = fully_shard(_wrap_block(block, activation_checkpointing, compile), mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _wrap_block(block: torch.nn.Module, activation_checkpointing: bool, compile: bool) -> torch.nn.Module:
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        block = checkpoint_wrapper(block)
    return torch.compile(block) if compile else block


def make_fabric(args: TrainArgs):
    import lightning as L
    from lightning.fabric.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

    cuda = torch.cuda.is_available()
    world = args.devices * args.num_nodes
    name = args.strategy if args.strategy != "auto" else ("fsdp" if world > 1 else "single")
    backend = "nccl" if cuda else "gloo"
    if name == "single":
        if world > 1:
            raise UsageError("--strategy single runs one process; use ddp or fsdp for several")
        strategy = SingleDeviceStrategy(device=torch.device("cuda:0" if cuda else "cpu"))
    elif name == "ddp":
        strategy = DDPStrategy(process_group_backend=backend)
    else:
        strategy = ModelParallelStrategy(
            parallelize_fn=partial(fsdp2, activation_checkpointing=args.activation_checkpointing, compile=args.compile),
            data_parallel_size=world, tensor_parallel_size=1, process_group_backend=backend)
    args.precision = args.precision or ("bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true")
    fabric = L.Fabric(accelerator="cuda" if cuda else "cpu", devices=args.devices, num_nodes=args.num_nodes,
                      strategy=strategy, precision=args.precision)
    return fabric, name


def create_train_loader(args: TrainArgs, block: int, accumulation: int, fabric) -> GlobalBatchLoader:
    datasets = []
    for i, prefix in enumerate(args.data_prefixes):
        files = data_files(Path(args.train_data_dir), prefix)
        random.Random(args.seed).shuffle(files)
        datasets.append(PackedDataset(files, n_chunks=args.n_chunks, block_size=block + 1, seed=args.seed + i,
                                      shuffle=True, num_processes=1, process_rank=0))
    weights = args.data_weights or [1.0] * len(datasets)
    dataset = datasets[0] if len(datasets) == 1 else CombinedDataset(datasets, seed=args.seed, weights=weights)
    return GlobalBatchLoader(dataset, args.micro_batch_size, accumulation, fabric.global_rank, fabric.world_size)


@torch.no_grad()
def validate_loss(fabric, model, args: TrainArgs, block: int, loss_fn) -> float:
    """Mean loss over the first eval_iters x micro_batch_size validation blocks, shared out over ranks."""
    files = data_files(Path(args.val_data_dir or args.train_data_dir), args.val_prefix)
    stream = iter(PackedDataset(files, n_chunks=args.n_chunks, block_size=block + 1, shuffle=False))
    model.eval()
    total = torch.zeros(2, device=fabric.device, dtype=torch.float64)
    for i in range(args.eval_iters):
        batch = torch.stack([next(stream) for _ in range(args.micro_batch_size)])
        if i % fabric.world_size != fabric.global_rank:
            continue
        batch = batch.to(fabric.device)
        loss = loss_fn(model(batch[:, :-1]), batch[:, 1:])
        total += torch.stack([loss.double() * batch.shape[0], torch.tensor(batch.shape[0], device=fabric.device)])
    model.train()
    total = fabric.all_reduce(total, reduce_op="sum")
    return (total[0] / total[1]).item()


class StopSignal:
    """SIGTERM/SIGUSR1 set a flag; the loop agrees on it across ranks at the next step boundary."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def agreed(self, fabric) -> bool:
        flag = torch.tensor(1.0 if self.received else 0.0, device=fabric.device)
        return fabric.all_reduce(flag, reduce_op="max").item() > 0


def main(fabric, args: TrainArgs, config: Config, strategy_name: str) -> None:
    out_dir = Path(args.out_dir)
    stop = StopSignal()
    block = args.block_size or config.block_size
    world = fabric.world_size
    accumulation = args.global_batch_size // (args.micro_batch_size * world)
    tokens_per_step = args.global_batch_size * block
    # 0 steps is allowed: it exports the initial weights (the paper's d = 0 base, a random model)
    max_steps = args.max_steps if args.max_steps is not None else max(
        1 if args.max_tokens else 0, args.max_tokens // tokens_per_step)
    fabric.seed_everything(args.seed)

    model = GPT(config)  # full init on every rank with one seed: identical to a single-process run
    growth = growth_record(args)
    if args.initial_checkpoint:
        model.load_state_dict(load_state_dict(initial_weights_path(args)))
    masked = growth.get("masked_layers") or []
    if masked:
        model.set_growth_mask(masked, 0.0)
    width_masks = growth.get("width_masks")
    if width_masks:
        model.set_width_masks(torch.load(initial_weights_path(args).parent / width_masks, weights_only=True))
    if strategy_name != "fsdp":
        model.transformer.h = torch.nn.ModuleList(
            _wrap_block(b, args.activation_checkpointing, args.compile) for b in model.transformer.h)
    model = fabric.setup(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  betas=(args.beta1, args.beta2), fused=fabric.device.type == "cuda")
    optimizer = fabric.setup_optimizers(optimizer)
    loader = create_train_loader(args, block, accumulation, fabric)
    loss_fn = FusedCrossEntropyLoss()

    step, tokens, flops, resume_step, skipped = 0, 0, 0.0, None, 0
    resume_path = ckpt.find_latest(out_dir) if args.resume == "auto" else (Path(args.resume) if args.resume else None)
    if resume_path is not None:
        ckpt.check_config(resume_path, config)
        meta = ckpt.load(fabric, resume_path, model.module, optimizer.optimizer)
        step, tokens, flops = meta["step"], meta["tokens"], meta["flops"]
        skipped = meta.get("skipped_tokens", 0)
        loader.load_state_dict(meta["data"])
        resume_step = step
        fabric.print(f"resumed from {resume_path} at step {step} ({tokens:,} tokens)")
    else:
        if args.optimizer_state == "carry":
            moments = torch.load(initial_weights_path(args).parent / "optimizer_moments.pth", weights_only=True)
            ckpt.carry_optimizer_state(model.module, optimizer.optimizer, moments)
            fabric.print(f"carried the base model's AdamW moments (step {moments['step']:.0f})")
        flops = float(growth.get("base_flops") or 0.0)
        # a grown model continues the stream where its base stopped (paper: fresh data after growth); after
        # several stages the base's stream position includes what its own base read
        skip = args.skip_tokens if args.skip_tokens is not None else int(
            growth.get("base_stream_tokens") or growth.get("base_tokens") or 0)
        if skip:
            loader.skip_blocks(skip // block)
            skipped = skip // block * block
            fabric.print(f"skipped the first {skip:,} tokens of the training stream")

    flops_per_step = flops_per_token(config, block) * tokens_per_step
    monitor = Throughput(tokens_per_step, flops_per_step, device_peak_flops(fabric.device), world)
    logger = MetricsLogger(out_dir, args.logger, resume_step, out_dir.name) if fabric.global_rank == 0 else None
    fabric.print(f"{config.name} | {strategy_name} x{world} | {args.precision} | global batch "
                 f"{args.global_batch_size} x {block} tokens, accumulation {accumulation} | {max_steps} steps")
    fabric.print(f"kernels: {describe(fabric.device, torch.bfloat16 if 'bf16' in args.precision else torch.float32)}")

    def save() -> None:
        meta = {"step": step, "tokens": tokens, "flops": flops, "skipped_tokens": skipped, "data": loader.state_dict(),
                "world_size": world, "hparams": asdict(args)}
        path = ckpt.save(fabric, out_dir, step, model.module, optimizer.optimizer, meta, config)
        fabric.print(f"saved {path}")
        if args.keep_last and fabric.global_rank == 0:
            for old in ckpt.prune(out_dir, args.keep_last, step):
                fabric.print(f"deleted {old} (--keep_last {args.keep_last})")

    start = time.perf_counter()
    monitor.tick()
    last_saved = step
    while step < max_steps:
        if stop.agreed(fabric):
            fabric.print(f"signal received: saving step {step} and exiting")
            if step != last_saved:
                save()
            requeue(fabric, stop.received)
            return
        lr = get_lr(step, args, max_steps)
        if masked:
            set_masks(model, min(1.0, step / max(1, args.mask_ramp_steps)))
        if width_masks:
            set_width_ramps(model, step, args.mask_ramp_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=fabric.device)
        for i, batch in enumerate(loader.next_step()):
            batch = batch.to(fabric.device, non_blocking=True)
            with fabric.no_backward_sync(model, enabled=i < accumulation - 1):
                loss = loss_fn(model(batch[:, :-1]), batch[:, 1:])
                fabric.backward(loss / accumulation)
            loss_sum += loss.detach()
        if args.grad_clip:
            fabric.clip_gradients(model, optimizer, max_norm=args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += tokens_per_step
        flops += flops_per_step
        monitor.tick()
        train_loss = fabric.all_reduce(loss_sum / accumulation, reduce_op="mean").item()
        row = {"step": step, "tokens": tokens, "flops": flops, "train_loss": train_loss, "lr": lr,
               "tokens_per_sec": monitor.tokens_per_sec(), "mfu": monitor.mfu(),
               "elapsed_sec": time.perf_counter() - start}
        if args.eval_interval and (step % args.eval_interval == 0 or step == max_steps):
            val = validate_loss(fabric, model, args, block, loss_fn)
            row.update(val_loss=val, val_ppl=math.exp(min(val, 50)))
            fabric.print(f"step {step}: val loss {val:.4f}, val ppl {row['val_ppl']:.2f}")
        if step % args.log_interval == 0 or "val_loss" in row or step == max_steps:
            tps, mfu = row["tokens_per_sec"], row["mfu"]
            fabric.print(f"step {step}/{max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                         f"{tps or 0:,.0f} tok/s" + (f" | MFU {mfu:.1%}" if mfu else "")
                         + f" | ETA {format_duration(monitor.eta(max_steps - step))}")
            if logger:
                logger.log(row)
        if args.save_interval and step % args.save_interval == 0:
            save()
            last_saved = step
    if last_saved != step:
        save()
    tok = tokenizer_dir(args)
    ckpt.export_weights(fabric, model.module, config, out_dir / "final", tok,
                        {"step": step, "tokens": tokens, "flops": flops, "stream_tokens": skipped + tokens})
    fabric.print(f"done: {step} steps, {tokens:,} tokens; weights in {out_dir / 'final'}")
    if logger:
        logger.close()


def set_masks(model: torch.nn.Module, value: float) -> None:
    """Every growth mask of the (possibly sharded, compiled or checkpoint-wrapped) model, in place."""
    for name, buffer in model.named_buffers():
        if name.endswith("growth_mask"):
            buffer.fill_(value)


def requeue(fabric, signum: Optional[int]) -> None:
    job = os.environ.get("SLURM_JOB_ID")
    if fabric.global_rank == 0 and job and signum == signal.SIGUSR1:
        subprocess.run(["scontrol", "requeue", job], check=False)


def run(argv=None) -> int:
    from lit_gpt.cli import parse

    args = parse(TrainArgs, argv, description=__doc__)

    def launch() -> None:
        config = validate(args)
        fabric, strategy_name = make_fabric(args)
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
        fabric.launch(main, args, config, strategy_name)

    return exit_code(launch)


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    sys.exit(run())
