"""The training loop end to end on CPU: single process, two-process FSDP, resume, kill, bad input."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT

from lit_gpt import GPT, Config
from lit_gpt.materialize import init_parameters
from lit_gpt.packed_dataset import PackedDatasetBuilder

SCRIPT = ROOT / "pretrain" / "tinyllama.py"
MODEL = dict(name="tiny-train", block_size=32, vocab_size=64, padding_multiple=64, n_layer=2, n_head=4,
             n_query_groups=2, n_embd=32, intermediate_size=64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Packed files of a learnable token pattern: counting sequences with random starts and strides."""
    d = tmp_path_factory.mktemp("packed")
    rng = np.random.default_rng(0)
    for split, n_docs, n_files in (("train_slimpajama", 600, 3), ("validation", 60, 1)):
        for proc in range(n_files):
            builder = PackedDatasetBuilder(d, f"{split}_{proc}", chunk_size=33 * 32, sep_token=1, dtype="auto",
                                           vocab_size=64)
            for _ in range(n_docs // n_files):
                start, stride = rng.integers(3, 64), rng.integers(1, 4)
                builder.add_array((start + stride * np.arange(rng.integers(20, 60))) % 61 + 3)
            builder.write_reminder(block_size=33)
    Config(**MODEL).to_json(d / "model.json")
    return d


def args_for(data_dir, out_dir, *extra):
    return ["--model_name", str(data_dir / "model.json"), "--train_data_dir", str(data_dir), "--out_dir", str(out_dir),
            "--global_batch_size", "8", "--micro_batch_size", "2", "--learning_rate", "3e-3", "--min_lr", "3e-4",
            "--warmup_steps", "2", "--eval_iters", "2", "--n_chunks", "2", *map(str, extra)]


def train(data_dir, out_dir, *extra, check=True, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), *args_for(data_dir, out_dir, *extra)], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=600, **popen)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def metrics(out_dir):
    with open(out_dir / "metrics.csv") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def final_weights(out_dir):
    return torch.load(out_dir / "final" / "lit_model.pth", weights_only=True)


def test_single_process_run(data_dir, tmp_path):
    result = train(data_dir, tmp_path, "--max_steps", 12, "--eval_interval", 6, "--save_interval", 6,
                   "--logger", "tensorboard")
    rows = metrics(tmp_path)
    assert sorted(rows) == list(range(1, 13))
    assert float(rows[12]["train_loss"]) < float(rows[1]["train_loss"]) - 0.5
    assert rows[6]["val_loss"] and rows[12]["val_loss"] and not rows[5]["val_loss"]
    assert int(rows[12]["tokens"]) == 12 * 8 * 32
    assert float(rows[12]["flops"]) == pytest.approx(12 * float(rows[1]["flops"]))
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000006", "step-00000012"]
    assert (tmp_path / "final" / "lit_config.json").is_file()
    assert final_weights(tmp_path)["transformer.h.1.attn.attn.weight"].shape == (64, 32)
    assert "ETA" in result.stdout and "val loss" in result.stdout
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    export = subprocess.run([sys.executable, "scripts/export_checkpoint.py", "--checkpoint_dir", str(tmp_path),
                             "--out_dir", str(tmp_path / "export")], cwd=ROOT, capture_output=True, text=True)
    assert export.returncode == 0, export.stderr
    exported = torch.load(tmp_path / "export" / "lit_model.pth", weights_only=True)
    assert all(torch.equal(exported[k], v) for k, v in final_weights(tmp_path).items())


def test_zero_tokens_exports_the_initial_weights(data_dir, tmp_path):
    """The paper's growth-timing point d = 0 (stacking an untrained base) is a run of --max_tokens 0."""
    train(data_dir, tmp_path, "--max_tokens", 0, "--eval_interval", 0)
    model = GPT(Config(**MODEL))
    init_parameters(model, 3407)  # upstream's init, one seed per parameter: the same for any number of processes
    init = model.state_dict()
    assert all(torch.equal(final_weights(tmp_path)[k], v) for k, v in init.items())
    training = json.loads((tmp_path / "final" / "training.json").read_text())
    assert (training["step"], training["tokens"], training["flops"]) == (0, 0, 0.0)
    assert train(data_dir, tmp_path / "neg", "--max_tokens", -5, check=False).returncode == 1


def test_sigkill_and_resume_is_bitwise_identical(data_dir, tmp_path):
    steps = ("--max_steps", 10, "--eval_interval", 0, "--save_interval", 2)
    train(data_dir, tmp_path / "straight", *steps)
    victim = tmp_path / "killed"
    kill_after = random.Random(7).choice([2, 4, 6])
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args_for(data_dir, victim, *steps)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not (victim / f"step-{kill_after:08d}" / "meta.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (victim / "final").exists()
    train(data_dir, victim, *steps, "--resume", "auto")
    a, b = final_weights(tmp_path / "straight"), final_weights(victim)
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight, resumed = metrics(tmp_path / "straight"), metrics(victim)
    assert sorted(resumed) == list(range(1, 11))  # rows past the checkpoint were dropped and rewritten
    assert all(straight[s]["train_loss"] == resumed[s]["train_loss"] for s in straight)


def test_fsdp_two_processes_resume_on_two_and_one(data_dir, tmp_path):
    steps = ("--max_steps", 4, "--eval_interval", 0, "--save_interval", 2)
    train(data_dir, tmp_path / "fsdp", *steps, "--devices", 2, "--strategy", "fsdp")
    checkpoint = tmp_path / "fsdp" / "step-00000002"
    assert len(list(checkpoint.glob("*.distcp"))) == 2  # one shard file per rank
    reference = metrics(tmp_path / "fsdp")
    # activation checkpointing recomputes the same forward: it must not change the numbers
    for name, extra in (("two", ("--devices", 2, "--strategy", "fsdp", "--activation_checkpointing", "true")),
                        ("one", ("--strategy", "single"))):
        out = tmp_path / name
        train(data_dir, out, *steps, *extra, "--resume", checkpoint)
        rows = metrics(out)
        # the same global batches in the same order; only the reduction order of gradients differs
        assert float(rows[3]["train_loss"]) == pytest.approx(float(reference[3]["train_loss"]), abs=1e-5)
        assert float(rows[4]["train_loss"]) == pytest.approx(float(reference[4]["train_loss"]), abs=1e-5)
    # DDP against FSDP and one process, for 2 to 4 processes: tests/test_distributed.py


def test_grown_model_continues_base_flops(data_dir, tmp_path):
    train(data_dir, tmp_path / "base", "--max_steps", 2, "--eval_interval", 0)
    start = tmp_path / "base" / "final"
    (start / "growth.json").write_text('{"base_flops": 1.5e12, "base_tokens": 512}')
    train(data_dir, tmp_path / "grown", "--max_steps", 2, "--eval_interval", 0, "--initial_checkpoint", start)
    base, grown = metrics(tmp_path / "base"), metrics(tmp_path / "grown")
    assert float(grown[2]["flops"]) == pytest.approx(1.5e12 + float(base[2]["flops"]))
    assert int(grown[2]["tokens"]) == int(base[2]["tokens"])  # tokens count this model's own training
    assert float(grown[1]["train_loss"]) < float(base[1]["train_loss"])  # it did start from the trained weights


def assert_refused(result, *words):
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for w in words:
        assert w in errors[0], errors[0]


def test_bad_input(data_dir, tmp_path):
    model = ("--model_name", data_dir / "model.json", "--max_steps", 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(train(empty, tmp_path / "o", *model, check=False), "no train_slimpajama*.bin files")
    assert_refused(train(data_dir, tmp_path / "o", "--max_steps", 1, "--model_name", "nope", check=False),
                   "unknown model name")
    assert not (tmp_path / "o").exists()

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in data_dir.glob("*.bin"):
        (corrupt / f.name).write_bytes(f.read_bytes())
    first = sorted(corrupt.glob("train_*.bin"))[0]
    first.write_bytes(b"NOTPKDS" + first.read_bytes()[7:])
    assert_refused(train(corrupt, tmp_path / "o", *model, check=False), first.name)

    import sentencepiece as spm

    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    text = ["the quick brown fox jumps over the lazy dog number %d again and again" % i for i in range(400)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(tokenizer / "tokenizer"),
                                   vocab_size=70, minloglevel=2)
    assert_refused(train(data_dir, tmp_path / "o", *model, "--tokenizer_dir", tokenizer, check=False),
                   "70 tokens", "64 embedding rows")

    other = tmp_path / "other.json"
    Config(**{**MODEL, "n_layer": 3}).to_json(other)
    train(data_dir, tmp_path / "run", "--max_steps", 2, "--eval_interval", 0, "--save_interval", 2)
    assert_refused(train(data_dir, tmp_path / "o", "--max_steps", 4, "--model_name", other,
                         "--resume", tmp_path / "run" / "step-00000002", check=False), "was saved for model")
    assert_refused(train(data_dir, tmp_path / "o", "--max_steps", 4, "--model_name", other,
                         "--initial_checkpoint", tmp_path / "run" / "final", check=False), "disagrees with")
    assert_refused(train(data_dir, tmp_path / "o", *model, "--global_batch_size", 7, check=False), "multiple")


@pytest.mark.parametrize("flags,words", [
    (dict(micro_batch_size=0), "--micro_batch_size must be at least 1"),
    (dict(global_batch_size=0), "--global_batch_size must be at least 1"),
    (dict(log_interval=0), "--log_interval must be at least 1"),
    (dict(eval_iters=0), "--eval_iters must be at least 1"),
    (dict(save_interval=-1), "--save_interval cannot be negative"),
    (dict(collective_timeout=float("inf")), "--collective_timeout must be a positive"),
    (dict(collective_timeout=float("nan")), "--collective_timeout must be a positive"),
    (dict(devices=0), "--devices and --num_nodes"),
    (dict(devices=2, strategy="single"), "--strategy single"),
])
def test_flags_are_checked_before_any_work(flags, words):
    from pretrain.train_args import TrainArgs, UsageError

    with pytest.raises(UsageError, match=words.replace("-", "\\-")):
        TrainArgs(**{"max_steps": 1, "global_batch_size": 8, "micro_batch_size": 2, **flags}).check()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_during_start_up_ends_at_once_and_leaves_nothing(data_dir, tmp_path, sig):
    """A 100000-layer model takes minutes to build: a stop signal then ended nothing (SIGINT and SIGTERM only set
    the flag that the first step reads) and a run that never started left its empty out_dir."""
    Config(**{**MODEL, "n_layer": 100_000}).to_json(tmp_path / "huge.json")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args_for(data_dir, out, "--model_name", tmp_path / "huge.json",
                                                                    "--max_steps", 1, "--eval_interval", 0)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("building tiny-train: ")
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err[-3000:]
    errors = [line for line in err.splitlines() if not line.startswith("warning: no tokenizer")]
    assert errors == [f"error: stopped by {signal.Signals(sig).name} during start-up, before the first step: "
                      "nothing was saved"]
    assert not out.exists()


def test_a_reader_that_leaves_does_not_end_the_run(data_dir, tmp_path):
    """`pretrain/tinyllama.py ... | head -1`: the log is lost once the reader has gone, the run is not."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args_for(data_dir, out, "--max_steps", 2)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err[-3000:]
    assert "Traceback" not in err and (out / "final" / "lit_model.pth").is_file()


def test_a_seed_out_of_range_is_refused_before_anything_is_made(data_dir, tmp_path):
    result = train(data_dir, tmp_path / "run", "--max_steps", 1, "--seed", -1, check=False)
    assert_refused(result, "--seed must be from 0 to 4294967295")
    assert not (tmp_path / "run").exists()
