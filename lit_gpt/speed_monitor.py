"""MFU, and the metrics a run writes (metrics.csv, TensorBoard, wandb, the log line); FLOPs: lit_gpt/flops.py."""

import csv
import io
import math
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from lit_gpt.files import write_text

# dense bf16 peak of one device (no sparsity), FLOP/s; matched against torch.cuda.get_device_name()
GPU_PEAK_BF16 = {"h200": 989e12, "h100": 989e12, "a100": 312e12, "a10g": 125e12, "l40s": 362e12, "l4": 121e12,
                 "4090": 165e12, "3090": 71e12, "v100": 125e12}


def device_peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    return next((peak for key, peak in GPU_PEAK_BF16.items() if key in name), None)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if d or h else "") + f"{m:02d}m{s:02d}s"


class MetricsLogger:
    """metrics.csv (always), plus TensorBoard or wandb; rank 0 only. A resume drops rows past its step and
    rewrites the header: rows of a file written before a column existed keep it empty. A row with a column the
    file lacks (downstream scores TASK/METRIC, pretrain/downstream.py) rewrites the file with it added."""

    # flops: exact, cumulative, the base's included; paper_flops: the paper's 6 N D (lit_gpt/flops.py)
    COLUMNS = ["step", "tokens", "flops", "paper_flops", "train_loss", "val_loss", "val_ppl", "lr", "tokens_per_sec",
               "mfu", "elapsed_sec"]

    def __init__(self, out_dir: Path, kind: str, resume_step: Optional[int], run_name: str) -> None:
        """Raises OSError naming the file or directory that cannot be written."""
        self.path = out_dir / "metrics.csv"
        self.columns = list(self.COLUMNS)
        rows = []
        if resume_step is not None and self.path.is_file():
            with self.path.open() as f:
                reader = csv.DictReader(f)
                self.columns += [c for c in reader.fieldnames or [] if c not in self.columns]
                rows = [r for r in reader if int(r["step"]) <= resume_step]
        self._rewrite(rows)
        self.backend = None
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            _quiet_tensorboard_thread()
            self.backend = SummaryWriter(str(out_dir / "tensorboard"))
        elif kind == "wandb":
            import wandb

            self.backend = wandb.init(project="tinyllama-growth", name=run_name, dir=str(out_dir), resume="allow")

    def _rewrite(self, rows) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self.columns)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, text.getvalue())  # whole or not at all: a full disk loses no rows

    def log(self, metrics: Dict[str, float]) -> None:
        """Raises OSError naming metrics.csv or the TensorBoard directory when a write fails (a full disk)."""
        added = [k for k in metrics if k not in self.columns]
        if added:
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            self.columns += added
            self._rewrite(rows)
        try:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow({k: metrics.get(k, "") for k in self.columns})
        except OSError as e:  # a failed write to an open file names no file
            raise OSError(e.errno, f"cannot append a row: {e.strerror or e}", str(self.path)) from None
        step = int(metrics["step"])
        scalars = {k: v for k, v in metrics.items() if k != "step" and v is not None and v != ""}
        if self.backend is None:
            return
        if hasattr(self.backend, "add_scalar"):
            try:
                for k, v in scalars.items():
                    self.backend.add_scalar(k, v, step)
                self.backend.flush()
            except OSError as e:
                raise OSError(e.errno, f"cannot write TensorBoard events: {e.strerror or e}",
                              self.backend.log_dir) from None
        else:
            self.backend.log(scalars, step=step)

    def close(self) -> None:
        if self.backend is not None and hasattr(self.backend, "close"):
            self.backend.close()
        elif self.backend is not None:
            self.backend.finish()


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes events from its own thread; a failed write (a full disk) is stored for the main thread,
    which raises it at the next add_scalar/flush (our one error line), and is also re-raised in the thread,
    whose traceback would be a second report. This drops only that second one."""
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args) -> None:
        if not (issubclass(args.exc_type, OSError) and type(args.thread).__module__.startswith("tensorboard.")):
            previous(args)

    hook.quiet_tensorboard = True
    threading.excepthook = hook


class Throughput:
    """Tokens/s and MFU over a sliding window of optimizer steps, and the ETA to `max_steps`."""

    def __init__(self, tokens_per_step: int, flops_per_step: float, peak_flops: Optional[float], world_size: int,
                 window: int = 10) -> None:
        self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
        self.peak = peak_flops * world_size if peak_flops else None
        self.window = window
        self.times = []

    def tick(self) -> None:
        self.times = (self.times + [time.perf_counter()])[-(self.window + 1):]

    def step_time(self) -> Optional[float]:
        if len(self.times) < 2:
            return None
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)

    def tokens_per_sec(self) -> Optional[float]:
        t = self.step_time()
        return self.tokens_per_step / t if t else None

    def mfu(self) -> Optional[float]:
        t = self.step_time()
        return self.flops_per_step / t / self.peak if t and self.peak else None

    def eta(self, steps_left: int) -> float:
        t = self.step_time()
        return steps_left * t if t else float("nan")
