"""Rotary position embedding (rotate-half / GPT-NeoX style, as HF Llama), fused on CUDA when possible."""

import math
from typing import Optional, Tuple

import torch

from lit_gpt import kernels


def build_rope_cache(seq_len: int, n_elem: int, base: float = 10000, condense_ratio: float = 1,
                     device=None, llama3: Optional[Tuple[float, float, int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (seq_len, n_elem // 2), fp32, for positions divided by `condense_ratio` (linear
    scaling; any positive float), or with `llama3` = (low_freq_factor, high_freq_factor, original_max_seq_len)
    Llama 3's scaling by the factor `condense_ratio` (`llama3_inv_freq`).

    The ratio divides the frequencies, not the positions, in the order transformers' linear RoPE computes them,
    so a converted model's cache equals transformers' to the bit; for the power-of-two ratios upstream used
    (code_tiny_LLaMA_1b's 4) both orders give the same floats.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, n_elem, 2, device=device, dtype=torch.int64).float() / n_elem))
    if llama3 is None:
        inv_freq = inv_freq / condense_ratio
    else:
        inv_freq = llama3_inv_freq(inv_freq, condense_ratio, *llama3)
    positions = torch.arange(seq_len, device=device, dtype=torch.int64).float()
    angles = torch.outer(positions, inv_freq)
    return torch.cos(angles), torch.sin(angles)


def llama3_inv_freq(inv_freq: torch.Tensor, factor: float, low_freq_factor: float, high_freq_factor: float,
                    original_max_seq_len: int) -> torch.Tensor:
    """Llama 3 RoPE scaling of the frequencies `inv_freq` (fp32, any shape), op for op as transformers'
    `modeling_rope_utils._compute_llama3_parameters` (so the cache equals transformers' to the bit; reference
    families-and-schedules.md §2): with wavelen = 2 pi / inv_freq, wavelengths above original / low_freq_factor
    are divided by `factor`, those below original / high_freq_factor kept, and in between
    s = (original / wavelen - low) / (high - low) blends them: (1 - s) inv_freq / factor + s inv_freq."""
    low_freq_wavelen = original_max_seq_len / low_freq_factor
    high_freq_wavelen = original_max_seq_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_seq_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, heads, hs); rotates the first 2 * cos.shape[-1] features of each head."""
    n_elem = 2 * cos.shape[-1]
    rot, rest = x[..., :n_elem], x[..., n_elem:]
    x1, x2 = rot.chunk(2, dim=-1)
    cos = cos[None, :, None, :].to(x.dtype)
    sin = sin[None, :, None, :].to(x.dtype)
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


def apply_rotary_emb_func(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    fused = kernels.rotary_kernel(x)
    if fused is None:
        return apply_rope(x, cos, sin)
    return fused(x, cos.to(x.dtype), sin.to(x.dtype), False)
