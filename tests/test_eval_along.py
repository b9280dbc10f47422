"""eval/run.py --run scores a run's checkpoints along its training (eval/along.py): one record per checkpoint with
its tokens and FLOPs, reruns skip what is scored, a killed scoring resumes; eval/plot.py draws the grid."""

import json

import pytest
from conftest import command_error, in_one_process

from eval import plot
from lit_gpt.config import Config
from lit_gpt.flops import flops_per_token

TPS = 8 * 256  # tokens per step: global batch 8 x block 256


def flags(sample, out, steps, *extra):
    return ["pretrain/tinyllama.py", "--train_data_dir", sample / "packed", "--out_dir", out, "--max_steps", steps,
            "--global_batch_size", "8", "--micro_batch_size", "4", "--warmup_steps", "2", "--eval_interval", "0",
            "--save_interval", "2", "--n_chunks", "2", *extra]


@pytest.fixture(scope="module")
def runs(sample_data, tmp_path_factory):
    """A 2-layer scratch run and a 4-layer run grown from its step 2 by G_stack, 4 steps each, saved every 2,
    both scored on the sample tasks with --run (in one process)."""
    tmp = tmp_path_factory.mktemp("along")
    scratch, grown = tmp / "scratch", tmp / "stack"
    in_one_process([
        flags(sample_data, scratch, 4, "--model_name", "2L128H"),
        ["growth", "grow", "--src", scratch / "step-00000002", "--target", "4L128H", "--op", "stack",
         "--out_dir", tmp / "grown"],
        flags(sample_data, grown, 4, "--initial_checkpoint", tmp / "grown"),
        ["eval/run.py", "--run", scratch, "--tasks", "sample", "--limit", "8"],
        ["eval/run.py", "--run", grown, "--tasks", "sample", "--limit", "8", "--name", "G_stack"],
    ], tmp)
    return tmp, scratch, grown


def records(run):
    return [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]


def test_one_record_per_checkpoint_with_its_tokens_and_flops(runs):
    tmp, scratch, grown = runs
    fpt2, fpt4 = (flops_per_token(Config.from_name(n), 256) for n in ("2L128H", "4L128H"))
    base_flops = 2 * TPS * fpt2  # the grown run's FLOPs start at its base's (step 2 of the scratch run)
    for run, fpt, start, name in ((scratch, fpt2, 0.0, "scratch"), (grown, fpt4, base_flops, "G_stack")):
        got = records(run)
        assert [r["training"]["step"] for r in got] == [2, 4]  # step-2, step-4; final/ is step 4 too: not twice
        assert [r["checkpoint"] for r in got] == [str(run / "step-00000002"), str(run / "step-00000004")]
        for r in got:
            step = r["training"]["step"]
            assert r["training"]["tokens"] == step * TPS and r["name"] == name
            assert r["training"]["flops"] == pytest.approx(start + step * TPS * fpt, rel=1e-9)
            assert r["training"]["scratch_tokens"]["exact"] == pytest.approx(r["training"]["flops"] / fpt, rel=1e-9)
            assert set(r["results"]) >= {"sample_mc", "sample_cloze", "sample_ppl"} and r["limit"] == 8
    assert records(grown)[0]["growth"]["operator"] == "stack"
    assert not list(scratch.glob("step-*/lit_model.pth"))  # scored in memory: nothing written beside the run


def test_the_last_record_equals_eval_of_the_final_export(runs, capsys):
    tmp, scratch, _ = runs
    from eval import run as eval_run

    out = tmp / "final.json"
    assert eval_run.main(["--checkpoint_dir", str(scratch / "final"), "--tasks", "sample", "--limit", "8",
                          "--out", str(out)]) == 0
    assert json.loads(out.read_text())["results"] == records(scratch)[-1]["results"]


def test_rerun_skips_and_a_killed_scoring_resumes(runs, capsys):
    tmp, scratch, _ = runs
    from eval import run as eval_run

    out = tmp / "resume.jsonl"
    lines = (scratch / "eval.jsonl").read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][:40])  # killed while writing the second record
    assert eval_run.main(["--run", str(scratch), "--tasks", "sample", "--limit", "8", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "dropped an incomplete last line" in err and "1 scored already, 1 to score" in err
    assert out.read_text() == "".join(lines)  # the same two records, the partial line gone
    assert eval_run.main(["--run", str(scratch), "--tasks", "sample", "--limit", "8", "--out", str(out)]) == 0
    assert "2 scored already, 0 to score" in capsys.readouterr().err and out.read_text() == "".join(lines)
    # other settings are other records: --every picks the first checkpoint past 3 steps' tokens, and the last
    assert eval_run.main(["--run", str(scratch), "--tasks", "sample_mc", "--every", str(3 * TPS), "--out",
                          str(out)]) == 0
    assert [json.loads(x)["training"]["step"] for x in out.read_text().splitlines()] == [2, 4, 4]


def test_bad_input_is_one_line(runs, capsys, tmp_path):
    tmp, scratch, _ = runs
    from eval import run as eval_run

    def error(*argv, code=1):
        return command_error(capsys, eval_run.main, [str(a) for a in argv], code)

    assert "no checkpoint of step 3" in error("--run", scratch, "--tasks", "sample", "--steps", "2,3")
    assert "(there: 2, 4)" in error("--run", scratch, "--tasks", "sample", "--steps", "3")
    assert "give one of --checkpoint_dir" in error("--tasks", "sample")
    assert "give one of --checkpoint_dir" in error("--run", scratch, "--checkpoint_dir", scratch / "final",
                                                   "--tasks", "sample")
    assert "at most one of --every and --steps" in error("--run", scratch, "--tasks", "sample", "--every", "5",
                                                         "--steps", "2")
    assert "no such directory" in error("--run", tmp_path / "nope", "--tasks", "sample")
    assert "no complete step-NNNNNNNN" in error("--run", tmp_path, "--tasks", "sample")
    assert "a checkpoint of the run" in error("--run", scratch, "--tasks", "sample", "--out",
                                              scratch / "step-00000002" / "x.jsonl")
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("my notes\n")
    assert "not a record of eval/run.py --run" in error("--run", scratch, "--tasks", "sample", "--out", foreign)
    assert foreign.read_text() == "my notes\n"
    assert "appends to --out" in error("--run", scratch, "--tasks", "sample", "--force")
    assert "choose checkpoints of --run" in error("--checkpoint_dir", scratch / "final", "--tasks", "sample",
                                                  "--every", "5", "--out", tmp_path / "x.json")
    assert "whole number" in error("--run", scratch, "--tasks", "sample", "--steps", "a", code=2)
    for every in ("0", "-5"):
        assert "must be at least 1" in error("--run", scratch, "--tasks", "sample", "--every", every, code=2)
    assert "a file, not a directory" in error("--run", scratch / "metrics.csv", "--tasks", "sample")
    assert "--tokenizer_dir" in error("--run", scratch, "--tasks", "sample", "--tokenizer_dir", tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, no newline at the end")  # must not pass for a half-written record
    assert "not a record of eval/run.py --run" in error("--run", scratch, "--tasks", "sample", "--out", notes)
    assert notes.read_text() == "my notes, no newline at the end"


def test_grid_of_both_runs(runs, capsys):
    tmp, scratch, grown = runs
    out = tmp / "acc.png"
    assert plot.main([str(scratch), str(grown), "--metric", "acc", "--x", "flops", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    drawn = plot.plot([str(scratch), str(grown)], tmp / "acc2.png", x="flops", metric="acc")
    assert drawn == ["sample_mc", "sample_cloze"]


@pytest.mark.parametrize("devices", [2])
def test_scoring_during_training_under_fsdp_equals_eval_run(runs, sample_data, tmp_path, capsys, devices):
    """--eval_tasks with 2 CPU processes under FSDP: rank 0 scores the gathered weights while the other waits
    (under a timeout: a rank left behind would hang); the metrics.csv columns equal eval/run.py's scores of the
    same steps' checkpoints, and the run trains on as without scoring."""
    import csv
    import sys

    from conftest import run_group
    from eval import run as eval_run

    out = tmp_path / "run"
    argv = [str(a) for a in flags(sample_data, out, 4, "--model_name", "2L128H", "--devices", devices,
                                  "--strategy", "fsdp", "--micro_batch_size", "2", "--eval_tasks", "sample",
                                  "--eval_tasks_interval", "3", "--eval_tasks_limit", "8")]
    result = run_group([sys.executable, *argv], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "metrics.csv") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    scored = [s for s, r in rows.items() if r["sample_mc/acc"]]
    assert scored == [3, 4]  # every 3 steps, and the last
    assert eval_run.main(["--run", str(out), "--tasks", "sample", "--limit", "8", "--steps", "4"]) == 0
    (record,) = records(out)
    for task, metric in (("sample_mc", "acc"), ("sample_mc", "acc_norm"), ("sample_cloze", "acc"),
                         ("sample_ppl", "word_perplexity"), ("sample_ppl", "bits_per_byte")):
        assert float(rows[4][f"{task}/{metric}"]) == pytest.approx(record["results"][task][f"{metric},none"],
                                                                    rel=1e-6)
    _, scratch, _ = runs  # the same run on one process, without scoring: losses equal across world sizes
    with open(scratch / "metrics.csv") as f:
        alone = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert [float(r["train_loss"]) for r in rows.values()] == pytest.approx(alone, rel=1e-5)


def test_a_run_still_training_is_scored_as_far_as_it_is_saved(runs, tmp_path, capsys, monkeypatch):
    """A checkpoint being saved (no meta.json yet) is not seen; one pruned (--keep_last) before it is read is
    skipped with a warning, and the next scoring picks up what was saved since."""
    import shutil

    from eval import run as eval_run  # puts eval/ on sys.path: `along` is the module eval/run.py uses

    import along

    _, scratch, _ = runs
    run = tmp_path / "run"
    shutil.copytree(scratch, run, ignore=shutil.ignore_patterns("eval.jsonl", "final"))
    (run / "step-00000006").mkdir()  # being written: meta.json comes last
    (run / "step-00000006" / "lit_config.json").write_text("{}")
    assert [c.step for c in along.run_checkpoints(run)] == [2, 4]
    load = along.load_candidate

    def pruned_first(candidate, tokenizer_dir):
        if candidate.step == 2:
            shutil.rmtree(candidate.path)
        return load(candidate, tokenizer_dir)

    monkeypatch.setattr(along, "load_candidate", pruned_first)
    assert eval_run.main(["--run", str(run), "--tasks", "sample_mc", "--limit", "4"]) == 0
    assert "step-00000002 is gone" in capsys.readouterr().err
    assert [r["training"]["step"] for r in records(run)] == [4]


def test_one_scoring_per_file_and_a_full_disk_leaves_nothing(runs, tmp_path, capsys):
    """A second scoring of the same --out is refused while the first holds it (it would write every record
    twice); a write that fails (a full disk, RLIMIT_FSIZE) names the file and leaves no partial line."""
    import resource

    from eval import run as eval_run  # puts eval/ on sys.path: `along` is the module eval/run.py uses

    import along

    _, scratch, _ = runs
    out = tmp_path / "held.jsonl"
    with along.Output(out, print):
        assert "being written by another eval/run.py --run" in command_error(
            capsys, eval_run.main, ["--run", str(scratch), "--tasks", "sample", "--out", str(out)])
    assert not out.exists()  # created by the holder, nothing written: removed
    full = tmp_path / "full.jsonl"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300, hard))  # a record is ~700 bytes
    try:
        code = eval_run.main(["--run", str(scratch), "--tasks", "sample_mc", "--limit", "2", "--steps", "2", "--out",
                              str(full)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress line
    assert code == 1 and last.startswith(f"error: {full}: cannot append a record: File too large"), last
    assert not full.exists()


def test_a_damaged_checkpoint_is_skipped_or_replaced_by_final(runs, tmp_path, capsys):
    import shutil

    from eval import run as eval_run

    _, scratch, _ = runs
    run = tmp_path / "run"
    shutil.copytree(scratch, run, ignore=shutil.ignore_patterns("eval.jsonl"))
    for step in (2, 4):
        next((run / f"step-{step:08d}").glob("*.distcp")).unlink()
    assert eval_run.main(["--run", str(run), "--tasks", "sample_mc", "--limit", "2"]) == 0
    err = capsys.readouterr().err
    assert "step-00000002 skipped" in err and "scored final/ (the same step) instead" in err
    assert [(r["training"]["step"], r["checkpoint"]) for r in records(run)] == [(4, str(run / "final"))]


def test_a_scoring_that_could_score_nothing_is_an_error(runs, tmp_path, capsys):
    """Not `wrote` and exit 0 when every checkpoint to score was skipped."""
    import shutil

    from eval import run as eval_run

    _, scratch, _ = runs
    run = tmp_path / "run"
    shutil.copytree(scratch, run, ignore=shutil.ignore_patterns("eval.jsonl", "final"))
    next((run / "step-00000002").glob("*.distcp")).unlink()
    code = eval_run.main(["--run", str(run), "--tasks", "sample_mc", "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.splitlines()[-1].startswith("error: none of the 1 checkpoint(s) to score could be")
    assert not (run / "eval.jsonl").exists()
