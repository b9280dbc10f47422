"""UPSTREAM.md against the tree: every flag of upstream TinyLlama's commands is taken here or listed as dropped
(and then refused with a line that points to UPSTREAM.md), and upstream's PRETRAIN.md launch runs under
`fabric run`, the successor of its `lightning run model`."""

import contextlib
import csv
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, command_error

# upstream's flags (jsonargparse signatures of jzhang38/TinyLlama main, ../shared/reference/tinyllama-upstream.md)
UPSTREAM_FLAGS = {
    "pretrain/tinyllama.py": ["--devices", "--train_data_dir", "--val_data_dir", "--precision", "--tpu", "--resume"],
    "scripts/prepare_slimpajama.py": ["--source_path", "--tokenizer_path", "--destination_path", "--chunk_size",
                                      "--split", "--percentage"],
    "scripts/prepare_starcoder.py": ["--source_path", "--tokenizer_path", "--destination_path", "--chunk_size",
                                     "--split", "--percentage", "--filenames_subset"],
    "scripts/convert_lit_checkpoint.py": ["--checkpoint_name", "--out_dir", "--model_name", "--model_only"],
    "scripts/convert_hf_checkpoint.py": ["--checkpoint_dir", "--model_name", "--dtype"],
}
ENTRY = {"pretrain/tinyllama.py": "run"}


def entry(script: str):
    spec = importlib.util.spec_from_file_location(f"upstream_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, ENTRY.get(script, "main"))


def help_text(script: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        entry(script)(["--help"])
    return out.getvalue()


def upstream_tables() -> dict:
    """{script: {flag: what UPSTREAM.md says}} from its "### SCRIPT" tables."""
    tables, script = {}, None
    for line in (ROOT / "UPSTREAM.md").read_text().splitlines():
        if line.startswith("#"):
            heading = re.fullmatch(r"### (\S+\.py)", line)
            script = heading.group(1) if heading else None
            if script:
                tables[script] = {}
        elif script and (row := re.fullmatch(r"\| `(--\w+)` \| (.+) \|", line)):
            tables[script][row.group(1)] = row.group(2)
    return tables


def test_every_upstream_flag_is_taken_or_listed_as_dropped(capsys):
    tables = upstream_tables()
    assert set(tables) == set(UPSTREAM_FLAGS)
    for script, flags in UPSTREAM_FLAGS.items():
        assert sorted(tables[script]) == sorted(flags), script  # no flag missing, none stale
        shown = help_text(script)
        for flag in flags:
            if tables[script][flag].startswith("dropped"):
                assert not re.search(rf"{flag}\b", shown), f"{script} lists {flag} as dropped but takes it"
                line = command_error(capsys, entry(script), [flag, "True"], code=2)
                assert "UPSTREAM.md" in line and flag in line
            else:
                assert re.search(rf"{flag}\b", shown), f"{script}: UPSTREAM.md says it takes {flag}; --help has not"


def test_readme_links_upstream_md():
    assert "(UPSTREAM.md)" in (ROOT / "README.md").read_text()


def test_upstream_fp16_precision_points_to_upstream_md(capsys):
    line = command_error(capsys, entry("pretrain/tinyllama.py"), ["--precision", "16-mixed"], code=2)
    assert "UPSTREAM.md" in line and "bf16-mixed" in line


def test_fabric_cli_layout_is_taken(monkeypatch):
    from pretrain.preflight import adopt_fabric_cli
    from pretrain.train_args import TrainArgs, UsageError

    for key, value in {"LT_CLI_USED": "1", "LT_DEVICES": "4", "LT_NUM_NODES": "2", "LT_ACCELERATOR": "cuda",
                       "LT_STRATEGY": "ddp", "LT_PRECISION": "bf16-mixed"}.items():
        monkeypatch.setenv(key, value)
    args = TrainArgs(devices=8, precision="32-true")  # a recipe's values: the launcher's win
    adopt_fabric_cli(args)
    assert (args.devices, args.num_nodes, args.strategy, args.precision) == (4, 2, "ddp", "bf16-mixed")
    assert not any(key.startswith("LT_") for key in os.environ)  # Lightning must not compare them again
    monkeypatch.setenv("LT_PRECISION", "16-mixed")
    with pytest.raises(UsageError, match="16-mixed.*UPSTREAM.md"):
        adopt_fabric_cli(TrainArgs())


def test_a_launch_of_other_size_than_the_flags_is_refused(monkeypatch):
    """torchrun --nproc_per_node 2 without --devices 2: each process would train alone into one out_dir."""
    from lit_gpt.distributed import check_launcher_layout

    for key in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="started 2 processes.*give --devices 2 --num_nodes 1"):
        check_launcher_layout(1, 1)
    check_launcher_layout(2, 1)
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(ValueError, match="give --devices 8 --num_nodes 2"):
        check_launcher_layout(8, 1)


def test_resume_true_on_an_upstream_out_dir_is_one_line(capsys, sample_data, tmp_path):
    """Upstream's --resume True on its own out_dir (iter-*-ckpt.pth only) would otherwise train from scratch."""
    for step in (960000, 1000000):
        (tmp_path / f"iter-{step:06d}-ckpt.pth").write_bytes(b"")
    line = command_error(capsys, entry("pretrain/tinyllama.py"), [
        "--resume", "True", "--out_dir", str(tmp_path), "--train_data_dir", str(sample_data / "packed"),
        "--max_steps", "1"])
    assert "iter-1000000-ckpt.pth" in line and "--initial_checkpoint" in line and "UPSTREAM.md" in line


@pytest.mark.parametrize("flags,words", [
    (["--data_weights", "0", "0"], ["--data_weights 0 0", "above 0"]),
    (["--data_weights", "2", "-1"], ["--data_weights 2 -1", "at least 0"]),
    (["--data_weights", "nan", "1"], ["finite"]),
    (["--data_prefixes", "train_slim", "train_slimpajama"], ["train_slim and train_slimpajama", "one source"])])
def test_a_mixture_that_cannot_be_drawn_is_one_line(capsys, sample_data, tmp_path, flags, words):
    prefixes = [] if "--data_prefixes" in flags else ["--data_prefixes", "train_slimpajama", "train_slim"]
    line = command_error(capsys, entry("pretrain/tinyllama.py"), [
        "--out_dir", str(tmp_path / "o"), "--train_data_dir", str(sample_data / "packed"), "--max_steps", "1",
        *prefixes, *flags])
    assert all(word in line for word in words), line
    assert not (tmp_path / "o").exists()


def test_pretrain_md_launch_under_fabric_run(sample_data, tmp_path):
    """PRETRAIN.md's two-node launch, shrunk to one node of 2 CPU processes and a 2-layer model."""
    data = sample_data / "packed"
    fabric = Path(sys.executable).parent / "fabric"
    result = subprocess.run(
        [str(fabric), "run", "--node-rank=0", "--main-address=127.0.0.1", "--accelerator=cpu", "--devices=2",
         "--num-nodes=1", "pretrain/tinyllama.py", "--devices", "2", "--train_data_dir", str(data), "--val_data_dir",
         str(data), "--model_name", "2L128H", "--max_steps", "2", "--global_batch_size", "4", "--micro_batch_size",
         "2", "--eval_iters", "2", "--out_dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "fsdp x2" in result.stdout and "done: 2 steps" in result.stdout
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1", "2"]
    assert (tmp_path / "run" / "final" / "lit_model.pth").is_file()
