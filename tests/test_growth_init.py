"""--init upstream|official: the init of the new random parameters of random-depth, zero-width and random-width
(reference stacking-paper.md §2: the paper's released code is fan-in based and does not down-scale attn.proj)."""

import json
import math

import pytest
import torch
from conftest import small_config
from test_growth_depth import assert_refused, grow_cli, save_base
from test_growth_width import IDX, config, logits, source_model

from growth.operators import random_depth
from growth.width import random_width, random_width_masks, zero_width
from lit_gpt import GPT, Config
from lit_gpt.model import Block, init_std, init_weights

SRC, TGT = config(2, 2, 8, 64, n_layer=4), config(16, 2, 8, 768, n_layer=4)  # 32 -> 256 wide, FFN 64 -> 768


def expected_std(key, fan_in, init, cfg=TGT):
    """The formulas of the issue, written out independently of `init_std`."""
    D, F, L = cfg.n_embd, cfg.intermediate_size, cfg.n_layer
    if init == "upstream":
        return 1 / math.sqrt(D) / L if key.endswith(("attn.proj.weight", "w3.weight")) else math.sqrt(2 / 5 / D)
    return 1 / math.sqrt(F) / L if key.endswith("w3.weight") else math.sqrt(2 / 5 / fan_in)


def test_the_two_schemes_at_the_papers_size():
    c = Config.from_name("24L2048H")
    proj = {init: init_std("transformer.h.0.attn.proj.weight", c.n_embd, c.n_embd, c.n_layer, init)
            for init in ("upstream", "official")}
    assert proj["upstream"] == pytest.approx(9.2e-4, rel=0.01) and proj["official"] == pytest.approx(1.4e-2, rel=0.01)
    w3 = init_std("mlp.swiglu.w3.weight", c.intermediate_size, c.n_embd, c.n_layer, "official")
    assert w3 == pytest.approx(1 / math.sqrt(5632) / 24)
    with pytest.raises(ValueError, match="init must be one of upstream, official, got 'xavier'"):
        init_std("lm_head.weight", 64, 64, 2, "xavier")


@pytest.mark.parametrize("init", ["upstream", "official"])
def test_init_weights_draws_every_linear_at_its_schemes_std(init):
    torch.manual_seed(0)
    block = Block(TGT)
    block.apply(lambda m: init_weights(m, TGT.n_embd, TGT.n_layer, init))
    for key, w in block.state_dict().items():
        if w.ndim == 2:
            assert w.std().item() == pytest.approx(expected_std(key, w.shape[1], init), rel=0.05), key
    emb = torch.nn.Embedding(96, 256)
    init_weights(emb, 256, 4, init)
    assert emb.weight.std().item() == pytest.approx(math.sqrt(2 / 5 / 256), rel=0.05)


@pytest.mark.parametrize("op", [zero_width, random_width])
@pytest.mark.parametrize("init", ["upstream", "official"])
def test_width_operators_draw_new_entries_under_the_scheme_and_stay_exact(op, init):
    model = source_model(SRC)
    sd = model.state_dict()
    out = op(SRC, sd, TGT, torch.Generator().manual_seed(0), init=init)
    for key, w in sd.items():
        if w.ndim != 2:
            continue
        new = out[key]
        old = torch.zeros(new.shape, dtype=torch.bool)
        old[:w.shape[0], :w.shape[1]] = True
        fresh = new[~old]
        if op is zero_width:  # its new-fan-out x old-fan-in block is 0 (all of the embedding's new columns)
            fresh = fresh[fresh != 0]
            if key == "transformer.wte.weight":
                assert fresh.numel() == 0
                continue
        assert fresh.std().item() == pytest.approx(expected_std(key, new.shape[1], init), rel=0.05), key
    grown = GPT(TGT)
    grown.load_state_dict(out)
    if op is random_width:
        grown.set_width_masks(random_width_masks(SRC, TGT))
    with torch.no_grad():
        assert (grown(IDX) - model(IDX)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("init", ["upstream", "official"])
def test_random_depth_draws_new_layers_under_the_scheme_and_stays_exact(init):
    src, tgt = config(16, 2, 8, 768, n_layer=1), TGT
    model = source_model(src)
    out = random_depth(src, model.state_dict(), tgt, torch.Generator().manual_seed(0), init=init)
    for suffix in ("attn.attn.weight", "attn.proj.weight", "mlp.swiglu.w2.weight", "mlp.swiglu.w3.weight"):
        w = out[f"transformer.h.3.{suffix}"]
        assert w.std().item() == pytest.approx(expected_std(suffix, w.shape[1], init), rel=0.05), suffix
    grown = GPT(tgt)
    grown.load_state_dict(out)
    grown.set_growth_mask(range(1, tgt.n_layer), 0.0)
    with torch.no_grad():
        assert (grown(IDX) - model(IDX)).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="init must be one of"):
        random_depth(src, model.state_dict(), tgt, torch.Generator(), init="xavier")


def test_official_and_upstream_differ_only_in_the_residual_writers():
    sd = source_model(SRC).state_dict()
    a, b = (zero_width(SRC, sd, TGT, torch.Generator().manual_seed(0), init=init) for init in ("upstream", "official"))
    for key in a:
        same = torch.equal(a[key], b[key])
        assert same == (not key.endswith(("attn.proj.weight", "w3.weight"))), key
    assert (logits(TGT, a, IDX) - logits(TGT, b, IDX)).abs().max().item() <= 1e-5  # new units are shut either way


def test_grow_records_init_and_refuses_it_where_nothing_is_random(tmp_path, capsys):
    save_base(tmp_path / "base")
    deeper = small_config("gqa", n_layer=4)
    deeper.to_json(tmp_path / "deeper.json")
    wider = small_config("gqa", n_embd=128, n_head=8, n_query_groups=4, intermediate_size=320)
    wider.to_json(tmp_path / "wider.json")
    common = ("--src", tmp_path / "base", "--out", tmp_path / "o")
    for op, target, init in [("random-depth", "deeper", "official"), ("zero-width", "wider", None),
                             ("random-width", "wider", "official")]:
        flags = ("--init", init) if init else ()
        code, out = grow_cli(capsys, *common, "--target", tmp_path / f"{target}.json", "--op", op, "--force", *flags)
        assert code == 0, out.err
        record = json.loads((tmp_path / "o" / "growth.json").read_text())
        assert record["options"]["init"] == (init or "upstream")
    code, out = grow_cli(capsys, *common, "--target", tmp_path / "deeper.json", "--op", "random-depth", "--force")
    assert json.loads((tmp_path / "o" / "growth.json").read_text())["options"]["init"] == "upstream"
    for op, target in [("stack", "deeper"), ("zero-depth", "deeper"), ("direct-width", "wider"),
                       ("hyperclone", "wider")]:
        assert_refused(*grow_cli(capsys, "--src", tmp_path / "base", "--out", tmp_path / "refused", "--target",
                                 tmp_path / f"{target}.json", "--op", op, "--init", "official"),
                       "--init", f"{op} creates none")
    assert not (tmp_path / "refused").exists()
