"""Bad input over every command, run as a user runs it: a non-zero exit, exactly one stderr line starting with
`error:` that names the file or flag at fault, no traceback, and nothing new or changed on disk."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import zstandard

import pytest
from conftest import ROOT

from lit_gpt import Config

TINY = dict(name="tiny-bad", block_size=32, vocab_size=4096, padding_multiple=64, n_layer=2, n_head=2,
            n_query_groups=1, n_embd=32, intermediate_size=64)


@dataclass
class Case:
    id: str
    argv: Callable[[Path, Dict[str, Path]], List[str]]  # (scratch dir, world) -> command line after `python`
    needle: Callable[[Path, Dict[str, Path]], str]  # what the error line must name
    setup: Callable[[Path, Dict[str, Path]], None] = lambda tmp, w: None
    code: Tuple[int, ...] = (1, 2)


def snapshot(*roots: Path) -> Dict[str, Tuple]:
    """Every file and directory under `roots`: (kind, size, mtime, mode) by path."""
    found = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                found[str(p)] = (name in dirnames, st.st_size if name in filenames else 0, st.st_mtime_ns, st.st_mode)
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory, sample_data) -> Dict[str, Path]:
    """A tiny trained run on the sample data (a step checkpoint and final/), and its pieces."""
    root = tmp_path_factory.mktemp("world")
    Config(**TINY).to_json(root / "tiny.json")
    run = root / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "pretrain" / "tinyllama.py"), "--model_name", str(root / "tiny.json"),
         "--train_data_dir", str(sample_data / "packed"), "--out_dir", str(run), "--global_batch_size", "2",
         "--micro_batch_size", "2", "--max_steps", "2", "--save_interval", "1", "--eval_interval", "0",
         "--block_size", "32"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "config": root / "tiny.json", "run": run, "final": run / "final",
            "step": run / "step-00000001", "data": sample_data / "packed", "tokenizer": sample_data / "tokenizer"}


def _file(tmp: Path, name: str = "notes.txt") -> Path:
    (tmp / name).write_text("the user's file\n")
    return tmp / name


def _weights_file(tmp: Path, world: Dict[str, Path], text: str) -> None:
    """A checkpoint directory whose lit_model.pth holds `text`, beside a good lit_config.json."""
    (tmp / "src").mkdir()
    shutil.copy(world["final"] / "lit_config.json", tmp / "src")
    (tmp / "src" / "lit_model.pth").write_text(text)


def _dir_with_file(tmp: Path, name: str = "out") -> Path:
    (tmp / name).mkdir()
    _file(tmp / name)
    return tmp / name


CASES = [
    Case("demo-out-holds-user-files", lambda t, w: ["scripts/demo.py", "--out", str(t / "out")],
         lambda t, w: str(t / "out"), setup=lambda t, w: _dir_with_file(t)),
    Case("demo-bad-tokens-keeps-out", lambda t, w: ["scripts/demo.py", "--out", str(t / "out"), "--tokens", "1000"],
         lambda t, w: "--tokens", setup=lambda t, w: _dir_with_file(t)),
    Case("table-out-exists", lambda t, w: ["eval/table.py", "--paper", "fig3", "--out", str(t / "notes.txt")],
         lambda t, w: str(t / "notes.txt"), setup=lambda t, w: _file(t)),
    Case("table-out-below-a-file", lambda t, w: ["eval/table.py", "--paper", "fig3", "--out",
                                                 str(t / "notes.txt" / "t.md")],
         lambda t, w: str(t / "notes.txt"), setup=lambda t, w: _file(t)),
    Case("plot-out-exists", lambda t, w: ["eval/plot.py", str(w["run"]), "--y", "train_loss", "--out",
                                          str(t / "notes.txt")],
         lambda t, w: str(t / "notes.txt"), setup=lambda t, w: _file(t)),
    Case("speedup-no-metrics", lambda t, w: ["eval/speedup.py", "--scratch", str(t), "--grown", str(w["run"])],
         lambda t, w: str(t / "metrics.csv")),
    Case("pretrain-out-dir-below-a-file", lambda t, w: [
        "pretrain/tinyllama.py", "--model_name", str(w["config"]), "--train_data_dir", str(w["data"]),
        "--out_dir", str(t / "notes.txt" / "run"), "--max_steps", "1", "--global_batch_size", "2",
        "--micro_batch_size", "2"], lambda t, w: str(t / "notes.txt"), setup=lambda t, w: _file(t)),
    Case("grow-out-below-a-file", lambda t, w: [
        "-m", "growth", "grow", "--src", str(w["final"]), "--target", str(w["config"]), "--op", "stack",
        "--out", str(t / "notes.txt" / "grown")], lambda t, w: str(t / "notes.txt"), setup=lambda t, w: _file(t)),
]


def _config(tmp: Path, **change) -> Path:
    """The tiny model's lit_config.json with `change` written over it (values of any JSON type)."""
    path = tmp / "model.json"
    Config(**TINY).to_json(path)
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    return path


def _misspelt_config(tmp: Path) -> Path:
    path = _config(tmp)
    data = json.loads(path.read_text())
    data["n_layers"] = data.pop("n_layer")
    path.write_text(json.dumps(data))
    return path


def _damaged_step(tmp: Path, w: Dict[str, Path], how: str) -> Path:
    step = tmp / "run" / w["step"].name
    shutil.copytree(w["step"], step)
    shard = next(step.glob("*.distcp"))
    if how == "truncate":
        with shard.open("r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    else:
        shard.unlink()
    return step


def _truncated_zst(tmp: Path) -> Path:
    src = tmp / "src" / "train" / "chunk1"
    src.mkdir(parents=True)
    rows = "".join(json.dumps({"text": f"line {i} " * 20, "meta": {"redpajama_set_name": "RedPajamaC4"}}) + "\n"
                   for i in range(200))
    data = zstandard.ZstdCompressor().compress(rows.encode())
    (src / "example_train_0.jsonl.zst").write_bytes(data[: len(data) // 2])
    return src / "example_train_0.jsonl.zst"


def _pretrain(w: Dict[str, Path], out: Path, *extra: str) -> List[str]:
    return ["pretrain/tinyllama.py", "--train_data_dir", str(w["data"]), "--out_dir", str(out), "--max_steps", "1",
            "--global_batch_size", "2", "--micro_batch_size", "2", "--block_size", "32", *extra]


CASES += [
    Case("pretrain-config-unknown-key", lambda t, w: _pretrain(w, t / "run", "--model_name", str(t / "model.json")),
         lambda t, w: "n_layers", setup=lambda t, w: _misspelt_config(t)),
    Case("pretrain-config-wrong-type", lambda t, w: _pretrain(w, t / "run", "--model_name", str(t / "model.json")),
         lambda t, w: str(t / "model.json"), setup=lambda t, w: _config(t, n_layer="4")),
    Case("pretrain-config-not-json", lambda t, w: _pretrain(w, t / "run", "--model_name", str(t / "notes.txt")),
         lambda t, w: str(t / "notes.txt"), setup=lambda t, w: _file(t, "notes.txt")),
    Case("pretrain-recipe-bad-choice", lambda t, w: _pretrain(w, t / "run", "--config", str(t / "r.yaml")),
         lambda t, w: "strategy", setup=lambda t, w: (t / "r.yaml").write_text("strategy: fdsp\n"), code=(2,)),
    # resuming another run's step inside this one overwrote its step-*, final/ and metrics.csv
    Case("pretrain-resume-from-another-run", lambda t, w: _pretrain(w, t / "run", "--model_name", str(w["config"]),
                                                                    "--resume", str(w["step"])),
         lambda t, w: f"--out_dir {t / 'run'} holds another run",
         setup=lambda t, w: shutil.copytree(w["run"], t / "run")),
    Case("pretrain-missing-val-data", lambda t, w: _pretrain(w, t / "run", "--val_data_dir", str(t / "nowhere")),
         lambda t, w: f"--val_data_dir {t / 'nowhere'}"),
    Case("export-missing-checkpoint-dir", lambda t, w: ["scripts/export_checkpoint.py", "--checkpoint_dir",
                                                        str(t / "nowhere"), "--out_dir", str(t / "x")],
         lambda t, w: f"--checkpoint_dir {t / 'nowhere'}: not found"),
    Case("demo-zero-tokens", lambda t, w: ["scripts/demo.py", "--out_dir", str(t / "out"), "--tokens", "0"],
         lambda t, w: "--tokens must be a positive number", code=(2,)),
    Case("sample-data-out-is-a-file", lambda t, w: ["scripts/prepare_sample_data.py", "--out_dir", str(t / "notes.txt")],
         lambda t, w: f"--out_dir {t / 'notes.txt'}: is a file", setup=lambda t, w: _file(t)),
    Case("pretrain-bad-token-count", lambda t, w: _pretrain(w, t / "run", "--max_tokens", "5X"),
         lambda t, w: "--max_tokens", code=(2,)),
    Case("pretrain-vocab-smaller-than-data", lambda t, w: _pretrain(w, t / "run", "--model_name",
                                                                    str(t / "model.json")),
         lambda t, w: "vocab", setup=lambda t, w: _config(t, vocab_size=64, padded_vocab_size=64)),
    Case("pretrain-resume-truncated-shard", lambda t, w: _pretrain(w, t / "run2", "--model_name", str(w["config"]),
                                                                   "--resume", str(t / "run" / "step-00000001")),
         lambda t, w: str(t / "run" / "step-00000001"), setup=lambda t, w: _damaged_step(t, w, "truncate")),
    Case("pretrain-initial-checkpoint-other-model", lambda t, w: _pretrain(
        w, t / "run", "--model_name", "8L128H", "--initial_checkpoint", str(w["final"])),
        lambda t, w: "--model_name"),
    Case("export-damaged-shard", lambda t, w: ["scripts/export_checkpoint.py", "--checkpoint_dir",
                                               str(t / "run" / "step-00000001"), "--out_dir", str(t / "x")],
         lambda t, w: str(t / "run" / "step-00000001"), setup=lambda t, w: _damaged_step(t, w, "delete")),
    Case("export-out-exists", lambda t, w: ["scripts/export_checkpoint.py", "--checkpoint_dir", str(w["step"]),
                                            "--out_dir", str(t / "out")],
         lambda t, w: str(t / "out"), setup=lambda t, w: _dir_with_file(t)),
    Case("grow-damaged-source", lambda t, w: ["-m", "growth", "grow", "--src", str(t / "run" / "step-00000001"),
                                              "--target", "8L128H", "--op", "stack", "--out_dir", str(t / "g")],
         lambda t, w: str(t / "run" / "step-00000001"), setup=lambda t, w: _damaged_step(t, w, "truncate")),
    # torch's own message advised re-saving with `_use_new_zipfile_serialization`
    *[Case(f"grow-from-{kind}-weights", lambda t, w: ["-m", "growth", "grow", "--src", str(t / "src"), "--target",
                                                      "8L128H", "--op", "stack", "--out_dir", str(t / "g")],
           lambda t, w, words=words: f"{t / 'src' / 'lit_model.pth'} {words}",
           setup=lambda t, w, text=text: _weights_file(t, w, text))
      for kind, text, words in (("empty", "", "is empty"), ("text", "hello\n", "is not a torch checkpoint"))],
    Case("grow-shrinks", lambda t, w: ["-m", "growth", "grow", "--src", str(w["final"]), "--target",
                                       str(t / "model.json"), "--op", "stack", "--out_dir", str(t / "g")],
         lambda t, w: "layer", setup=lambda t, w: _config(t, n_layer=1)),
    Case("grow-target-unknown-key", lambda t, w: ["-m", "growth", "grow", "--src", str(w["final"]), "--target",
                                                  str(t / "model.json"), "--op", "stack", "--out_dir", str(t / "g")],
         lambda t, w: "n_layers", setup=lambda t, w: _misspelt_config(t)),
    Case("grow-out-holds-src", lambda t, w: ["-m", "growth", "grow", "--src", str(w["final"]), "--target", "8L128H",
                                             "--op", "stack", "--out_dir", str(w["run"]), "--force"],
         lambda t, w: str(w["final"])),
    Case("eval-out-exists", lambda t, w: ["eval/run.py", "--checkpoint_dir", str(w["final"]), "--tasks", "sample_mc",
                                          "--out", str(t / "notes.txt")],
         lambda t, w: str(t / "notes.txt"), setup=lambda t, w: _file(t)),
    Case("eval-no-checkpoint", lambda t, w: ["eval/run.py", "--checkpoint_dir", str(t / "nope"), "--tasks",
                                             "sample_mc", "--out", str(t / "r.json")], lambda t, w: str(t / "nope")),
    Case("convert-lit-out-exists", lambda t, w: ["scripts/convert_lit_checkpoint.py", "--checkpoint_path",
                                                 str(w["final"] / "lit_model.pth"), "--out_dir", str(t / "out")],
         lambda t, w: str(t / "out"), setup=lambda t, w: _dir_with_file(t)),
    Case("convert-hf-llama3-rope", lambda t, w: ["scripts/convert_hf_checkpoint.py", "--checkpoint_dir", str(t)],
         lambda t, w: str(t / "config.json"), setup=lambda t, w: (t / "config.json").write_text(json.dumps({
             "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128,
             "vocab_size": 256, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}))),
    Case("prepare-truncated-zst", lambda t, w: [
        "scripts/prepare_slimpajama.py", "--source_path", str(t / "src"), "--tokenizer_path", str(w["tokenizer"]),
        "--destination_path", str(t / "out"), "--split", "train"],
        lambda t, w: "example_train_0.jsonl.zst", setup=lambda t, w: _truncated_zst(t)),
    Case("stages-recipe-bad-choice", lambda t, w: ["-m", "growth", "stages", str(t / "r.yaml"), "--dry_run"],
         lambda t, w: "strategy", setup=lambda t, w: (t / "r.yaml").write_text(
             f"out_dir: {t / 'o'}\ntrain: {{strategy: fdsp}}\nstages:\n  - {{name: a, model_name: 2L128H}}\n")),
    Case("plan-bad-count", lambda t, w: ["-m", "growth", "plan", "--params", "1.1Q", "--tokens", "10B"],
         lambda t, w: "--params", code=(2,)),
    Case("layers-bad-spec", lambda t, w: ["-m", "growth", "layers", "12-3456*5-99", "--base", "6"],
         lambda t, w: "12-3456*5-99"),
    Case("reproduce-unknown-experiment", lambda t, w: ["scripts/reproduce.py", "nope", "--dry_run"],
         lambda t, w: "nope"),
    Case("table-result-not-json", lambda t, w: ["eval/table.py", str(t / "notes.txt")],
         lambda t, w: str(t / "notes.txt"), setup=lambda t, w: _file(t)),
]



def _copy(tmp: Path, source: Path, name: str) -> Path:
    shutil.copytree(source, tmp / name)
    return tmp / name


def _run_without_meta(tmp: Path, w: Dict[str, Path]) -> None:
    shutil.copytree(w["run"], tmp / "run")
    for meta in (tmp / "run").glob("step-*/meta.json"):
        meta.unlink()


CASES += [  # found by a helper trying the commands as a new user
    Case("pretrain-over-another-run", lambda t, w: _pretrain(w, t / "run", "--model_name", str(w["config"])),
         lambda t, w: "--resume auto", setup=lambda t, w: _copy(t, w["run"], "run")),
    Case("pretrain-out-dir-holds-initial-checkpoint", lambda t, w: _pretrain(
        w, t / "run", "--initial_checkpoint", str(t / "run" / "final"), "--force"),
        lambda t, w: "--initial_checkpoint", setup=lambda t, w: _copy(t, w["run"], "run")),
    Case("pretrain-resume-auto-every-meta-lost", lambda t, w: _pretrain(w, t / "run", "--model_name",
                                                                        str(w["config"]), "--resume", "auto"),
         lambda t, w: str(t / "run"), setup=_run_without_meta),
    Case("pretrain-negative-learning-rate", lambda t, w: _pretrain(w, t / "run", "--model_name", str(w["config"]),
                                                                   "--learning_rate", "-1"),
         lambda t, w: "--learning_rate"),
    Case("eval-out-is-an-input-file", lambda t, w: ["eval/run.py", "--checkpoint_dir", str(t / "final"), "--tasks",
                                                    "sample_mc", "--out", str(t / "final" / "lit_config.json"),
                                                    "--force"],
         lambda t, w: str(t / "final"), setup=lambda t, w: _copy(t, w["final"], "final")),
    Case("table-out-is-its-input", lambda t, w: ["eval/table.py", str(t / "r.json"), "--out", str(t / "r.json"),
                                                 "--force"],
         lambda t, w: str(t / "r.json"), setup=lambda t, w: (t / "r.json").write_text('{"results": {}}')),
    Case("speedup-negative-base-flops", lambda t, w: ["eval/speedup.py", "--scratch", str(w["run"]), "--grown",
                                                      str(w["run"]), "--add_base_flops=-1e9"],
         lambda t, w: "--add_base_flops"),
    Case("learn-unknown-device", lambda t, w: ["-m", "growth", "learn", "--src", str(w["final"]), "--target",
                                               str(t / "model.json"), "--op", "learn-depth", "--train_data_dir",
                                               str(w["data"]), "--out_dir", str(t / "g"), "--device", "tpu"],
         lambda t, w: "--device", setup=lambda t, w: _config(t, n_layer=4)),
    Case("growth-unknown-command", lambda t, w: ["-m", "growth", "grwo"], lambda t, w: "grwo", code=(2,)),
    Case("layers-shrinking-target", lambda t, w: ["-m", "growth", "layers", "cyclic", "--base", "6", "--target", "3"],
         lambda t, w: "--target"),
    Case("stages-negative-steps-in-dry-run", lambda t, w: ["-m", "growth", "stages", str(t / "r.yaml"), "--dry_run"],
         lambda t, w: "--max_steps", setup=lambda t, w: _stages(t, "4L128H", -2, "8L128H")),
    Case("stages-shrinking-in-dry-run", lambda t, w: ["-m", "growth", "stages", str(t / "r.yaml"), "--dry_run"],
         lambda t, w: "stage 'b'", setup=lambda t, w: _stages(t, "4L128H", 2, "2L128H")),
]


def _stages(tmp: Path, first: str, steps: int, second: str) -> None:
    (tmp / "r.yaml").write_text(
        f"out_dir: {tmp / 'o'}\ntrain: {{global_batch_size: 2, micro_batch_size: 2}}\nstages:\n"
        f"  - {{name: a, model_name: {first}, max_steps: {steps}}}\n"
        f"  - {{name: b, model_name: {second}, max_steps: 2, grow: {{op: stack}}}}\n")


def test_demo_never_deletes_its_input_or_the_repository(tmp_path, monkeypatch):
    """`scripts/demo.py --out_dir data --force` once deleted the sample data it reads; a repository root would
    have lost .git. Checked on a stand-in repository, so a regression cannot delete the real one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    for kept in ("data/sample/packed/x.bin", ".git/HEAD"):
        (tmp_path / kept).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / kept).write_text("keep")
    before = snapshot(tmp_path)
    for out in (tmp_path / "data", tmp_path / "data" / "sample", tmp_path):
        with pytest.raises(ValueError, match="which replacing it would delete"):
            demo.prepare_out(out, force=True)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world, tmp_path):
    case.setup(tmp_path, world)
    watched = (tmp_path, world["root"], ROOT / "out")
    before = snapshot(*[p for p in watched if p.exists()])
    result = subprocess.run([sys.executable, *case.argv(tmp_path, world)], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode in case.code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-2000:]
    assert case.needle(tmp_path, world) in errors[0], errors[0]
    assert snapshot(*[p for p in watched if p.exists()]) == before


def test_growing_a_training_checkpoint_keeps_the_runs_tokenizer(world, tmp_path):
    """A step-* checkpoint holds no tokenizer; the grown model takes the one its run trained with, which eval needs
    (found by the new-user helper: grown from step-*, eval then failed)."""
    result = subprocess.run([sys.executable, "-m", "growth", "grow", "--src", str(world["step"]), "--target",
                             str(_config(tmp_path, n_layer=4)), "--op", "stack", "--out_dir", str(tmp_path / "g")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "g" / "tokenizer.model").read_bytes() == (world["tokenizer"] / "tokenizer.model").read_bytes()
