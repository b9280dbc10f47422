"""Training checkpoints: newest-by-number resume, atomic writes, offline consolidation."""

import json

import lightning_fabric as L
import pytest
import torch
from conftest import small_config

from lit_gpt import GPT
from lit_gpt import checkpoint as ckpt
from lit_gpt.consolidate import consolidate, consolidate_optimizer
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
    offline = consolidate(tmp_path / "step-00000003")
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


def test_prune_never_deletes_a_users_export_inside_a_step(tmp_path):
    """export_checkpoint.py writes into <step>/export and <step>/upstream by default: --keep_last keeps such a
    step whole and says so, instead of deleting the user's files with it."""
    for step in (1, 2, 3):
        path = tmp_path / f"step-{step:08d}"
        path.mkdir()
        for name in ("meta.json", "lit_config.json", "__0_0.distcp", ".metadata", "rng-rank0.pt"):
            (path / name).write_text("{}")
    (tmp_path / "step-00000001" / "upstream").mkdir()
    (tmp_path / "step-00000001" / "upstream" / "iter-000002-ckpt.pth").write_bytes(b"x")
    lines = []
    assert [p.name for p in ckpt.prune(tmp_path, 1, current=3, warn=lines.append)] == ["step-00000002"]
    assert (tmp_path / "step-00000001" / "upstream" / "iter-000002-ckpt.pth").read_bytes() == b"x"
    assert len(lines) == 1 and "step-00000001" in lines[0] and "upstream" in lines[0]


# ---- damage found from the files alone; --resume auto passes over it ----

def _truncate_shard(path):
    shard = next(path.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:1000])


def _garble(name, text="not what was written"):
    return lambda path: (path / name).write_text(text)


DAMAGE = {
    "truncated shard": (_truncate_shard, "its shard __0_0.distcp is truncated (1,000 bytes; .metadata records"),
    "missing shard": (lambda p: next(p.glob("*.distcp")).unlink(), "its shard __0_0.distcp is missing"),
    "missing .metadata": (lambda p: (p / ".metadata").unlink(), ".metadata cannot be read (No such file"),
    "garbled .metadata": (_garble(".metadata"), ".metadata cannot be read ("),
    "garbled meta.json": (_garble("meta.json", '{"step": '), "meta.json cannot be read (Expecting value"),
    "meta.json without step": (_garble("meta.json", "{}"), "meta.json holds no step number"),
    "meta.json with a bad world_size": (_garble("meta.json", '{"step": 3, "world_size": "2"}'),
                                        "meta.json holds no valid world_size"),
    "garbled lit_config.json": (_garble("lit_config.json", "[1, 2"), "lit_config.json cannot be read ("),
    "missing rng state": (lambda p: (p / "rng-rank0.pt").unlink(), "rng-rank0.pt is missing"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_named_by_every_reader(setup, tmp_path, kind):
    fabric, config, model, optimizer = setup
    path = ckpt.save(fabric, tmp_path, 3, model, optimizer, {"step": 3, "world_size": 1}, config)
    assert ckpt.damage(path) is None
    damage, words = DAMAGE[kind]
    damage(path)
    assert words in ckpt.damage(path)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    for read in (ckpt.check_intact, consolidate, consolidate_optimizer, ckpt.check_masks_settled,
                 lambda p: ckpt.load(fabric, p, model, optimizer)):
        with pytest.raises(CheckpointError) as error:
            read(path)
        assert str(error.value) == f"{path} is damaged: {ckpt.damage(path)}; use an earlier checkpoint"
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # found before loading


def test_corruption_inside_a_shard_is_one_line_at_load(setup, tmp_path):
    """A shard of the right size with other bytes passes the file checks; DCP's failure becomes one line."""
    fabric, config, model, optimizer = setup
    path = ckpt.save(fabric, tmp_path, 3, model, optimizer, {"step": 3}, config)
    shard = next(path.glob("*.distcp"))
    shard.write_bytes(bytes(shard.stat().st_size))
    assert ckpt.damage(path) is None
    for read in (consolidate, lambda p: ckpt.load(fabric, p, model, optimizer)):
        with pytest.raises(CheckpointError, match="if it is damaged, move it aside") as error:
            read(path)
        assert str(error.value).startswith(f"{path} cannot be loaded ") and "\n" not in str(error.value)


def test_resume_auto_passes_over_damaged_checkpoints(setup, tmp_path):
    fabric, config, model, optimizer = setup
    paths = [ckpt.save(fabric, tmp_path, step, model, optimizer, {"step": step}, config) for step in (2, 4, 6)]
    # saves are renamed into place whole: a step-* without meta.json lost it later, and is passed over as damaged
    (tmp_path / "step-00000008").mkdir()
    warnings = []
    assert ckpt.find_resumable(tmp_path, warnings.append) == paths[2]
    assert warnings == [f"warning: --resume auto passes over {tmp_path / 'step-00000008'}: meta.json cannot be read "
                        "(No such file or directory)"]
    (tmp_path / "step-00000008").rmdir()
    warnings = []
    size = (paths[2] / "__0_0.distcp").stat().st_size
    _truncate_shard(paths[2])
    (paths[1] / "rng-rank0.pt").unlink()
    assert ckpt.find_resumable(tmp_path, warnings.append) == paths[0]
    assert warnings == [f"warning: --resume auto passes over {paths[2]}: its shard __0_0.distcp is truncated "
                        f"(1,000 bytes; .metadata records {size:,})",
                        f"warning: --resume auto passes over {paths[1]}: rng-rank0.pt is missing"]
    (paths[0] / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=f"every checkpoint in {tmp_path} is damaged .the newest, {paths[2]}: "
                                              "its shard __0_0.distcp is truncated.*move them aside"):
        ckpt.find_resumable(tmp_path, lambda line: None)
    assert ckpt.find_resumable(tmp_path / "empty", warnings.append) is None


def test_saving_a_step_again_replaces_it_whole(setup, tmp_path):
    fabric, config, model, optimizer = setup
    path = ckpt.save(fabric, tmp_path, 2, model, optimizer, {"step": 2}, config)
    (path / "stale.txt").write_text("from the first save")
    _truncate_shard(path)
    assert ckpt.save(fabric, tmp_path, 2, model, optimizer, {"step": 2}, config) == path
    assert ckpt.damage(path) is None and not (path / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]


def test_masks_settled_reads_the_record_the_run_applied(setup, tmp_path):
    """meta.json's `growth` decides, not the growth.json beside --initial_checkpoint: a run started from a grown
    run's export (masks baked in, growth.json kept as provenance) applied no masks; a run resumed without
    --initial_checkpoint still did. Checkpoints saved before meta.json held it fall back to growth.json."""
    fabric, config, model, optimizer = setup
    export = tmp_path / "grown-run-final"
    export.mkdir()
    masked = {"operator": "random-depth", "masked_layers": [1]}
    (export / "growth.json").write_text(json.dumps(masked))
    hparams = {"initial_checkpoint": str(export), "mask_ramp_steps": 4}
    metas = {1: {"growth": None, "hparams": hparams}, 2: {"growth": masked, "hparams": {"mask_ramp_steps": 4}},
             3: {"hparams": hparams}}
    for step, meta in metas.items():
        ckpt.save(fabric, tmp_path / "run", step, model, optimizer, {"step": step, **meta}, config)
    ckpt.check_masks_settled(tmp_path / "run" / "step-00000001")
    for step in (2, 3):
        with pytest.raises(CheckpointError, match="growth masks ramp until step 5"):
            ckpt.check_masks_settled(tmp_path / "run" / f"step-{step:08d}")


def test_write_weights_writes_the_growth_record_beside_training(setup, tmp_path):
    _, config, model, _ = setup
    record = {"operator": "stack", "base_total_tokens": 2560}
    ckpt.write_weights(model.state_dict(), config, tmp_path / "grown", training={"tokens": 1, "growth": record},
                       growth=record)
    assert json.loads((tmp_path / "grown" / "growth.json").read_text()) == record
    ckpt.write_weights(model.state_dict(), config, tmp_path / "scratch", training={"tokens": 1, "growth": None})
    assert not (tmp_path / "scratch" / "growth.json").exists()
