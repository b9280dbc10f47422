"""Growth operators: pure functions (source config, source state dict, target config, options) -> target state.

Depth operators keep the width and build each target layer from a source layer given by an index map
(`growth.layers.resolve`); reference stacking-paper.md §3-4.
"""

import math
import re
from typing import Dict, List, Sequence

import torch

from lit_gpt.config import Config
from lit_gpt.model import Block, init_weights

State = Dict[str, torch.Tensor]
LAYER_KEY = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")
WIDTH_FIELDS = ("n_embd", "n_head", "n_query_groups", "intermediate_size", "padded_vocab_size", "_norm_class",
                "_mlp_class", "bias", "parallel_residual", "shared_attention_norm", "rotary_percentage",
                "rope_base", "norm_eps", "condense_ratio", "tie_embeddings", "qkv_bias", "proj_bias", "head_dim",
                "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_seq_len")


SIZE_FIELDS = ("n_layer", "n_embd", "n_head", "n_query_groups", "intermediate_size")


def describe_shape(c: Config) -> str:
    return (f"{c.name}: {c.n_layer} layers, {c.n_embd} wide, {c.n_head} heads, {c.n_query_groups} key/value groups, "
            f"{c.intermediate_size} FFN units")


def check_no_shrink(src: Config, tgt: Config) -> None:
    """Growth never drops layers, hidden dims, heads, key/value groups or FFN units, whatever the operator (a
    layer map shorter than the source would silently discard trained layers).

    Raises:
        ValueError: one line naming both shapes and the fields that would shrink.
    """
    smaller = [f"{f} {getattr(src, f)} -> {getattr(tgt, f)}" for f in SIZE_FIELDS if getattr(tgt, f) < getattr(src, f)]
    if smaller:
        raise ValueError(f"growth cannot shrink the model: the target ({describe_shape(tgt)}) is smaller than the "
                         f"source ({describe_shape(src)}) in {', '.join(smaller)}; pick a target at least as large")


def check_same_width(src: Config, tgt: Config) -> None:
    diff = [f"{f} {getattr(src, f)} -> {getattr(tgt, f)}" for f in WIDTH_FIELDS if getattr(src, f) != getattr(tgt, f)]
    if diff:
        raise ValueError(f"depth operators keep the width, but the target changes {', '.join(diff)}; "
                         "pick a target config that differs from the source only in n_layer")


def split_layers(state: State):
    """(shared tensors, {source layer: {suffix: tensor}})."""
    shared, layers = {}, {}
    for key, tensor in state.items():
        match = LAYER_KEY.match(key)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        else:
            shared[key] = tensor
    return shared, layers


def stack(src: Config, state: State, tgt: Config, index_map: Sequence[int], copy: bool = True) -> State:
    """G_stack (G↑direct), paper §4 and App. A.3, Alg. 1: target layer j is a copy of source layer map[j].

    With the default cyclic map (j mod l) this is M' = M ∘ M ∘ ... ∘ M; the embedding, final norm and
    LM head are copied once. Nothing is rescaled: the grown model computes a different function
    (the loss spike of App. K is expected).

    With copy=False the result holds views of `state` (no memory per target layer), for the streaming writer.
    Raises ValueError for a target smaller than the source (`check_no_shrink`) or of another width.
    """
    check_no_shrink(src, tgt)
    check_same_width(src, tgt)
    shared, layers = split_layers(state)
    check_map(index_map, src, tgt, layers)
    take = torch.Tensor.clone if copy else (lambda t: t)
    out = {k: take(v) for k, v in shared.items()}
    for j, s in enumerate(index_map):
        for suffix, tensor in layers[s].items():
            out[f"transformer.h.{j}.{suffix}"] = take(tensor)
    return out


def zero_depth(src: Config, state: State, tgt: Config, index_map: Sequence[int], copy: bool = True) -> State:
    """G↑zero (LEMON's depth rule), paper App. A.1.3 and A.4 "Depth": stack, then zero the output projections
    (attention `proj`, SwiGLU `w3`, weights and biases) of every repeated copy of a source layer.

    The first occurrence of each source layer keeps its weights; each later copy becomes x + 0 + 0, an exact
    identity through the residual stream, so the grown model computes the source model's function exactly
    (whatever the order of the map, as long as every source layer appears in source order once).
    With copy=False, layers are views of `state` and the zeros are read-only broadcasts.
    """
    out = stack(src, state, tgt, index_map, copy)
    first = {}
    for j, s in enumerate(index_map):
        first.setdefault(s, j)
    kept = [first[s] for s in sorted(first)]
    if sorted(first) != list(range(src.n_layer)) or kept != sorted(kept):
        raise ValueError("zero-depth preserves the function only if the first copies of the source layers appear "
                         "in source order and cover all of them; use a cyclic or interleave map")
    for j, s in enumerate(index_map):
        if first[s] != j:
            # the biases too (Llama's attention_bias, mlp_bias): a copy must add exactly 0 to the stream
            for key in (f"transformer.h.{j}.{m}.{p}" for m in ("attn.proj", "mlp.swiglu.w3") for p in ("weight", "bias")
                        if f"transformer.h.{j}.{m}.{p}" in out):
                zero = torch.zeros((), dtype=out[key].dtype).expand(out[key].shape)
                out[key] = zero.clone() if copy else zero
    return out


def random_depth(src: Config, state: State, tgt: Config, generator: torch.Generator, copy: bool = True,
                 init: str = "upstream") -> State:
    """G↑random (MSG-style), paper App. A.1.4 and A.5: source layers keep positions 0..l-1, layers l..L-1 are
    new and freshly initialised for the target under the scheme `init` (`lit_gpt.model.init_std`: "upstream",
    TinyLlama's, or "official", the paper's released code, reference stacking-paper.md §2), and their residual
    branches are scaled by a mask c ramped 0 -> 1 during training: Y = X + c MHA(RMSNorm(X)),
    Y = X + c SwiGLU(RMSNorm(X)).

    At c = 0 the grown model computes the source's function exactly. The new layers are listed by
    `random_depth_masked_layers`; `pretrain/tinyllama.py` ramps their mask over --mask_ramp_steps.
    """
    check_no_shrink(src, tgt)
    check_same_width(src, tgt)
    if tgt.n_layer <= src.n_layer:
        raise ValueError(f"random-depth adds layers: the target has {tgt.n_layer}, the source {src.n_layer}")
    out = stack(src, state, tgt, list(range(src.n_layer)) + [0] * (tgt.n_layer - src.n_layer), copy)
    for j in random_depth_masked_layers(src, tgt):
        block = Block(tgt)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
            block.apply(lambda m: init_weights(m, tgt.n_embd, tgt.n_layer, init))
        for suffix, tensor in block.state_dict().items():
            out[f"transformer.h.{j}.{suffix}"] = tensor.to(out[f"transformer.h.{j}.{suffix}"].dtype)
    return out


def random_depth_masked_layers(src: Config, tgt: Config) -> List[int]:
    return list(range(src.n_layer, tgt.n_layer))


def map_moments(state: State, index_map: Sequence) -> State:
    """Optimizer moments (or any per-parameter tensors) through a depth operator's layer map, for
    `--optimizer_state carry`: target layer j gets source layer map[j]'s moments; a new layer (None) zeros."""
    shared, layers = split_layers(state)
    out = {k: v.clone() for k, v in shared.items()}
    for j, s in enumerate(index_map):
        for suffix, tensor in layers[0 if s is None else s].items():
            out[f"transformer.h.{j}.{suffix}"] = torch.zeros_like(tensor) if s is None else tensor.clone()
    return out


def add_noise(state: State, tgt: Config, alpha: float, generator: torch.Generator) -> State:
    """Noise injection, paper §5.2 and App. I.2 Eqs. 53-54: W <- (1 - alpha) W + alpha eps for every weight matrix.

    eps follows the fresh-initialisation distribution of its tensor: N(0, 1 / (d L^2)) for the residual-branch
    outputs (attention `proj`, SwiGLU `w3`), N(0, 2 / (5 d)) for the embedding, the LM head and every other
    Linear; d and L are the target's width and depth. Norm weights are left alone.
    """
    check_noise(alpha)
    if alpha == 0.0:
        return state
    return {key: noise_tensor(key, tensor, tgt, alpha, generator) for key, tensor in state.items()}


def check_noise(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--noise must be in [0, 1], got {alpha}")


def noise_tensor(key: str, tensor: torch.Tensor, tgt: Config, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """One tensor of `add_noise`; the streaming writer applies it tensor by tensor, in the same order."""
    if tensor.ndim != 2 or alpha == 0.0:
        return tensor
    d = tgt.n_embd
    residual_out = key.endswith("attn.proj.weight") or key.endswith("swiglu.w3.weight")
    std = 1.0 / (math.sqrt(d) * tgt.n_layer) if residual_out else math.sqrt(2.0 / (5 * d))
    eps = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * std
    return ((1 - alpha) * tensor.float() + alpha * eps).to(tensor.dtype)


def check_map(index_map: Sequence[int], src: Config, tgt: Config, layers: Dict[int, State]) -> None:
    if len(index_map) != tgt.n_layer:
        raise ValueError(f"the layer map has {len(index_map)} layers but the target {tgt.name} has {tgt.n_layer}")
    bad = [s for s in index_map if not 0 <= s < src.n_layer]
    if bad:
        raise ValueError(f"the layer map uses source layer {bad[0] + 1}, but the source has {src.n_layer} layers")
    missing = [s for s in range(src.n_layer) if s not in layers]
    if missing:
        raise ValueError(f"the source checkpoint has no tensors for layer {missing[0]}")


DEPTH_OPERATORS = {"stack": stack, "direct-depth": stack, "zero-depth": zero_depth}


def operator_names() -> List[str]:
    return sorted(DEPTH_OPERATORS)
