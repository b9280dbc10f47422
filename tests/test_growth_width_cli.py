"""Width operators through `python -m growth grow`: exact ones stay exact end to end, bad targets are refused."""

import json

import pytest
import torch
from conftest import small_config
from test_growth_depth import assert_refused, grow_cli, save_base

from lit_gpt import GPT
from growth.width import random_width_masks
from lit_gpt.model import growth_mask_factors, set_width_ramps, width_ramps


@pytest.mark.parametrize("op, exact", [("hyperclone", True), ("zero-width", True), ("direct-width", False)])
def test_width_growth_from_the_command_line(tmp_path, capsys, op, exact):
    base = save_base(tmp_path / "base", kind="gqa")  # 4 heads in 2 groups, 64 wide
    tgt = small_config("gqa", n_embd=128, n_head=8, n_query_groups=4, intermediate_size=320)
    tgt.to_json(tmp_path / "target.json")
    extra = ("--split", "lemon") if op == "direct-width" else ()
    code, out = grow_cli(capsys, "--src", tmp_path / "base", "--target", tmp_path / "target.json", "--op", op,
                         "--out", tmp_path / "grown", *extra)
    assert code == 0, out.err
    record = json.loads((tmp_path / "grown" / "growth.json").read_text())
    assert record["operator"] == op and record["index_map"] is None
    grown = GPT(tgt)
    grown.load_state_dict(torch.load(tmp_path / "grown" / "lit_model.pth", weights_only=True))
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        diff = (grown(idx) - base(idx)).abs().max().item()
    assert (diff <= 1e-5) == exact


def test_width_targets_refused(tmp_path, capsys):
    save_base(tmp_path / "base", kind="gqa")
    common = ("--src", tmp_path / "base", "--target", tmp_path / "t.json", "--out", tmp_path / "o")
    small_config("gqa", n_embd=128, n_head=4, n_query_groups=2, intermediate_size=320).to_json(tmp_path / "t.json")
    assert_refused(*grow_cli(capsys, *common, "--op", "zero-width"), "head_size")
    small_config("gqa", n_embd=32, n_head=2, n_query_groups=1, intermediate_size=80).to_json(tmp_path / "t.json")
    assert_refused(*grow_cli(capsys, *common, "--op", "zero-width"), "shrink")
    small_config("gqa", n_embd=128, n_head=8, n_query_groups=4, intermediate_size=320).to_json(tmp_path / "t.json")
    assert_refused(*grow_cli(capsys, *common, "--op", "widen"), "unknown operator")
    assert_refused(*grow_cli(capsys, *common, "--op", "hyperclone", "--layers", "interleave"), "keeps the depth")
    assert_refused(*grow_cli(capsys, *common, "--op", "learn-width"), "fitted on data: python -m growth learn")
    small_config("gqa", n_embd=128, n_head=8, n_query_groups=4, intermediate_size=320,
                 norm_eps=1e-6).to_json(tmp_path / "t.json")  # the exact forms hold for the source's eps only
    assert_refused(*grow_cli(capsys, *common, "--op", "hyperclone"), "keeps norm_eps, but the target has 1e-06")
    assert not (tmp_path / "o").exists()


def test_random_width_writes_its_masks_and_is_exact_with_them_at_zero(tmp_path, capsys):
    base = save_base(tmp_path / "base", kind="gqa")
    tgt = small_config("gqa", n_embd=128, n_head=8, n_query_groups=4, intermediate_size=320)  # the source's norm_eps
    assert tgt.norm_eps == base.config.norm_eps
    tgt.to_json(tmp_path / "target.json")
    code, out = grow_cli(capsys, "--src", tmp_path / "base", "--target", tmp_path / "target.json",
                         "--op", "random-width", "--out", tmp_path / "grown")
    assert code == 0, out.err
    record = json.loads((tmp_path / "grown" / "growth.json").read_text())
    assert record["width_masks"] == "growth_masks.pth"
    grown = GPT(tgt)
    grown.load_state_dict(torch.load(tmp_path / "grown" / "lit_model.pth", weights_only=True))
    grown.set_width_masks(torch.load(tmp_path / "grown" / "growth_masks.pth", weights_only=True))
    assert set(grown.state_dict()) == set(GPT(tgt).state_dict())  # the masks are not saved with the weights
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        assert (grown(idx) - base(idx)).abs().max().item() <= 1e-5
        set_width_ramps(grown, 1, 4)  # a quarter of the FFN phase: new FFN units open, the function moves
        assert (grown(idx) - base(idx)).abs().max().item() > 1e-4
        set_width_ramps(grown, 12, 4)  # all three phases done: the masks are identities
        assert grown.transformer.h[0].attn.attn.growth_ramp.item() == 1.0
        plain = GPT(tgt)
        plain.load_state_dict(grown.state_dict())
        assert torch.equal(grown(idx), plain(idx))


def test_direct_width_defaults_to_lemons_split_and_hyperclone_takes_clone_noise(tmp_path, capsys):
    base = save_base(tmp_path / "base", kind="gqa")
    tgt = small_config("gqa", n_embd=128, n_head=8, n_query_groups=4, intermediate_size=320)
    tgt.to_json(tmp_path / "target.json")
    common = ("--src", tmp_path / "base", "--target", tmp_path / "target.json", "--force")
    for flags, split in [((), "lemon"), (("--split", "even"), "even")]:
        code, out = grow_cli(capsys, *common, "--op", "direct-width", "--out", tmp_path / split, *flags)
        assert code == 0, out.err
        assert json.loads((tmp_path / split / "growth.json").read_text())["options"]["split"] == split
    even, lemon = (torch.load(tmp_path / s / "lit_model.pth", weights_only=True)["lm_head.weight"]
                   for s in ("even", "lemon"))
    assert not torch.equal(even, lemon)  # same seed, same copies: only the fan-in split differs
    code, out = grow_cli(capsys, *common, "--op", "hyperclone", "--clone_noise", "0.1", "--out", tmp_path / "clone")
    assert code == 0, out.err
    assert json.loads((tmp_path / "clone" / "growth.json").read_text())["options"]["clone_noise"] == 0.1
    grown = GPT(tgt)
    grown.load_state_dict(torch.load(tmp_path / "clone" / "lit_model.pth", weights_only=True))
    w1 = grown.transformer.h[0].mlp.swiglu.w1.weight
    assert not torch.equal(w1[:, :64], w1[:, 64:])  # the input copies' blocks differ ...
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        assert (grown(idx) - base(idx)).abs().max().item() <= 1e-5  # ... and the function is kept
    assert_refused(*grow_cli(capsys, *common, "--op", "zero-width", "--clone_noise", "0.1", "--out",
                             tmp_path / "refused"), "--clone_noise", "zero-width does not take it")
    assert not (tmp_path / "refused").exists()


def test_width_ramps_follow_msgs_three_phases():
    assert width_ramps(0, 10) == {"ffn": 0.0, "hidden": 0.0, "heads": 0.0}
    assert width_ramps(5, 10) == {"ffn": 0.5, "hidden": 0.0, "heads": 0.0}
    assert width_ramps(15, 10) == {"ffn": 1.0, "hidden": 0.5, "heads": 0.0}
    assert width_ramps(25, 10) == {"ffn": 1.0, "hidden": 1.0, "heads": 0.5}
    assert width_ramps(40, 10) == {"ffn": 1.0, "hidden": 1.0, "heads": 1.0}


def test_growth_mask_factors_bake_ramping_masks_into_plain_weights():
    src = small_config("gqa")
    tgt = small_config("gqa", n_embd=128, n_head=8, n_query_groups=4, intermediate_size=320)
    masked = GPT(tgt)
    masked.set_growth_mask([1], 0.3)  # a random-depth mask on top, to check that factors compose
    masked.set_width_masks(random_width_masks(src, tgt))
    set_width_ramps(masked, 6, 4)  # FFN units open, hidden dims half way, heads still shut
    baked = {k: v * growth_mask_factors(masked).get(k, 1.0) for k, v in masked.state_dict().items()}
    plain = GPT(tgt)
    plain.load_state_dict(baked)
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(plain(idx), masked(idx), rtol=1e-5, atol=1e-5)
