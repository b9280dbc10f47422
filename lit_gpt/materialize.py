"""Weights for a model built on the meta device, written by each rank into its own shards only.

Training builds `GPT` on the meta device, shards it (FSDP2) and only then allocates memory, so a rank holds
about 1/world of the weights, never the whole model. Two ways to fill them:
- `init_parameters`: upstream's initialisation (reference tinyllama-upstream.md §2.5), drawn per parameter
  from a seed derived from (run seed, parameter name). Every rank draws a whole parameter, one at a time, and
  keeps its shard, so the weights are bitwise the same for any number of processes (on one device type).
- `load_parameters`: a weights-only checkpoint (a grown model), memory-mapped; each rank copies its shard of
  one parameter at a time.
Plain (unsharded) parameters are filled whole, so single-process and DDP runs use the same code.
A tied embedding and LM head (`Config.tie_embeddings`) is one parameter, filled once under its key
`transformer.wte.weight` (TIED_KEY); `GPT` keeps it tied through `to_empty()`.
"""

import hashlib
import math
from pathlib import Path
from typing import Callable, Dict, Iterator, Mapping, Tuple

import torch
from torch import nn

from lit_gpt.model import GPT, CausalSelfAttention, SwiGLU, _plain_name, rmsnorm
from lit_gpt.utils import CheckpointError

# the key a parameter shared by several modules is filled under: a tied model's embedding, which `named_parameters`
# would report as `lm_head.weight` (registered first)
TIED_KEY = "transformer.wte.weight"


def parameter_inits(model: GPT) -> Dict[str, Tuple[str, float]]:
    """State-dict key -> ("normal", std) | ("ones", 0) | ("zeros", 0): upstream's init of every parameter, the
    same as `GPT.reset_parameters` (GPT-NeoX small init N(0, 2 / (5 n_embd)); attention `proj` and SwiGLU `w3`
    N(0, (1 / (sqrt(n_embd) n_layer))^2); norms one; biases zero)."""
    config = model.config
    small, residual = math.sqrt(2.0 / 5 / config.n_embd), 1 / math.sqrt(config.n_embd) / config.n_layer
    inits: Dict[str, Tuple[str, float]] = {}
    residual_outputs = []
    for name, module in model.named_modules():
        prefix = _plain_name(name) + "." if name else ""
        if isinstance(module, (nn.Embedding, nn.Linear)):
            inits[prefix + "weight"] = ("normal", small)
            if getattr(module, "bias", None) is not None:
                inits[prefix + "bias"] = ("zeros", 0.0)
        elif isinstance(module, rmsnorm.RMSNorm):
            inits[prefix + "weight"] = ("ones", 0.0)
        if isinstance(module, (CausalSelfAttention, SwiGLU)):
            residual_outputs.append(prefix + ("proj" if isinstance(module, CausalSelfAttention) else "w3") + ".weight")
    # after the loop: named_modules() visits a parent before its Linear children, which would overwrite these
    inits.update({key: ("normal", residual) for key in residual_outputs})
    return inits


def parameter_seed(seed: int, name: str) -> int:
    """A 63-bit seed from the run's seed and a parameter's state-dict key (stable across processes and runs)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def init_parameters(model: GPT, seed: int) -> None:
    """Fills every parameter of `model` (plain or FSDP2-sharded, already on its device) with upstream's init.

    Parameter `name` of shape S is drawn as N(0, std) in fp32 from `torch.Generator(device).manual_seed(
    parameter_seed(seed, name))` over the whole of S, then cast to the parameter's dtype; each rank keeps its
    shard. Deterministic for a given seed, device type and torch version; independent of the number of ranks.
    Raises KeyError for a parameter this model family does not know how to initialise."""
    inits = parameter_inits(model)

    def full(name: str, param: torch.Tensor) -> torch.Tensor:
        kind, std = inits[name]
        if kind == "ones":
            return torch.ones(param.shape, dtype=param.dtype, device=param.device)
        if kind == "zeros":
            return torch.zeros(param.shape, dtype=param.dtype, device=param.device)
        generator = torch.Generator(device=param.device).manual_seed(parameter_seed(seed, name))
        values = torch.empty(param.shape, dtype=torch.float32, device=param.device)
        return values.normal_(0.0, std, generator=generator).to(param.dtype)

    _fill(model, full)


def load_parameters(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copies `state` (full tensors keyed as the state dict, e.g. from `open_weights`) into the
    model's parameters; a sharded parameter reads only its shard's rows. A tied parameter is read from TIED_KEY;
    the state's other keys for it (`lm_head.weight`, which our tied checkpoints store as the same tensor) must hold
    the same values.

    Raises:
        KeyError: a missing key (check the state with `lit_gpt.utils.check_state_dict` first).
        CheckpointError: the keys of a tied parameter hold different tensors (an untied checkpoint given a tied
            config), before anything is copied.
    """
    def value(name: str) -> torch.Tensor:
        found = state[name]
        return found.get() if isinstance(found, _Lazy) else found

    for name, aliases, _ in _named_parameters(model):
        for alias in aliases:
            if alias in state and not same_tensor(state[name], state[alias]) and \
                    not torch.equal(value(name), value(alias)):
                raise CheckpointError(f"the config ties {alias} to {name}, but the checkpoint holds different "
                                      "tensors for them: it was saved untied; use its own config")
    _fill(model, lambda name, param: value(name))


def same_tensor(a, b) -> bool:
    """Whether `a` and `b` are one tensor, so their values need no comparison: views of one storage with one layout
    (the two keys of a tied state dict, also as torch.load returns them), or meta tensors of one shape (no values
    to tell apart). False for anything else, e.g. safetensors' lazily read tensors."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
        return False
    if a.is_meta and b.is_meta:
        return True
    return a.stride() == b.stride() and a.storage_offset() == b.storage_offset() and \
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _fill(model: nn.Module, full: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    with torch.no_grad():
        for name, _, param in _named_parameters(model):
            local, (offsets, sizes) = _local_view(param)
            source = full(name, param)
            for dim, (offset, size) in enumerate(zip(offsets, sizes, strict=True)):
                source = source.narrow(dim, offset, size)
            local.copy_(source.to(device=local.device, dtype=local.dtype))


def _named_parameters(model: nn.Module) -> Iterator[Tuple[str, Tuple[str, ...], torch.Tensor]]:
    """(key, other keys of the same parameter, parameter) once per parameter; a shared one under TIED_KEY when
    that is among its keys."""
    keys: Dict[int, list] = {}
    params: Dict[int, torch.Tensor] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        keys.setdefault(id(param), []).append(_plain_name(name))
        params.setdefault(id(param), param)
    for ident, names in keys.items():
        name = TIED_KEY if TIED_KEY in names else names[0]
        yield name, tuple(n for n in names if n != name), params[ident]


def _local_view(param: torch.Tensor):
    """(this rank's tensor, (offsets, sizes) of its block in the full parameter)."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
        return param.to_local(), (offset, shape)
    return param, ((0,) * param.dim(), tuple(param.shape))


def open_weights(path: Path) -> Mapping[str, torch.Tensor]:
    """A weights file's tensors without reading them all into memory: `.pth` memory-mapped (a shard's rows are
    the only pages read), safetensors opened lazily (one whole tensor read per lookup). Raises CheckpointError
    for an unreadable file."""
    if path.suffix != ".safetensors":
        from lit_gpt.utils import load_state_dict

        return load_state_dict(path)
    from safetensors import safe_open

    handle = safe_open(str(path), framework="pt")
    return {key: _Lazy(handle, key) for key in handle.keys()}


class _Lazy:
    def __init__(self, handle, key: str) -> None:
        self.handle, self.key = handle, key

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.handle.get_slice(self.key).get_shape())

    def get(self) -> torch.Tensor:
        return self.handle.get_tensor(self.key)
