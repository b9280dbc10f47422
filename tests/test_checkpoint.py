"""Training checkpoints: newest-by-number resume, atomic writes, offline consolidation."""

import lightning as L
import pytest
import torch
from conftest import small_config

from lit_gpt import GPT
from lit_gpt import checkpoint as ckpt
from lit_gpt.utils import CheckpointError


@pytest.fixture
def setup():
    fabric = L.Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    config = small_config("gqa")
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 96, (1, 8))).sum().backward()
    optimizer.step()
    return fabric, config, model, optimizer


def test_latest_is_numeric_not_lexicographic(tmp_path):
    for step in (960000, 1000000, 99):
        (tmp_path / f"step-{step:08d}").mkdir()
        (tmp_path / f"step-{step:08d}" / "meta.json").write_text("{}")
    (tmp_path / "step-02000000").mkdir()  # no meta.json: incomplete, ignored
    assert ckpt.find_latest(tmp_path).name == "step-01000000"


def test_round_trip_and_consolidate(setup, tmp_path):
    fabric, config, model, optimizer = setup
    ckpt.save(fabric, tmp_path, 3, model, optimizer, {"step": 3, "data": {"x": 1}}, config)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    optimizer.state[next(iter(optimizer.state))]["exp_avg"].zero_()
    meta = ckpt.load(fabric, ckpt.find_latest(tmp_path), model, optimizer)
    assert meta["data"] == {"x": 1}
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], moments)
    offline = ckpt.consolidate(tmp_path / "step-00000003")
    assert all(torch.equal(weights[k], offline[k]) for k in weights)


def test_crash_while_saving_keeps_previous(setup, tmp_path, monkeypatch):
    fabric, config, model, optimizer = setup
    ckpt.save(fabric, tmp_path, 2, model, optimizer, {"step": 2}, config)
    real_save = ckpt.dcp.save

    def dies_midway(state, **kwargs):
        real_save(state, **kwargs)
        raise KeyboardInterrupt("killed after the shards, before meta.json and the rename")

    monkeypatch.setattr(ckpt.dcp, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(fabric, tmp_path, 4, model, optimizer, {"step": 4}, config)
    assert (tmp_path / ".tmp-step-00000004").is_dir()
    latest = ckpt.find_latest(tmp_path)
    assert latest.name == "step-00000002"
    assert ckpt.load(fabric, latest, model, optimizer)["step"] == 2


def test_config_mismatch(setup, tmp_path):
    fabric, config, model, optimizer = setup
    ckpt.save(fabric, tmp_path, 1, model, optimizer, {"step": 1}, config)
    with pytest.raises(CheckpointError, match="was saved for model"):
        ckpt.check_config(tmp_path / "step-00000001", small_config("gqa", n_layer=3))
    with pytest.raises(CheckpointError, match="no meta.json"):
        ckpt.load(fabric, tmp_path, model, optimizer)


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in (5, 10, 100, 1000):
        (tmp_path / f"step-{step:08d}").mkdir()
        (tmp_path / f"step-{step:08d}" / "meta.json").write_text("{}")
    (tmp_path / "step-00002000").mkdir()  # incomplete (no meta.json): neither counted nor deleted
    deleted = ckpt.prune(tmp_path, 2, current=1000)
    assert sorted(p.name for p in deleted) == ["step-00000005", "step-00000010"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000100", "step-00001000", "step-00002000"]
    assert ckpt.prune(tmp_path, 5, current=1000) == []
    # resumed from step 100 and saved step 200: a stale later step (1000) is never what gets deleted
    (tmp_path / "step-00000200").mkdir()
    (tmp_path / "step-00000200" / "meta.json").write_text("{}")
    assert [p.name for p in ckpt.prune(tmp_path, 1, current=200)] == ["step-00000100"]
    assert (tmp_path / "step-00000200").is_dir() and (tmp_path / "step-00001000").is_dir()
