"""Width operators on tied input/output embeddings (SmolLM2, Llama-3.2) and Llama-family biases: one tensor for
both, the function kept exactly where the operator keeps it."""

import math
import shutil
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from growth.width import direct_width, hyperclone, random_width, random_width_masks, zero_width
from lit_gpt import GPT, rmsnorm
from lit_gpt.model import growth_mask_factors, set_width_ramps
from lit_gpt.utils import CheckpointError
from conftest import ROOT
from test_growth_width import IDX, config, source_model


@st.composite
def tied_growth(draw, factor=False):
    hs, q, g, ffn = draw(st.sampled_from([4, 8])), draw(st.sampled_from([1, 2])), draw(st.integers(1, 2)), \
        draw(st.integers(4, 24))
    k = draw(st.integers(1, 3))
    tg, tffn = (g * k, ffn * k) if factor else (g + draw(st.integers(0, 3)), ffn + draw(st.integers(0, 16)))
    extra = dict(tie_embeddings=True, qkv_bias=draw(st.booleans()), proj_bias=draw(st.booleans()))
    return config(g, q, hs, ffn, **extra), config(tg, q, hs, tffn, **extra)


def grown_model(cfg, state):
    """The target model loaded from `state`, checked to hold one tensor for the embedding and the head."""
    assert state["lm_head.weight"] is state["transformer.wte.weight"]
    model = GPT(cfg)
    model.load_state_dict(state)
    assert model.lm_head.weight is model.transformer.wte.weight
    return model


def max_error(model, grown):
    """The largest logit difference, relative to the largest logit when that exceeds 1: fp32 rounding grows with
    the logits' size (seen: 1.01e-5 absolute on logits of a few units)."""
    with torch.no_grad():
        reference = model(IDX)
        return ((grown(IDX) - reference).abs().max() / reference.abs().max().clamp(min=1.0)).item()


@settings(max_examples=15, deadline=None)
@given(pair=tied_growth(), exact_eps=st.booleans(), seed=st.integers(0, 2**16))
def test_zero_width_on_a_tied_model_is_exact(pair, exact_eps, seed):
    src, tgt = pair
    if not exact_eps:
        tgt = config(tgt.n_query_groups, tgt.q_per_kv, tgt.head_size, tgt.intermediate_size, tie_embeddings=True,
                     qkv_bias=tgt.qkv_bias, proj_bias=tgt.proj_bias, norm_eps=src.norm_eps * src.n_embd / tgt.n_embd)
    model = source_model(src, seed)
    assert model.lm_head.weight is model.transformer.wte.weight
    state = zero_width(src, model.state_dict(), tgt, torch.Generator().manual_seed(seed), exact_eps=exact_eps)
    assert max_error(model, grown_model(tgt, state)) <= 1e-5


@settings(max_examples=15, deadline=None)
@given(pair=tied_growth(factor=True), noise=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 2**16))
def test_hyperclone_on_a_tied_model_is_exact_and_moves_the_heads_split_into_the_final_norm(pair, noise, seed):
    src, tgt = pair
    k = tgt.n_embd // src.n_embd
    model = source_model(src, seed)
    sd = model.state_dict()
    out = hyperclone(src, sd, tgt, torch.Generator().manual_seed(seed), clone_noise=noise)
    assert max_error(model, grown_model(tgt, out)) <= 1e-5
    assert torch.equal(out["transformer.wte.weight"], sd["transformer.wte.weight"].repeat(1, k))
    torch.testing.assert_close(out["transformer.ln_f.weight"], sd["transformer.ln_f.weight"].repeat(k) / k)


@settings(max_examples=15, deadline=None)
@given(pair=tied_growth(), split=st.sampled_from(["even", "lemon"]), seed=st.integers(0, 2**16))
def test_direct_width_on_a_tied_model_preserves_the_function_when_norms_are_identities(pair, split, seed):
    """ln_f carries the head's fan-in split, so it keeps its weight (less the paper's sqrt(d/D) norm factor, checked
    untied in test_growth_width.py) while the block norms are made identities."""
    src, tgt = pair
    model = source_model(src, seed)
    grown = grown_model(tgt, direct_width(src, model.state_dict(), tgt, torch.Generator().manual_seed(seed),
                                          split=split))
    with torch.no_grad():
        grown.transformer.ln_f.weight /= math.sqrt(src.n_embd / tgt.n_embd)
    with pytest.MonkeyPatch.context() as mp:
        for cls in (rmsnorm.RMSNorm, rmsnorm.FusedRMSNorm):
            mp.setattr(cls, "forward", lambda self, x: x * self.weight)
        for m in (model, grown):  # block norms as identities: only the final norm's weight is kept
            for block in m.transformer.h:
                for norm in (block.norm_1, block.norm_2):
                    norm.forward = lambda x: x
        assert max_error(model, grown) <= 1e-5


@pytest.mark.parametrize("ramp_step", [0, 6])
def test_random_width_on_a_tied_model_is_exact_at_zero_masks_and_its_export_bakes_the_masks(ramp_step):
    """At masks 0 the grown model is the source; part-way (hidden dims half open) the baked export, one tensor for
    embedding and head, computes what the masked model computes."""
    src = config(2, 2, 4, 16, tie_embeddings=True, qkv_bias=True)
    tgt = config(5, 2, 4, 40, tie_embeddings=True, qkv_bias=True)
    model = source_model(src)
    grown = grown_model(tgt, random_width(src, model.state_dict(), tgt, torch.Generator().manual_seed(1)))
    grown.set_width_masks(random_width_masks(src, tgt))
    set_width_ramps(grown, ramp_step, 4)
    if ramp_step == 0:
        assert max_error(model, grown) <= 1e-5
    baked = {k: v * growth_mask_factors(grown).get(k, 1.0) for k, v in grown.state_dict().items()}
    baked["lm_head.weight"] = baked["transformer.wte.weight"]  # what the export writes for a tied model
    assert max_error(grown, grown_model(tgt, baked)) <= 1e-5


@pytest.mark.parametrize("op,safetensors", [("zero-depth", True), ("hyperclone", True), ("zero-depth", False)])
def test_noise_on_a_tied_model_is_drawn_once_for_embedding_and_head(tmp_path, op, safetensors):
    from safetensors.torch import load_file

    from growth.__main__ import main

    src = config(2, 2, 8, 16, tie_embeddings=True)
    tgt = config(4, 2, 8, 32, tie_embeddings=True) if op == "hyperclone" else \
        config(2, 2, 8, 16, tie_embeddings=True, n_layer=4)
    (tmp_path / "base").mkdir()
    torch.save(source_model(src).state_dict(), tmp_path / "base" / "lit_model.pth")
    src.to_json(tmp_path / "base" / "lit_config.json")
    tgt.to_json(tmp_path / "target.json")
    assert main(["grow", "--src", str(tmp_path / "base"), "--target", str(tmp_path / "target.json"), "--op", op,
                 "--noise", "0.1", "--out", str(tmp_path / "out"), *(["--safetensors"] if safetensors else [])]) == 0
    out = load_file(tmp_path / "out" / "lit_model.safetensors") if safetensors else \
        torch.load(tmp_path / "out" / "lit_model.pth", weights_only=True)
    assert torch.equal(out["lm_head.weight"], out["transformer.wte.weight"])


def test_weights_of_a_random_growth_never_trained_are_refused_by_the_converter(tmp_path, sample_data):
    """Their growth masks (0 at first) live apart from the weights: converted alone they are another model."""
    from growth.__main__ import main
    from test_families import LIT_TO_HF, run

    sample = dict(tie_embeddings=True, vocab_size=4096)  # the sample tokenizer's, which eval checks
    src, tgt = config(2, 2, 8, 16, **sample), config(4, 2, 8, 32, **sample)
    (tmp_path / "base").mkdir()
    torch.save(source_model(src).state_dict(), tmp_path / "base" / "lit_model.pth")
    src.to_json(tmp_path / "base" / "lit_config.json")
    tgt.to_json(tmp_path / "target.json")
    assert main(["grow", "--src", str(tmp_path / "base"), "--target", str(tmp_path / "target.json"), "--op",
                 "random-width", "--out", str(tmp_path / "grown")]) == 0
    code, err = run(LIT_TO_HF, "--checkpoint_path", tmp_path / "grown" / "lit_model.pth", "--out_dir", tmp_path / "hf")
    assert code == 1 and "random-width-grown weights whose growth masks" in err and not (tmp_path / "hf").exists()
    code, err = run(LIT_TO_HF, "--checkpoint_path", tmp_path / "base" / "lit_model.pth", "--out_dir", tmp_path / "hf")
    assert code == 0, err
    sys.path.insert(0, str(ROOT / "eval"))
    from checkpoint_info import checkpoint_info  # eval refuses them too

    shutil.copy(ROOT / "data" / "sample" / "tokenizer" / "tokenizer.model", tmp_path / "grown")
    with pytest.raises(CheckpointError, match="random-width-grown weights whose growth masks"):
        checkpoint_info(tmp_path / "grown")
