"""Token cross-entropy: a fused CUDA kernel when installed, else the chunked pure-PyTorch version."""

import torch
from torch import nn

from lit_gpt import kernels
from lit_gpt.utils import chunked_cross_entropy


class FusedCrossEntropyLoss(nn.Module):
    """Mean cross-entropy of logits (..., V) against targets (...), ignoring `ignore_index`."""

    def __init__(self, ignore_index: int = -1) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        fused = kernels.cross_entropy_kernel(logits)
        if fused is None:
            return chunked_cross_entropy(logits, targets, ignore_index=self.ignore_index)
        return fused(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), self.ignore_index)
