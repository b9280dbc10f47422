"""Head-aware width growth operators: pure functions (source config, source state, target config, generator) -> state.

Every operator keeps `head_size` and `q_per_kv` and grows n_embd, n_head, n_query_groups and intermediate_size;
vocabulary, depth and the other architecture fields are kept. A target unit is described by the source unit it
comes from (an index) or by -1 (a new unit):

* hidden dims (the residual stream, size n_embd): the first d target dims are the source dims, in order;
* key/value groups: the first G target groups are the source groups; group g' holds the target query heads
  g' q_per_kv .. g' q_per_kv + q_per_kv - 1, so a query head always comes from the query head in the same slot of
  its group's source group. A grown head's q rows, its group's k and v rows and its `attn.proj` columns therefore
  come whole from ONE source head and its group (or are all new), never from rows of different heads
  (the released code's scrambling, reference stacking-paper.md §3.2 caveat);
* FFN units (size intermediate_size): the first f target units are the source units.

New entries of G→zero and G→random are drawn at the target size under the scheme `init` (`lit_gpt.model.init_std`):
"upstream" (default) N(0, 2 / (5 D)) for the embedding and every Linear, N(0, (1 / (sqrt(D) L))^2) for `attn.proj`
and `swiglu.w3`; "official" (the paper's released code, reference stacking-paper.md §2) N(0, 2 / (5 fan_in)) for
every Linear and the embedding, N(0, (1 / (sqrt(F) L))^2) for `swiglu.w3`, `attn.proj` not down-scaled. Zeros for
biases, ones for norm weights (D = target n_embd, F = intermediate_size, L = n_layer, fan_in = a weight's last dim).
"""

import math
import re
from typing import Dict, Optional, Tuple

import torch

from lit_gpt.config import Config
from lit_gpt.model import init_std

State = Dict[str, torch.Tensor]
Units = Dict[str, Tuple[torch.Tensor, int]]  # axis -> (source unit of each target unit or -1, positions per unit)

_LAYER = re.compile(r"^transformer\.h\.\d+\.(.+)$")
# tensor name -> (axis of each dim, the fan-out dim: None for norm weights)
_TENSORS = {
    "transformer.wte.weight": (("vocab", "hidden"), 1),
    "lm_head.weight": (("vocab", "hidden"), 0),
    "transformer.ln_f.weight": (("hidden",), None),
    "norm_1.weight": (("hidden",), None),
    "norm_2.weight": (("hidden",), None),
    "attn.attn.weight": (("qkv", "hidden"), 0),
    "attn.attn.bias": (("qkv",), 0),
    "attn.proj.weight": (("hidden", "heads"), 0),
    "attn.proj.bias": (("hidden",), 0),
    "mlp.swiglu.w1.weight": (("ffn", "hidden"), 0),
    "mlp.swiglu.w1.bias": (("ffn",), 0),
    "mlp.swiglu.w2.weight": (("ffn", "hidden"), 0),
    "mlp.swiglu.w2.bias": (("ffn",), 0),
    "mlp.swiglu.w3.weight": (("hidden", "ffn"), 0),
    "mlp.swiglu.w3.bias": (("hidden",), 0),
}
_GROWN = ("n_embd", "n_head", "n_query_groups", "intermediate_size")
_KEPT = ("vocab_size", "padded_vocab_size", "n_layer", "bias", "parallel_residual", "shared_attention_norm",
         "rotary_percentage", "rope_base", "condense_ratio", "_mlp_class", "tie_embeddings", "qkv_bias",
         "proj_bias", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_seq_len")


def check_width_growth(src: Config, tgt: Config) -> None:
    """Accepted targets: same head_size and q_per_kv, no grown field smaller, vocabulary/depth/layout kept.

    Keeping q_per_kv means the target has n_query_groups' >= G groups of the same shape, so new groups (and with
    them new query heads) are built from whole source groups; n_head' = q_per_kv n_query_groups' follows.
    norm_eps, block_size and the norm class may differ (they hold no weights).
    """
    if src.head_size != tgt.head_size:
        raise ValueError(f"width growth keeps head_size (head_dim, else n_embd / n_head): the source has "
                         f"{src.head_size}, the target {tgt.head_size}")
    if src.q_per_kv != tgt.q_per_kv:
        raise ValueError(f"width growth keeps q_per_kv (query heads per key/value group): the source has "
                         f"{src.q_per_kv}, the target {tgt.q_per_kv}; grow n_query_groups with n_head")
    shrunk = [f"{f} {getattr(src, f)} -> {getattr(tgt, f)}" for f in _GROWN if getattr(tgt, f) < getattr(src, f)]
    if shrunk:
        raise ValueError(f"width growth cannot shrink the model, but the target has {', '.join(shrunk)}")
    diff = [f"{f} {getattr(src, f)} -> {getattr(tgt, f)}" for f in _KEPT if getattr(src, f) != getattr(tgt, f)]
    if diff:
        raise ValueError(f"width growth keeps the vocabulary, the depth and the block layout, but the target changes "
                         f"{', '.join(diff)}")


def _sizes(c: Config) -> Dict[str, int]:
    return {"vocab": c.padded_vocab_size, "hidden": c.n_embd, "heads": c.n_head * c.head_size,
            "ffn": c.intermediate_size,
            "qkv": (c.n_head + 2 * c.n_query_groups) * c.head_size}


def tensor_spec(key: str) -> Tuple[str, Tuple[str, ...], Optional[int]]:
    match = _LAYER.match(key)
    name = match.group(1) if match else key
    in_layer = match is not None
    if name not in _TENSORS or in_layer != name.startswith(("norm_", "attn.", "mlp.")):
        raise ValueError(f"width growth does not know the tensor {key!r}")
    return (name, *_TENSORS[name])


def check_source_state(src: Config, state: State) -> None:
    sizes = _sizes(src)
    for key, tensor in state.items():
        _, axes, _ = tensor_spec(key)
        expected = tuple(sizes[a] for a in axes)
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{key} has shape {tuple(tensor.shape)}, but the source config {src.name} implies "
                             f"{expected}")


def _units(src: Config, tgt: Config, hidden: torch.Tensor, groups: torch.Tensor, ffn: torch.Tensor) -> Units:
    """Unit maps of every axis from the new hidden dims, groups and FFN units (source indices or -1).

    The old units keep their places; a query head follows its group (slot i of target group g' <- slot i of the
    source group of g'), and a group's fused rows [q heads | k | v] move as one block.
    """
    def grown(n_old: int, new: torch.Tensor) -> torch.Tensor:
        return torch.cat((torch.arange(n_old), new.long()))

    q, hs = src.q_per_kv, src.head_size
    gmap = grown(src.n_query_groups, groups)
    g_of_head = gmap.repeat_interleave(q)
    qmap = torch.where(g_of_head >= 0, g_of_head * q + torch.arange(tgt.n_head) % q, -1)
    return {"vocab": (torch.arange(src.padded_vocab_size), 1), "hidden": (grown(src.n_embd, hidden), 1),
            "heads": (qmap, hs), "qkv": (gmap, (q + 2) * hs),
            "ffn": (grown(src.intermediate_size, ffn), 1)}


def _positions(unit_map: torch.Tensor, size: int) -> torch.Tensor:
    pos = unit_map[:, None] * size + torch.arange(size)
    return torch.where(unit_map[:, None] >= 0, pos, -1).reshape(-1)


def _split(unit_map: torch.Tensor, n_old: int, split: str, std: float, generator: torch.Generator) -> torch.Tensor:
    """Fan-in coefficient of every target unit when each source unit s appears c_s + 1 times (reference §3.2).

    even: every occurrence gets 1 / (c_s + 1). lemon: each copy gets 1 / (c_s + 1) + eps, eps ~ N(0, std^2), and
    the original 1 - (sum of its copies' coefficients). Either way the coefficients of s sum to 1.
    """
    coef = 1.0 / torch.bincount(unit_map, minlength=n_old).double()[unit_map]
    if split == "lemon":
        copies = torch.arange(len(unit_map)) >= n_old
        coef[copies] += torch.randn(int(copies.sum()), generator=generator, dtype=torch.float64) * std
        spent = torch.zeros(n_old, dtype=torch.float64).index_add_(0, unit_map[copies], coef[copies])
        coef[:n_old] = 1.0 - spent
    return coef.float()


def _grow(src: Config, state: State, tgt: Config, units: Units, generator: torch.Generator, *, mode: str,
          split: str = "even", norm_scale: float = 1.0, stream_scale: float = 1.0, init: str = "upstream") -> State:
    """Builds every target tensor from the unit maps.

    mode "copy" (every target unit has a source unit): W'[i', j'] = W[map(i'), map(j')] * coef(j') on the fan-in
    dim j' (coefficients from `_split`), norm weights norm_scale * mu[map], biases copied.
    modes "zero"/"random": old entries copied into their places, new entries drawn at the target's size under the
    init scheme `init` (`lit_gpt.model.init_std`); "zero" also zeroes every new-fan-out x old-fan-in entry. Norm
    weights [norm_scale * mu, 1], new bias entries 0. The copied entries of the tensors that write the residual
    stream (embedding, attn.proj, swiglu.w3, their biases) are multiplied by stream_scale.
    """
    check_width_growth(src, tgt)
    check_source_state(src, state)
    lemon_std = 1.0 / math.sqrt(tgt.n_embd) / tgt.n_layer
    n_old = {a: n // units[a][1] for a, n in _sizes(src).items()}
    pos = {a: _positions(*u) for a, u in units.items()}
    out = {}
    for key, tensor in state.items():
        name, axes, fan_out = tensor_spec(key)
        if key == "lm_head.weight" and tgt.tie_embeddings:
            continue  # `_tie` makes it the grown embedding
        w, dev = tensor.detach().float().cpu(), tensor.device
        idx = [pos[a] for a in axes]
        copied = w[idx[0].clamp(min=0)]
        if len(axes) == 2:
            copied = copied[:, idx[1].clamp(min=0)]
        if fan_out is not None and axes[fan_out] == "hidden":
            copied = copied * stream_scale
        old = idx[0] >= 0 if len(axes) == 1 else (idx[0] >= 0)[:, None] & (idx[1] >= 0)[None, :]
        if fan_out is None:
            res = torch.where(old, norm_scale * copied, 1.0)
        elif len(axes) == 1:
            res = torch.where(old, copied, 0.0)
        elif mode == "copy":
            fan_in = 1 - fan_out
            unit_map, size = units[axes[fan_in]]
            coef = _split(unit_map, n_old[axes[fan_in]], split, lemon_std, generator).repeat_interleave(size)
            res = copied * (coef[None, :] if fan_in == 1 else coef[:, None])
        else:
            std = init_std(name, old.shape[-1], tgt.n_embd, tgt.n_layer, init)
            res = torch.where(old, copied, torch.randn(old.shape, generator=generator) * std)
            if mode == "zero":
                new_out, old_in = ~(idx[fan_out] >= 0), idx[1 - fan_out] >= 0
                block = new_out[:, None] & old_in[None, :] if fan_out == 0 else old_in[:, None] & new_out[None, :]
                res = res.masked_fill(block, 0.0)
        out[key] = res.to(device=dev, dtype=tensor.dtype)
    if tgt.tie_embeddings:
        _tie(out, units["hidden"][0], n_old["hidden"], generator, mode=mode, split=split, lemon_std=lemon_std,
             stream_scale=stream_scale)
    return out


def _tie(out: State, hidden: torch.Tensor, n_old: int, generator: torch.Generator, *, mode: str, split: str,
         lemon_std: float, stream_scale: float) -> None:
    """Ties the grown LM head to the grown embedding, moving the head's own column factors into ln_f.

    An untied head would be lm_head'[:, j'] = r_j' E'[:, j'] (E' = the grown embedding): r = the fan-in
    coefficient of hidden dim j' under "copy" (`_split`), 1 / stream_scale on the old dims under "zero"/"random".
    The head reads ln_f's output, so logits = sum_j' E'[v, j'] (r_j' mu'_j') n_j': taking mu' r as the final norm's
    weight gives the same logits with one tensor for both. New dims of "zero"/"random" keep r = 1; the stream
    is 0 there at growth (masked for random), so the head's columns on them do not matter.
    """
    if mode == "copy":
        ratio = _split(hidden, n_old, split, lemon_std, generator)
    else:
        ratio = torch.where(hidden >= 0, 1.0 / stream_scale, 1.0)
    norm = out["transformer.ln_f.weight"]
    out["transformer.ln_f.weight"] = (norm.float() * ratio.to(norm.device)).to(norm.dtype)
    out["lm_head.weight"] = out["transformer.wte.weight"]


def _new(n: int) -> torch.Tensor:
    return torch.full((n,), -1, dtype=torch.long)


def _fresh_units(src: Config, tgt: Config) -> Units:
    check_width_growth(src, tgt)
    return _units(src, tgt, _new(tgt.n_embd - src.n_embd), _new(tgt.n_query_groups - src.n_query_groups),
                  _new(tgt.intermediate_size - src.intermediate_size))


def zero_width(src: Config, state: State, tgt: Config, generator: torch.Generator, *, exact_eps: bool = True,
               init: str = "upstream") -> State:
    """G→zero, paper App. A.1.3 and A.4 Eqs. 12-19 (reference stacking-paper.md §3.4): exactly function preserving.

    Every matrix becomes W' = [[W, A], [O, C]] (rows = fan-out, old units first): A and C random (the init scheme
    `init`, module docstring), O = 0. The embedding is E' = [E, O], so new hidden dims start at 0 and stay 0 through
    every block: new heads read q = k = v = 0 (their output is 0), new FFN units read w1 x = w2 x = 0 (silu(0) * 0 = 0),
    so A never sees a non-zero input and the zero O blocks of attn.proj / swiglu.w3 keep the new dims at 0.
    New attention units are whole new groups (q heads, k, v and their proj columns); new FFN units have w1/w2
    rows [0, random] and random w3 columns. Note that new FFN units get zero gradient on their old-input weights
    (silu(0) * 0 is a saddle) until the new hidden dims move away from 0.

    RMSNorm, mu' = [alpha mu, xi] with xi = 1 (any value: those dims are 0). For x' = [x, 0] (d of D dims),
    mean_D(x'^2) = (d/D) mean_d(x^2), so RMSNorm_D(x')_old = x / sqrt((d/D) m + eps') * alpha mu. Without eps this
    is x / sqrt(m) * mu exactly when alpha = sqrt(d/D) (the paper's value, Eq. 32; sqrt(D/d) would be wrong).
    With eps it equals mu x / sqrt(m + (D/d) eps'): exact only if the target's norm_eps is (d/D) times the source's.
    exact_eps=False is this paper form (E' = [E, O] literally). exact_eps=True (default) also multiplies the old
    entries of everything that writes the residual stream (embedding columns, attn.proj and swiglu.w3 rows and
    biases) by c = sqrt(D/d): the stream is x' = [c x, 0], mean_D(x'^2) = m, and RMSNorm_D(x')_old =
    c x / sqrt(m + eps) * sqrt(d/D) mu = mu x / sqrt(m + eps): exact for any equal eps, and the per-dim RMS of the
    grown stream equals the source's.
    """
    units = _fresh_units(src, tgt)
    alpha = math.sqrt(src.n_embd / tgt.n_embd)
    return _grow(src, state, tgt, units, generator, mode="zero", norm_scale=alpha,
                 stream_scale=1.0 / alpha if exact_eps else 1.0, init=init)


def random_width(src: Config, state: State, tgt: Config, generator: torch.Generator, *, exact_eps: bool = True,
                 init: str = "upstream") -> State:
    """G→random, paper App. A.1.4 and A.5 Eqs. 20-36 (reference §3.5): old weights in place, everything new random.

    E' = [E, E_rand], W' = [[W, A], [B, C]] with A, B, C drawn under the init scheme `init` (module docstring),
    RMSNorm mu' = [sqrt(d/D) mu, 1], new biases 0. The result is function preserving only with the output masks of
    `random_width_masks` applied and at 0: then new hidden dims, new heads and new FFN units are 0 as in
    `zero_width`, and every norm sees a stream that is 0 on the new dims. The norms themselves are not masked
    (`GPT.set_width_masks` hooks module outputs only; MSG's norm correction is not used), so the eps argument of
    `zero_width` applies unchanged: exact_eps=False (the paper's form) is off by the eps unless the target's
    norm_eps is d/D times the source's (max logit error 1.1e-3 to 3.3e-3 at equal eps on the toy models of the
    tests); exact_eps=True (default) also multiplies the old entries of what writes the residual stream (embedding
    columns, attn.proj and swiglu.w3 rows and biases) by sqrt(D/d), so the stream is [sqrt(D/d) x, 0] and the
    grown model is exact for equal eps. The masks are ramped 0 -> 1 by the training loop.
    """
    units = _fresh_units(src, tgt)
    alpha = math.sqrt(src.n_embd / tgt.n_embd)
    return _grow(src, state, tgt, units, generator, mode="random", norm_scale=alpha,
                 stream_scale=1.0 / alpha if exact_eps else 1.0, init=init)


def random_width_masks(src: Config, tgt: Config) -> State:
    """The 0/1 output masks c of G→random (paper Eqs. 20-31): 1 for old output units, 0 for new ones.

    Keys are the weights of the embedding and of every Linear but lm_head; each value is a 1-D float tensor over
    the module's outputs (embedding dims for `wte`, fused q/k/v rows for `attn.attn`, hidden dims for `attn.proj`
    and `swiglu.w3`, FFN units for `w1`/`w2`). The training loop multiplies each module's output by
    mask + (1 - mask) * ramp, with ramp going 0 -> 1 (MSG's schedule, reference §3.5: FFN units first, then hidden
    dims, then heads).
    """
    pos = {a: _positions(*u) >= 0 for a, u in _fresh_units(src, tgt).items()}
    masks = {"transformer.wte.weight": pos["hidden"].float()}
    for i in range(tgt.n_layer):
        for name, (axes, fan_out) in _TENSORS.items():
            if name.endswith(".weight") and name.startswith(("attn.", "mlp.")):
                masks[f"transformer.h.{i}.{name}"] = pos[axes[fan_out]].float()
    return masks


def direct_width(src: Config, state: State, tgt: Config, generator: torch.Generator, *, split: str = "lemon") -> State:
    """G→direct, paper App. A.1.1 and A.3 Eqs. 4-11 (reference §3.2): bert2BERT/LEMON neuron splitting by heads.

    Each new hidden dim, key/value group (its q_per_kv query heads, k and v head, as whole heads: under GQA/MQA a
    query head cannot be copied without the k/v it shares) and FFN unit copies a source unit drawn uniformly (with
    replacement) by `generator`. Fan-out rows are copied (embedding columns too: the stream becomes x' = [x, x_sel]);
    fan-in columns of a source unit s that appears c_s + 1 times are W[:, s] * a, with LEMON's uneven
    a = 1 / (c_s + 1) + eps for each copy, eps ~ N(0, (1 / (sqrt(D) L))^2), and 1 - (sum of the copies' a) for the
    original (split="lemon", default: the paper's "uneven splitting ... to address symmetry issues", Eqs. 7-9), or
    a = 1 / (c_s + 1) for every occurrence (split="even", the released code). Under "even" a copy and its original
    have equal fan-in and fan-out weights, so they get equal gradients at every step and stay equal forever (the
    wide model trains as the narrow one; tests/test_growth_symmetry.py); "lemon" makes their gradients differ.
    A head's proj columns share one coefficient. The coefficients of each unit sum to 1, so every linear map is
    preserved; RMSNorm weights are mu' = sqrt(d/D) [mu, mu_sel] (Eqs. 10-11) and the norms make the grown model not
    function preserving, as the paper says (were the norms identities, it would be). Since x_sel is a random sample
    of x's dims, RMS([x, x_sel]) ~ RMS(x), so this factor shrinks every norm output by about sqrt(d/D).
    New FFN units copy any source unit (the released code copies only the first d).
    """
    if split not in ("even", "lemon"):
        raise ValueError(f"split must be 'even' or 'lemon', got {split!r}")
    check_width_growth(src, tgt)

    def pick(n_old: int, n_tgt: int) -> torch.Tensor:
        return torch.randint(0, n_old, (n_tgt - n_old,), generator=generator)

    units = _units(src, tgt, pick(src.n_embd, tgt.n_embd), pick(src.n_query_groups, tgt.n_query_groups),
                   pick(src.intermediate_size, tgt.intermediate_size))
    return _grow(src, state, tgt, units, generator, mode="copy", split=split,
                 norm_scale=math.sqrt(src.n_embd / tgt.n_embd))


def hyperclone(src: Config, state: State, tgt: Config, generator: Optional[torch.Generator] = None, *,
               clone_noise: float = 0.0) -> State:
    """HyperCloning (Samragh et al. 2024, reference §10): exact, function-preserving width growth by an integer k.

    The target multiplies n_embd, n_head, n_query_groups and intermediate_size by the same k. Hidden dims, groups
    (with their query heads, whole) and FFN units are tiled k times, so the stream is x' = [x, x, ..., x] and head
    h + m n_head is a copy of head h (in group g + m G, a copy of group g: GQA-consistent). Then every Linear is
    W' = W.repeat(k, k) / k (the fused QKV too, because groups are contiguous row blocks; lm_head W.repeat(1, k) / k),
    the embedding E' = E.repeat(1, k), and RMSNorm weights mu.repeat(k) unscaled: the mean of squares of a tiled
    vector is the source's, so the norm (eps included) is unchanged.

    clone_noise=0 (default) is HyperCloning's symmetric variant: every copy of a unit has the same weights as its
    original, so it gets the same gradient and they never diverge (reference families-and-schedules.md §5).
    clone_noise > 0 is the noisy function-preserving variant: block (i, j) of every Linear whose input is tiled
    (output copy i, input copy j; all of them, lm_head with one output copy) becomes W/k + N_ij with
    sum_j N_ij = 0 for each i, so every output copy still computes sum_j (W/k + N_ij) x = W x and the function is
    unchanged (to float rounding), while copies get different gradients. N_ij is drawn by `generator` (a
    default-seeded one when None) with std clone_noise x the std of W/k (a fraction of each cloned weight's own
    scale), made zero-sum by subtracting the mean over j (for k = 2: N and -N) and rescaled by sqrt(k / (k - 1)) to
    keep that std. k = 1 leaves nothing to split.

    Raises:
        ValueError: a target that is not an integer multiple on every grown field, or a negative clone_noise.
    """
    if not clone_noise >= 0.0:
        raise ValueError(f"the clone noise must be >= 0 (a fraction of each weight's std), got {clone_noise}")
    check_width_growth(src, tgt)
    k = tgt.n_embd // src.n_embd
    if any(getattr(tgt, f) != k * getattr(src, f) for f in _GROWN):
        raise ValueError("hyperclone multiplies n_embd, n_head, n_query_groups and intermediate_size by the same "
                         "integer factor, but the target has " + ", ".join(f"{f} {getattr(src, f)} -> "
                                                                          f"{getattr(tgt, f)}" for f in _GROWN))

    def tile(n_old: int) -> torch.Tensor:
        return torch.arange(n_old).repeat(k - 1)

    units = _units(src, tgt, tile(src.n_embd), tile(src.n_query_groups), tile(src.intermediate_size))
    out = _grow(src, state, tgt, units, torch.Generator(), mode="copy", split="even")
    if clone_noise == 0.0 or k == 1:
        return out
    generator = torch.Generator() if generator is None else generator
    for key, tensor in out.items():
        _, axes, fan_out = tensor_spec(key)
        # the Linears: their fan-in (dim 1) is k blocks [copy 0 | ... | k - 1]; a tied head is the embedding
        if len(axes) == 2 and fan_out == 0 and not (key == "lm_head.weight" and tgt.tie_embeddings):
            w = tensor.float()
            rows, cols = w.shape
            n = torch.randn((rows, k, cols // k), generator=generator).to(w.device)
            n = (n - n.mean(1, keepdim=True)) * (math.sqrt(k / (k - 1)) * clone_noise * w.std())
            out[key] = (w + n.reshape(rows, cols)).to(tensor.dtype)
    return out


WIDTH_OPERATORS = {"zero-width": zero_width, "direct-width": direct_width, "random-width": random_width,
                   "hyperclone": hyperclone}
