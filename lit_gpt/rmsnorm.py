"""RMSNorm: `FusedRMSNorm` takes a fused Triton kernel on CUDA when one is installed, else the same math."""

import torch
from torch import nn

from lit_gpt import kernels


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, reduced in fp32 and cast back to the input dtype."""

    def __init__(self, size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class FusedRMSNorm(RMSNorm):
    """Upstream's name for the fused variant; same parameter (`weight`), same checkpoint keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = kernels.rms_norm_kernel(x)
        if fused is None:
            return super().forward(x)
        return fused(x, self.weight, self.eps)
