"""Training checkpoints: `out_dir/step-NNNNNNNN/`, torch.distributed.checkpoint shards, written atomically.

Layout of a checkpoint directory:
    *.distcp, .metadata   model and optimizer (sharded under FSDP; resharded on load to any world size)
    meta.json             step, tokens, FLOPs, data-loader position, hyperparameters (written last by rank 0)
    rng-rank{r}.pt        each rank's RNG states
    lit_config.json       the model config
All of it is written into `.tmp-step-NNNNNNNN/` and renamed once every rank is done, so a kill while
saving leaves the previous checkpoint as the newest complete one.
"""

import json
import random
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

from lit_gpt.config import Config
from lit_gpt.distributed import RankFailure, agree, first_line, on_rank_zero
from lit_gpt.tokenizer import TOKENIZER_FILES
from lit_gpt.utils import CheckpointError

STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_dir(out_dir: Path, step: int) -> Path:
    return out_dir / f"step-{step:08d}"


def find_latest(out_dir: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step number (numeric, not lexicographic, order)."""
    found = [(int(m.group(1)), p) for p in out_dir.glob("step-*")
             if (m := STEP_DIR.match(p.name)) and (p / "meta.json").is_file()]
    return max(found)[1] if found else None


def prune(out_dir: Path, keep: int, current: int) -> List[Path]:
    """Keeps the checkpoint of step `current` (just saved) and the newest `keep` - 1 complete ones before it,
    deletes the older ones and returns them. Later steps (left by a run resumed from an earlier checkpoint)
    are not touched. Only the newest is ever resumed from; older ones matter for growth or analysis."""
    found = sorted((int(m.group(1)), p) for p in out_dir.glob("step-*")
                   if (m := STEP_DIR.match(p.name)) and (p / "meta.json").is_file() and int(m.group(1)) < current)
    doomed = [p for _, p in found[:max(0, len(found) - (keep - 1))]]
    for path in doomed:
        try:
            shutil.rmtree(str(path))
        except OSError as e:
            raise CheckpointError(f"could not delete the old checkpoint {path} (--keep_last): {e}") from None
    return doomed


def rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate()),
            "numpy": json.dumps([v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(fabric, out_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         meta: Dict[str, Any], config: Config) -> Path:
    """Collective: every rank calls it. Returns the final directory. Rank 0's own writes (the temporary directory,
    meta.json, the rename) report their outcome to every rank, so a failure there raises on all ranks (rank 0
    its error, the others `RankFailure`) instead of leaving them at a barrier."""
    final = step_dir(out_dir, step)
    tmp = out_dir / f".tmp-{final.name}"

    def start() -> None:
        shutil.rmtree(str(tmp), ignore_errors=True)
        tmp.mkdir(parents=True)

    def finish() -> None:
        config.to_json(tmp / "lit_config.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():  # the same step saved again (a re-run after resume): replace it whole
            shutil.rmtree(str(final))
        tmp.rename(final)

    def write() -> None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        try:
            with _single_process_quiet():
                dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp,
                         no_dist=fabric.world_size == 1)
            torch.save(rng_state(), tmp / f"rng-rank{fabric.global_rank}.pt")
        except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise CheckpointError(f"could not save step {step} into {final}: {first_line(e)}") from None

    on_rank_zero(fabric, start)
    try:
        agree(fabric, write)  # every rank's shard and RNG state written, or all ranks know that one failed
        on_rank_zero(fabric, finish)
    except (CheckpointError, OSError, RankFailure):
        if fabric.global_rank == 0:  # the last good checkpoint stays the newest; nothing half-written is left
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load(fabric, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """Collective: restores model, optimizer and this rank's RNG; returns meta.json's content."""
    if not (path / "meta.json").is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no meta.json)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}

    def read() -> None:
        try:
            with _single_process_quiet():
                dcp.load(state, checkpoint_id=path, no_dist=fabric.world_size == 1)
        except BaseException as e:  # noqa: BLE001 - a mismatch or damage: DCP's long multi-line error, one line here
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise CheckpointError(f"{path} cannot be loaded into this model and optimizer ({first_line(e)})") from None

    agree(fabric, read)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    rng_file = path / f"rng-rank{fabric.global_rank}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than saved: those ranks keep their seeds
        set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((path / "meta.json").read_text())


def check_config(path: Path, config: Config) -> None:
    saved = Config.from_json(path / "lit_config.json")
    if saved != config:
        raise CheckpointError(f"{path} was saved for model {saved.name!r} "
                              f"({saved.n_layer} layers, {saved.n_embd} wide), not {config.name!r}")


def export_weights(fabric, model: torch.nn.Module, config: Config, out_dir: Path,
                   tokenizer_dir: Optional[Path] = None, training: Optional[Dict[str, Any]] = None) -> None:
    """Collective: gathers full weights and writes `lit_model.pth` + `lit_config.json` (rank 0).

    Growth masks still ramping (random-depth, random-width) are baked into the weights: the export computes
    what the masked model computed, without the masks."""
    from lit_gpt.model import growth_mask_factors

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def write() -> None:
        for key, factor in growth_mask_factors(model).items():
            state[key] = (state[key].float() * factor).to(state[key].dtype)
        write_weights(state, config, out_dir, tokenizer_dir, training)

    on_rank_zero(fabric, write)


def write_weights(state: Dict[str, torch.Tensor], config: Config, out_dir: Path,
                  tokenizer_dir: Optional[Path] = None, training: Optional[Dict[str, Any]] = None) -> None:
    """`training` ({step, tokens, flops}) goes to training.json: growth records it as the base model's cost."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "lit_model.pth.tmp"
    torch.save(state, tmp)
    tmp.replace(out_dir / "lit_model.pth")
    config.to_json(out_dir / "lit_config.json")
    if training is not None:
        (out_dir / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, out_dir / name)


def check_masks_settled(path: Path) -> None:
    """Refuses a training checkpoint whose random-* growth masks were still ramping: its raw weights alone
    compute a different model (the masks live in the run's growth.json and step, not in the weights)."""
    meta = json.loads((path / "meta.json").read_text())
    hparams = meta.get("hparams") or {}
    initial = hparams.get("initial_checkpoint")
    if not initial:
        return
    initial = Path(initial)
    record_file = (initial if initial.is_dir() else initial.parent) / "growth.json"
    if not record_file.is_file():
        return
    record = json.loads(record_file.read_text())
    span = int(hparams.get("mask_ramp_steps") or 0)
    end = 3 * span if record.get("width_masks") else span if record.get("masked_layers") else 0
    if meta["step"] <= end:
        raise CheckpointError(f"{path}: its {record['operator']} growth masks ramp until step {end + 1} and are not "
                              "saved in the weights; use the run's final/ export (masks baked in) or a later step")


def consolidate(path: Path) -> Dict[str, torch.Tensor]:
    """A training checkpoint's model weights as one plain state dict, read in this process (no ranks)."""
    if not (path / "meta.json").is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no meta.json)")
    from lit_gpt.model import GPT

    config = Config.from_json(path / "lit_config.json")
    with torch.device("meta"):
        template = GPT(config).state_dict()
    state = {"model": {k: torch.empty(v.shape, dtype=v.dtype) for k, v in template.items()}}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=path, no_dist=True)
    return state["model"]


@contextmanager
def _single_process_quiet():
    """DCP warns on every single-process save and load, which is our intended use there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


def consolidate_optimizer(path: Path) -> Dict[str, Any]:
    """A training checkpoint's AdamW moments as plain tensors keyed by parameter name, read in one process:
    {"step": float, "exp_avg": {name: tensor}, "exp_avg_sq": {name: tensor}}."""
    weights = consolidate(path)
    template = {name: {"step": torch.tensor(0.0), "exp_avg": torch.empty_like(t, dtype=torch.float32),
                       "exp_avg_sq": torch.empty_like(t, dtype=torch.float32)} for name, t in weights.items()}
    state = {"optimizer": {"state": template}}
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=path, no_dist=True)
    except Exception as e:  # noqa: BLE001 - e.g. a checkpoint saved before the first optimizer step
        raise CheckpointError(f"{path} holds no AdamW state for every parameter ({type(e).__name__})") from None
    steps = {float(v["step"]) for v in template.values()}
    return {"step": max(steps), "exp_avg": {k: v["exp_avg"] for k, v in template.items()},
            "exp_avg_sq": {k: v["exp_avg_sq"] for k, v in template.items()}}


def carry_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, moments: Dict[str, Any]) -> None:
    """Collective: installs full (unsharded) AdamW moments into a fresh optimizer, sharding them as the model."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    current = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    state = {name: {"step": torch.tensor(float(moments["step"])), "exp_avg": moments["exp_avg"][name],
                    "exp_avg_sq": moments["exp_avg_sq"][name]} for name in moments["exp_avg"]}
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": current["param_groups"]},
                             options=StateDictOptions(full_state_dict=True))

