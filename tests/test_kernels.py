"""Every fallback against a direct formula; every fused path against its fallback where a GPU is."""

import pytest
import torch
import torch.nn.functional as F
from conftest import small_config

from lit_gpt import GPT, FusedCrossEntropyLoss, kernels
from lit_gpt.fused_rotary_embedding import apply_rope, apply_rotary_emb_func, build_rope_cache
from lit_gpt.rmsnorm import FusedRMSNorm, RMSNorm
from lit_gpt.utils import chunked_cross_entropy


@pytest.mark.parametrize("chunk_rows", [1, 7, 4096])
def test_chunked_cross_entropy_matches_torch(chunk_rows):
    torch.manual_seed(0)
    logits = torch.randn(3, 11, 50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 11))
    targets[0, :4] = -1
    ours = chunked_cross_entropy(logits, targets, ignore_index=-1, chunk_rows=chunk_rows)
    ref = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1), ignore_index=-1)
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours * 3, logits)
    (g_ref,) = torch.autograd.grad(ref * 3, logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_chunked_cross_entropy_gradcheck():
    logits = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 2, -1, 4, 8, 0])
    assert torch.autograd.gradcheck(lambda x: chunked_cross_entropy(x, targets, chunk_rows=4), (logits,))


def test_chunked_cross_entropy_saves_logits_once():
    logits = torch.randn(64, 1000, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        chunked_cross_entropy(logits, torch.randint(0, 1000, (64,)), chunk_rows=8)
    big = [t for t in saved if t.numel() >= logits.numel()]
    assert len(big) == 1 and big[0].data_ptr() == logits.data_ptr()


def test_rope_rotates_pairs_half_apart():
    cos, sin = build_rope_cache(5, 8)
    x = torch.randn(1, 5, 2, 8)
    y = apply_rope(x, cos, sin)
    x1, x2 = x[..., :4], x[..., 4:]
    torch.testing.assert_close(y[..., :4], x1 * cos[None, :, None] - x2 * sin[None, :, None])
    torch.testing.assert_close(y[..., 4:], x2 * cos[None, :, None] + x1 * sin[None, :, None])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # a rotation


def test_partial_rope_leaves_tail():
    cos, sin = build_rope_cache(5, 4)
    x = torch.randn(1, 5, 2, 8)
    assert torch.equal(apply_rope(x, cos, sin)[..., 4:], x[..., 4:])


def test_condense_ratio_divides_positions():
    cos4, _ = build_rope_cache(8, 16, condense_ratio=4)
    cos1, _ = build_rope_cache(2, 16)
    torch.testing.assert_close(cos4[::4], cos1)


def test_rmsnorm_formula():
    x = torch.randn(3, 7, 16)
    norm = RMSNorm(16, eps=1e-5)
    norm.weight.data.uniform_()
    ref = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), ref)
    fused = FusedRMSNorm(16, eps=1e-5)
    fused.load_state_dict(norm.state_dict())
    torch.testing.assert_close(fused(x), ref)


def test_cpu_uses_fallbacks():
    assert kernels.describe(torch.device("cpu"), torch.bfloat16) == {
        "attention": "sdpa", "rotary": "eager", "rmsnorm": "eager", "swiglu": "eager", "cross_entropy": "chunked"}


def test_bf16_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    model = GPT(small_config()).to(torch.bfloat16)
    idx = torch.randint(0, 96, (2, 16))
    loss = FusedCrossEntropyLoss()(model(idx), idx)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.isfinite()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


# ---- fused paths: equal to the fallback in bf16; run where a GPU and the optional packages are ----
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="fused kernels need a CUDA GPU")
BF16_TOL = dict(atol=2e-2, rtol=2e-2)  # one bf16 ulp near 1 is 7.8e-3; kernels round in a different order


def _require(kernel_getter, x):
    k = kernel_getter(x)
    if k is None:
        pytest.skip(f"{kernel_getter.__name__}: optional package not installed")
    return k


@cuda
def test_fused_rmsnorm_equals_fallback():
    x = torch.randn(4, 128, 256, device="cuda", dtype=torch.bfloat16)
    _require(kernels.rms_norm_kernel, x)
    norm = FusedRMSNorm(256).cuda().to(torch.bfloat16)
    torch.testing.assert_close(norm(x), RMSNorm.forward(norm, x), **BF16_TOL)


@cuda
def test_fused_rotary_equals_fallback():
    x = torch.randn(2, 128, 8, 64, device="cuda", dtype=torch.bfloat16)
    _require(kernels.rotary_kernel, x)
    cos, sin = build_rope_cache(128, 64, device="cuda")
    torch.testing.assert_close(apply_rotary_emb_func(x, cos, sin), apply_rope(x, cos, sin), **BF16_TOL)


@cuda
def test_fused_cross_entropy_equals_chunked():
    logits = torch.randn(512, 32000, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 32000, (512,), device="cuda")
    _require(kernels.cross_entropy_kernel, logits)
    fused = FusedCrossEntropyLoss()(logits, targets)
    (g_fused,) = torch.autograd.grad(fused, logits)
    ref = chunked_cross_entropy(logits, targets)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(fused.float(), ref.float(), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(g_fused, g_ref, **BF16_TOL)


@cuda
@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa"])
def test_fused_model_equals_fallback(kind, monkeypatch):
    """Flash attention, rotary, RMSNorm and SwiGLU together against the all-eager model, bf16."""
    torch.manual_seed(0)
    model = GPT(small_config(kind, n_embd=256, n_head=4 if kind != "gqa" else 8,
                             n_query_groups={"mha": 4, "gqa": 2, "mqa": 1}[kind], block_size=128))
    model = model.cuda().to(torch.bfloat16)
    idx = torch.randint(0, 96, (2, 128), device="cuda")
    fused = model(idx).float()
    monkeypatch.setenv("LIT_GPT_KERNELS", "off")
    eager = model(idx).float()
    torch.testing.assert_close(fused, eager, atol=5e-2, rtol=5e-2)
