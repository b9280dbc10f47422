"""Rotary position embedding (rotate-half / GPT-NeoX style, as HF Llama), fused on CUDA when possible."""

from typing import Tuple

import torch

from lit_gpt import kernels


def build_rope_cache(seq_len: int, n_elem: int, base: float = 10000, condense_ratio: float = 1,
                     device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (seq_len, n_elem // 2), fp32, for positions divided by `condense_ratio` (linear
    scaling; any positive float).

    The ratio divides the frequencies, not the positions, in the order transformers' linear RoPE computes them,
    so a converted model's cache equals transformers' to the bit; for the power-of-two ratios upstream used
    (code_tiny_LLaMA_1b's 4) both orders give the same floats.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, n_elem, 2, device=device, dtype=torch.int64).float() / n_elem))
    inv_freq = inv_freq / condense_ratio
    positions = torch.arange(seq_len, device=device, dtype=torch.int64).float()
    angles = torch.outer(positions, inv_freq)
    return torch.cos(angles), torch.sin(angles)


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
