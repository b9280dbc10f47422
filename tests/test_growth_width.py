"""Width operators: exact function preservation (zero, hyperclone, masked random), whole-head growth, fan-in splits."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from growth.width import direct_width, hyperclone, random_width, random_width_masks, zero_width
from lit_gpt import GPT, Config
from lit_gpt import rmsnorm
from lit_gpt.model import split_qkv

LAYER_TENSORS = ("norm_1.weight", "attn.attn.weight", "attn.proj.weight", "norm_2.weight", "mlp.swiglu.w1.weight",
                 "mlp.swiglu.w2.weight", "mlp.swiglu.w3.weight")


def config(groups, q_per_kv, head_size, ffn, bias=False, norm_eps=1e-5, **overrides):
    fields = dict(name="w", block_size=16, vocab_size=64, padding_multiple=64, n_layer=2, n_head=groups * q_per_kv,
                  n_query_groups=groups, n_embd=groups * q_per_kv * head_size, intermediate_size=ffn, bias=bias,
                  norm_eps=norm_eps)
    return Config(**{**fields, **overrides})


def source_model(cfg, seed=0):
    """A GPT at the init, with norm weights and biases moved off 1 and 0 so their growth rules are exercised."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_f" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.05)
    return model


def logits(cfg, state, idx):
    model = GPT(cfg)
    model.load_state_dict(state)
    with torch.no_grad():
        return model(idx)


@st.composite
def growth(draw, factor=False):
    """(source, target) over MHA (q_per_kv 1), MQA (1 group) and GQA, with or without biases (all or q/k/v)."""
    hs, q, g, ffn = draw(st.sampled_from([4, 8])), draw(st.sampled_from([1, 2, 4])), draw(st.integers(1, 2)), \
        draw(st.integers(4, 24))
    if factor:
        k = draw(st.integers(1, 3))
        tg, tffn = g * k, ffn * k
    else:
        tg, tffn = g + draw(st.integers(0, 3)), ffn + draw(st.integers(0, 16))
    bias = draw(st.sampled_from(["none", "all", "qkv"]))  # Qwen2's: on q/k/v only
    extra = dict(bias=bias == "all", qkv_bias=bias == "qkv")
    return config(g, q, hs, ffn, **extra), config(tg, q, hs, tffn, **extra)


def heads(w, cfg):
    """Fused attn rows -> per-head q, k, v blocks ([n_head | groups], head_size, columns)."""
    q, k, v = split_qkv(w, cfg)
    return q.view(cfg.n_head, cfg.head_size, -1), k.view(cfg.n_query_groups, cfg.head_size, -1), \
        v.view(cfg.n_query_groups, cfg.head_size, -1)


IDX = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))


# -- G→zero ---------------------------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(pair=growth(), exact_eps=st.booleans(), seed=st.integers(0, 2**16))
def test_zero_width_preserves_the_function(pair, exact_eps, seed):
    src, tgt = pair
    d, D = src.n_embd, tgt.n_embd
    if not exact_eps:  # the paper's form is exact only with the norm eps scaled by d/D (docstring of zero_width)
        tgt = config(tgt.n_query_groups, tgt.q_per_kv, tgt.head_size, tgt.intermediate_size, tgt.bias,
                     qkv_bias=tgt.qkv_bias, norm_eps=src.norm_eps * d / D)
    model = source_model(src, seed)
    state = zero_width(src, model.state_dict(), tgt, torch.Generator().manual_seed(seed), exact_eps=exact_eps)
    with torch.no_grad():
        assert (logits(tgt, state, IDX) - model(IDX)).abs().max().item() <= 1e-5


@settings(max_examples=20, deadline=None)
@given(pair=growth(), seed=st.integers(0, 2**16))
def test_zero_width_keeps_old_heads_whole_and_zeroes_new_fan_out(pair, seed):
    src, tgt = pair
    d, f, n_head, G = src.n_embd, src.intermediate_size, src.n_head, src.n_query_groups
    c = math.sqrt(tgt.n_embd / d)
    sd = source_model(src, seed).state_dict()
    out = zero_width(src, sd, tgt, torch.Generator().manual_seed(seed))
    for i in range(src.n_layer):
        p = f"transformer.h.{i}."
        sq, sk, sv = heads(sd[p + "attn.attn.weight"], src)
        tq, tk, tv = heads(out[p + "attn.attn.weight"], tgt)
        assert torch.equal(tq[:n_head, :, :d], sq) and torch.equal(tk[:G, :, :d], sk) and torch.equal(tv[:G, :, :d], sv)
        for new in (tq[n_head:], tk[G:], tv[G:]):  # new heads: zero on the old dims, so q = k = v = 0
            assert not new[..., :d].any()
        proj = out[p + "attn.proj.weight"]
        torch.testing.assert_close(proj[:d, :d], sd[p + "attn.proj.weight"] * c, rtol=1e-6, atol=0)
        assert not proj[d:, :d].any()  # old heads never write the new dims
        assert not out[p + "mlp.swiglu.w1.weight"][f:, :d].any() and not out[p + "mlp.swiglu.w2.weight"][f:, :d].any()
        assert not out[p + "mlp.swiglu.w3.weight"][d:, :f].any()
        norm = out[p + "norm_1.weight"]
        torch.testing.assert_close(norm[:d], sd[p + "norm_1.weight"] / c, rtol=1e-6, atol=0)
        assert torch.equal(norm[d:], torch.ones(tgt.n_embd - d))
    wte = out["transformer.wte.weight"]
    torch.testing.assert_close(wte[:, :d], sd["transformer.wte.weight"] * c, rtol=1e-6, atol=0)
    assert not wte[:, d:].any()
    assert torch.equal(out["lm_head.weight"][:, :d], sd["lm_head.weight"])
    paper = zero_width(src, sd, tgt, torch.Generator().manual_seed(seed), exact_eps=False)
    assert torch.equal(paper["transformer.wte.weight"][:, :d], sd["transformer.wte.weight"])  # E' = [E, 0]


def test_zero_width_with_the_paper_form_and_equal_eps_is_off_by_the_eps_only():
    src, tgt = config(1, 2, 8, 16), config(4, 2, 8, 64)
    model = source_model(src)
    state = zero_width(src, model.state_dict(), tgt, torch.Generator().manual_seed(0), exact_eps=False)
    with torch.no_grad():
        err = (logits(tgt, state, IDX) - model(IDX)).abs().max().item()
    assert 1e-5 < err < 1e-1  # eps' = eps instead of (d/D) eps: small at init scale, not exact


# -- HyperCloning ---------------------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(pair=growth(factor=True), seed=st.integers(0, 2**16))
def test_hyperclone_is_exact_and_repeats_every_tensor(pair, seed):
    src, tgt = pair
    k = tgt.n_embd // src.n_embd
    model = source_model(src, seed)
    sd = model.state_dict()
    out = hyperclone(src, sd, tgt, torch.Generator())
    with torch.no_grad():
        assert (logits(tgt, out, IDX) - model(IDX)).abs().max().item() <= 1e-5
    for key, w in sd.items():
        if key == "transformer.wte.weight":
            expected = w.repeat(1, k)
        elif key == "lm_head.weight":
            expected = w.repeat(1, k) / k
        elif w.ndim == 2:
            expected = w.repeat(k, k) / k
        else:
            expected = w.repeat(k)  # norm weights unscaled, biases copied
        torch.testing.assert_close(out[key], expected, rtol=1e-6, atol=0)
    sq, sk, sv = heads(sd["transformer.h.0.attn.attn.weight"], src)
    tq, tk, tv = heads(out["transformer.h.0.attn.attn.weight"], tgt)
    hs = src.head_size
    proj_s, proj_t = sd["transformer.h.0.attn.proj.weight"], out["transformer.h.0.attn.proj.weight"]
    for h in range(tgt.n_head):  # head h copies source head h mod n_head, whose group is its group's source
        s = h % src.n_head
        torch.testing.assert_close(tq[h], sq[s].repeat(1, k) / k, rtol=1e-6, atol=0)
        torch.testing.assert_close(proj_t[:, h * hs:(h + 1) * hs], proj_s[:, s * hs:(s + 1) * hs].repeat(k, 1) / k,
                                   rtol=1e-6, atol=0)
    for g in range(tgt.n_query_groups):
        s = g % src.n_query_groups
        torch.testing.assert_close(tk[g], sk[s].repeat(1, k) / k, rtol=1e-6, atol=0)
        torch.testing.assert_close(tv[g], sv[s].repeat(1, k) / k, rtol=1e-6, atol=0)


# -- G→direct -------------------------------------------------------------------------------------------------------

def fan_in(new, old, cmap):
    """new[:, j] == a[j] * old[:, cmap[j]] (rows of the old units): returns a, after checking the fit."""
    base = old[:, cmap]
    a = (new * base).sum(0) / (base * base).sum(0)
    torch.testing.assert_close(new, base * a, rtol=1e-5, atol=1e-7)
    return a


def check_sums(a, cmap, n_old):
    assert torch.equal(cmap[:n_old], torch.arange(n_old))
    torch.testing.assert_close(torch.zeros(n_old).index_add_(0, cmap, a), torch.ones(n_old), rtol=1e-5, atol=1e-6)


def match_rows(new, old):
    """The source row each target row copies exactly (asserts there is one)."""
    eq = (new[:, None, :] - old[None, :, :]).abs().amax(-1) <= 1e-6 * old.abs().max()
    assert eq.any(1).all()
    return eq.float().argmax(1)


@settings(max_examples=20, deadline=None)
@given(pair=growth(), split=st.sampled_from(["even", "lemon"]), seed=st.integers(0, 2**16))
def test_direct_width_duplicates_whole_heads_and_splits_fan_in_to_one(pair, split, seed):
    src, tgt = pair
    d, f, G, q, hs = src.n_embd, src.intermediate_size, src.n_query_groups, src.q_per_kv, src.head_size
    sd = source_model(src, seed).state_dict()
    out = direct_width(src, sd, tgt, torch.Generator().manual_seed(seed), split=split)
    hmap = match_rows(out["transformer.wte.weight"].T, sd["transformer.wte.weight"].T)  # embedding columns copied
    check_sums(fan_in(out["lm_head.weight"], sd["lm_head.weight"], hmap), hmap, d)
    alpha = math.sqrt(d / tgt.n_embd)
    torch.testing.assert_close(out["transformer.ln_f.weight"], alpha * sd["transformer.ln_f.weight"][hmap])
    for i in range(src.n_layer):
        p = f"transformer.h.{i}."
        attn_s, attn_t = sd[p + "attn.attn.weight"], out[p + "attn.attn.weight"]
        a = fan_in(attn_t[:attn_s.shape[0]], attn_s, hmap)
        check_sums(a, hmap, d)
        sq, sk, sv = heads(attn_s, src)
        tq, tk, tv = heads(attn_t / a, tgt)  # undo the column split: rows must be whole source heads
        gmap = match_rows(tk[..., :d].flatten(1), sk.flatten(1))
        assert torch.equal(gmap[:G], torch.arange(G))
        torch.testing.assert_close(tv, sv[gmap][..., hmap], rtol=1e-5, atol=1e-7)  # v of the same source group
        qmap = gmap.repeat_interleave(q) * q + torch.arange(tgt.n_head) % q  # q heads follow their group
        torch.testing.assert_close(tq, sq[qmap][..., hmap], rtol=1e-5, atol=1e-7)
        proj_s, proj_t = sd[p + "attn.proj.weight"], out[p + "attn.proj.weight"]
        cols = (qmap[:, None] * hs + torch.arange(hs)).flatten()  # proj columns of the source head of each head
        b = fan_in(proj_t[:d], proj_s, cols)
        torch.testing.assert_close(proj_t, proj_s[hmap][:, cols] * b, rtol=1e-5, atol=1e-7)
        b = b.view(-1, hs)
        torch.testing.assert_close(b, b[:, :1].expand_as(b))  # one coefficient per head
        check_sums(b[:, 0], qmap, src.n_head)
        for name in ("mlp.swiglu.w1.weight", "mlp.swiglu.w2.weight"):
            w_s, w_t = sd[p + name], out[p + name]
            a = fan_in(w_t[:f], w_s, hmap)
            check_sums(a, hmap, d)
            fmap = match_rows(w_t / a, w_s[:, hmap])
        w3_s, w3_t = sd[p + "mlp.swiglu.w3.weight"], out[p + "mlp.swiglu.w3.weight"]
        b = fan_in(w3_t[:d], w3_s, fmap)
        check_sums(b, fmap, f)
        torch.testing.assert_close(w3_t, w3_s[hmap][:, fmap] * b, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out[p + "norm_2.weight"], alpha * sd[p + "norm_2.weight"][hmap])


@settings(max_examples=15, deadline=None)
@given(pair=growth(), split=st.sampled_from(["even", "lemon"]), seed=st.integers(0, 2**16))
def test_direct_width_preserves_the_function_when_norms_are_identities(pair, split, seed):
    src, tgt = pair
    model = source_model(src, seed)
    state = direct_width(src, model.state_dict(), tgt, torch.Generator().manual_seed(seed), split=split)
    with pytest.MonkeyPatch.context() as mp:
        for cls in (rmsnorm.RMSNorm, rmsnorm.FusedRMSNorm):
            mp.setattr(cls, "forward", lambda self, x: x)
        with torch.no_grad():
            expected = model(IDX)
            assert (logits(tgt, state, IDX) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max())


# -- G→random -------------------------------------------------------------------------------------------------------

def test_random_width_copies_old_entries_and_draws_new_ones_at_the_init():
    src, tgt = config(2, 2, 8, 48), config(8, 2, 8, 192)
    d, D, L = src.n_embd, tgt.n_embd, tgt.n_layer
    c = math.sqrt(D / d)  # the residual stream's writers, as in zero_width (exact_eps)
    sd = source_model(src).state_dict()
    out = random_width(src, sd, tgt, torch.Generator().manual_seed(0))
    rows = sd["transformer.h.0.attn.attn.weight"].shape[0]  # old groups are the first fused rows
    for key, w in sd.items():
        new = out[key]
        if w.ndim == 1:
            torch.testing.assert_close(new[:d], w * math.sqrt(d / D))
            assert torch.equal(new[d:], torch.ones(D - d))
            continue
        writes_stream = key.endswith(("wte.weight", "proj.weight", "w3.weight"))
        torch.testing.assert_close(new[:w.shape[0], :w.shape[1]], w * c if writes_stream else w, rtol=1e-6, atol=0)
        std = 1 / math.sqrt(D) / L if key.endswith(("proj.weight", "w3.weight")) else math.sqrt(2 / 5 / D)
        fresh = torch.cat((new[w.shape[0]:].flatten(), new[:w.shape[0], w.shape[1]:].flatten()))
        assert fresh.std().item() == pytest.approx(std, rel=0.05)
        assert fresh.mean().abs().item() < 0.1 * std
    assert out["transformer.h.1.attn.attn.weight"][:rows, :d].equal(sd["transformer.h.1.attn.attn.weight"])


@pytest.mark.parametrize("groups,q_per_kv", [(2, 1), (1, 4), (2, 2)])
@pytest.mark.parametrize("exact_eps", [True, False])
def test_random_width_is_exact_with_its_masks_at_zero(groups, q_per_kv, exact_eps):
    """Masks applied as the training loop does (`GPT.set_width_masks`, ramps at 0); the default (exact_eps) is exact
    with the source's own norm eps, the paper's form only with eps scaled by d/D (docstring of zero_width)."""
    src = config(groups, q_per_kv, 4, 16, bias=True)
    d, D = src.n_embd, (groups * 2 + 1) * q_per_kv * 4
    tgt = config(groups * 2 + 1, q_per_kv, 4, 40, bias=True, norm_eps=src.norm_eps * (1 if exact_eps else d / D))
    model = source_model(src)
    grown = GPT(tgt)
    options = {} if exact_eps else {"exact_eps": False}  # the default is the exact form
    grown.load_state_dict(random_width(src, model.state_dict(), tgt, torch.Generator().manual_seed(1), **options))
    masks = random_width_masks(src, tgt)
    assert set(masks) == {"transformer.wte.weight"} | {f"transformer.h.{i}.{n}" for i in range(2) for n in
                                                       LAYER_TENSORS if "norm" not in n}
    for key, mask in masks.items():
        module = grown.get_submodule(key.rsplit(".", 1)[0])
        assert mask.shape == (module.weight.shape[1 if key.startswith("transformer.wte") else 0],)
    grown.set_width_masks(masks)
    with torch.no_grad():
        assert (grown(IDX) - model(IDX)).abs().max().item() <= 1e-5
    assert masks["transformer.h.0.mlp.swiglu.w1.weight"].tolist() == [1.0] * 16 + [0.0] * 24


# -- errors ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target,message", [
    (config(2, 2, 4, 32), "keeps head_size"),
    (config(4, 1, 8, 32), "keeps q_per_kv"),
    (config(1, 2, 8, 16), "cannot shrink the model, but the target has n_embd 32 -> 16, n_head 4 -> 2"),
    (config(2, 2, 8, 8), "cannot shrink the model, but the target has intermediate_size 16 -> 8"),
    (config(2, 2, 8, 32, vocab_size=100), "keeps the vocabulary"),
    (config(2, 2, 8, 32, n_layer=3), "n_layer 2 -> 3"),
])
def test_width_operators_reject_bad_targets(target, message):
    src = config(2, 2, 8, 16)
    sd = source_model(src).state_dict()
    for op in (zero_width, direct_width, random_width, hyperclone):
        with pytest.raises(ValueError, match=message):
            op(src, sd, target, torch.Generator())


@pytest.mark.parametrize("target", [config(3, 2, 8, 48), config(2, 2, 8, 48), config(2, 2, 8, 24)])
def test_hyperclone_needs_one_integer_factor(target):
    src = config(2, 2, 8, 16)
    with pytest.raises(ValueError, match="same integer factor"):
        hyperclone(src, source_model(src).state_dict(), target)
    zero_width(src, source_model(src).state_dict(), target, torch.Generator())  # fine for the other operators


def test_bad_split_unknown_tensors_and_wrong_shapes_are_refused():
    src, tgt = config(1, 2, 8, 16), config(2, 2, 8, 32)
    sd = source_model(src).state_dict()
    with pytest.raises(ValueError, match="'even' or 'lemon'"):
        direct_width(src, sd, tgt, torch.Generator(), split="odd")
    with pytest.raises(ValueError, match="does not know the tensor"):
        zero_width(src, {**sd, "transformer.h.0.extra.weight": torch.zeros(1)}, tgt, torch.Generator())
    with pytest.raises(ValueError, match="implies"):
        zero_width(config(1, 2, 8, 24), sd, config(2, 2, 8, 32), torch.Generator())
    half = {k: v.bfloat16() for k, v in sd.items()}
    for op in (zero_width, direct_width, random_width, hyperclone):
        out = op(src, half, tgt, torch.Generator())
        assert all(v.dtype == torch.bfloat16 for v in out.values()) and out.keys() == sd.keys()
