"""Every hyperparameter of `pretrain/tinyllama.py`, settable by flag or by a YAML recipe (`--config`)."""

import argparse
import math
from dataclasses import dataclass, field
from typing import ClassVar, List, Optional, Tuple

from lit_gpt.cli import parse_bool, whole_count
from lit_gpt.lr_schedule import DECAY_SHAPES, DEFAULT_DECAY_FRACTION, SCHEDULES, wsd_decay_steps

DEFAULT_MODEL = "4L128H"  # the model of a run that names none and starts from no checkpoint


class UsageError(ValueError):
    """Bad input found before any work: reported as one line."""


def _h(text: str, **extra) -> dict:
    return {"help": text, **extra}


def _resume(text: str) -> Optional[str]:
    """--resume's value: upstream's bool form (True: 'auto', False: None, in any spelling `parse_bool` takes),
    else the text itself ('auto' or a checkpoint directory)."""
    try:
        return "auto" if parse_bool(text) else None
    except argparse.ArgumentTypeError:
        return text


@dataclass
class TrainArgs:
    # a flag for one of these replaces a recipe's value for the other (lit_gpt.cli.parse)
    ALTERNATIVES: ClassVar[Tuple[Tuple[str, ...], ...]] = (("max_steps", "max_tokens"),
                                                           ("decay_steps", "decay_fraction"))
    model_name: Optional[str] = field(default=None, metadata=_h(
        "config name, or a lit_config.json path (default: the lit_config.json beside --initial_checkpoint, else "
        f"the resumed checkpoint's, else {DEFAULT_MODEL})"))
    train_data_dir: str = field(default="data/sample/packed", metadata=_h("directory of packed *.bin files"))
    val_data_dir: Optional[str] = field(default=None, metadata=_h("validation *.bin directory (default: train's)"))
    data_prefixes: List[str] = field(default_factory=lambda: ["train_slimpajama"],
                                     metadata=_h("file-name prefixes of the training mixture"))
    data_weights: Optional[List[float]] = field(default=None,
                                                metadata=_h("mixture weight per prefix (default: equal)"))
    val_prefix: str = field(default="validation", metadata=_h("file-name prefix of the validation files"))
    tokenizer_dir: Optional[str] = field(default=None, metadata=_h(
        "tokenizer the data was made with, checked against the vocabulary and copied into exports "
        "(default: <train_data_dir>/../tokenizer when it exists)"))
    out_dir: str = field(default="out/pretrain", metadata=_h("checkpoints, metrics.csv and the final export"))
    devices: int = field(default=1, metadata=_h("processes (GPUs, or CPU processes) per node"))
    num_nodes: int = field(default=1, metadata=_h("nodes; under slurm, the job's node count"))
    strategy: str = field(default="auto", metadata=_h("auto: fsdp when more than one process",
                                                      choices=["auto", "single", "ddp", "fsdp"]))
    precision: Optional[str] = field(default=None, metadata=_h(
        "32-true, bf16-mixed or bf16-true (default: bf16-mixed on a bf16 GPU, else 32-true)",
        choices=["32-true", "bf16-mixed", "bf16-true"]))
    global_batch_size: int = field(default=64, metadata=_h("sequences per optimizer step, over all processes"))
    micro_batch_size: int = field(default=8, metadata=_h("sequences per forward pass per process"))
    block_size: Optional[int] = field(default=None, metadata=_h("training sequence length (default: the model's)"))
    max_steps: Optional[int] = field(default=None, metadata=_h("optimizer steps to run (or give --max_tokens)"))
    max_tokens: Optional[int] = field(default=None, metadata=_h(
        "tokens to train on, e.g. 400000, 2e4, 1.5M, 5B; sets max_steps", parse=whole_count))
    learning_rate: float = field(default=4e-4, metadata=_h("peak learning rate"))
    min_lr: float = field(default=4e-5, metadata=_h(
        "learning rate at the end of the cosine or of wsd's decay (constant never reaches it)"))
    warmup_steps: int = field(default=100, metadata=_h("linear warm-up steps from 0"))
    lr_decay_steps: Optional[int] = field(default=None, metadata=_h(
        "horizon of cosine and wsd in optimizer steps, independent of where the run stops: cosine reaches min_lr "
        "there, wsd's decay ends there (default: max_steps; constant has none)"))
    lr_schedule: str = field(default="cosine", metadata=_h(
        "cosine: warm-up, then cosine to min_lr over the horizon (upstream, the paper); wsd (warmup-stable-decay): "
        "warm-up, the peak held, then a decay to min_lr over the last --decay_steps of the horizon, so a "
        "stable-phase checkpoint can be grown and the run decays once at its end; constant: warm-up, then the peak "
        "for ever. The rate is a function of the step and these flags alone (lit_gpt/lr_schedule.py), so a resume "
        "continues it",
        choices=list(SCHEDULES)))
    decay_steps: Optional[int] = field(default=None, metadata=_h(
        "wsd only: optimizer steps of the decay, the last ones of the horizon; at most the horizon less "
        f"--warmup_steps (default: --decay_fraction's, else {DEFAULT_DECAY_FRACTION:g} of the horizon)"))
    decay_fraction: Optional[float] = field(default=None, metadata=_h(
        "wsd only, instead of --decay_steps: the decay's share of the horizon, in (0, 1], rounded to the nearest "
        f"step (default: {DEFAULT_DECAY_FRACTION:g} when --decay_steps is not given either)"))
    decay_shape: Optional[str] = field(default=None, metadata=_h(
        "wsd only: the decay's curve from the peak to min_lr over t from 0 to 1: linear, cosine, or 1-sqrt "
        "(lr = min_lr + (peak - min_lr) (1 - sqrt(t)), Hagele et al. 2024) (default with wsd: 1-sqrt)",
        choices=list(DECAY_SHAPES)))
    weight_decay: float = field(default=0.1, metadata=_h("AdamW weight decay, on every parameter as upstream"))
    beta1: float = field(default=0.9, metadata=_h("AdamW beta1"))
    beta2: float = field(default=0.95, metadata=_h("AdamW beta2"))
    grad_clip: float = field(default=1.0, metadata=_h("gradient-norm clip; 0 disables"))
    eval_interval: int = field(default=100, metadata=_h("steps between validations; 0 disables"))
    eval_iters: int = field(default=10, metadata=_h("validation micro-batches in total, split over processes"))
    eval_tasks: Optional[str] = field(default=None, metadata=_h(
        "downstream tasks to score the model on during training, as eval/run.py --tasks (e.g. sample, paper, "
        "arc_easy,piqa), every --eval_tasks_interval steps and at the last step; each task's metrics go into "
        "metrics.csv as TASK/METRIC columns (and TensorBoard/wandb). The full model is gathered once and scored "
        "on rank 0 while the other ranks wait (default: off)"))
    eval_tasks_interval: int = field(default=0, metadata=_h(
        "steps between downstream scorings with --eval_tasks (required with it)"))
    eval_tasks_limit: Optional[int] = field(default=None, metadata=_h(
        "with --eval_tasks: score only the first N examples of each task (smoke runs; default: all)"))
    save_interval: int = field(default=100, metadata=_h("steps between checkpoints; 0: only at the end"))
    keep_last: Optional[int] = field(default=None, metadata=_h(
        "keep only the newest N step-* checkpoints (default: keep all; a 7B checkpoint is ~95 GB)"))
    log_interval: int = field(default=1, metadata=_h("steps between progress lines and metrics rows"))
    resume: Optional[str] = field(default=None, metadata=_h(
        "'auto' (the newest undamaged step-* in out_dir) or a step-NNNNNNNN checkpoint directory; upstream's bool "
        "form also works: True is auto, False no resume. Upstream's single-file iter-NNNNNN-ckpt.pth cannot be "
        "resumed: start from it with --initial_checkpoint", parse=_resume))
    force: bool = field(default=False, metadata=_h(
        "train into an out_dir that holds another run's checkpoints or final/ without resuming it (they are "
        "overwritten step by step); without it such an out_dir is refused"))
    initial_checkpoint: Optional[str] = field(default=None, metadata=_h(
        "start from these weights (lit_model.pth or a directory holding it) with a fresh optimizer"))
    skip_tokens: Optional[int] = field(default=None, metadata=_h(
        "skip this many tokens of the training stream first (default: the base model's tokens from the "
        "growth.json beside --initial_checkpoint, else 0); takes 5B, 2e4 like --max_tokens", parse=whole_count))
    optimizer_state: str = field(default="reset", metadata=_h(
        "with --initial_checkpoint: reset (fresh AdamW, the paper's choice) or carry (the base model's moments "
        "mapped by `python -m growth grow --carry_optimizer`)", choices=["reset", "carry"]))
    trainable: str = field(default="all", metadata=_h(
        "parameters to train, the rest frozen (no gradients, no optimizer state): all; new, the layers the growth "
        "record beside --initial_checkpoint says were created (LLaMA-Pro: grow with --op zero-depth --layers pro:K, "
        "train only the identity blocks); or a regular expression searched in each parameter name (e.g. "
        "'transformer\\.h\\.(2|5)\\.'). FLOPs are still counted as full training, an upper bound"))
    mask_ramp_steps: int = field(default=5000, metadata=_h(
        "steps over which the masks of random-* growth ramp from 0 to 1: the new layers of random-depth; for "
        "random-width each of three phases in turn (new FFN units, then new hidden dims, then new heads)"))
    collective_timeout: float = field(default=30.0, metadata=_h(
        "minutes a rank may spend in one phase (a step, a validation, a checkpoint save) waiting for the others "
        "before it exits with code 124 and one line naming itself and the phase, instead of hanging until the "
        "job's time limit"))
    seed: int = field(default=3407, metadata=_h("seed of initialisation and data order"))
    n_chunks: int = field(default=8, metadata=_h("files per shuffle buffer of the packed data reader"))
    compile: bool = field(default=False, metadata=_h("torch.compile the blocks"))
    activation_checkpointing: bool = field(default=False, metadata=_h("recompute each block in backward"))
    logger: str = field(default="csv", metadata=_h("metrics.csv is always written; add tensorboard or wandb",
                                                   choices=["csv", "tensorboard", "wandb"]))

    def check(self) -> None:
        """The checks that need nothing but the flags; raises UsageError with one line."""
        world = self.devices * self.num_nodes
        if self.devices < 1 or self.num_nodes < 1:
            raise UsageError("--devices and --num_nodes must be at least 1")
        if self.strategy == "single" and world > 1:
            raise UsageError("--strategy single runs one process; use ddp or fsdp (or auto) for several")
        if not 0 < self.collective_timeout < 1e6:
            raise UsageError(f"--collective_timeout must be a positive number of minutes, got "
                             f"{self.collective_timeout}")
        for name in ("global_batch_size", "micro_batch_size", "log_interval"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_interval", "save_interval", "warmup_steps"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name} cannot be negative (0 turns it off), got {getattr(self, name)}")
        if self.eval_interval and self.eval_iters < 1:
            raise UsageError(f"--eval_iters must be at least 1 when validating (--eval_interval "
                             f"{self.eval_interval}), got {self.eval_iters}")
        if self.eval_tasks is not None and self.eval_tasks_interval < 1:
            raise UsageError(f"--eval_tasks {self.eval_tasks} needs --eval_tasks_interval N (steps between scorings, "
                             f"at least 1), got {self.eval_tasks_interval}")
        if self.eval_tasks is None and (self.eval_tasks_interval or self.eval_tasks_limit is not None):
            raise UsageError("--eval_tasks_interval and --eval_tasks_limit need --eval_tasks TASKS (the tasks to "
                             "score); give it or drop them")
        if self.eval_tasks_limit is not None and self.eval_tasks_limit < 1:
            raise UsageError(f"--eval_tasks_limit must be at least 1, got {self.eval_tasks_limit}")
        if self.global_batch_size % (self.micro_batch_size * world):
            raise UsageError(f"--global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size x "
                             f"processes = {self.micro_batch_size} x {world}")
        if (self.max_steps is None) == (self.max_tokens is None):
            raise UsageError("give exactly one of --max_steps and --max_tokens")
        for name in ("max_steps", "max_tokens", "skip_tokens"):
            if (getattr(self, name) or 0) < 0:
                raise UsageError(f"--{name} cannot be negative, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "learning_rate" and value == 0):
                least = "above" if name == "learning_rate" else "of at least"
                raise UsageError(f"--{name} must be a finite number {least} 0, got {value}")
        if self.lr_schedule != "constant" and self.min_lr > self.learning_rate:
            raise UsageError(f"--min_lr {self.min_lr} is above --learning_rate {self.learning_rate}: the "
                             f"{self.lr_schedule} schedule would rise to it; set --min_lr at most the peak (e.g. a "
                             "tenth of it)")
        if self.block_size is not None and self.block_size < 1:
            raise UsageError(f"--block_size must be at least 1, got {self.block_size}")
        if self.keep_last is not None and self.keep_last < 1:
            raise UsageError("--keep_last must be at least 1 (the checkpoint a resume needs)")
        if not 0 <= self.seed < 2 ** 32:
            raise UsageError(f"--seed must be from 0 to {2 ** 32 - 1} (numpy's range), got {self.seed}")
        self.check_schedule(self.max_steps)

    def run_steps(self, block: int) -> int:
        """The optimizer steps of the run: --max_steps, else --max_tokens in whole global batches of `block`
        tokens (at least 1 for a positive budget; 0 steps exports the initial weights)."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1 if self.max_tokens else 0, self.max_tokens // (self.global_batch_size * block))

    def check_schedule(self, max_steps: Optional[int]) -> None:
        """The learning-rate schedule's flags; with `max_steps` None (a --max_tokens run before its block size is
        known) the decay's fit in the horizon is checked only against --lr_decay_steps. Raises UsageError."""
        given = [f"--{name}" for name in ("decay_steps", "decay_fraction", "decay_shape")
                 if getattr(self, name) is not None]
        if given and self.lr_schedule != "wsd":
            several = len(given) > 1
            raise UsageError(f"{' and '.join(given)} only shape{'' if several else 's'} the decay of --lr_schedule "
                             f"wsd, not {self.lr_schedule}; drop {'them' if several else 'it'} or use --lr_schedule wsd")
        if self.decay_steps is not None and self.decay_fraction is not None:
            raise UsageError(f"give at most one of --decay_steps ({self.decay_steps}) and --decay_fraction "
                             f"({self.decay_fraction}): both set the length of wsd's decay")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise UsageError(f"--decay_steps must be at least 1, got {self.decay_steps}")
        if self.decay_fraction is not None and not 0 < self.decay_fraction <= 1:
            raise UsageError(f"--decay_fraction is a share of the horizon, above 0 and at most 1, got "
                             f"{self.decay_fraction}")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            raise UsageError(f"--lr_decay_steps must be at least 1 (leave it out for the run's --max_steps), got "
                             f"{self.lr_decay_steps}")
        horizon = self.lr_decay_steps or max_steps
        if self.lr_schedule != "wsd" or not horizon:  # a 0-step run computes no rate
            return
        decay = wsd_decay_steps(horizon, self.decay_steps, self.decay_fraction)
        room = horizon - self.warmup_steps
        if decay > room:
            share = (f"--decay_fraction {self.decay_fraction:g}" if self.decay_fraction is not None else
                     f"the default --decay_fraction {DEFAULT_DECAY_FRACTION:g}")
            length = (f"--decay_steps {decay}" if self.decay_steps is not None else
                      f"a decay of {decay} steps ({share} of {horizon})")
            source = next(f"--{name}" for name in ("lr_decay_steps", "max_steps", "max_tokens") if getattr(self, name))
            raise UsageError(f"{length} does not fit after the warm-up: the horizon of {horizon} steps ({source}) "
                             f"less --warmup_steps {self.warmup_steps} leaves {max(room, 0)}; give a shorter "
                             "decay, fewer warm-up steps or a longer horizon")
