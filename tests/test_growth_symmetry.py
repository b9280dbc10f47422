"""Symmetry of width growth under training (reference families-and-schedules.md §5): copies that get the same
gradient as their original never diverge, so the grown model trains as the narrow one. direct-width's even split
and HyperCloning's symmetric variant are such; LEMON's uneven split (direct-width's default) and HyperCloning's
noisy function-preserving variant break the tie."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_growth_width import IDX, config, growth, logits, match_rows, source_model

from growth.width import direct_width, hyperclone
from lit_gpt import GPT

STEPS = 20
SRC, TGT = config(2, 2, 8, 24), config(4, 2, 8, 48)  # 32 -> 64 wide, 2 -> 4 groups, 24 -> 48 FFN units


def train(cfg, state, steps=STEPS):
    """`steps` AdamW steps of next-token loss on random tokens (the same batches for every call)."""
    model = GPT(cfg)
    model.load_state_dict(state)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    data = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, cfg.vocab_size, (4, cfg.block_size + 1), generator=data)
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def gap(copy, original):
    """max |copy - original| relative to the original's largest entry."""
    return ((copy - original).abs().max() / original.abs().max()).item()


@pytest.mark.parametrize("split", ["even", "lemon", None])
def test_direct_width_copies_stay_equal_under_the_even_split_and_diverge_under_lemon(split):
    """split None: the default, which is lemon."""
    d, f = SRC.n_embd, SRC.intermediate_size
    options = {"split": split} if split else {}
    out = direct_width(SRC, source_model(SRC).state_dict(), TGT, torch.Generator().manual_seed(0), **options)
    wte, w1 = out["transformer.wte.weight"], out["transformer.h.0.mlp.swiglu.w1.weight"]
    hmap = match_rows(wte[:, d:].T, wte[:, :d].T)  # the hidden dim each new dim copies (columns copied as they are)
    fmap = match_rows(w1[f:], w1[:f])  # the FFN unit each new unit copies (rows equal within the grown model)
    trained = train(TGT, out)
    wte, w1 = trained["transformer.wte.weight"], trained["transformer.h.0.mlp.swiglu.w1.weight"]
    gaps = [gap(wte[:, d:], wte[:, hmap]), gap(w1[f:], w1[fmap])]
    if split == "even":
        assert gaps == [0.0, 0.0]  # equal gradients at every step: the 64-wide model is the 32-wide one
    else:
        assert min(gaps) > 1e-4


@settings(max_examples=15, deadline=None)
@given(pair=growth(factor=True), noise=st.sampled_from([0.01, 0.1, 0.5]), seed=st.integers(0, 2**16))
def test_noisy_hyperclone_preserves_the_function(pair, noise, seed):
    src, tgt = pair
    model = source_model(src, seed)
    out = hyperclone(src, model.state_dict(), tgt, torch.Generator().manual_seed(seed), clone_noise=noise)
    with torch.no_grad():
        assert (logits(tgt, out, IDX) - model(IDX)).abs().max().item() <= 1e-5


def test_noisy_hyperclone_blocks_sum_to_the_weight_with_zero_sum_noise_of_the_asked_std():
    src, tgt = config(2, 2, 8, 48), config(6, 2, 8, 144)  # k = 3
    k = 3
    sd = source_model(src).state_dict()
    out = hyperclone(src, sd, tgt, torch.Generator().manual_seed(0), clone_noise=0.2)
    for key in ("transformer.h.0.attn.attn.weight", "transformer.h.1.attn.proj.weight",
                "transformer.h.0.mlp.swiglu.w1.weight", "transformer.h.1.mlp.swiglu.w3.weight", "lm_head.weight"):
        w, grown = sd[key], out[key]
        rows = grown.shape[0] // w.shape[0]  # output copies (1 for lm_head)
        blocks = grown.view(rows, w.shape[0], k, w.shape[1])  # [output copy i, row, input copy j, column]
        torch.testing.assert_close(blocks.sum(2), w.expand(rows, *w.shape), rtol=0, atol=1e-6)
        noise = blocks - w[None, :, None, :] / k
        assert noise.std().item() == pytest.approx(0.2 * (w / k).std().item(), rel=0.05)
    assert torch.equal(out["transformer.wte.weight"], sd["transformer.wte.weight"].repeat(1, k))  # no fan-in
    with pytest.raises(ValueError, match=">= 0"):
        hyperclone(src, sd, tgt, clone_noise=-0.1)


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_symmetric_hyperclone_copies_stay_equal_and_noisy_ones_diverge(noise):
    d, f = SRC.n_embd, SRC.intermediate_size
    model = source_model(SRC)
    out = hyperclone(SRC, model.state_dict(), TGT, torch.Generator().manual_seed(0), clone_noise=noise)
    with torch.no_grad():
        assert (logits(TGT, out, IDX) - model(IDX)).abs().max().item() <= 1e-5
    trained = train(TGT, out)
    wte, w1 = trained["transformer.wte.weight"], trained["transformer.h.0.mlp.swiglu.w1.weight"]
    # what copy 1 of a unit computes from the tiled stream, against copy 0: its input blocks summed
    effective = w1[:, :d] + w1[:, d:]
    gaps = [gap(wte[:, d:], wte[:, :d]), gap(effective[f:], effective[:f])]
    if noise == 0.0:
        assert gaps == [0.0, 0.0]
    else:
        assert min(gaps) > 1e-4
