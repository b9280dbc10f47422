"""Width operators through `python -m growth grow`: exact ones stay exact end to end, bad targets are refused."""

import json

import pytest
import torch
from conftest import small_config
from test_growth_depth import assert_refused, grow_cli, save_base

from lit_gpt import GPT


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
    assert_refused(*grow_cli(capsys, *common, "--op", "random-width"), "unknown operator")
    assert_refused(*grow_cli(capsys, *common, "--op", "hyperclone", "--layers", "interleave"), "keeps the depth")
    assert not (tmp_path / "o").exists()
