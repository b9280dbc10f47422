"""Training checkpoints: `out_dir/step-NNNNNNNN/`, torch.distributed.checkpoint shards, written atomically.

Layout of a checkpoint directory:
    *.distcp, .metadata   model and optimizer (sharded under FSDP; resharded on load to any world size)
    meta.json             step, tokens, FLOPs, the growth record and accounting, data-loader position,
                          hyperparameters (written last by rank 0)
    rng-rank{r}.pt        each rank's RNG states
    lit_config.json       the model config
All of it is written into `.tmp-step-NNNNNNNN/` and renamed once every rank is done, so a kill while
saving leaves the previous checkpoint as the newest complete one. A checkpoint damaged later (a truncated or
deleted shard, a garbled file) is found by `damage` from its files alone, before any model is built, and
`--resume auto` passes over it (`find_resumable`).
"""

import errno
import json
import os
import random
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

from lit_gpt.config import Config
from lit_gpt.distributed import RankFailure, agree, first_line, on_rank_zero
from lit_gpt.files import atomic_dir, save_torch
from lit_gpt.records import check_growth_record, check_training_record
from lit_gpt.tokenizer import TOKENIZER_FILES
from lit_gpt.utils import CheckpointError

STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_dir(out_dir: Path, step: int) -> Path:
    return out_dir / f"step-{step:08d}"


def _complete(out_dir: Path) -> List[Tuple[int, Path]]:
    """(step, path) of every checkpoint directory in `out_dir` that has its meta.json (written last)."""
    return [(int(m.group(1)), p) for p in out_dir.glob("step-*")
            if (m := STEP_DIR.match(p.name)) and (p / "meta.json").is_file()]


def find_latest(out_dir: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step number (numeric, not lexicographic, order)."""
    found = _complete(out_dir)
    return max(found)[1] if found else None


def find_resumable(out_dir: Path, warn: Callable[[str], None]) -> Optional[Path]:
    """`--resume auto`: the newest checkpoint that `damage` finds nothing wrong with, or None when `out_dir` holds
    no checkpoint. Each newer damaged one is passed over with a `warning:` line given to `warn`. A `step-*`
    directory without meta.json counts as damaged, not absent: saves are renamed into place whole, so its meta.json
    was lost afterwards, and starting afresh would overwrite the run step by step.

    Raises:
        CheckpointError: there are complete checkpoints but every one is damaged (starting afresh would
            overwrite them step by step); the line names the newest and what is wrong with it.
    """
    found = sorted(((int(m.group(1)), p) for p in out_dir.glob("step-*") if (m := STEP_DIR.match(p.name))
                    and p.is_dir()), reverse=True)
    problems = []
    for _, path in found:
        problems.append(damage(path))
        if problems[-1] is None:
            return path
        warn(f"warning: --resume auto passes over {path}: {problems[-1]}")
    if found:
        raise CheckpointError(f"--resume auto: every checkpoint in {out_dir} is damaged (the newest, {found[0][1]}: "
                              f"{problems[0]}); move them aside to start afresh")
    return None


def damage(path: Path) -> Optional[str]:
    """What is wrong with the training checkpoint `path`, found from its files alone (no model, no ranks), or
    None when nothing is: meta.json and lit_config.json must read, DCP's `.metadata` must unpickle, every
    shard file it names must exist and hold at least the bytes its entries record (offset + length), and
    every rank that saved must have left its rng-rank{r}.pt. Corruption inside a shard of the right size is
    found only when DCP reads it (`load`, `consolidate`)."""
    meta = _read_meta(path)
    if isinstance(meta, str):
        return meta
    try:
        Config.from_json(path / "lit_config.json")
    except (ValueError, OSError) as e:
        return f"lit_config.json cannot be read ({_reason(e)})"
    try:
        with _single_process_quiet():
            storage = FileSystemReader(str(path)).read_metadata().storage_data
        ends: Dict[str, int] = {}
        for info in storage.values():
            ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is not what DCP wrote
        return f".metadata cannot be read ({_reason(e)})"
    for name, end in sorted(ends.items()):
        shard = path / name
        if not shard.is_file():
            return f"its shard {name} is missing"
        if shard.stat().st_size < end:
            return f"its shard {name} is truncated ({shard.stat().st_size:,} bytes; .metadata records {end:,})"
    missing = [f"rng-rank{r}.pt" for r in range(meta.get("world_size", 1))
               if not (path / f"rng-rank{r}.pt").is_file()]
    return f"{missing[0]} is missing" if missing else None


def check_intact(path: Path) -> Dict[str, Any]:
    """Returns meta.json's content when `damage` finds nothing wrong with the training checkpoint `path`.

    Raises:
        CheckpointError: one line naming `path` and what is wrong (no meta.json: not a complete checkpoint).
    """
    if not (path / "meta.json").is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no meta.json)")
    problem = damage(path)
    if problem is not None:
        raise CheckpointError(f"{path} is damaged: {problem}; use an earlier checkpoint")
    return json.loads((path / "meta.json").read_text())


def _read_meta(path: Path):
    """meta.json as a dict, or a string saying why it cannot be used."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"meta.json cannot be read ({_reason(e)})"
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        return "meta.json holds no step number"
    if not isinstance(meta.get("world_size", 1), int) or meta.get("world_size", 1) < 1:
        return "meta.json holds no valid world_size"
    try:
        check_training_record(meta, "meta.json")
    except ValueError as e:
        return str(e)
    return meta


def _reason(e: BaseException) -> str:
    """An exception's first line, at most 160 characters: OSError's strerror, else the message or the type."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip()
    return (text.splitlines()[0][:160] if text else type(e).__name__)


# what `save` writes into a step directory; anything else in one is a user's (an export) and is never deleted
_SAVED = re.compile(r".*\.distcp|\.metadata|lit_config\.json|meta\.json|rng-rank\d+\.pt")


def prune(out_dir: Path, keep: int, current: int, warn: Callable[[str], None] = lambda line: None) -> List[Path]:
    """Keeps the checkpoint of step `current` (just saved) and the newest `keep` - 1 complete ones before it,
    deletes the older ones and returns them. Later steps (left by a run resumed from an earlier checkpoint)
    are not touched. Only the newest is ever resumed from; older ones matter for growth or analysis. A step
    directory that holds files `save` did not write (`scripts/export_checkpoint.py`'s default output goes
    there) is kept whole, with one `warn` line."""
    found = sorted((s, p) for s, p in _complete(out_dir) if s < current)
    doomed = []
    for _, path in found[:max(0, len(found) - (keep - 1))]:
        foreign = sorted(p.name for p in path.iterdir() if not _SAVED.fullmatch(p.name))
        if foreign:
            warn(f"warning: kept {path} (--keep_last {keep}): it holds {', '.join(foreign)}, which training did not "
                 "write; delete it yourself when that is no longer needed")
        else:
            doomed.append(path)
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
        _replace_dir(tmp, final)

    def write() -> None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        try:
            with _single_process_quiet():
                dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp,
                         no_dist=fabric.world_size == 1)
            save_torch(rng_state(), tmp / f"rng-rank{fabric.global_rank}.pt")
        except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            hint = _disk_hint(e, out_dir)
            raise CheckpointError(f"could not save step {step} into {final}{hint}: {first_line(e)}; the last "
                                  "complete checkpoint is kept: fix that and continue with --resume auto") from None

    on_rank_zero(fabric, start)
    try:
        agree(fabric, write)  # every rank's shard and RNG state written, or all ranks know that one failed
        on_rank_zero(fabric, finish)
    except (CheckpointError, OSError, RankFailure):
        if fabric.global_rank == 0:  # the last good checkpoint stays the newest; nothing half-written is left
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _replace_dir(new: Path, final: Path) -> None:
    """Renames `new` onto `final`. The same step saved again (a re-run after a resume) replaces the old one
    whole, which is moved aside first and deleted only once the new one is in place."""
    if not final.exists():
        new.rename(final)
        return
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _disk_hint(e: BaseException, out_dir: Path) -> str:
    """" (disk full or file size limit? N GiB free there)" when `e` looks like a failed write, else "": torch's zip
    writer says only "unexpected pos 704 vs 598", DCP wraps each rank's error in its own text."""
    text = str(e)
    if not (getattr(e, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
            or any(s in text for s in ("unexpected pos", "File too large", "No space left", "Disk quota"))):
        return ""
    try:
        free = f" {shutil.disk_usage(out_dir).free / 2**30:.1f} GiB free there"
    except OSError:
        free = ""
    return f" (disk full or file size limit?{free})"


def load(fabric, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """Collective: restores model, optimizer and this rank's RNG; returns meta.json's content.

    Raises:
        CheckpointError: on the first rank that finds `path` damaged or unreadable (one line naming it); the
            other ranks raise `RankFailure`, so no rank goes on training alone.
    """
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    found: Dict[str, Any] = {}

    def read() -> None:
        found["meta"] = check_intact(path)
        dcp_load(state, path, fabric.world_size == 1, "into this model and optimizer")
        rng_file = path / f"rng-rank{fabric.global_rank}.pt"
        if rng_file.is_file():  # absent when resuming on more ranks than saved: those ranks keep their seeds
            try:
                found["rng"] = torch.load(rng_file, weights_only=True)
            except Exception as e:  # noqa: BLE001 - torch reports a damaged zip as RuntimeError
                raise CheckpointError(f"{path} is damaged: {rng_file.name} cannot be read ({_reason(e)}); "
                                      "use an earlier checkpoint") from None

    agree(fabric, read)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if "rng" in found:
        set_rng_state(found["rng"])
    return found["meta"]


def dcp_load(state: Dict[str, Any], path: Path, no_dist: bool, into: str) -> None:
    """dcp.load with its failures (CheckpointException, a BaseException) as one CheckpointError naming `path`.

    `damage` has passed by then, so what fails here is most likely corruption inside a shard."""
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=path, no_dist=no_dist)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException derives from BaseException
        reason = first_line(e).split(". ")[0][:160]  # torch's advice that follows is about untrusted pickles
        raise CheckpointError(f"{path} cannot be loaded {into} ({reason}); if it is damaged, move it aside "
                              "(--resume auto then takes the checkpoint before it)") from None


def check_config(path: Path, config: Config) -> None:
    saved = Config.from_json(path / "lit_config.json")
    if saved != config:
        raise CheckpointError(f"{path} was saved for model {saved.name!r} "
                              f"({saved.n_layer} layers, {saved.n_embd} wide), not {config.name!r}")


def export_weights(fabric, model: torch.nn.Module, config: Config, out_dir: Path,
                   tokenizer_dir: Optional[Path] = None, training: Optional[Dict[str, Any]] = None,
                   growth: Optional[Dict[str, Any]] = None) -> None:
    """Collective: gathers full weights (`full_weights`) and writes them with `write_weights` (rank 0)."""
    state = full_weights(model, config)
    on_rank_zero(fabric, lambda: write_weights(state, config, out_dir, tokenizer_dir, training, growth))


def full_weights(model: torch.nn.Module, config: Config) -> Dict[str, torch.Tensor]:
    """Collective: the model's full state dict in CPU memory on rank 0 (an empty dict on the other ranks), as
    the weights alone should compute it: growth masks still ramping (random-depth, random-width) are baked in,
    and a tied head is the embedding's tensor (the gathered dict holds two equal copies)."""
    from lit_gpt.model import growth_mask_factors

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not state:
        return state
    for key, factor in growth_mask_factors(model).items():
        state[key] = (state[key].float() * factor).to(state[key].dtype)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def own_storages(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`state` with every tensor in a contiguous storage of exactly its own size, copied where it is not (a view,
    the second key of a tied head): what torch.save writes for readers that take each tensor alone (upstream
    TinyLlama's files; safetensors, which refuses shared storages)."""
    seen, out = set(), {}
    for key, tensor in state.items():
        storage = tensor.untyped_storage()
        alone = (tensor.is_contiguous() and tensor.storage_offset() == 0 and storage.data_ptr() not in seen
                 and storage.nbytes() == tensor.numel() * tensor.element_size())
        out[key] = tensor if alone else tensor.clone(memory_format=torch.contiguous_format)
        seen.add(storage.data_ptr())
    return out


def write_weights(state: Dict[str, torch.Tensor], config: Config, out_dir: Path,
                  tokenizer_dir: Optional[Path] = None, training: Optional[Dict[str, Any]] = None,
                  growth: Optional[Dict[str, Any]] = None) -> None:
    """Writes lit_model.pth, lit_config.json, training.json (`training`: {step, tokens, flops, growth,
    total_tokens, paper_flops, scratch_tokens, ...}, which growth records as the base model's cost), growth.json
    (`growth`: the growth record of a grown run, for eval) and the tokenizer files into a directory that
    replaces `out_dir` whole when complete (`lit_gpt.files.atomic_dir`: the umask applies; a failed write leaves
    `out_dir` as it was).

    Raises:
        OSError: a write failed (a full disk, a path below a regular file); the message names the path.
    """
    with atomic_dir(out_dir) as tmp:
        save_torch(state, tmp / "lit_model.pth")
        config.to_json(tmp / "lit_config.json")
        if training is not None:
            (tmp / "training.json").write_text(json.dumps(training, indent=2) + "\n")
        if growth is not None:
            (tmp / "growth.json").write_text(json.dumps(growth, indent=2) + "\n")
        for name in TOKENIZER_FILES if tokenizer_dir is not None else ():
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, tmp / name)  # takes the umask, not the source's mode


def read_record(path: Path, check: Callable[[Any, str], Dict[str, Any]]) -> Dict[str, Any]:
    """A JSON record file checked by `check` (`lit_gpt.records.check_growth_record` / `check_training_record`).

    Raises:
        CheckpointError: invalid JSON or a bad field, one line naming `path`."""
    try:
        return check(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def growth_beside(directory: Path) -> Dict[str, Any]:
    """The growth record of the weights in `directory` as a run starting from them applies it: its growth.json;
    {} when there is none, or when a training.json beside it records a growth (a grown run's export: the weights
    were trained after growth with the masks baked in, so they start no base FLOPs, stream skip or masks).

    Raises:
        CheckpointError: a damaged growth.json or training.json (`read_record`)."""
    growth, training = directory / "growth.json", directory / "training.json"
    if training.is_file() and read_record(training, check_training_record).get("growth"):
        return {}
    return read_record(growth, check_growth_record) if growth.is_file() else {}


def check_masks_baked(directory: Path) -> None:
    """Refuses weights that a random-* growth wrote and no training has touched: they compute the source's
    function only with their growth masks at 0, which pretrain/tinyllama.py applies (and bakes into its export),
    so the weights alone are another model. Grown by any other operator, or trained: fine.

    Raises:
        CheckpointError: such weights, or a damaged growth.json/training.json (`growth_beside`)."""
    record = growth_beside(directory)
    if record.get("masked_layers") or record.get("width_masks"):
        raise CheckpointError(f"{directory} holds {record['operator']}-grown weights whose growth masks (0 at first, "
                              "held apart from the weights) make the model; train it with pretrain/tinyllama.py "
                              "--initial_checkpoint and use the run's final/ export, which has them baked in")


def run_hparams(path: Path) -> Dict[str, Any]:
    """The flags a training checkpoint's run was started with (meta.json's `hparams`; {} in checkpoints that
    predate it)."""
    return json.loads((path / "meta.json").read_text()).get("hparams") or {}


def run_growth(meta: Dict[str, Any], where: Path) -> Optional[Dict[str, Any]]:
    """The growth record a training checkpoint's run applied: meta.json's `growth`; for checkpoints saved
    before meta.json held it, the growth.json beside the run's --initial_checkpoint (None when there is none).

    Raises:
        CheckpointError: a bad record, one line naming `where` or the growth.json."""
    if "growth" in meta:
        try:
            return check_growth_record(meta["growth"], f"{where}: growth") or None
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    initial = (meta.get("hparams") or {}).get("initial_checkpoint")
    if not initial:
        return None
    initial = Path(initial)
    return growth_beside(initial if initial.is_dir() else initial.parent) or None


def check_masks_settled(path: Path) -> None:
    """Refuses a training checkpoint whose random-* growth masks were still ramping: its raw weights alone
    compute a different model (the masks live in the run's growth record and step, not in the weights). The
    record is meta.json's `growth` (the one the run applied), else, in checkpoints saved before meta.json held
    it, the growth.json beside the run's --initial_checkpoint.

    Raises:
        CheckpointError: masks still ramping, or `path` damaged (`check_intact`).
    """
    meta = check_intact(path)
    hparams = meta.get("hparams") or {}
    record = run_growth(meta, path / "meta.json")
    if not record:
        return
    span = int(hparams.get("mask_ramp_steps") or 0)
    end = 3 * span if record.get("width_masks") else span if record.get("masked_layers") else 0
    if meta["step"] <= end:
        raise CheckpointError(f"{path}: its {record['operator']} growth masks ramp until step {end + 1} and are not "
                              "saved in the weights; use the run's final/ export (masks baked in) or a later step")


@contextmanager
def _single_process_quiet():
    """DCP warns on every single-process save and load, which is our intended use there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield
