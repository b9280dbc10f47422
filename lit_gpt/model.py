"""The TinyLlama GPT: pre-norm LLaMA blocks with fused, group-interleaved QKV, RoPE and SwiGLU.

Parameter names and layouts are upstream's, so upstream checkpoints load unchanged. Fused CUDA
kernels are picked per call (see `lit_gpt.kernels`); every op has a pure-PyTorch path.
"""

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lit_gpt import kernels, rmsnorm
from lit_gpt.config import Config
from lit_gpt.fused_rotary_embedding import apply_rotary_emb_func, build_rope_cache


class GPT(nn.Module):
    """With `config.tie_embeddings` the LM head is the embedding matrix: `lm_head.weight is transformer.wte.weight`
    (one parameter: one gradient summing both uses, one optimizer state), kept so through `to()`, `to_empty()`
    and every other `_apply`; the state dict holds both keys, sharing that tensor."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=norm_class(config)(config.n_embd, eps=config.norm_eps),
        ))
        self.tie_weights()
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.reset_parameters()

    def tie_weights(self) -> None:
        """Makes `lm_head.weight` the embedding's parameter when the config ties them (else does nothing)."""
        if self.config.tie_embeddings and isinstance(self.lm_head, nn.Linear):
            self.lm_head.weight = self.transformer.wte.weight

    def _apply(self, fn, recurse: bool = True):
        # `to_empty()` (meta -> device) and conversions that cannot reuse a parameter's storage give each module a
        # new Parameter, which would leave the LM head a copy of the embedding, no longer tied
        module = super()._apply(fn, recurse)
        self.tie_weights()
        return module

    def reset_parameters(self) -> None:
        """Upstream's initialisation (reference tinyllama-upstream.md §2.5) and a fresh RoPE cache.

        Every Linear and the embedding draw from N(0, 2 / (5 n_embd)) (GPT-NeoX "small init"); the
        residual-branch outputs (attention `proj`, SwiGLU `w3`) from N(0, (1 / (sqrt(n_embd) n_layer))^2).
        Called by `__init__`, so a from-scratch model is never left at PyTorch's default init, and again
        after `to_empty()` when the model was built on the meta device.
        """
        self.apply(lambda m: self._init_weights(m, self.config.n_layer))
        self.reset_rope_cache()

    def reset_rope_cache(self) -> None:
        """Recomputes the RoPE cos/sin buffers on the device of the weights (after `to_empty()`, they hold garbage)."""
        self.rope_cos, self.rope_sin = rope_cache(self.config, device=self.transformer.wte.weight.device)

    def _init_weights(self, module: nn.Module, n_layer: int) -> None:
        init_weights(module, self.config.n_embd, n_layer)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, padded_vocab_size)."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size={self.config.block_size}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.transformer.wte(idx)
        for block in self.transformer.h:
            x = block(x, cos, sin)
        return self.lm_head(self.transformer.ln_f(x))

    @classmethod
    def from_name(cls, name: str, **overrides) -> "GPT":
        return cls(Config.from_name(name, **overrides))

    def set_growth_mask(self, layers, value: float) -> None:
        """Scales the residual branches of `layers` by `value` (G_random's mask c, paper App. A.5): a
        non-persistent buffer, so checkpoints keep upstream's keys; the training loop ramps it 0 -> 1."""
        for i in layers:
            block = self.transformer.h[i]
            if getattr(block, "growth_mask", None) is None:
                block.register_buffer("growth_mask", torch.tensor(float(value), device=block.norm_1.weight.device),
                                      persistent=False)
            else:
                block.growth_mask.fill_(value)

    def set_width_masks(self, keep: Dict[str, torch.Tensor]) -> None:
        """G→random's output masks (paper App. A.5 Eqs. 20-31): each named module's output is multiplied by
        keep + (1 - keep) * ramp, keep being 1 on the source's units and 0 on new ones (`growth.width.
        random_width_masks`, keyed by weight name). `ramp` starts at 0 and is set per phase by
        `set_width_ramps`. Non-persistent buffers and a forward hook: checkpoints keep upstream's keys."""
        for key, mask in keep.items():
            module = self.get_submodule(key.removesuffix(".weight"))
            device = module.weight.device
            module.register_buffer("growth_keep", mask.to(device=device, dtype=torch.float32), persistent=False)
            module.register_buffer("growth_ramp", torch.zeros((), device=device), persistent=False)
            module.growth_phase = width_phase(key)
            module.register_forward_hook(_width_mask_hook)


def rope_cache(config: Config, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (block_size, rope_n_elem // 2), fp32, for every RoPE setting of `config` (base, linear or Llama 3
    scaling): what `GPT` computes with, for code that builds the cache apart from a model."""
    return build_rope_cache(config.block_size, config.rope_n_elem, config.rope_base, config.condense_ratio,
                            device=device, llama3=config.rope_llama3)


def _plain_name(name: str) -> str:
    """A module name as the state dict spells it, without compile and activation-checkpoint wrappers."""
    return ".".join(part for part in name.split(".") if part not in ("_orig_mod", "_checkpoint_wrapped_module"))


def growth_mask_factors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """State-dict key -> the factor that bakes the current random-* growth masks into that tensor, so saved
    weights compute what the masked model computes: a masked layer's branch outputs (`proj`, `w3`) scale by its
    mask; a width-masked module's output rows (embedding columns) by keep + (1 - keep) ramp. With tied embeddings
    the head reads the scaled embedding as well, so the final norm's weight is divided by the same factor (dims at
    factor 0 are 0 in the stream and keep their weight)."""
    factors: Dict[str, torch.Tensor] = {}

    def scale(key: str, factor: torch.Tensor) -> None:
        factors[key] = factors[key] * factor if key in factors else factor

    for name, module in model.named_modules():
        name = _plain_name(name)
        mask = getattr(module, "growth_mask", None)
        if mask is not None:
            for sub in (module.attn.proj, module.mlp.swiglu.w3):
                sub_name = "attn.proj" if sub is module.attn.proj else "mlp.swiglu.w3"
                for param in ("weight", "bias"):
                    if getattr(sub, param, None) is not None:
                        scale(f"{name}.{sub_name}.{param}", mask.detach().float().cpu())
        keep = getattr(module, "growth_keep", None)
        if keep is not None:
            factor = (keep + (1 - keep) * module.growth_ramp).detach().float().cpu()
            scale(f"{name}.weight", factor[None, :] if isinstance(module, nn.Embedding) else factor[:, None])
            if getattr(module, "bias", None) is not None:
                scale(f"{name}.bias", factor)
            if isinstance(module, nn.Embedding) and any(
                    getattr(head, "weight", None) is module.weight for head_name, head in model.named_modules()
                    if _plain_name(head_name).endswith("lm_head")):
                # the tied head is the scaled embedding too; a dim still shut (factor 0) is 0 in the stream
                factors["transformer.ln_f.weight"] = torch.where(factor > 0, 1 / factor.clamp(min=1e-30), 1.0)
    return factors


# MSG's three-phase schedule (reference stacking-paper.md §3.5): new FFN units open first, then new hidden
# dims, then new heads, each phase ramping over its own span of steps
WIDTH_PHASES = ("ffn", "hidden", "heads")


def width_phase(key: str) -> str:
    if key.endswith(("swiglu.w1.weight", "swiglu.w2.weight")):
        return "ffn"
    return "heads" if key.endswith("attn.attn.weight") else "hidden"


def width_ramps(step: int, span: int) -> Dict[str, float]:
    """Each phase's ramp at `step`: phase k goes linearly 0 -> 1 over steps [k span, (k + 1) span)."""
    span = max(1, span)
    return {phase: min(1.0, max(0.0, (step - k * span) / span)) for k, phase in enumerate(WIDTH_PHASES)}


def set_width_ramps(model: nn.Module, step: int, span: int) -> None:
    ramps = width_ramps(step, span)
    for module in model.modules():
        phase = getattr(module, "growth_phase", None)
        if phase is not None:
            module.growth_ramp.fill_(ramps[phase])


def _width_mask_hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    keep = module.growth_keep
    return output * (keep + (1 - keep) * module.growth_ramp).to(output.dtype)


INIT_SCHEMES = ("upstream", "official")


def init_std(name: str, fan_in: int, n_embd: int, n_layer: int, init: str = "upstream") -> float:
    """The std of the fresh N(0, std^2) init of the weight `name` (a state-dict key; only its ending matters) of
    the embedding or a Linear, whose last dim is `fan_in` (a Linear's in_features, the embedding's width).

    upstream (TinyLlama, `GPT.reset_parameters`): sqrt(2 / (5 n_embd)) for the embedding and every Linear,
    1 / (sqrt(n_embd) n_layer) for the residual-branch outputs `attn.proj` and `swiglu.w3`.
    official (the paper's released code, `GPT._init_weights`, reference stacking-paper.md §2): sqrt(2 / (5 fan_in))
    for the embedding and every Linear, `attn.proj` included; 1 / (sqrt(fan_in) n_layer) for `swiglu.w3` (fan_in =
    intermediate_size). At 24L2048H a new `attn.proj` gets 9.2e-4 (upstream) or 1.4e-2 (official).

    Raises:
        ValueError: an `init` that is not in INIT_SCHEMES.
    """
    if init == "upstream":
        residual_out = name.endswith(("attn.proj.weight", "swiglu.w3.weight"))
        return 1.0 / math.sqrt(n_embd) / n_layer if residual_out else math.sqrt(2.0 / 5 / n_embd)
    if init == "official":
        return 1.0 / math.sqrt(fan_in) / n_layer if name.endswith("swiglu.w3.weight") else math.sqrt(2.0 / 5 / fan_in)
    raise ValueError(f"init must be one of {', '.join(INIT_SCHEMES)}, got {init!r}")


def init_weights(module: nn.Module, n_embd: int, n_layer: int, init: str = "upstream") -> None:
    """The init of one module under the scheme `init` (`init_std`): `GPT.reset_parameters` uses upstream's,
    growth operators the scheme of their --init for new parameters. Zeros for biases, RMSNorm's own reset for
    norms."""
    if isinstance(module, (nn.Embedding, nn.Linear)):
        nn.init.normal_(module.weight, mean=0.0, std=init_std("weight", module.weight.shape[-1], n_embd, n_layer, init))
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, rmsnorm.RMSNorm):
        module.reset_parameters()
    if isinstance(module, (CausalSelfAttention, SwiGLU)):  # `apply` visits children first: this redraws the output
        name, out = ("attn.proj.weight", module.proj) if isinstance(module, CausalSelfAttention) \
            else ("swiglu.w3.weight", module.w3)
        nn.init.normal_(out.weight, mean=0.0, std=init_std(name, out.weight.shape[-1], n_embd, n_layer, init))


def norm_class(config: Config) -> type:
    return getattr(rmsnorm, config._norm_class)


class Block(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.norm_1 = norm_class(config)(config.n_embd, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        if not config.shared_attention_norm:
            self.norm_2 = norm_class(config)(config.n_embd, eps=config.norm_eps)
        self.mlp = LLaMAMLP(config)
        self.config = config

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        mask = getattr(self, "growth_mask", None)  # only on layers added by masked growth (GPT.set_growth_mask)
        n_1 = self.norm_1(x)
        h = self.attn(n_1, cos, sin)
        if mask is not None:
            h = h * mask
        if self.config.parallel_residual:
            n_2 = n_1 if self.config.shared_attention_norm else self.norm_2(x)
            m = self.mlp(n_2)
            return x + h + (m * mask if mask is not None else m)
        x = x + h
        m = self.mlp(self.norm_2(x))
        return x + (m * mask if mask is not None else m)


class CausalSelfAttention(nn.Module):
    """Multi-head, grouped-query or multi-query causal attention.

    `attn.weight` rows (and `attn.bias` entries, with `bias` or `qkv_bias`) are grouped per key/value head: for
    each of the n_query_groups groups, [its q_per_kv query heads | its key head | its value head], each head_size
    rows. `proj` maps the n_head * head_size concatenated head outputs to n_embd (HF's o_proj).
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        shape = (config.n_head + 2 * config.n_query_groups) * config.head_size
        self.attn = nn.Linear(config.n_embd, shape, bias=config.bias or config.qkv_bias)
        self.proj = nn.Linear(config.n_head * config.head_size, config.n_embd, bias=config.bias or config.proj_bias)
        self.config = config

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        cfg = self.config
        qkv = self.attn(x).view(B, T, cfg.n_query_groups, cfg.q_per_kv + 2, cfg.head_size)
        q, k, v = qkv.split((cfg.q_per_kv, 1, 1), dim=3)
        q = q.reshape(B, T, cfg.n_head, cfg.head_size)
        k = k.reshape(B, T, cfg.n_query_groups, cfg.head_size)
        v = v.reshape(B, T, cfg.n_query_groups, cfg.head_size)
        q = apply_rotary_emb_func(q, cos, sin)
        k = apply_rotary_emb_func(k, cos, sin)
        y = self.scaled_dot_product_attention(q, k, v)
        return self.proj(y.reshape(B, T, cfg.n_head * cfg.head_size))

    def scaled_dot_product_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, T, heads, hs) in and out; K/V heads are shared by their query group, never copied."""
        scale = 1.0 / math.sqrt(self.config.head_size)
        flash = kernels.attention_kernel(q)
        if flash is not None:
            return flash(q, k, v, dropout_p=0.0, softmax_scale=scale, causal=True)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                           enable_gqa=self.config.n_query_groups != self.config.n_head)
        return y.transpose(1, 2)


class LLaMAMLP(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.swiglu = SwiGLU(config.n_embd, config.intermediate_size, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.swiglu(x)


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x): w1 gate, w2 up, w3 down, the parameter names of xformers' SwiGLU."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = False) -> None:
        super().__init__()
        self.w1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.w2 = nn.Linear(in_features, hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w1(x), self.w2(x)
        fused = kernels.silu_mul_kernel(x)
        hidden = fused(gate, up) if fused is not None else F.silu(gate) * up
        return self.w3(hidden)


def split_qkv(weight: torch.Tensor, config: Config) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused, group-interleaved `attn.attn` rows -> (q, k, v) rows, each in head order: the weight (rows, n_embd)
    or the bias (rows,), which is laid out like the weight's rows."""
    groups = weight.reshape(config.n_query_groups, config.q_per_kv + 2, config.head_size, *weight.shape[1:])
    q = groups[:, :config.q_per_kv].reshape(config.n_head * config.head_size, *weight.shape[1:])
    k = groups[:, config.q_per_kv].reshape(config.n_query_groups * config.head_size, *weight.shape[1:])
    v = groups[:, config.q_per_kv + 1].reshape(config.n_query_groups * config.head_size, *weight.shape[1:])
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: Config) -> torch.Tensor:
    """Inverse of `split_qkv`: q, k, v rows (weights or 1-D biases) in head order -> group-interleaved fused rows."""
    rest = q.shape[1:]
    q = q.reshape(config.n_query_groups, config.q_per_kv, config.head_size, *rest)
    k = k.reshape(config.n_query_groups, 1, config.head_size, *rest)
    v = v.reshape(config.n_query_groups, 1, config.head_size, *rest)
    return torch.cat((q, k, v), dim=1).reshape(-1, *rest)
