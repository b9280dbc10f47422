"""Run-time choice between optional fused CUDA kernels and their pure-PyTorch fallbacks.

Each `*_kernel()` returns the fused callable or None. A fused kernel is used only for CUDA tensors;
`LIT_GPT_KERNELS=off` (or `=eager`) forces every fallback, which is how the fused paths are
compared against the plain ones. Imports are lazy and failures are silent by design: a missing or
broken optional package must never stop `import lit_gpt` or a CPU run.
"""

import functools
import importlib
import os
from typing import Callable, Optional

import torch


def kernels_enabled() -> bool:
    return os.environ.get("LIT_GPT_KERNELS", "on").lower() not in ("off", "eager", "0", "false")


def _import(module: str, attr: str) -> Optional[Callable]:
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception:  # noqa: BLE001 - ImportError, or a CUDA extension that fails to load
        return None


@functools.lru_cache(maxsize=None)
def _flash_attn() -> Optional[Callable]:
    return _import("flash_attn", "flash_attn_func")


@functools.lru_cache(maxsize=None)
def _flash_rotary() -> Optional[Callable]:
    return _import("flash_attn.layers.rotary", "apply_rotary_emb_func")


@functools.lru_cache(maxsize=None)
def _rms_norm() -> Optional[Callable]:
    liger = _import("liger_kernel.transformers.functional", "liger_rms_norm")
    if liger is not None:
        return lambda x, w, eps: liger(x, w, eps, 0.0, "llama", False)
    flash = _import("flash_attn.ops.triton.layer_norm", "rms_norm_fn")
    if flash is not None:
        return lambda x, w, eps: flash(x, w, None, eps=eps)
    return None


@functools.lru_cache(maxsize=None)
def _silu_mul() -> Optional[Callable]:
    return _import("liger_kernel.transformers.functional", "liger_swiglu")


@functools.lru_cache(maxsize=None)
def _cross_entropy() -> Optional[Callable]:
    liger = _import("liger_kernel.transformers.functional", "liger_cross_entropy")
    if liger is not None:
        return lambda logits, targets, ignore_index: liger(logits, targets, ignore_index=ignore_index)
    flash_cls = _import("flash_attn.losses.cross_entropy", "CrossEntropyLoss")
    if flash_cls is not None:
        return lambda logits, targets, ignore_index: flash_cls(ignore_index=ignore_index)(logits, targets)
    return None


def _usable(t: torch.Tensor, half_only: bool = False) -> bool:
    if not (t.is_cuda and kernels_enabled()):
        return False
    return not half_only or t.dtype in (torch.float16, torch.bfloat16)


def attention_kernel(q: torch.Tensor) -> Optional[Callable]:
    """flash-attn 2 `flash_attn_func(q, k, v, causal=True)` on (B, T, heads, hs); GQA without K/V copies."""
    return _flash_attn() if _usable(q, half_only=True) else None


def rotary_kernel(x: torch.Tensor) -> Optional[Callable]:
    """flash-attn's `apply_rotary_emb_func(x, cos, sin)`: x (B, T, heads, hs), cos/sin (T, n_elem/2)."""
    return _flash_rotary() if _usable(x) else None


def rms_norm_kernel(x: torch.Tensor) -> Optional[Callable]:
    """`f(x, weight, eps)`: liger-kernel's or flash-attn's Triton RMSNorm."""
    return _rms_norm() if _usable(x) else None


def silu_mul_kernel(x: torch.Tensor) -> Optional[Callable]:
    """`f(a, b) = silu(a) * b` in one kernel (liger-kernel)."""
    return _silu_mul() if _usable(x) else None


def cross_entropy_kernel(logits: torch.Tensor) -> Optional[Callable]:
    """`f(logits (N, V), targets (N,), ignore_index)`, mean over non-ignored rows: liger or flash-attn."""
    return _cross_entropy() if _usable(logits) else None


def describe(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Which implementation each op uses for tensors on `device` of `dtype`; printed by the training log."""
    on_cuda = torch.device(device).type == "cuda" and kernels_enabled()
    half = dtype in (torch.float16, torch.bfloat16)
    return {
        "attention": "flash-attn" if on_cuda and half and _flash_attn() else "sdpa",
        "rotary": "flash-attn" if on_cuda and _flash_rotary() else "eager",
        "rmsnorm": "fused" if on_cuda and _rms_norm() else "eager",
        "swiglu": "liger" if on_cuda and _silu_mul() else "eager",
        "cross_entropy": "fused" if on_cuda and _cross_entropy() else "chunked",
    }
