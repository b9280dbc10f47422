"""Every operator end to end on the embedded sample: train a base, grow it, continue with --initial_checkpoint.

The function-preserving operators' continued runs start at the loss the base run logged on the same next
batch; the others start elsewhere but train."""

import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import ROOT, in_one_process
from test_pretrain import metrics

from lit_gpt import Config

PRESERVING = {"zero-depth", "random-depth", "zero-width", "hyperclone", "random-width"}
DEPTH = ("stack", "zero-depth", "random-depth", "learn-depth")
WIDTH = ("direct-width", "zero-width", "hyperclone", "random-width", "learn-width")


def run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


TRAIN = ("--global_batch_size", 4, "--micro_batch_size", 4, "--block_size", 64, "--learning_rate", 3e-3,
         "--warmup_steps", 2, "--eval_interval", 0, "--n_chunks", 2)


def train(sample_data, out_dir, *extra):
    run(ROOT / "pretrain" / "tinyllama.py", "--train_data_dir", sample_data / "packed", "--out_dir", out_dir, *TRAIN,
        *extra)


def test_every_operator_on_the_sample(sample_data, tmp_path):
    train(sample_data, tmp_path / "base", "--model_name", "2L128H", "--max_steps", 4, "--save_interval", 3)
    run("scripts/export_checkpoint.py", "--checkpoint_dir", tmp_path / "base" / "step-00000003",
        "--out_dir", tmp_path / "base3")
    base = metrics(tmp_path / "base")
    wide = replace(Config.from_name("2L128H"), name="2L256H-mha", n_embd=256, n_head=8, n_query_groups=8,
                   intermediate_size=704)
    wide.to_json(tmp_path / "wide.json")  # zero- and random-width are exact at the source's eps (growth/width.py)
    commands = []  # every grow and continued run in one process: start-up is most of a tiny command's time
    for op in DEPTH + WIDTH:
        target = "4L128H" if op in DEPTH else tmp_path / "wide.json"
        common = ("--src", tmp_path / "base3", "--target", target, "--op", op, "--out", tmp_path / op)
        if op.startswith("learn"):
            commands.append(["growth", "learn", *common, "--steps", 2, "--data", sample_data / "packed",
                             "--block_size", 64])
        else:
            commands.append(["growth", "grow", *common])
        commands.append(["pretrain/tinyllama.py", "--train_data_dir", sample_data / "packed", "--out_dir",
                         tmp_path / f"run-{op}", *TRAIN, "--model_name", target, "--max_steps", 2,
                         "--initial_checkpoint", tmp_path / op, "--mask_ramp_steps", 4])
    in_one_process(commands, tmp_path)
    for op in DEPTH + WIDTH:
        first, second = (float(metrics(tmp_path / f"run-{op}")[s]["train_loss"]) for s in (1, 2))
        assert math.isfinite(first) and math.isfinite(second), op
        if op in PRESERVING:
            assert first == pytest.approx(float(base[4]["train_loss"]), abs=1e-5), op
        else:
            assert abs(first - float(base[4]["train_loss"])) > 1e-4, op
