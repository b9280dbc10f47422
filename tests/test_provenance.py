"""The growth record and the run's accounting survive training: a base trained on the sample, grown with stack,
trained on (and resumed), exported and grown again carries growth.json, base + grown tokens and the
scratch-equivalent tokens into every checkpoint, export, metrics row, eval JSON and table."""

import csv
import json
import sys

import pytest
from conftest import ROOT, in_one_process

from eval import table
from lit_gpt import Config
from lit_gpt.config import param_count
from lit_gpt.flops import flops_per_token
from lit_gpt.speed_monitor import MetricsLogger
from pretrain.parallel import growth_record
from pretrain.train_args import TrainArgs
from test_pretrain import metrics

sys.path.insert(0, str(ROOT / "eval"))
from checkpoint_info import checkpoint_info  # noqa: E402

BASE = dict(name="prov-1L", block_size=64, vocab_size=4096, padding_multiple=64, n_layer=1, n_head=2,
            n_query_groups=2, n_embd=32, intermediate_size=64)
BLOCK, BATCH = 64, 8  # 512 tokens a step
TRAIN = ("--global_batch_size", BATCH, "--micro_batch_size", BATCH, "--block_size", BLOCK, "--learning_rate", 3e-3,
         "--warmup_steps", 2, "--eval_interval", 0, "--n_chunks", 2)


def read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def runs(sample_data, tmp_path_factory):
    """base: 5 steps of 1 layer; grown: stack to 2 layers, 2 steps (step-2 saved), resumed to 3 steps without
    --initial_checkpoint; export-2: step-2 exported; regrown: the grown run's final/ grown to 3 layers."""
    t = tmp_path_factory.mktemp("provenance")
    for name, layers in (("base", 1), ("target", 2), ("target3", 3)):
        Config(**{**BASE, "name": f"prov-{layers}L", "n_layer": layers}).to_json(t / f"{name}.json")
    data = ("--train_data_dir", sample_data / "packed", *TRAIN)
    in_one_process([
        ["pretrain/tinyllama.py", *data, "--out_dir", t / "base", "--model_name", t / "base.json", "--max_steps", 5],
        ["growth", "grow", "--src", t / "base" / "final", "--target", t / "target.json", "--op", "stack",
         "--out", t / "grown"],
        ["pretrain/tinyllama.py", *data, "--out_dir", t / "run", "--initial_checkpoint", t / "grown",
         "--max_steps", 2, "--save_interval", 2],
        ["pretrain/tinyllama.py", *data, "--out_dir", t / "run", "--resume", "auto", "--max_steps", 3],
        ["scripts/export_checkpoint.py", "--checkpoint_dir", t / "run" / "step-00000002", "--out_dir", t / "export-2"],
        ["growth", "grow", "--src", t / "run" / "final", "--target", t / "target3.json", "--op", "stack",
         "--out", t / "regrown"],
    ], t)
    return t


def expected(tokens, flops):
    """run_accounting of the grown 2-layer run after `tokens` of its own: the base's 2560 tokens cost 2560 / 2
    target tokens in the paper's convention (g = 2 for 1 -> 2 layers)."""
    config = Config(**{**BASE, "name": "prov-2L", "n_layer": 2})
    paper = tokens + 2560 / 2
    return {"total_tokens": 2560 + tokens, "paper_flops": pytest.approx(6 * param_count(config) * paper),
            "scratch_tokens": {"exact": pytest.approx(flops / flops_per_token(config, BLOCK)), "paper": paper}}


def accounting(training):
    return {k: training[k] for k in ("total_tokens", "paper_flops", "scratch_tokens")}


def test_final_and_checkpoints_carry_the_growth_record(runs):
    record = read(runs / "grown" / "growth.json")
    assert record["base_total_tokens"] == 2560 and record["growth_factor"] == 2
    final = runs / "run" / "final"
    assert read(final / "growth.json") == record
    training = read(final / "training.json")
    assert training["growth"] == record and training["tokens"] == 3 * 512
    assert accounting(training) == expected(3 * 512, training["flops"])
    for step in (2, 3):  # step 3 was saved by the resumed run, started without --initial_checkpoint
        meta = read(runs / "run" / f"step-{step:08d}" / "meta.json")
        assert meta["growth"] == record
        assert accounting(meta) == expected(step * 512, meta["flops"])
    base = read(runs / "base" / "final" / "training.json")
    assert base["growth"] is None and not (runs / "base" / "final" / "growth.json").exists()
    assert base["total_tokens"] == 2560 and base["scratch_tokens"]["exact"] == pytest.approx(2560)


def test_a_step_export_carries_the_growth_record(runs):
    record = read(runs / "grown" / "growth.json")
    training = read(runs / "export-2" / "training.json")
    assert read(runs / "export-2" / "growth.json") == record
    assert training["growth"] == record and training["tokens"] == 2 * 512
    assert accounting(training) == expected(2 * 512, training["flops"])
    assert training["stream_tokens"] == 2560 + 2 * 512  # the grown run read on from where its base stopped


def test_metrics_log_paper_flops_on_every_row(runs):
    grown = metrics(runs / "run")
    assert sorted(grown) == [1, 2, 3]
    for step, row in grown.items():
        assert float(row["paper_flops"]) == expected(step * 512, 0.0)["paper_flops"]
    base = Config(**BASE)
    assert float(metrics(runs / "base")[5]["paper_flops"]) == pytest.approx(6 * param_count(base) * 2560)


def test_growth_chains_through_a_trained_grown_run(runs):
    record = read(runs / "regrown" / "growth.json")
    assert record["base_total_tokens"] == 2560 + 3 * 512
    assert record["base_scratch_tokens_paper"] == pytest.approx((3 * 512 + 2560 / 2) / record["growth_factor"])


def test_a_trained_export_is_not_a_fresh_growth(runs):
    """final/growth.json of a grown run is provenance: starting a new run from that final/ applies no growth
    record (no base FLOPs, no skipped stream, no masks), as before final/ carried it."""
    assert growth_record(TrainArgs(initial_checkpoint=str(runs / "run" / "final"))) == {}
    assert growth_record(TrainArgs(initial_checkpoint=str(runs / "grown")))["operator"] == "stack"


def test_eval_info_and_table_show_base_plus_grown_tokens(runs):
    grown, base = checkpoint_info(runs / "run" / "final"), checkpoint_info(runs / "base" / "final")
    assert grown["growth"] == read(runs / "grown" / "growth.json")
    assert grown["training"]["total_tokens"] == 2560 + 3 * 512
    assert grown["training"]["scratch_tokens"]["paper"] == 3 * 512 + 2560 / 2
    assert base["growth"] is None and base["training"]["total_tokens"] == 2560
    results = [{"name": name, "results": {}, **info} for name, info in (("grown", grown), ("base", base))]
    shown = {row.key: row for row in table.build_table(results)}
    assert shown["tokens"].label == "Train tokens (base + grown)"
    assert shown["tokens"].cells() == ["2.56K + 1.54K", "2.56K"]
    assert shown["scratch_tokens_paper"].label == "Scratch-equivalent tokens (paper)"
    assert shown["scratch_tokens_paper"].cells() == ["2.82K", "2.56K"]
    assert shown["scratch_tokens_exact"].label == "Scratch-equivalent tokens (exact)"
    assert shown["scratch_tokens_exact"].cells()[1] == "2.56K" and shown["scratch_tokens_exact"].cells()[0] != "-"


def test_resume_reads_a_metrics_csv_without_paper_flops(tmp_path):
    old = ["step", "tokens", "flops", "train_loss", "val_loss", "val_ppl", "lr", "tokens_per_sec", "mfu",
           "elapsed_sec"]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, old)
        writer.writeheader()
        writer.writerows([{"step": s, "tokens": 512 * s, "flops": 1e9 * s, "train_loss": 5.0} for s in (1, 2, 3)])
    logger = MetricsLogger(tmp_path, "csv", 2, "run")
    logger.log({"step": 3, "tokens": 1536, "flops": 3e9, "paper_flops": 4e9, "train_loss": 4.0})
    kept = metrics(tmp_path)
    assert sorted(kept) == [1, 2, 3] and kept[2]["paper_flops"] == "" and kept[2]["flops"] == "2000000000.0"
    assert kept[3]["paper_flops"] == "4000000000.0"
