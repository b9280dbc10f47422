"""eval/series.py: downstream scores along a run from eval/run.py records and metrics.csv columns, built by hand."""

import json

import pytest

from eval import series


def record(step, results, tokens=None, flops=None, scratch=None, paper_flops=None, paper_scratch=None):
    """One line of `eval/run.py --run`'s JSON Lines: {task: {metric: value}} scored at `step`; tokens and FLOPs
    default to 100 and 1000 per step (a scratch run: scratch-equivalent tokens = its tokens)."""
    tokens = 100 * step if tokens is None else tokens
    flops = 1000 * step if flops is None else flops
    return {"run": "/r", "checkpoint": f"/r/step-{step:08d}", "checkpoint_id": "sha", "name": "r",
            "config": "8L128H", "backend": "ours", "dtype": "float32", "tasks": sorted(results),
            "num_fewshot": None, "limit": None,
            "results": {task: {"alias": task, **{f"{m},none": v for m, v in scores.items()},
                               **{f"{m}_stderr,none": "N/A" for m in scores}}
                        for task, scores in results.items()},
            "growth": None,
            "training": {"step": step, "tokens": tokens, "flops": flops,
                         "paper_flops": flops if paper_flops is None else paper_flops,
                         "total_tokens": tokens,
                         "scratch_tokens": {"exact": tokens if scratch is None else scratch,
                                            "paper": tokens if paper_scratch is None else paper_scratch}}}


def write_jsonl(path, records, tail=""):
    """`records` as JSON Lines at `path` (its directory made), then `tail` (a line being written, say)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_reads_json_lines_and_leaves_out_a_record_being_written(tmp_path):
    path = write_jsonl(tmp_path / "eval.jsonl", [record(2, {"t": {"acc": 0.1}}), record(4, {"t": {"acc": 0.2}})],
                       tail='{"run": "/r", "results": {')
    assert [r["training"]["step"] for r in series.read_records(path)] == [2, 4]
    single = tmp_path / "one.json"  # eval/run.py --checkpoint_dir's indented JSON reads as one record
    single.write_text(json.dumps(record(6, {"t": {"acc": 0.3}}), indent=2))
    assert series.record_points(series.read_records(single), "t", "acc") == [
        {"step": 6, "tokens": 600, "flops": 6000, "scratch_tokens": 600, "value": 0.3}]


def test_damaged_or_missing_files_are_one_line(tmp_path):
    with pytest.raises(series.SeriesError, match="no such file .*python eval/run.py --run RUN --tasks T"):
        series.read_records(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record(2, {"t": {"acc": 0.1}})) + "\n{oops\n")
    with pytest.raises(series.SeriesError, match="bad.jsonl, line 2: not JSON"):
        series.read_records(bad)
    bad.write_text('{"results": {}}\n')
    with pytest.raises(series.SeriesError, match="line 1: not a record of eval/run.py"):
        series.read_records(bad)
    old = record(2, {"t": {"acc": 0.1}})
    old["training"]["scratch_tokens"]["paper"] = None  # a base whose cost is unknown
    with pytest.raises(series.SeriesError, match="no paper scratch-equivalent tokens"):
        series.record_points([old], "t", "acc", "paper", "f.jsonl")


def test_positions_follow_the_convention_and_a_rescored_step_keeps_the_last():
    records = [record(4, {"t": {"acc": 0.2}}, tokens=400, flops=9000, scratch=900, paper_flops=8000,
                      paper_scratch=800),
               record(2, {"t": {"acc": 0.1}, "u": {"acc_norm": 0.5}}),
               record(4, {"t": {"acc": 0.25}}, tokens=400, flops=9000, scratch=900, paper_flops=8000,
                      paper_scratch=800)]
    exact = series.record_points(records, "t", "acc")
    assert [(p["step"], p["value"]) for p in exact] == [(2, 0.1), (4, 0.25)]
    assert exact[1] == {"step": 4, "tokens": 400, "flops": 9000, "scratch_tokens": 900, "value": 0.25}
    paper = series.record_points(records, "t", "acc", "paper")
    assert (paper[1]["flops"], paper[1]["scratch_tokens"], paper[1]["tokens"]) == (8000, 800, 400)
    assert series.tasks_with(records, "acc") == ["t"] and series.tasks_with(records, "acc_norm") == ["u"]


def test_merge_prefers_the_record_at_a_step_both_have():
    rows = [{"step": s, "tokens": 100.0 * s, "flops": 1000.0 * s, "val_loss": 3.0,
             "t/acc": (0.9 if s == 4 else 0.1 * s) if s % 2 == 0 else None} for s in range(1, 7)]
    records = [record(4, {"t": {"acc": 0.4}}), record(8, {"t": {"acc": 0.8}})]
    points = series.run_points(rows, records, "t", "acc", "exact", scratch_fpt=10.0)
    assert [(p["step"], p["value"]) for p in points] == [(2, 0.2), (4, 0.4), (6, pytest.approx(0.6)), (8, 0.8)]
    assert points[0]["scratch_tokens"] == 200  # metrics.csv's: FLOPs / the run's FLOPs per token
    assert series.tasks_in(rows, [record(2, {"v": {"acc": 0.1}})], "acc") == ["v", "t"]
    assert series.metrics_columns(rows, "acc_norm") == []


def test_reach_interpolates_and_takes_the_first_crossing():
    def pts(values, flops=(100, 200, 300, 400)):
        return [{"step": i, "tokens": f / 10, "flops": f, "scratch_tokens": f / 10, "value": v}
                for i, (v, f) in enumerate(zip(values, flops))]

    acc = pts([0.2, 0.4, 0.6])
    assert series.reach(acc, 0.5)["flops"] == pytest.approx(250)
    assert series.reach(acc, 0.5)["tokens"] == pytest.approx(25) and series.reach(acc, 0.5)["step"] == 1.5
    assert series.reach(acc, 0.1) == {"step": 0, "tokens": 10, "flops": 100, "scratch_tokens": 10}
    assert series.reach(acc, 0.7) is None and series.best(acc) == 0.6
    noisy = pts([0.2, 0.6, 0.3, 0.7])  # crosses 0.5 between the first two points, then falls back
    assert series.reach(noisy, 0.5)["flops"] == pytest.approx(175)
    ppl = pts([100.0, 50.0, 25.0])  # lower is better: word_perplexity
    assert not series.HIGHER_IS_BETTER["word_perplexity"]
    assert series.reach(ppl, 40.0, higher_is_better=False)["flops"] == pytest.approx(240)
    assert series.reach(ppl, 10.0, higher_is_better=False) is None and series.best(ppl, False) == 25.0


def test_run_records_default_to_the_runs_eval_jsonl(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,tokens,flops\n")
    assert series.run_records(run) == ([], "") and series.default_eval_file(run / "metrics.csv") is None
    path = write_jsonl(run / "eval.jsonl", [record(2, {"t": {"acc": 0.1}})])
    for given in (run, run / "metrics.csv"):
        records, where = series.run_records(given)
        assert len(records) == 1 and where == str(path)
    assert series.run_records(run, "-") == ([], "")
    other = write_jsonl(tmp_path / "other.jsonl", [record(2, {"t": {"acc": 0.3}}), record(4, {"t": {"acc": 0.4}})])
    assert len(series.run_records(run, str(other))[0]) == 2
