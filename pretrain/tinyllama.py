"""Pretrain a lit_gpt model on packed data (TinyLlama's recipe), from scratch or from a grown checkpoint.

    python pretrain/tinyllama.py --config pretrain/configs/demo.yaml
    python pretrain/tinyllama.py --model_name tiny_LLaMA_1b --devices 8 --num_nodes 4 --resume auto ...

Single device, DDP or FSDP2 (lightning's ModelParallelStrategy, `fully_shard` per Block), on GPUs or on
CPU processes with gloo. The model is built on the meta device and each rank initialises only its shards.
Checkpoints in out_dir/step-NNNNNNNN/ hold everything a resume needs. SIGTERM, SIGUSR1 and Ctrl-C save one at
the next step boundary and stop (a second Ctrl-C stops at once, without saving); SIGUSR1 under slurm also
requeues the job. `--devices N` on one machine starts N processes.

Exit codes: 0 finished (final/ written) or requeued by slurm; 1 error (one `error:` line); 2 bad flags;
124 a rank waited longer than --collective_timeout; 128 + N stopped by signal N after saving (130 Ctrl-C,
138 SIGUSR1 without requeue, 143 SIGTERM).
"""

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.exits import error_line, guard_command, ignore_signals  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

import torch  # noqa: E402

from lit_gpt import Config, FusedCrossEntropyLoss  # noqa: E402
from lit_gpt.config import param_count  # noqa: E402
from lit_gpt import checkpoint as ckpt  # noqa: E402
from lit_gpt.consolidate import carry_optimizer_state  # noqa: E402
from lit_gpt.distributed import (Agreement, RankFailure, Stopped, StoppedEarly, Watchdog,  # noqa: E402
                                 externally_launched, launch_local, launch_rank, on_rank_zero,
                                 STOP_SIGNALS, stop_early_on_signals, stop_reported)
from lit_gpt.global_batches import GlobalBatchLoader  # noqa: E402
from lit_gpt.kernels import describe  # noqa: E402
from lit_gpt.lr_schedule import DEFAULT_DECAY_SHAPE, learning_rate, wsd_decay_steps  # noqa: E402
from lit_gpt.model import set_width_ramps  # noqa: E402
from lit_gpt.packed_dataset import CombinedDataset, PackedDataset  # noqa: E402
from lit_gpt.flops import flops_per_token, run_accounting  # noqa: E402
from lit_gpt.speed_monitor import MetricsLogger, Throughput, device_peak_flops, format_duration  # noqa: E402
from pretrain.downstream import DownstreamEval  # noqa: E402
from pretrain.parallel import growth_record, initial_weights_path, make_fabric, setup_model  # noqa: E402
from pretrain.preflight import (adopt_fabric_cli, data_files, data_tokenizer, left_out_sources,  # noqa: E402
                                make_out_dir, validate)
from pretrain.train_args import TrainArgs  # noqa: E402


def get_lr(step: int, args: TrainArgs, max_steps: int) -> float:
    """The rate of optimizer step `step` under --lr_schedule (lit_gpt/lr_schedule.py); the horizon is
    `lr_decay_steps`, else `max_steps`, not where the run stops."""
    horizon = args.lr_decay_steps or max_steps
    decay = wsd_decay_steps(horizon, args.decay_steps, args.decay_fraction) if args.lr_schedule == "wsd" else 0
    return learning_rate(step, args.lr_schedule, args.learning_rate, args.min_lr, args.warmup_steps, horizon,
                         decay, args.decay_shape or DEFAULT_DECAY_SHAPE)


def resume_point(fabric, args: TrainArgs, out_dir: Path) -> Optional[Path]:
    """Collective: the checkpoint to resume from. For `--resume auto` rank 0 alone looks (and prints one
    `warning:` line per damaged checkpoint it passes over) and tells the others, so every rank loads the same
    one even if a shared file system shows them different files."""
    if args.resume != "auto":
        return Path(args.resume) if args.resume else None
    found = []
    on_rank_zero(fabric, lambda: found.append(
        ckpt.find_resumable(out_dir, lambda line: print(line, file=sys.stderr, flush=True))))
    path = found[0] if found else None
    return fabric.broadcast(path, src=0) if fabric.world_size > 1 else path


def create_train_loader(args: TrainArgs, block: int, accumulation: int, fabric, vocab_size: int) -> GlobalBatchLoader:
    datasets = []
    for i, prefix in enumerate(args.data_prefixes):
        files = data_files(Path(args.train_data_dir), prefix)
        random.Random(args.seed).shuffle(files)
        datasets.append(PackedDataset(files, n_chunks=args.n_chunks, block_size=block + 1, seed=args.seed + i,
                                      shuffle=True, num_processes=1, process_rank=0, vocab_size=vocab_size))
    weights = args.data_weights or [1.0] * len(datasets)
    dataset = datasets[0] if len(datasets) == 1 else CombinedDataset(datasets, seed=args.seed, weights=weights)
    return GlobalBatchLoader(dataset, args.micro_batch_size, accumulation, fabric.global_rank, fabric.world_size)


@torch.no_grad()
def validate_loss(fabric, model, args: TrainArgs, block: int, loss_fn) -> float:
    """Mean loss over the first eval_iters x micro_batch_size validation blocks, the same for any world size.

    Micro-batch i goes to rank i % world. Every rank runs ceil(eval_iters / world) forward passes, because a
    forward under FSDP (and DDP, which broadcasts buffers) is a collective: a rank with fewer batches would
    leave the others waiting forever. The last round is padded with a repeated batch of weight 0."""
    files = data_files(Path(args.val_data_dir or args.train_data_dir), args.val_prefix)
    stream = iter(PackedDataset(files, n_chunks=args.n_chunks, block_size=block + 1, shuffle=False,
                                vocab_size=model.config.padded_vocab_size))
    world, rank = fabric.world_size, fabric.global_rank
    rounds = -(-args.eval_iters // world)
    model.eval()
    total = torch.zeros(2, device=fabric.device, dtype=torch.float64)
    batch = None
    for i in range(rounds * world):
        if i < args.eval_iters:
            batch = torch.stack([next(stream) for _ in range(args.micro_batch_size)])
        if i % world != rank:
            continue
        weight = 1.0 if i < args.eval_iters else 0.0
        x = batch.to(fabric.device)
        loss = loss_fn(model(x[:, :-1]), x[:, 1:]).double()
        total += weight * torch.stack([loss * x.shape[0], torch.tensor(float(x.shape[0]), device=fabric.device,
                                                                       dtype=torch.float64)])
    model.train()
    total = fabric.all_reduce(total, reduce_op="sum")
    return (total[0] / total[1]).item()


def main(fabric, args: TrainArgs, config: Config, strategy_name: str) -> None:
    """Collective: every rank runs it. Raises Stopped after a stop signal's checkpoint (see `run` for exit codes)."""
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agreement = Agreement()
    rank, world = fabric.global_rank, fabric.world_size
    watchdog = Watchdog(rank, world, args.collective_timeout * 60)
    log = progress_printer(rank)  # once per job, not per node
    tokenizer = data_tokenizer(args, config)
    for warning in ([tokenizer.warning] if tokenizer.warning else []) + left_out_sources(args) if rank == 0 else ():
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    watchdog.phase("start-up (building, sharding and initialising the model)")
    block = args.block_size or config.block_size
    accumulation = args.global_batch_size // (args.micro_batch_size * world)
    tokens_per_step = args.global_batch_size * block
    # 0 steps is allowed: it exports the initial weights (the paper's d = 0 base, a random model)
    max_steps = args.run_steps(block)
    fabric.seed_everything(args.seed, verbose=False)
    growth = growth_record(args)
    record = growth or None  # provenance: into every checkpoint's meta.json and final/
    masked, width = growth.get("masked_layers") or [], growth.get("width_masks")
    log(f"building {config.name}: {param_count(config) / 1e6:,.1f}M parameters")
    model, optimizer, trainable = setup_model(fabric, args, config, strategy_name)
    if args.trainable != "all":
        log(f"training {trainable:,} of {param_count(config):,} parameters (--trainable {args.trainable!r}); the "
            "others are frozen")
    loader = create_train_loader(args, block, accumulation, fabric, config.padded_vocab_size)
    if len(args.data_prefixes) > 1:
        weights = args.data_weights or [1.0] * len(args.data_prefixes)
        log("mixture: " + ", ".join(f"{prefix} {w / sum(weights):.1%}" for prefix, w in zip(args.data_prefixes,
                                                                                         weights))
            + " of the sequences, drawn one by one; each source's share so far is logged as share_PREFIX")
    loss_fn = FusedCrossEntropyLoss()

    step, tokens, flops, resume_step, skipped = 0, 0, 0.0, None, 0
    resume_path = resume_point(fabric, args, out_dir)
    if resume_path is not None:
        watchdog.phase(f"loading {resume_path}")
        meta = ckpt.load(fabric, resume_path, model.module, optimizer.optimizer)
        step, tokens, flops = meta["step"], meta["tokens"], meta["flops"]
        skipped = meta.get("skipped_tokens", 0)
        if "growth" in meta or record is None:  # the run's own record, whatever the resuming command passed
            record = ckpt.run_growth(meta, resume_path / "meta.json")
        loader.load_state_dict(meta["data"])
        resume_step = step
        log(f"resumed from {resume_path} at step {step} ({tokens:,} tokens)")
    else:
        if args.optimizer_state == "carry":
            moments = torch.load(initial_weights_path(args).parent / "optimizer_moments.pth", weights_only=True)
            carry_optimizer_state(model.module, optimizer.optimizer, moments)
            log(f"carried the base model's AdamW moments (step {moments['step']:.0f})")
        flops = float(growth.get("base_flops") or 0.0)
        # a grown model continues the stream where its base stopped (paper: fresh data after growth); after
        # several stages the base's stream position includes what its own base read
        skip = args.skip_tokens if args.skip_tokens is not None else int(
            growth.get("base_stream_tokens") or growth.get("base_tokens") or 0)
        if skip:
            loader.skip_blocks(skip // block)
            skipped = skip // block * block
            log(f"skipped the first {skip:,} tokens of the training stream")

    flops_per_step = flops_per_token(config, block) * tokens_per_step
    monitor = Throughput(tokens_per_step, flops_per_step, device_peak_flops(fabric.device), world)
    loggers = []  # rank 0's; on_rank_zero makes a failure to create it an error on every rank
    on_rank_zero(fabric, lambda: loggers.append(MetricsLogger(out_dir, args.logger, resume_step, out_dir.name)))
    logger = loggers[0] if loggers else None
    log(f"{config.name} | {strategy_name} x{world} | {args.precision} | global batch "
        f"{args.global_batch_size} x {block} tokens, accumulation {accumulation} | {max_steps} steps")
    log(f"kernels: {describe(fabric.device, torch.bfloat16 if 'bf16' in args.precision else torch.float32)}")
    downstream = None
    if args.eval_tasks:
        watchdog.phase(f"loading the tasks of --eval_tasks {args.eval_tasks}")
        downstream = DownstreamEval(fabric, args.eval_tasks, args.eval_tasks_interval, args.eval_tasks_limit,
                                    tokenizer.directory, "bfloat16" if "bf16" in args.precision else "float32")

    if record and (record.get("base_total_tokens") is None or record.get("base_scratch_tokens_paper") is None):
        log("warning: the growth record does not give the base's total tokens and paper-convention cost (a base "
            "without training.json, such as a public checkpoint, or a growth.json written before they were "
            "recorded): total tokens and paper_flops stay empty rather than count the base as free; for an old "
            "growth.json, grow again with this version")

    def accounting() -> dict:
        """total_tokens (the base's included), paper_flops and scratch_tokens {exact, paper} so far."""
        return run_accounting(config, block, tokens, flops, record)

    def save() -> None:
        watchdog.phase(f"saving step-{step:08d}")
        meta = {"step": step, "tokens": tokens, "flops": flops, "growth": record, **accounting(),
                "skipped_tokens": skipped, "data": loader.state_dict(), "world_size": world, "hparams": asdict(args)}
        path = ckpt.save(fabric, out_dir, step, model.module, optimizer.optimizer, meta, config)
        log(f"saved {path}")
        if args.keep_last and rank == 0:
            agreement.attempt(prune)

    warned = set()  # a step kept for the user's files is named once, not at every save

    def warn_once(line: str) -> None:
        if line not in warned:
            warned.add(line)
            print(line, file=sys.stderr, flush=True)

    def prune() -> None:
        for old in ckpt.prune(out_dir, args.keep_last, step, warn_once):
            log(f"deleted {old} (--keep_last {args.keep_last})")

    start = time.perf_counter()
    monitor.tick()
    last_saved = step
    agreement.begin()
    while step < max_steps:
        watchdog.phase(f"step {step + 1}")
        signum = agreement.check(fabric)
        if signum:
            log(f"{signal.Signals(signum).name} received: saving step {step} and stopping")
            if step != last_saved:
                save()
            raise Stopped(signum, requeue(fabric, signum))
        lr = get_lr(step, args, max_steps)
        if masked:
            set_masks(model, min(1.0, step / max(1, args.mask_ramp_steps)))
        if width:
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
        row = {"step": step, "tokens": tokens, "flops": flops, "paper_flops": accounting()["paper_flops"],
               "train_loss": train_loss, "lr": lr, "tokens_per_sec": monitor.tokens_per_sec(), "mfu": monitor.mfu(),
               "elapsed_sec": time.perf_counter() - start, **source_shares(loader, args)}
        if args.eval_interval and (step % args.eval_interval == 0 or step == max_steps):
            watchdog.phase(f"validation after step {step}")
            val = validate_loss(fabric, model, args, block, loss_fn)
            row.update(val_loss=val, val_ppl=math.exp(min(val, 50)))
            log(f"step {step}: val loss {val:.4f}, val ppl {row['val_ppl']:.2f}")
        scores = {}
        if downstream and downstream.due(step, max_steps):
            watchdog.phase(f"scoring --eval_tasks after step {step}")
            scores = downstream.score(fabric, model.module, config)
            row.update(scores)
            log(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        if step % args.log_interval == 0 or "val_loss" in row or scores or step == max_steps:
            tps, mfu = row["tokens_per_sec"], row["mfu"]
            log(f"step {step}/{max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | {tps or 0:,.0f} tok/s"
                + (f" | MFU {mfu:.1%}" if mfu else "") + f" | ETA {format_duration(monitor.eta(max_steps - step))}")
            if logger:
                agreement.attempt(partial(logger.log, row))
        if args.save_interval and step % args.save_interval == 0:
            save()
            last_saved = step
    if last_saved != step:
        save()
    watchdog.phase("writing the final export")
    ckpt.export_weights(fabric, model.module, config, out_dir / "final", tokenizer.directory,
                        {"step": step, "tokens": tokens, "flops": flops, "growth": record, **accounting(),
                         "stream_tokens": skipped + tokens, "tokenizer": tokenizer.entry}, record)
    if logger:
        agreement.attempt(logger.close)
    agreement.check(fabric)  # a failure of rank 0's last metrics row or pruning is not lost
    watchdog.phase(None)
    ignore_signals(STOP_SIGNALS)  # final/ is written: a stop from now on must not turn the finished run into a failure
    shares = source_shares(loader, args)
    log(f"done: {step} steps, {tokens:,} tokens; weights in {out_dir / 'final'}"
        + ("; drawn: " + ", ".join(f"{k[len('share_'):]} {v:.1%}" for k, v in shares.items()) if shares else ""))


def source_shares(loader: GlobalBatchLoader, args: TrainArgs) -> dict:
    """{share_PREFIX: the source's share of the sequences drawn so far, skipped ones included} for a mixture."""
    if not isinstance(loader.dataset, CombinedDataset):
        return {}
    return {f"share_{prefix}": share for prefix, share in zip(args.data_prefixes, loader.dataset.shares())}


def progress_printer(rank: int):
    """`print` on rank 0, nothing elsewhere. A stdout closed by its reader (`... | head`) stops the printing, not
    the run (`lit_gpt.exits.guard_command`): a days-long job must not die of its log."""
    if rank != 0:
        return lambda *args, **kwargs: None
    return partial(print, flush=True)


def set_masks(model: torch.nn.Module, value: float) -> None:
    """Every growth mask of the (possibly sharded, compiled or checkpoint-wrapped) model, in place."""
    for name, buffer in model.named_buffers():
        if name.endswith("growth_mask"):
            buffer.fill_(value)


def requeue(fabric, signum: int) -> bool:
    """Collective: after SIGUSR1 under slurm (the time limit's warning) rank 0 asks slurm to requeue the job;
    every rank learns whether it did."""
    job = os.environ.get("SLURM_JOB_ID")
    done = False
    if fabric.global_rank == 0 and job and signum == signal.SIGUSR1:
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            done = result.returncode == 0
            if not done:
                print(f"warning: scontrol requeue {job} failed: {(result.stderr or result.stdout).strip()}; "
                      "resubmit the job to continue", file=sys.stderr, flush=True)
        except FileNotFoundError:
            print("warning: scontrol is not on PATH, the job was not requeued", file=sys.stderr, flush=True)
    return bool(fabric.broadcast(done, src=0)) if fabric.world_size > 1 else done


def remove_if_unused(out_dir: Path) -> None:
    """Removes an out_dir this run created when it ended before writing anything in it but metrics.csv's header
    (bad input found after the processes started, a stop during start-up)."""
    try:
        entries = list(out_dir.iterdir())
        metrics = out_dir / "metrics.csv"
        if entries == [metrics] and len(metrics.read_text().splitlines()) <= 1:
            metrics.unlink()
        elif entries:
            return
        out_dir.rmdir()
    except OSError:
        pass  # another rank's files, or the directory is gone: nothing of ours to remove


def run(argv=None) -> int:
    """The command line; returns the exit code (module docstring)."""
    from lit_gpt.cli import parse

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(TrainArgs, argv, description=__doc__)
    rank = launch_rank()
    started = False  # before the processes start, every rank checks the same input: rank 0 alone reports it

    def launch() -> int:
        nonlocal started
        adopt_fabric_cli(args)
        config = validate(args)
        make_out_dir(Path(args.out_dir))
        if args.devices * args.num_nodes > 1 and not externally_launched():
            return launch_local(args.devices, [str(Path(__file__).resolve()), *argv])
        # process groups and the model can take minutes to set up
        stop_early_on_signals(rank == 0, cleanup=lambda: None if existed else remove_if_unused(out_dir))
        fabric, strategy_name = make_fabric(args)
        started = True
        fabric.launch(main, args, config, strategy_name)
        ignore_signals(STOP_SIGNALS)  # again: Lightning's teardown may have put back the default handlers
        return 0

    def report(message: str) -> None:
        if rank == 0 or started:
            print(message if rank == 0 else message.replace("error: ", f"error: rank {rank}: ", 1),
                  file=sys.stderr, flush=True)

    out_dir, existed = Path(args.out_dir), Path(args.out_dir).exists()
    code = _reported(launch, report, rank, args)
    if code != 0 and not existed:
        remove_if_unused(out_dir)
    return code


def _reported(launch, report, rank: int, args: TrainArgs) -> int:
    """`launch()`'s exit code, with every way a run ends reported once (by rank 0 where all ranks share it)."""
    try:
        return launch()
    except StoppedEarly as stop:
        stop_reported()
        if rank == 0:
            report(f"error: stopped by {stop} during start-up, before the first step: nothing was saved")
        return 128 + stop.signum
    except Stopped as stop:
        if rank != 0:  # rank 0 speaks for the job: srun --kill-on-bad-exit must not kill it before it does
            return 0
        report(f"stopped by {stop}: " + ("slurm requeued the job; it resumes from the last checkpoint"
                                         if stop.requeued else f"the last checkpoint is in {args.out_dir}; "
                                         f"continue with --resume auto (exit code {stop.code})"))
        return stop.code
    except RankFailure:
        time.sleep(2)  # the rank that failed reports it: give it the time before srun kills the job
        return 1
    except KeyboardInterrupt:
        if rank == 0:
            report("error: interrupted before a checkpoint could be saved: stopped without saving")
        return 130
    except torch.distributed.DistError as e:
        report(f"error: a collective failed, another rank has probably died (see its output): {type(e).__name__}: "
               f"{str(e).strip().splitlines()[0][:200]}")
        return 1
    except (ValueError, OSError) as e:  # bad input, CheckpointError, a file that cannot be written
        report(f"error: {error_line(e)}")
        return 1


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    sys.exit(run())
