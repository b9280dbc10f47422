"""Small helpers shared by the model, the scripts and the tests."""

import ctypes
import ctypes.util
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from lit_gpt.files import missing


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def num_parameters(module: nn.Module, requires_grad: Optional[bool] = None) -> int:
    return sum(p.numel() for p in module.parameters() if requires_grad is None or p.requires_grad == requires_grad)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean token cross-entropy that keeps only the logits and one log-sum-exp per row for backward.

    `F.cross_entropy` saves a full-vocab log-softmax beside the logits, i.e. the logits twice. Here
    each chunk of rows is reduced to its log-sum-exp in fp32; backward rebuilds softmax - one_hot one
    chunk at a time, so the extra memory is one chunk, not a second (B*T, V) tensor.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, chunk_rows: int):
        acc = torch.promote_types(logits.dtype, torch.float32)
        lse = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
        picked = torch.empty_like(lse)
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0)
        for start in range(0, logits.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            chunk = logits[rows].to(acc)
            lse[rows] = torch.logsumexp(chunk, dim=-1)
            picked[rows] = chunk.gather(1, safe_targets[rows, None]).squeeze(1)
        n_valid = valid.sum()
        loss = ((lse - picked) * valid).sum() / n_valid.clamp(min=1)
        ctx.save_for_backward(logits, safe_targets, valid, lse, n_valid)
        ctx.chunk_rows = chunk_rows
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, targets, valid, lse, n_valid = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = grad_loss / n_valid.clamp(min=1)
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            # softmax - one_hot, written straight into `grad` when no dtype cast is needed (fp32 and up)
            out = grad[rows] if grad.dtype == lse.dtype else None
            g = torch.sub(logits[rows], lse[rows, None], out=out).exp_()
            g.scatter_add_(1, targets[rows, None], torch.full_like(lse[rows, None], -1.0))
            g.mul_(valid[rows, None] * scale)
            if out is None:
                grad[rows] = g
        return grad, None, None, None


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1,
                          chunk_rows: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of `logits` (..., V) against `targets` (...), skipping `ignore_index`."""
    logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    return _ChunkedCrossEntropy.apply(logits, targets, ignore_index, chunk_rows)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not match what it should hold."""


def load_torch_file(path: Union[str, Path]) -> Any:
    """`torch.load(weights_only=True)` onto the CPU: memory-mapped for the zip archive torch.save writes (only the
    pages used are read), read whole for the legacy pickle format, which cannot be mapped.

    Raises:
        CheckpointError: the file is empty (a write cut short) or neither format, in words instead of torch's
            advice to re-save it with `_use_new_zipfile_serialization`.
        pickle.UnpicklingError: it holds objects other than tensors (weights_only refuses to unpickle them).
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint; was its writing cut short?")
    if head == b"PK\x03\x04":
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if head[:1] == b"\x80":
        return torch.load(path, map_location="cpu", weights_only=True)
    raise CheckpointError(f"{path} is not a torch checkpoint: neither the zip archive torch.save writes nor a pickle")


def load_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Loads weights without running pickled code: safetensors, or `torch.load(weights_only=True)`.

    Accepts a bare state dict or a training checkpoint with the weights under `model` (upstream's
    `iter-NNNNNN-ckpt.pth`).
    """
    path = Path(path)
    if why := missing(path):
        raise CheckpointError(f"checkpoint file {path}: {why}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_torch_file(path)
    except CheckpointError:
        raise
    except pickle.UnpicklingError:
        raise CheckpointError(f"cannot read {path}: it holds pickled objects other than tensors, which are "
                              "never unpickled (weights_only=True); re-save its state dict") from None
    except Exception as e:  # noqa: BLE001 - turned into one line for the user
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def check_state_dict(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Size], what: str) -> None:
    """Raises a one-line CheckpointError naming the first missing, unexpected or mis-shaped tensor."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise CheckpointError(f"{what}: keys do not match the config: " + ", ".join(parts))
    for k, shape in expected.items():
        if state[k].shape != shape:
            hint = " (vocab mismatch)" if k in ("transformer.wte.weight", "lm_head.weight") else ""
            raise CheckpointError(f"{what}: {k} has shape {tuple(state[k].shape)}, "
                                  f"the config needs {tuple(shape)}{hint}")


def return_freed_memory(threshold: int = 4 << 20) -> bool:
    """Makes glibc serve allocations of `threshold` bytes and more (4 MiB) by mmap, so that freeing them returns the
    memory to the OS at once. By default glibc raises this threshold (up to 32 MiB) after the first large free and
    serves later large blocks from the heap, where transient buffers (FSDP2's all-gathered parameters, gradients
    before their reduce-scatter) fragment it and keep the process's RSS high: 2.19 GiB against 1.87 GiB per rank
    for one step of a 271M model on 4 CPU processes (scripts/bench/fsdp_memory.py); no change in tokens/s of the
    demo model, whose tensors are smaller. Returns False (and does nothing) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
