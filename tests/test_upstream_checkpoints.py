"""Upstream TinyLlama's checkpoint command lines on a run of ours: scripts/export_checkpoint.py --format upstream
(iter-NNNNNN-ckpt.pth), the converter's upstream form and --initial_checkpoint on that file, and --resume in
upstream's bool form (a single file: one line saying what to do instead)."""

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, command_error
from test_convert import LIT_SCRIPT, SCRIPTS, load_script
from test_pretrain import args_for, data_dir, final_weights, metrics  # noqa: F401 - data_dir: fixture

from lit_gpt import Config
from lit_gpt.checkpoint import own_storages
from lit_gpt.cli import parse
from lit_gpt.convert import copy_weights_llama
from pretrain.train_args import TrainArgs

EXPORT = load_script(ROOT / "scripts" / "export_checkpoint.py").main
CONVERT = SCRIPTS[LIT_SCRIPT].main
# args_for: global batch 8 = micro-batch 2 x 1 process x 4 micro-batches a step, so upstream's iter_num is 4 x step
ITER = "iter-000016-ckpt.pth"


def train_here(argv) -> int:
    """pretrain/tinyllama.py in this process (a tiny run costs a fraction of a second, a new process seconds),
    with the signal handlers it sets put back afterwards."""
    from pretrain.tinyllama import run

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        return run([str(a) for a in argv])
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):  # noqa: F811
    """A 4-step run (checkpoints at steps 2 and 4), its lit export and its upstream export of step 4."""
    root = tmp_path_factory.mktemp("upstream")
    steps = ("--max_steps", 4, "--save_interval", 2, "--eval_interval", 0)
    assert train_here(args_for(data_dir, root / "run", *steps)) == 0
    assert EXPORT(["--checkpoint_dir", str(root / "run"), "--out_dir", str(root / "lit")]) == 0
    assert EXPORT(["--checkpoint_dir", str(root / "run"), "--format", "upstream", "--out_dir", str(root / "up")]) == 0
    return root


def test_export_upstream_is_what_upstream_reads(trained, data_dir, capsys):  # noqa: F811
    up = trained / "up"
    assert sorted(p.name for p in up.iterdir()) == [ITER]
    checkpoint = torch.load(up / ITER, map_location="cpu", weights_only=False)  # as upstream's converter loads it
    state = checkpoint.get("model", checkpoint)
    lit = torch.load(trained / "lit" / "lit_model.pth", weights_only=True)
    assert sorted(state) == sorted(lit)
    assert all(state[k].dtype == lit[k].dtype and torch.equal(state[k], lit[k]) for k in lit)
    assert len({t.untyped_storage().data_ptr() for t in state.values()}) == len(state)
    assert all(t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
               for t in state.values())
    assert (checkpoint["iter_num"], checkpoint["step_count"]) == (16, 4)
    assert checkpoint["hparams"]["global_batch_size"] == 8 and checkpoint["hparams"]["max_steps"] == 4
    safe = torch.load(up / ITER, weights_only=True)  # nothing in it but tensors, numbers, strings
    assert all(torch.equal(safe["model"][k], state[k]) for k in state) and safe["hparams"] == checkpoint["hparams"]
    # upstream's own conversion (`copy_weights_llama` on the keys) and our converter's upstream form agree
    hf = copy_weights_llama(Config.from_json(trained / "lit" / "lit_config.json"), state)
    assert CONVERT(["--checkpoint_name", ITER, "--out_dir", str(up), "--model_name", str(data_dir / "model.json"),
                    "--model_only", "False"]) == 0
    written = torch.load(up / "iter-000016-ckpt.bin", weights_only=True)
    assert sorted(written) == sorted(hf) and all(torch.equal(written[k], hf[k]) for k in hf)
    assert json.loads((up / "config.json").read_text())["num_hidden_layers"] == 2
    # the file is replaced only with --force; --tokenizer_dir belongs to the lit format
    again = ["--checkpoint_dir", str(trained / "run"), "--format", "upstream", "--out_dir", str(up)]
    capsys.readouterr()
    assert f"{up / ITER} exists; pass --force to replace it" in command_error(capsys, EXPORT, again, 1)
    assert "--tokenizer_dir goes with --format lit" in command_error(
        capsys, EXPORT, [*again, "--tokenizer_dir", str(trained)], 2)
    assert EXPORT([*again, "--force"]) == 0
    assert sorted(p.name for p in up.iterdir()) == ["config.json", "iter-000016-ckpt.bin", ITER]


def test_export_upstream_without_batch_sizes_counts_steps(trained, tmp_path, capsys):
    """A checkpoint whose meta.json predates hparams: iter_num is the step, and a warning says so. The default
    folder is <checkpoint>/upstream."""
    step = shutil.copytree(trained / "run" / "step-00000002", tmp_path / "step-00000002")
    meta = json.loads((step / "meta.json").read_text())
    del meta["hparams"]
    (step / "meta.json").write_text(json.dumps(meta))
    assert EXPORT(["--checkpoint_dir", str(step), "--format", "upstream"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {step / 'meta.json'} records no batch sizes (hparams); iter_num is the step number 2" in err
    checkpoint = torch.load(step / "upstream" / "iter-000002-ckpt.pth", weights_only=True)
    assert (checkpoint["iter_num"], checkpoint["step_count"], checkpoint["hparams"]) == (2, 2, {})


def test_a_failed_export_leaves_nothing(trained, tmp_path, capsys, monkeypatch):
    """A full disk mid-write (torch.save's zip writer fails): one line naming the file; neither a temporary file
    nor the folder made for it is left."""
    def full_disk(obj, path):
        Path(path).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "new" / "up"
    err = command_error(capsys, EXPORT, ["--checkpoint_dir", str(trained / "run"), "--format", "upstream",
                                         "--out_dir", str(out)], 1)
    assert err.startswith(f"error: {out / ITER}: write failed (disk full or file size limit?")
    assert list(tmp_path.iterdir()) == []


def test_own_storages_unties_and_compacts():
    embedding, fused = torch.randn(8, 4), torch.randn(12, 4)
    state = own_storages({"wte": embedding, "lm_head": embedding, "q": fused[:4], "k": fused[4:8], "t": fused.t()})
    assert len({t.untyped_storage().data_ptr() for t in state.values()}) == 5
    assert state["wte"] is embedding and torch.equal(state["lm_head"], embedding)
    assert all(t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * 4 for t in state.values())
    assert torch.equal(state["k"], fused[4:8]) and torch.equal(state["t"], fused.t())


def test_initial_checkpoint_from_an_upstream_file(trained, data_dir, tmp_path):  # noqa: F811
    """--initial_checkpoint iter-NNNNNN-ckpt.pth: the weights under 'model' (0 tokens: the run exports them), also
    beside an optimizer state as upstream's files hold (full, keyed by parameter name, as FSDP-1 saves it)."""
    lit = torch.load(trained / "lit" / "lit_model.pth", weights_only=True)
    moments = {k: {"step": torch.tensor(4.0), "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)}
               for k, v in lit.items()}
    groups = [{"lr": 3e-3, "betas": (0.9, 0.95), "weight_decay": 0.1, "params": sorted(lit)}]
    torch.save({**torch.load(trained / "up" / ITER, weights_only=True),
                "optimizer": {"state": moments, "param_groups": groups}}, tmp_path / ITER)
    out = tmp_path / "run"
    assert train_here(args_for(data_dir, out, "--initial_checkpoint", tmp_path / ITER, "--max_tokens", 0,
                               "--eval_interval", 0)) == 0
    assert all(torch.equal(final_weights(out)[k], v) for k, v in lit.items())


@pytest.mark.parametrize("value, expected", [("True", "auto"), ("true", "auto"), ("1", "auto"), ("False", None),
                                             ("false", None), ("0", None), ("auto", "auto"),
                                             ("out/run/step-00000002", "out/run/step-00000002")])
def test_resume_reads_upstream_bool_form(tmp_path, value, expected):
    assert parse(TrainArgs, ["--resume", value]).resume == expected
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"resume": {"True": True, "False": False}.get(value, value)}))
    assert parse(TrainArgs, ["--config", str(tmp_path / "recipe.yaml")]).resume == expected


def test_resume_true_resumes_and_false_starts_afresh(trained, data_dir, tmp_path, capsys):  # noqa: F811
    out = shutil.copytree(trained / "run", tmp_path / "run")
    capsys.readouterr()
    assert train_here(args_for(data_dir, out, "--max_steps", 5, "--eval_interval", 0, "--resume", "True")) == 0
    assert f"resumed from {out / 'step-00000004'} at step 4" in capsys.readouterr().out
    assert sorted(metrics(out)) == [1, 2, 3, 4, 5]
    fresh = args_for(data_dir, out, "--max_steps", 1, "--eval_interval", 0, "--resume", "False")
    assert "holds another run" in command_error(capsys, train_here, fresh, 1)  # not resumed: refused over a run
    assert train_here([*fresh, "--force"]) == 0
    assert "resumed" not in capsys.readouterr().out
    assert sorted(metrics(out)) == [1]


def test_resume_of_a_single_file_is_one_line(trained, data_dir, tmp_path, capsys):  # noqa: F811
    file = trained / "up" / ITER
    err = command_error(capsys, train_here, args_for(data_dir, tmp_path / "o", "--max_steps", 1, "--resume", file), 1)
    assert err == (f"error: --resume {file} is a file: a single-file checkpoint (upstream TinyLlama's "
                   "iter-NNNNNN-ckpt.pth, or an export) holds no data-loader position, and upstream's optimizer state "
                   f"is FSDP1's, so it cannot be resumed here; start from its weights with --initial_checkpoint {file} "
                   "(a fresh optimizer) and --skip_tokens N to skip the data it saw (see UPSTREAM.md)\n")
    assert not (tmp_path / "o").exists()
