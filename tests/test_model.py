import math

import pytest
import torch
import torch.nn.functional as F
from conftest import small_config

from lit_gpt import GPT, Config
from lit_gpt.model import fuse_qkv, split_qkv


def reference_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Textbook LLaMA forward from the raw state dict: separate q/k/v, repeated K/V, explicit mask."""
    c, sd = model.config, model.state_dict()
    T, hs = idx.shape[1], c.head_size

    def rms(x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + c.norm_eps)

    inv = 1.0 / (c.rope_base ** (torch.arange(0, hs, 2).float() / hs))
    ang = torch.outer(torch.arange(T).float(), inv)
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)

    def rope(x):  # (B, heads, T, hs)
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat((-x2, x1), -1) * sin

    x = sd["transformer.wte.weight"][idx]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        h = rms(x, sd[p + "norm_1.weight"])
        wq, wk, wv = split_qkv(sd[p + "attn.attn.weight"], c)
        q = (h @ wq.T).view(*h.shape[:2], c.n_head, hs).transpose(1, 2)
        k = (h @ wk.T).view(*h.shape[:2], c.n_query_groups, hs).transpose(1, 2)
        v = (h @ wv.T).view(*h.shape[:2], c.n_query_groups, hs).transpose(1, 2)
        k, v = (t.repeat_interleave(c.q_per_kv, dim=1) for t in (k, v))
        att = (rope(q) @ rope(k).transpose(-1, -2)) / math.sqrt(hs) + mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(*h.shape)
        x = x + y @ sd[p + "attn.proj.weight"].T
        h = rms(x, sd[p + "norm_2.weight"])
        g = F.silu(h @ sd[p + "mlp.swiglu.w1.weight"].T) * (h @ sd[p + "mlp.swiglu.w2.weight"].T)
        x = x + g @ sd[p + "mlp.swiglu.w3.weight"].T
    return rms(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T


def test_matches_reference_forward(attention_kind):
    torch.manual_seed(0)
    model = GPT(small_config(attention_kind))
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_forward(model, idx), atol=1e-5, rtol=1e-5)


def test_state_dict_keys_are_upstreams():
    keys = set(GPT(small_config("gqa", n_layer=1)).state_dict())
    assert keys == {
        "lm_head.weight", "transformer.wte.weight", "transformer.ln_f.weight",
        "transformer.h.0.norm_1.weight", "transformer.h.0.attn.attn.weight", "transformer.h.0.attn.proj.weight",
        "transformer.h.0.norm_2.weight", "transformer.h.0.mlp.swiglu.w1.weight",
        "transformer.h.0.mlp.swiglu.w2.weight", "transformer.h.0.mlp.swiglu.w3.weight",
    }


def test_qkv_rows_interleaved_per_group():
    c = small_config("gqa")  # 4 heads, 2 groups, head size 16: per group [q q | k | v]
    q = torch.arange(4 * 16).repeat_interleave(1).float()[:, None] * 0 + torch.arange(4).repeat_interleave(16)[:, None]
    k = 10 + torch.arange(2).repeat_interleave(16)[:, None].float()
    v = 20 + torch.arange(2).repeat_interleave(16)[:, None].float()
    fused = fuse_qkv(q, k, v, c)
    heads = fused[::16, 0].tolist()
    assert heads == [0, 1, 10, 20, 2, 3, 11, 21]
    for a, b in zip(split_qkv(fused, c), (q, k, v)):
        assert torch.equal(a, b)


def test_upstream_initialisation():
    torch.manual_seed(0)
    c = Config.from_name("8L256H")
    model = GPT(c)
    small = math.sqrt(2 / 5 / c.n_embd)
    out = 1 / math.sqrt(c.n_embd) / c.n_layer
    sd = model.state_dict()
    assert sd["transformer.wte.weight"].std().item() == pytest.approx(small, rel=0.02)
    assert sd["lm_head.weight"].std().item() == pytest.approx(small, rel=0.02)
    assert sd["transformer.h.3.attn.attn.weight"].std().item() == pytest.approx(small, rel=0.02)
    assert sd["transformer.h.3.mlp.swiglu.w1.weight"].std().item() == pytest.approx(small, rel=0.02)
    assert sd["transformer.h.3.attn.proj.weight"].std().item() == pytest.approx(out, rel=0.03)
    assert sd["transformer.h.3.mlp.swiglu.w3.weight"].std().item() == pytest.approx(out, rel=0.03)
    assert torch.equal(sd["transformer.h.3.norm_1.weight"], torch.ones(c.n_embd))


def test_meta_init_then_materialise():
    c = small_config("mqa")
    with torch.device("meta"):
        model = GPT(c)
    model.to_empty(device="cpu")
    model.reset_parameters()
    assert model(torch.randint(0, 96, (1, 8))).isfinite().all()


def test_gqa_attention_does_not_copy_kv(monkeypatch):
    model = GPT(small_config("gqa"))
    for name in ("repeat_interleave", "expand", "repeat"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail(f"K/V copied with {name}"))
    monkeypatch.setattr(torch, "repeat_interleave", lambda *a, **k: pytest.fail("K/V copied"))
    model(torch.randint(0, 96, (1, 16)))


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="longer than block_size"):
        GPT(small_config())(torch.zeros(1, 33, dtype=torch.long))


def test_causal():
    torch.manual_seed(0)
    model = GPT(small_config())
    a = torch.randint(0, 96, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 96
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, :10], model(b)[:, :10])


@pytest.mark.parametrize("factor, theta", [(1, 10000), (2, 10000), (2.5, 12345.5), (3, 500000)])
def test_rope_cache_equals_transformers_linear_rope(factor, theta):
    """Linear RoPE scaling by any positive float, bit for bit as transformers computes it (frequencies divided
    by the factor); upstream divided the positions, which gives other floats unless the factor is a power of 2."""
    import transformers
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from lit_gpt.fused_rotary_embedding import build_rope_cache

    hf_config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=2048,
                                         rope_parameters={"rope_type": "linear", "factor": float(factor),
                                                          "rope_theta": float(theta)})
    cos_hf, sin_hf = LlamaRotaryEmbedding(hf_config)(torch.zeros(1, 2048, 16), torch.arange(2048)[None])
    cos, sin = build_rope_cache(2048, 16, theta, factor)
    assert torch.equal(cos, cos_hf[0, :, :8]) and torch.equal(sin, sin_hf[0, :, :8])
    assert torch.equal(cos_hf[0, :, :8], cos_hf[0, :, 8:])  # rotate-half layout: both halves share the angles
