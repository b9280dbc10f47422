"""Growth records that must not lie: bad operator options refused before reading, damaged or old records named
or counted as unknown (never as a free base), and a resumed run keeping its record (issue 12 break-it round)."""

import json

import pytest
from test_growth_depth import assert_refused, grow_cli, save_base

from conftest import small_config
from lit_gpt.checkpoint import growth_beside, run_growth
from lit_gpt.config import Config
from lit_gpt.flops import base_accounting, run_accounting
from lit_gpt.records import check_training_record
from lit_gpt.utils import CheckpointError


@pytest.mark.parametrize("op, flags, words", [
    ("hyperclone", ("--clone_noise", "inf"), "--clone_noise must be from 0 to 1"),
    ("hyperclone", ("--clone_noise", "1e300"), "--clone_noise must be from 0 to 1"),
    ("hyperclone", ("--clone_noise", "nan"), "--clone_noise must be from 0 to 1"),
    ("stack", ("--split", "even"), "--split is direct-width's"),
    ("zero-width", ("--split", "lemon"), "--split is direct-width's"),
    ("stack", ("--clone_noise", "0"), "--clone_noise is hyperclone's"),
])
def test_options_are_checked_before_the_source_is_read(tmp_path, capsys, op, flags, words):
    (tmp_path / "base").mkdir()  # no weights: an option error must come first
    target = tmp_path / "t.json"
    small_config("gqa", n_layer=4).to_json(target)
    assert_refused(*grow_cli(capsys, "--src", tmp_path / "base", "--target", target, "--op", op,
                             "--out", tmp_path / "o", *flags), words)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("training, words", [
    ({"tokens": "3072"}, "tokens is '3072'"),
    ({"tokens": -5}, "tokens is -5"),
    ({"tokens": True}, "tokens is True"),
    ({"tokens": 10, "growth": "x"}, "growth is str"),
    ({"tokens": 10, "growth": {"base_total_tokens": "abc"}}, "growth: base_total_tokens is 'abc'"),
    ({"tokens": 10, "scratch_tokens": [1]}, "scratch_tokens is [1]"),
])
def test_a_damaged_training_json_is_named(tmp_path, capsys, training, words):
    save_base(tmp_path / "base", training=training)
    target = tmp_path / "t.json"
    small_config("gqa", n_layer=4).to_json(target)
    assert_refused(*grow_cli(capsys, "--src", tmp_path / "base", "--target", target, "--op", "stack",
                             "--out", tmp_path / "o"), str(tmp_path / "base" / "training.json"), words)
    assert not (tmp_path / "o").exists()


def test_unknown_base_costs_are_unknown_not_free():
    base, target = Config.from_name("2L128H"), Config.from_name("4L128H")
    old = {"operator": "stack", "base_tokens": 1000, "base_flops": 1e9}  # a growth.json from before the fields
    assert run_accounting(target, 64, 512, 2e9, old)["paper_flops"] is None
    assert run_accounting(target, 64, 512, 2e9, old)["total_tokens"] is None
    assert run_accounting(target, 64, 512, 2e9, {**old, "base_total_tokens": None})["scratch_tokens"]["paper"] is None
    chained = base_accounting(base, {"tokens": 2048, "growth": old}, target)
    assert chained["base_total_tokens"] is None and chained["base_scratch_tokens_paper"] is None
    assert run_accounting(target, 64, 512, 2e9, None)["total_tokens"] == 512  # not grown: its own tokens


def test_a_checkpoint_from_before_meta_held_the_record_finds_it(tmp_path):
    """A resume or export of a step saved before meta.json held `growth` reads the growth.json beside the run's
    --initial_checkpoint; a grown run's export (training.json with a growth) starts nothing."""
    grown = tmp_path / "grown"
    grown.mkdir()
    (grown / "growth.json").write_text(json.dumps({"operator": "stack", "base_tokens": 10, "base_flops": 5.0}))
    meta = {"step": 2, "tokens": 20, "hparams": {"initial_checkpoint": str(grown)}}
    assert run_growth(meta, tmp_path / "meta.json")["operator"] == "stack"
    assert run_growth({**meta, "growth": None}, tmp_path / "meta.json") is None
    with pytest.raises(CheckpointError, match="meta.json: growth is list"):
        run_growth({**meta, "growth": [1]}, tmp_path / "meta.json")
    (grown / "training.json").write_text(json.dumps({"tokens": 4, "growth": {"operator": "stack"}}))
    assert growth_beside(grown) == {}
    (grown / "growth.json").write_text(json.dumps({"operator": "stack", "base_scratch_tokens_paper": "abc"}))
    (grown / "training.json").unlink()
    with pytest.raises(CheckpointError, match="growth.json: base_scratch_tokens_paper is 'abc'"):
        growth_beside(grown)
    with pytest.raises(ValueError, match="x.json: flops is nan"):
        check_training_record({"flops": float("nan")}, "x.json")
