"""Damaged checkpoints and failing writes, end to end. `--resume auto` passes over a damaged newest checkpoint
and ends bitwise where a run that never had it ends; every command refuses a damaged checkpoint, a full disk
(RLIMIT_FSIZE: writes fail with EFBIG) or an unwritable path with exactly one `error:` line, leaving the last
good checkpoint intact and no temporary files behind."""

import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, mode, umask
from test_pretrain import SCRIPT, args_for, data_dir, final_weights, metrics, train  # noqa: F401 - data_dir: fixture

from lit_gpt import Config
from lit_gpt import checkpoint as ckpt
from lit_gpt.consolidate import consolidate

STEPS = ("--max_steps", 4, "--save_interval", 2, "--eval_interval", 2)
# every column but the timings, which differ between any two runs
SAME = ("step", "tokens", "flops", "train_loss", "val_loss", "val_ppl", "lr")


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):  # noqa: F811
    """A run that saves step-00000002 and step-00000004 and never had a damaged checkpoint."""
    out = tmp_path_factory.mktemp("straight")
    train(data_dir, out, *STEPS)
    return out


def copy_run(straight: Path, dest: Path, *drop: str) -> Path:
    shutil.copytree(straight, dest)
    for name in drop:
        shutil.rmtree(dest / name)
    return dest


def truncate_shard(path: Path) -> str:
    shard = path / "__0_0.distcp"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    return f"its shard __0_0.distcp is truncated ({size // 2:,} bytes; .metadata records {size:,})"


def delete_shard(path: Path) -> str:
    (path / "__0_0.distcp").unlink()
    return "its shard __0_0.distcp is missing"


def snapshot(root: Path) -> dict:
    """Every file under `root` (hidden ones too): content hash and mode by relative path."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def lines(stderr: str, prefix: str) -> list:
    """The lines with `prefix`, except the warning that this synthetic data has no tokenizer (not under test)."""
    return [line for line in stderr.splitlines() if line.startswith(prefix) and "no tokenizer for the data" not in line]


def assert_one_error(result, expected: str) -> None:
    """Exit code 1, no traceback, and exactly one `error:` line, which starts with `expected`."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = lines(result.stderr, "error:")
    assert len(errors) == 1 and errors[0].startswith(expected), result.stderr[-3000:]


def limited(size: int):
    """preexec_fn: the child's writes past `size` bytes fail with EFBIG, as on a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def run_limited(argv: list, size: int) -> subprocess.CompletedProcess:
    # no bytecode: a .pyc compiled under the limit would be written truncated for every later import
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=ROOT, env=env,
                          preexec_fn=limited(size), timeout=300)


# ---- --resume auto falls back to the newest intact checkpoint ----

@pytest.mark.parametrize("damage", [truncate_shard, delete_shard], ids=["truncated", "deleted"])
def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(data_dir, straight, tmp_path, damage):  # noqa: F811
    run = copy_run(straight, tmp_path / "run", "final")
    why = damage(run / "step-00000004")
    result = train(data_dir, run, *STEPS, "--resume", "auto")
    assert lines(result.stderr, ("warning:", "error:")) == [
        f"warning: --resume auto passes over {run / 'step-00000004'}: {why}"]
    assert f"resumed from {run / 'step-00000002'} at step 2" in result.stdout
    a, b = final_weights(straight), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    expected, got = metrics(straight), metrics(run)
    assert sorted(got) == [1, 2, 3, 4] and float(got[4]["val_loss"]) > 0
    assert all(got[s][c] == expected[s][c] for s in expected for c in SAME)
    assert ckpt.damage(run / "step-00000004") is None  # saved again, whole
    assert sorted(p.name for p in run.iterdir()) == ["final", "metrics.csv", "step-00000002", "step-00000004"]


def test_a_damaged_checkpoint_is_refused_before_training(data_dir, straight, tmp_path):  # noqa: F811
    run = copy_run(straight, tmp_path / "run", "final")
    newest, older = run / "step-00000004", run / "step-00000002"
    why = truncate_shard(newest)
    before = snapshot(run)
    assert_one_error(train(data_dir, tmp_path / "other", *STEPS, "--resume", newest, check=False),
                     f"error: --resume: {newest} is damaged: {why}; use an earlier checkpoint")
    assert not (tmp_path / "other").exists() and snapshot(run) == before
    delete_shard(older)
    before = snapshot(run)
    result = train(data_dir, run, *STEPS, "--resume", "auto", check=False)
    assert_one_error(result, f"error: --resume auto: every checkpoint in {run} is damaged (the newest, {newest}: "
                             f"{why}); move them aside to start afresh")
    assert lines(result.stderr, "warning:") == []  # found by the check before the processes start
    assert snapshot(run) == before


@pytest.mark.parametrize("damage", [truncate_shard, delete_shard], ids=["truncated", "deleted"])
def test_export_and_grow_refuse_a_damaged_checkpoint(straight, tmp_path, capsys, damage):
    from growth.grow import main as grow
    from scripts.export_checkpoint import main as export

    run = copy_run(straight, tmp_path / "run", "final")
    step = run / "step-00000004"
    why = damage(step)
    before = snapshot(tmp_path)
    for command in (lambda: export(["--checkpoint_dir", str(step), "--out_dir", str(tmp_path / "export")]),
                    lambda: export(["--checkpoint_dir", str(run)]),  # its newest checkpoint
                    lambda: grow(["--src", str(step), "--target", str(step / "lit_config.json"), "--op", "stack",
                                  "--out", str(tmp_path / "grown")])):
        assert command() == 1
        assert capsys.readouterr().err.splitlines() == [f"error: {step} is damaged: {why}; use an earlier checkpoint"]
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ---- export_checkpoint.py: --force, umask, atomic ----

def test_export_replaces_only_with_force_and_follows_the_umask(straight, tmp_path, capsys):
    from scripts.export_checkpoint import main as export

    step = straight / "step-00000004"
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export(["--checkpoint_dir", str(step), "--out_dir", str(out)]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {out} exists and is not empty; pass --force to replace it"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    with umask(0o027):
        assert export(["--checkpoint_dir", str(step), "--out_dir", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["lit_config.json", "lit_model.pth", "training.json"]
    assert mode(out) == 0o750 and {mode(p) for p in out.iterdir()} == {0o640}
    exported, consolidated = torch.load(out / "lit_model.pth", weights_only=True), consolidate(step)
    assert all(torch.equal(exported[k], v) for k, v in consolidated.items())
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary directory left
    capsys.readouterr()
    assert export(["--checkpoint_dir", str(step), "--out_dir", str(straight), "--force"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: --out_dir {straight} holds the checkpoint {step}, which replacing it would delete; choose another "
        "path"]
    assert ckpt.damage(step) is None


def test_export_on_a_full_disk_keeps_the_old_export(straight, tmp_path):
    step = straight / "step-00000004"
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("an older export")
    result = run_limited(["scripts/export_checkpoint.py", "--checkpoint_dir", step, "--out_dir", out, "--force"],
                         64 * 1024)  # lit_model.pth is ~97 kB
    assert_one_error(result, f"error: {out / 'lit_model.pth'}: write failed (disk full or file size limit?")
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and [p.name for p in out.iterdir()] == ["notes.txt"]


# ---- growth: umask and a full disk ----

def test_grow_follows_the_umask_and_leaves_nothing_on_a_full_disk(straight, tmp_path, capsys):
    from growth.grow import main as grow

    target = tmp_path / "target.json"
    config = Config.from_json(straight / "final" / "lit_config.json")
    Config(**{**config.__dict__, "name": "tiny-4", "n_layer": 4}).to_json(target)
    argv = ["--src", straight / "final", "--target", target, "--op", "stack"]
    with umask(0o027):
        assert grow([*map(str, argv), "--out", str(tmp_path / "grown")]) == 0
    out = tmp_path / "grown"
    assert mode(out) == 0o750 and {mode(p) for p in out.iterdir()} == {0o640}
    for extra, name in (((), "lit_model.pth"), (("--safetensors",), "lit_model.safetensors")):
        result = run_limited(["-m", "growth", "grow", *argv, "--out", tmp_path / "full", *extra], 64 * 1024)
        # the cause: the OS's words where it gives one, else torch's zip writer's, with a hint
        assert_one_error(result, f"error: {tmp_path / 'full' / name}: write failed (")
        assert "File too large" in result.stderr or "disk full or file size limit?" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grown", "target.json"]


# ---- pretrain: unwritable --out_dir, a full disk while saving a checkpoint or writing final/ ----

def test_out_dir_below_a_file(data_dir, tmp_path):  # noqa: F811
    (tmp_path / "file").write_text("mine")
    result = train(data_dir, tmp_path / "file" / "out", "--max_steps", 1, check=False)
    assert_one_error(result, f"error: --out_dir {tmp_path / 'file' / 'out'} cannot be created: it or a directory "
                             "above it is a regular file")
    assert [p.name for p in tmp_path.iterdir()] == ["file"] and (tmp_path / "file").read_text() == "mine"


def test_full_disk_while_saving_keeps_the_last_checkpoint(data_dir, straight, tmp_path):  # noqa: F811
    run = copy_run(straight, tmp_path / "run", "final", "step-00000004")
    good = snapshot(run / "step-00000002")
    result = run_limited([SCRIPT, *args_for(data_dir, run, *STEPS, "--resume", "auto")], 150 * 1024)  # shard: ~395 kB
    assert_one_error(result, f"error: could not save step 4 into {run / 'step-00000004'} (disk full or file size "
                             "limit? ")
    assert "GiB free there): OSError: [Errno 27] File too large; the last complete checkpoint is kept" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["metrics.csv", "step-00000002"]  # no .tmp-step-00000004
    assert snapshot(run / "step-00000002") == good and ckpt.find_resumable(run, print) == run / "step-00000002"


def test_full_disk_while_writing_final_keeps_the_old_final(data_dir, straight, tmp_path):  # noqa: F811
    run = copy_run(straight, tmp_path / "run")
    before = snapshot(run)
    # resumed at its last step: no checkpoint to save, only final/ (lit_model.pth ~97 kB) to write
    result = run_limited([SCRIPT, *args_for(data_dir, run, *STEPS, "--resume", "auto")], 20 * 1024)
    assert_one_error(result, f"error: {run / 'final' / 'lit_model.pth'}: write failed (disk full or file size limit?")
    assert snapshot(run) == before  # metrics.csv rewritten with the rows it had
    assert sorted(p.name for p in run.iterdir()) == ["final", "metrics.csv", "step-00000002", "step-00000004"]


@pytest.mark.parametrize("logger,size,expected", [
    ("csv", 1024, "{out}/metrics.csv: cannot append a row: File too large"),
    ("tensorboard", 3000, "{out}/tensorboard: cannot write TensorBoard events: File too large")])
def test_full_disk_while_logging_names_the_file(data_dir, tmp_path, logger, size, expected):  # noqa: F811
    """Rank 0's metrics.csv and TensorBoard events (written from TensorBoard's own thread, whose traceback
    would be a second report) fail with one line naming the file."""
    out = tmp_path / "run"
    result = run_limited([SCRIPT, *args_for(data_dir, out, "--max_steps", 40, "--save_interval", 0, "--eval_interval",
                                            0, "--log_interval", 1, "--logger", logger)], size)
    assert_one_error(result, "error: " + expected.format(out=out))
    assert not list(out.glob(".*"))  # no temporary files
