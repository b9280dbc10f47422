"""Train a base, grow it, continue training from the grown weights: the data stream and FLOPs carry over."""

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, in_one_process
from test_pretrain import MODEL, args_for, data_dir, metrics, train  # noqa: F401 - data_dir is a fixture

from lit_gpt import Config
from lit_gpt.consolidate import consolidate_optimizer


def run(*args):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_function_preserving_growth_continues_the_base_run(data_dir, tmp_path):  # noqa: F811
    train(data_dir, tmp_path / "base", "--max_steps", 5, "--eval_interval", 0, "--save_interval", 4)
    run("scripts/export_checkpoint.py", "--checkpoint_dir", tmp_path / "base" / "step-00000004",
        "--out_dir", tmp_path / "base4")
    target = tmp_path / "target.json"
    Config(**{**MODEL, "n_layer": 4}).to_json(target)
    commands = []
    for op in ("zero-depth", "stack", "random-depth"):
        commands.append(["growth", "grow", "--src", tmp_path / "base4", "--target", target, "--op", op,
                         "--out", tmp_path / op])
        commands.append(["pretrain/tinyllama.py", *args_for(data_dir, tmp_path / f"run-{op}", "--model_name", target,
                         "--max_steps", 2, "--eval_interval", 0, "--initial_checkpoint", tmp_path / op,
                         "--mask_ramp_steps", 4)])
    in_one_process(commands, tmp_path)
    refused = subprocess.run([sys.executable, "scripts/export_checkpoint.py", "--checkpoint_dir",
                              str(tmp_path / "run-random-depth" / "step-00000002")], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 1 and "masks ramp until step 5" in refused.stderr  # mask 1/4 in the raw weights
    # the masks come from the growth record beside --initial_checkpoint: a resume without it would drop them
    refused = subprocess.run([sys.executable, "pretrain/tinyllama.py", *args_for(
        data_dir, tmp_path / "run-random-depth", "--model_name", target, "--max_steps", 3, "--eval_interval", 0,
        "--resume", "auto")],
        cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 1 and f"resume with --initial_checkpoint {tmp_path / 'random-depth'}" in \
        refused.stderr, refused.stderr
    base, zero, stacked = metrics(tmp_path / "base"), metrics(tmp_path / "run-zero-depth"), metrics(tmp_path / "run-stack")
    masked = metrics(tmp_path / "run-random-depth")
    # the grown run reads the batch the base run would have read next (step 5), with the base's function
    assert float(zero[1]["train_loss"]) == pytest.approx(float(base[5]["train_loss"]), abs=1e-5)
    assert float(masked[1]["train_loss"]) == pytest.approx(float(base[5]["train_loss"]), abs=1e-5)  # mask 0
    assert abs(float(stacked[1]["train_loss"]) - float(base[5]["train_loss"])) > 1e-3  # G_stack: not preserving
    grown_step_flops = float(zero[2]["flops"]) - float(zero[1]["flops"])
    assert float(zero[1]["flops"]) == pytest.approx(float(base[4]["flops"]) + grown_step_flops)


def test_optimizer_state_carry(data_dir, tmp_path):  # noqa: F811
    train(data_dir, tmp_path / "base", "--max_steps", 3, "--eval_interval", 0, "--save_interval", 3)
    target = tmp_path / "target.json"
    Config(**{**MODEL, "n_layer": 4}).to_json(target)
    step3 = tmp_path / "base" / "step-00000003"
    run("-m", "growth", "grow", "--src", step3, "--target", target, "--op", "stack", "--out", tmp_path / "grown",
        "--carry_optimizer")
    moments = torch.load(tmp_path / "grown" / "optimizer_moments.pth", weights_only=True)
    base = consolidate_optimizer(step3)
    assert moments["step"] == 3.0
    for j, s in enumerate([0, 1, 0, 1]):
        key = "transformer.h.{}.mlp.swiglu.w1.weight"
        assert torch.equal(moments["exp_avg_sq"][key.format(j)], base["exp_avg_sq"][key.format(s)])
    in_one_process([["pretrain/tinyllama.py", *args_for(data_dir, tmp_path / mode, "--model_name", target, "--max_steps",
                     2, "--eval_interval", 0, "--initial_checkpoint", tmp_path / "grown", "--optimizer_state", mode)]
                    for mode in ("reset", "carry")], tmp_path)
    reset, carry = metrics(tmp_path / "reset"), metrics(tmp_path / "carry")
    assert reset[1]["train_loss"] == carry[1]["train_loss"]  # same weights, same batch
    assert reset[2]["train_loss"] != carry[2]["train_loss"]  # different first update
    refused = subprocess.run([sys.executable, "pretrain/tinyllama.py", "--model_name", str(target), "--train_data_dir",
                              str(data_dir), "--max_steps", "1", "--optimizer_state", "carry"], cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "--carry_optimizer" in refused.stderr


def test_optimizer_state_carry_from_a_tied_model(data_dir, tmp_path):  # noqa: F811
    """A tied embedding's AdamW state is saved once, under the LM head's name; carry maps it to both names."""
    base = tmp_path / "base.json"
    Config(**{**MODEL, "tie_embeddings": True}).to_json(base)
    target = tmp_path / "target.json"
    Config(**{**MODEL, "tie_embeddings": True, "n_layer": 4}).to_json(target)
    step2 = tmp_path / "base" / "step-00000002"
    in_one_process([
        ["pretrain/tinyllama.py", *args_for(data_dir, tmp_path / "base", "--model_name", base, "--max_steps", 2,
                                            "--eval_interval", 0, "--save_interval", 2)],
        ["growth", "grow", "--src", step2, "--target", target, "--op", "zero-depth", "--out", tmp_path / "grown",
         "--carry_optimizer"],
        ["pretrain/tinyllama.py", *args_for(data_dir, tmp_path / "carry", "--model_name", target, "--max_steps", 1,
                                            "--eval_interval", 0, "--initial_checkpoint", tmp_path / "grown",
                                            "--optimizer_state", "carry")]], tmp_path)
    moments = torch.load(tmp_path / "grown" / "optimizer_moments.pth", weights_only=True)
    head, embedding = moments["exp_avg_sq"]["lm_head.weight"], moments["exp_avg_sq"]["transformer.wte.weight"]
    assert torch.equal(head, embedding) and head.any()
