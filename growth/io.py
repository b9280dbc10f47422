"""Reading a source checkpoint (any of the forms we and upstream write) and writing a grown one atomically."""

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from tqdm import tqdm

from growth.writers import Transform, write_pth, write_safetensors
from lit_gpt.checkpoint import check_intact, check_masks_settled, read_record, run_growth
from lit_gpt.consolidate import consolidate
from lit_gpt.config import Config
from lit_gpt.convert import expected_shapes
from lit_gpt.files import atomic_dir, check_writable_target, save_torch, sha256_file, writing
from lit_gpt.records import check_growth_record, check_training_record
from lit_gpt.tokenizer import TOKENIZER_FILES
from lit_gpt.utils import CheckpointError, check_state_dict, load_state_dict

WEIGHT_FILES = ("lit_model.pth", "lit_model.safetensors")


@dataclass
class Source:
    path: Path
    config: Config
    state: Dict[str, torch.Tensor]
    sha256: str
    # step, tokens, flops of the base run and its position in the training stream (stream_tokens), when known
    training: Dict[str, Any] = field(default_factory=dict)
    directory: Optional[Path] = None


def load_source(src: Path, config_name: Optional[str] = None) -> Source:
    """A weights-only directory or file, an upstream `iter-*-ckpt.pth`, or a training checkpoint `step-*/`.

    Raises:
        CheckpointError: `src` is missing, damaged (a training checkpoint's files, `check_intact`, found before
            anything is loaded) or does not hold the weights of its config.
    """
    if not src.exists():
        raise CheckpointError(f"source checkpoint not found: {src}")
    if src.is_dir() and (src / "meta.json").is_file():  # our training checkpoint (sharded or not)
        meta = check_intact(src)
        config = Config.load(config_name) if config_name else Config.from_json(src / "lit_config.json")
        state = consolidate(src)
        check_masks_settled(src)
        training = {k: meta[k] for k in ("step", "tokens", "flops") if k in meta}
        training["growth"] = run_growth(meta, src / "meta.json")
        training["stream_tokens"] = meta.get("skipped_tokens", 0) + meta.get("tokens", 0)
        return Source(src, config, state, _sha256_dir(src), training, run_tokenizer(src, meta.get("hparams") or {}))
    if src.is_dir():
        weights = next((src / f for f in WEIGHT_FILES if (src / f).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{src} holds neither {' nor '.join(WEIGHT_FILES)} nor a training checkpoint")
    else:
        weights = src
    directory = weights.parent
    if config_name:
        config = Config.load(config_name)
    elif (directory / "lit_config.json").is_file():
        config = Config.from_json(directory / "lit_config.json")
    else:
        raise CheckpointError(f"no lit_config.json beside {weights}; pass --src_config NAME")
    state = load_state_dict(weights)
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    check_state_dict(state, expected_shapes(config), f"source {weights}")
    return Source(weights, config, state, sha256_file(weights), _training(directory), directory)


def _training(directory: Path) -> Dict[str, Any]:
    """training.json beside weights ({step, tokens, flops, growth, ...}); for a grown model never trained, what
    its growth.json says it cost (0 tokens of its own); {} when neither is there."""
    training_file, growth_file = directory / "training.json", directory / "growth.json"
    if training_file.is_file():
        return read_record(training_file, check_training_record)
    if not growth_file.is_file():
        return {}
    record = read_record(growth_file, check_growth_record)
    return {"tokens": 0, "flops": record.get("base_flops"), "stream_tokens": record.get("base_stream_tokens"),
            "growth": record}


def run_tokenizer(step_dir: Path, hparams: Dict[str, Any]) -> Optional[Path]:
    """Where the run that saved the training checkpoint `step_dir` found its tokenizer (a step-* directory holds
    none): its --tokenizer_dir, the copy beside its data, <train_data_dir>/../tokenizer, or its final/ export.
    None when none of them holds one."""
    data = Path(hparams["train_data_dir"]) if hparams.get("train_data_dir") else None
    places = [Path(hparams["tokenizer_dir"]) if hparams.get("tokenizer_dir") else None,
              data / "tokenizer" if data else None, data.parent / "tokenizer" if data else None,
              step_dir.parent / "final"]
    return next((p for p in places if p is not None and any((p / n).is_file() for n in TOKENIZER_FILES)), None)


def _sha256_dir(path: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(f.name.encode())
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()


def write_grown(out: Path, state: Dict[str, torch.Tensor], config: Config, record: Dict[str, Any],
                source: Source, force: bool, safetensors: bool = False, extra: Optional[Dict[str, Any]] = None,
                transform: Optional[Transform] = None) -> None:
    """Writes lit_model.pth (or .safetensors), lit_config.json, growth.json, the `extra` files and the
    source's tokenizer files into a temporary directory beside `out`, then renames it into place
    (`lit_gpt.files.atomic_dir`: the umask applies, a failed write leaves `out` as it was).

    The weights stream tensor by tensor (growth.writers), each passed through `transform(key, tensor)`
    first when given (the noise of --noise), so `state` may hold views of the source and broadcast zeros.

    Raises:
        ValueError: `out` exists and is not empty and not `force`, or `state` does not match `config`.
        OSError: a write failed (a full disk, a path below a regular file); the message names the path.
    """
    check_writable_target(out, force)
    check_state_dict(state, expected_shapes(config), "grown model")
    if config.tie_embeddings and transform is not None:
        transform = _tied(transform)
    with atomic_dir(out) as tmp:
        total = sum(t.numel() * t.element_size() for t in state.values())
        # disable=None: no bar when stderr is a log file, where it would run into the error line
        with tqdm(total=total, unit="B", unit_scale=True, desc="writing", leave=False, disable=None) as bar:
            with writing(tmp / "lit_model.safetensors" if safetensors else tmp / "lit_model.pth"):
                if safetensors:  # safetensors has no shared tensors: a tied head is stored as a copy
                    write_safetensors(tmp / "lit_model.safetensors", state, transform, bar.update)
                else:  # torch's zip writer reports a full disk as a RuntimeError
                    write_pth(tmp / "lit_model.pth", state, transform, bar.update,
                              {"lm_head.weight": "transformer.wte.weight"} if config.tie_embeddings else None)
        config.to_json(tmp / "lit_config.json")
        (tmp / "growth.json").write_text(json.dumps(record, indent=2) + "\n")
        for name, obj in (extra or {}).items():
            save_torch(obj, tmp / name)
        for name in TOKENIZER_FILES if source.directory else ():
            if (source.directory / name).is_file():
                shutil.copyfile(source.directory / name, tmp / name)  # the umask, not the source's mode


def _tied(transform: Transform) -> Transform:
    """`transform` drawing once for the tied embedding and head (noise drawn per name would untie them): the
    second of the two names gets the first one's result."""
    done: Dict[str, torch.Tensor] = {}
    pair = ("transformer.wte.weight", "lm_head.weight")

    def apply(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key not in pair:
            return transform(key, tensor)
        if "tied" not in done:
            done["tied"] = transform(key, tensor)
        return done["tied"]
    return apply

