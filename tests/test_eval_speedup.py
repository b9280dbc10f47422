"""eval/speedup.py on synthetic runs whose speedup is known analytically."""

import csv
import json
import subprocess
import sys

import pytest
from conftest import ROOT, command_error

from eval import speedup as sp

A, B = 12.0, 0.05  # loss(F) = A * F^-B, a power law in compute
FPT = 6.0e6  # FLOPs per token of the target model
TOKENS_PER_STEP = 4096


def loss_at(flops, factor=1.0):
    """A run that gets `factor` times more out of each FLOP: it reaches any loss with 1/factor the compute."""
    return A * (factor * flops) ** -B


def write_run(path, steps=400, base_flops=0.0, factor=1.0, eval_every=2, columns=None, val=True):
    path.mkdir(parents=True, exist_ok=True)
    cols = columns or ["step", "tokens", "flops", "train_loss", "val_loss", "val_ppl", "lr", "tokens_per_sec",
                       "mfu", "elapsed_sec"]
    with (path / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        for step in range(1, steps + 1):
            tokens = step * TOKENS_PER_STEP
            flops = base_flops + tokens * FPT
            row = {"step": step, "tokens": tokens, "flops": flops, "train_loss": loss_at(flops, factor) + 0.01,
                   "lr": 1e-3, "tokens_per_sec": 1e4, "mfu": "", "elapsed_sec": step}
            if val and (step % eval_every == 0 or step == steps):
                row["val_loss"] = loss_at(flops, factor)
            w.writerow(row)
    return path


@pytest.fixture
def runs(tmp_path):
    base = 5 * TOKENS_PER_STEP * FPT  # the base model's cost, already in the grown run's flops column
    return write_run(tmp_path / "scratch"), write_run(tmp_path / "grown", base_flops=base, factor=1.5)


def test_known_speedup_at_default_loss(runs):
    scratch, grown = (sp.read_metrics(r) for r in runs)
    res = sp.speedup(scratch, grown)
    assert res["loss"] == pytest.approx(scratch[-1]["val_loss"])  # the grown run gets lower: scratch's best
    assert res["speedup"] == pytest.approx(0.5, rel=1e-3)
    assert res["scratch"]["flops"] == pytest.approx(scratch[-1]["flops"])
    assert res["grown"]["base_flops"] == pytest.approx(5 * TOKENS_PER_STEP * FPT)
    assert res["grown"]["scratch_equivalent_tokens"] == pytest.approx(res["grown"]["flops"] / FPT)


@pytest.mark.parametrize("column", ["val_loss", "train_loss"])
def test_flops_to_reach_interpolates(runs, column):
    rows = sp.read_metrics(runs[0])
    target = 2.8 + (0.01 if column == "train_loss" else 0.0)
    exact = (A / 2.8) ** (1 / B)
    assert sp.flops_to_reach(rows, target, column) == pytest.approx(exact, rel=2e-3)
    res = sp.speedup(rows, sp.read_metrics(runs[1]), loss=target, column=column)
    assert res["speedup"] == pytest.approx(0.5, rel=2e-3)


def test_scratch_equivalent_tokens_start_at_base_cost(runs):
    grown = sp.read_metrics(runs[1])
    eq = sp.scratch_equivalent_tokens(grown)
    assert eq[0] == pytest.approx(6 * TOKENS_PER_STEP)
    assert sp.flops_per_token(grown) == pytest.approx(FPT)


def test_cli_table_and_json(runs, capsys):
    sp.main(["--scratch", str(runs[0]), "--grown", str(runs[1])])
    out = capsys.readouterr().out
    assert "speedup: 50.0%" in out and "lowest loss both runs reach" in out
    sp.main(["--scratch", str(runs[0]), "--grown", str(runs[1] / "metrics.csv"), "--json", "--at_loss", "2.8"])
    res = json.loads(capsys.readouterr().out)
    assert res["speedup"] == pytest.approx(0.5, rel=2e-3) and res["loss"] == 2.8


def error_line(capsys, argv, code=1):  # 2: bad flags, as argparse
    return command_error(capsys, sp.main, argv, code)


def test_errors_are_one_line(runs, tmp_path, capsys):
    s, g = str(runs[0]), str(runs[1])
    assert "never reaches" in error_line(capsys, ["--scratch", s, "--grown", g, "--at_loss", "0.5"])
    assert "no such file" in error_line(capsys, ["--scratch", str(tmp_path / "nope"), "--grown", g])
    bad = write_run(tmp_path / "bad", columns=["step", "tokens", "train_loss"])
    assert "missing column(s) flops" in error_line(capsys, ["--scratch", s, "--grown", str(bad)])
    no_val = write_run(tmp_path / "noval", base_flops=1e12, val=False)
    assert "try --column train_loss" in error_line(capsys, ["--scratch", s, "--grown", str(no_val)])
    assert "invalid choice" in error_line(capsys, ["--scratch", s, "--grown", g, "--column", "lr"], code=2)
    assert "required" in error_line(capsys, ["--scratch", s], code=2)


def test_warns_when_base_flops_missing(tmp_path, capsys):
    s, g = write_run(tmp_path / "s"), write_run(tmp_path / "g", factor=1.5)
    sp.main(["--scratch", str(s), "--grown", str(g)])
    assert "base model's cost is not counted" in capsys.readouterr().err


def test_script_runs(runs):
    out = subprocess.run([sys.executable, str(ROOT / "eval" / "speedup.py"), "--scratch", str(runs[0]),
                          "--grown", str(runs[1]), "--json"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["speedup"] == pytest.approx(0.5, rel=1e-3)
    help_text = subprocess.run([sys.executable, str(ROOT / "eval" / "speedup.py"), "--help"], capture_output=True,
                               text=True, check=True).stdout
    for flag in ("--scratch", "--grown", "--at_loss", "--column", "--smooth", "--add_base_flops", "--json"):
        assert flag in help_text


def test_warnings_for_a_bound_set_by_logging_and_for_one_run_twice(tmp_path, capsys):
    """A grown run already below the target at its first row "reached" it there, whatever its logging interval;
    the report said "the base model's FLOPs counted" right after warning that they were not."""
    rows = {"a": [(1, 5.0), (2, 4.9)], "b": [(1, 3.0), (2, 2.9)]}
    for name, losses in rows.items():
        with open(tmp_path / f"{name}.csv", "w") as f:
            f.write("step,tokens,flops,val_loss\n")
            f.writelines(f"{s},{100 * s},{1e6 * s},{loss}\n" for s, loss in losses)
    assert sp.main(["--scratch", str(tmp_path / "a.csv"), "--grown", str(tmp_path / "b.csv")]) == 0
    out, err = capsys.readouterr()
    assert "the grown run is at val_loss 4.9000 already at its first logged point (step 1)" in err
    assert "no base model's FLOPs in the grown run's log" in out and "FLOPs counted" not in out
    assert sp.main(["--scratch", str(tmp_path / "a.csv"), "--grown", str(tmp_path / "a.csv")]) == 0
    assert "--scratch and --grown are the same run" in capsys.readouterr().err


def write_csv(path, rows, columns=("step", "tokens", "flops", "paper_flops", "val_loss")):
    """A metrics.csv of `rows` (dicts; a missing or None cell is empty)."""
    path.mkdir(parents=True, exist_ok=True)
    with (path / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r[k]) for k in columns} for r in rows)
    return path


def clean_rows(steps=6, base=0.0):
    return [{"step": s, "tokens": 100 * s, "flops": base + 6e3 * s, "paper_flops": base + 7e3 * s,
             "val_loss": 4.0 - 0.1 * s} for s in range(1, steps + 1)]


def test_paper_flops_in_only_some_rows_says_which(tmp_path, capsys):
    """A run resumed across the upgrade that added paper_flops has it from some step on; the message said the
    run had no paper_flops values at all, "a run logged before that column existed"."""
    rows = clean_rows()
    for r in rows[:3]:
        r["paper_flops"] = None
    run = write_csv(tmp_path / "resumed", rows)
    err = error_line(capsys, ["--scratch", str(run), "--grown", str(run), "--convention", "paper"])
    assert err.startswith(f"error: {run}: 3 of 6 rows of metrics.csv have no paper_flops (steps 1 to 3); it has "
                          "them from step 4 on; use --convention exact, which every row has"), err
    rows[4]["paper_flops"] = None  # not a prefix
    run = write_csv(tmp_path / "gaps", rows)
    err = error_line(capsys, ["--scratch", str(run), "--grown", str(run), "--convention", "paper"])
    assert "4 of 6 rows of metrics.csv have no paper_flops (steps 1 to 5); rows have them from step 4" in err
    assert sp.main(["--scratch", str(run), "--grown", str(run), "--convention", "exact"]) == 0
    capsys.readouterr()
    for r in rows:
        r["paper_flops"] = None  # a grown run whose base's cost is unknown: the column stays empty
    run = write_csv(tmp_path / "unknown_base", rows)
    err = error_line(capsys, ["--scratch", str(run), "--grown", str(run), "--convention", "paper"])
    assert "has no paper_flops values; use --convention exact" in err and "base's cost" in err


BAD_COUNTS = {  # (row index, column, value) -> what the one line says
    "nan_flops": ((2, "flops", "nan"), "the row of step 3 has flops nan; it must be a finite number >= 0"),
    "negative_flops": ((2, "flops", -5), "the row of step 3 has flops -5; it must be a finite number >= 0"),
    "inf_tokens": ((2, "tokens", "inf"), "the row of step 3 has tokens inf; it must be a finite number >= 0"),
    "nan_paper_flops": ((2, "paper_flops", "nan"), "the row of step 3 has paper_flops nan"),
    "nan_step": ((2, "step", "nan"), "a row has step nan"),
    "decreasing_flops": ((3, "flops", 1e3), "the row of step 4 has flops 1000, less than 18000 at step 3"),
    "decreasing_tokens": ((3, "tokens", 50), "the row of step 4 has tokens 50, less than 300 at step 3"),
    "decreasing_paper_flops": ((3, "paper_flops", 1), "the row of step 4 has paper_flops 1, less than 21000 at "
                                                       "step 3"),
    "flat_flops": ((3, "flops", 18e3), "the row of step 4 has flops 18000, as at step 3, though tokens grew"),
}


@pytest.mark.parametrize("case", sorted(BAD_COUNTS))
def test_nonsense_counts_are_refused_naming_file_step_and_column(tmp_path, capsys, case):
    """NaN, negative or decreasing FLOPs and tokens gave "speedup: nan%" or "-4478177746557.7%"."""
    (index, column, value), expected = BAD_COUNTS[case]
    rows = clean_rows()
    rows[index][column] = value
    bad, good = write_csv(tmp_path / "bad", rows), write_csv(tmp_path / "good", clean_rows())
    for convention in ("exact", "paper"):
        err = error_line(capsys, ["--scratch", str(good), "--grown", str(bad), "--convention", convention])
        assert err.startswith(f"error: {bad / 'metrics.csv'}: {expected}"), err
    with pytest.raises(sp.UsageError, match="metrics.csv: "):
        sp.read_metrics(bad)


def test_add_base_flops_on_a_run_that_logs_its_base_warns(runs, tmp_path, capsys):
    """--add_base_flops on a grown run whose FLOPs already start at the base's cost counted the base twice,
    silently."""
    scratch, grown = map(str, runs)
    assert sp.main(["--scratch", scratch, "--grown", grown, "--add_base_flops", "1e12", "--json"]) == 0
    out, err = capsys.readouterr()
    warning = (f"{grown}: FLOPs already start at {5 * TOKENS_PER_STEP * FPT:.3e} (the base model's cost, which "
               "training logs when growth.json records it), so --add_base_flops 1.000e+12 counts a base's cost "
               "again; leave it out for such a run")
    assert f"warning: {warning}\n" in err
    assert warning in json.loads(out)["warnings"]
    no_base = write_run(tmp_path / "no_base", factor=1.5)  # what the option is for: no warning at all
    assert sp.main(["--scratch", scratch, "--grown", str(no_base), "--add_base_flops", "1e11", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["warnings"] == []


def test_single_level_json_keeps_its_keys_and_adds_levels(runs, capsys):
    assert sp.main(["--scratch", str(runs[0]), "--grown", str(runs[1]), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["loss_is_default"] and res["speedup"] == pytest.approx(0.5, rel=1e-3)
    assert [(lv["level"], lv["speedup"]) for lv in res["levels"]] == [(res["loss"], res["speedup"])]
    assert res["levels"][0]["grown"] == res["grown"]


def linear_runs(tmp_path):
    """Runs whose loss is linear in steps, known levels in closed form. scratch: 100 tokens and 1000 FLOPs a step,
    val_loss 5 - 0.2 step (4.8 at step 1, 3.0 at 10). grown: its base cost 2000 FLOPs, then as scratch, val_loss
    4 - 0.25 step (3.75 to 1.5). Its metrics.csv logs sample_mc/acc at steps 2, 4, 6, 8."""
    scratch = [{"step": s, "tokens": 100 * s, "flops": 1000 * s, "paper_flops": 1000 * s, "val_loss": 5 - 0.2 * s}
               for s in range(1, 11)]
    acc = {2: 0.2, 4: 0.3, 6: 0.5, 8: 0.6}  # step 4's is replaced by the grown run's eval record (0.35)
    grown = [{"step": s, "tokens": 100 * s, "flops": 2000 + 1000 * s, "paper_flops": 2000 + 1000 * s,
              "val_loss": 4 - 0.25 * s, "sample_mc/acc": acc.get(s)} for s in range(1, 11)]
    columns = ("step", "tokens", "flops", "paper_flops", "val_loss")
    return (write_csv(tmp_path / "scratch", scratch, columns),
            write_csv(tmp_path / "grown", grown, columns + ("sample_mc/acc",)))


def test_loss_levels_on_linear_curves(tmp_path):
    """Levels from below min(4.8, 3.75) to max(3.0, 1.5): 3.5, 3.25, 3.0. FLOPs to reach L: scratch 1000 (5 - L) /
    0.2, grown 2000 + 1000 (4 - L) / 0.25: 7500 / 4000, 8750 / 5000, 10000 / 6000."""
    scratch, grown = (sp.read_metrics(r) for r in linear_runs(tmp_path))
    assert sp.loss_levels(scratch, grown, 3) == pytest.approx([3.5, 3.25, 3.0])
    assert sp.loss_levels(scratch, grown, 1) == pytest.approx([3.0])
    res = sp.speedup_levels(scratch, grown, n=3)
    assert [lv["level"] for lv in res["levels"]] == pytest.approx([3.5, 3.25, 3.0])
    assert [lv["scratch"]["flops"] for lv in res["levels"]] == pytest.approx([7500, 8750, 10000])
    assert [lv["grown"]["flops"] for lv in res["levels"]] == pytest.approx([4000, 5000, 6000])
    assert [lv["speedup"] for lv in res["levels"]] == pytest.approx([0.875, 0.75, 2 / 3])
    assert res["loss_is_default"] and res["speedup"] == pytest.approx(2 / 3) and res["warnings"] == []
    assert res["grown"]["scratch_equivalent_tokens"] == pytest.approx(600)  # 6000 FLOPs / 10 per token
    given = sp.speedup_levels(scratch, grown, [3.0, 3.5])  # reported in the order training reaches them
    assert [lv["level"] for lv in given["levels"]] == [3.5, 3.0] and not given["loss_is_default"]
    # a level one run never reaches is a row that says so; the others are still compared
    part = sp.speedup_levels(scratch, grown, [3.5, 2.0])
    assert [lv["speedup"] for lv in part["levels"]] == [pytest.approx(0.875), None]
    assert "never reaches val_loss 2.0000" in part["levels"][1]["unreached"] and part["loss"] == 3.5
    with pytest.raises(ValueError, match="never reaches"):
        sp.speedup_levels(scratch, grown, [2.0, 1.0])


def test_levels_cli_table_and_json(tmp_path, capsys):
    scratch, grown = map(str, linear_runs(tmp_path))
    assert sp.main(["--scratch", scratch, "--grown", grown, "--levels", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("levels of val_loss: 3 evenly spaced from just below the lower of the two runs' first "
                          "logged values down to the lowest both reach\n")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:5]}
    assert rows["3.5000"] == ["7.500e+03", "4.000e+03", "7.500e+02", "4.000e+02", "87.5%"]
    assert rows["3.0000"][-1] == "66.7%" and "the base model's FLOPs counted" in out
    assert sp.main(["--scratch", scratch, "--grown", grown, "--at_loss", "3.25,3.5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [lv["level"] for lv in res["levels"]] == [3.5, 3.25] and res["loss"] == 3.25
    assert res["speedup"] == pytest.approx(0.75)


def test_level_errors_are_one_line(tmp_path, capsys):
    scratch, grown = map(str, linear_runs(tmp_path))
    both = ["--scratch", scratch, "--grown", grown]
    assert error_line(capsys, both + ["--levels", "3", "--at_loss", "3.0"]).endswith(
        "give either --levels 3 or the levels themselves in --at_loss, not both\n")
    assert "--levels must be at least 1, got 0" in error_line(capsys, both + ["--levels", "0"])
    assert "--at_loss must be finite numbers of at least 0, comma-separated; got 'x'" in error_line(
        capsys, both + ["--at_loss", "3.0,x"])
    assert "--metric applies only with --task T" in error_line(capsys, both + ["--metric", "acc"])
    assert "--at_loss and --column apply only to losses, not with --task" in error_line(
        capsys, both + ["--task", "sample_mc", "--at_loss", "3", "--column", "val_loss"])


def test_levels_without_a_range_compare_at_the_default_target_and_warn(tmp_path, capsys):
    """A grown run already below scratch's best at its first row: no loss both cross after their first points.
    A pipeline asking for --levels still gets the one comparison there is, with a warning, not a failed stage."""
    scratch, _ = map(str, linear_runs(tmp_path))
    low = [{"step": s, "tokens": 100 * s, "flops": 1000 * s, "val_loss": 2.9 - 0.1 * s} for s in range(1, 11)]
    low = str(write_csv(tmp_path / "low", low, ("step", "tokens", "flops", "val_loss")))
    assert sp.main(["--scratch", scratch, "--grown", low, "--levels", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert len(res["levels"]) == 1 and res["loss"] == pytest.approx(3.0) and res["loss_is_default"]
    warning = ("no val_loss range for 2 levels: the lowest val_loss both runs reach (3.0000) is not below the lower "
               "of their first logged values (2.8000), so the comparison is at that lowest loss only (--at_loss "
               "gives levels)")
    assert f"warning: {warning}\n" in err and warning in res["warnings"]
    with pytest.raises(sp.NoRange):
        sp.loss_levels(sp.read_metrics(scratch), sp.read_metrics(low), 2)


def score_runs(tmp_path):
    """linear_runs with acc records: the scratch run's in its eval.jsonl (acc = step / 20 at even steps, 2000 to
    10000 FLOPs), the grown run's in another file (0.35 at step 4, 0.65 at step 10). The grown series, merged:
    0.2, 0.35, 0.5, 0.6, 0.65 at 4000, 6000, ..., 12000 FLOPs."""
    from test_eval_series import record, write_jsonl

    scratch, grown = linear_runs(tmp_path)
    write_jsonl(scratch / "eval.jsonl", [record(s, {"sample_mc": {"acc": s / 20}}) for s in (2, 4, 6, 8, 10)])
    grown_eval = write_jsonl(tmp_path / "evals" / "grown.jsonl",
                             [record(s, {"sample_mc": {"acc": a}}, flops=2000 + 1000 * s, scratch=200 + 100 * s)
                              for s, a in ((4, 0.35), (10, 0.65))])
    return scratch, grown, grown_eval


def test_accuracy_levels_interpolate_between_scored_points(tmp_path, capsys):
    """Levels from past max(0.1, 0.2) to min(0.5, 0.65): 0.3, 0.4, 0.5. scratch reaches a at 20000 a FLOPs: 6000,
    8000, 10000; grown 5333.3 (2/3 of 0.2 -> 0.35), 6666.7, 8000 (its point at step 6). With metrics.csv's 0.3 at
    step 4 instead of the record's 0.35 the first level would be at 6000, no speedup."""
    scratch, grown, grown_eval = map(str, score_runs(tmp_path))
    argv = ["--scratch", scratch, "--grown", grown, "--grown_eval", grown_eval, "--task", "sample_mc"]
    assert sp.main(argv + ["--levels", "3", "--json"]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert [lv["level"] for lv in res["levels"]] == pytest.approx([0.3, 0.4, 0.5])
    assert [lv["scratch"]["flops"] for lv in res["levels"]] == pytest.approx([6000, 8000, 10000])
    assert [lv["grown"]["flops"] for lv in res["levels"]] == pytest.approx([16000 / 3, 20000 / 3, 8000])
    assert [lv["speedup"] for lv in res["levels"]] == pytest.approx([0.125, 0.2, 0.25])
    assert res["value"] == pytest.approx(0.5) and res["value_is_default"] and res["higher_is_better"]
    assert res["points"] == {"scratch": 5, "grown": 5} and res["grown"]["base_flops"] == pytest.approx(2000)
    assert "warning: sample_mc acc has 5 scored points in the scratch run and 5 in the grown run" in err
    assert "coarse" in err and "coarse" in res["warnings"][-1]
    assert sp.main(argv + ["--at_score", "0.5,0.3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("levels of sample_mc acc: given with --at_score (higher is better)\n")
    assert [line.split()[-1] for line in out.splitlines()[2:4]] == ["12.5%", "25.0%"]
    assert sp.main(argv + ["--json"]) == 0  # one level: the best both reach
    assert json.loads(capsys.readouterr().out)["speedup"] == pytest.approx(0.25)


def test_perplexity_levels_are_reached_going_down():
    rows = [{"step": s, "tokens": 100 * s, "flops": 1000 * s} for s in range(1, 7)]
    points = {"scratch": [{"step": s, "tokens": 100 * s, "flops": 1000 * s, "scratch_tokens": 100 * s, "value": v}
                          for s, v in ((2, 400.0), (4, 200.0), (6, 100.0))],
              "grown": [{"step": s, "tokens": 100 * s, "flops": 1000 * s, "scratch_tokens": 100 * s, "value": v}
                        for s, v in ((4, 300.0), (6, 100.0))]}
    res = sp.score_speedup(rows, rows, points, "sample_ppl", "word_perplexity", [150.0])
    assert res["grown"]["flops"] == pytest.approx(5500) and res["scratch"]["flops"] == pytest.approx(5000)
    assert res["speedup"] == pytest.approx(5000 / 5500 - 1) and not res["higher_is_better"]
    res = sp.score_speedup(rows, rows, points, "sample_ppl", "word_perplexity", n=2)  # from past 300 down to 100
    assert [lv["level"] for lv in res["levels"]] == [200.0, 100.0]
    assert [lv["speedup"] for lv in res["levels"]] == pytest.approx([4000 / 5000 - 1, 0.0])
    assert [w for w in res["warnings"] if "first scored point" in w] == []  # both levels past the first points
    better = {**points, "grown": [{**p, "value": v} for p, v in zip(points["grown"], (90.0, 80.0))]}
    res = sp.score_speedup(rows, rows, better, "sample_ppl", "word_perplexity", n=3)  # no range: 100 alone
    assert [lv["level"] for lv in res["levels"]] == [100.0] and res["speedup"] == pytest.approx(6000 / 4000 - 1)
    assert "no range of scores for 3 levels: the best both runs reach (100.0000) is not better than the better of " \
        "their first scores (90.0000), so the comparison is at that best score only" in res["warnings"][0]
    res = sp.score_speedup(rows, rows, points, "sample_ppl", "word_perplexity", [350.0])
    assert res["grown"]["flops"] == 4000 and "the grown run is at sample_ppl word_perplexity 350.0000 already at " \
        "its first scored point (step 4): its FLOPs to reach it are only an upper bound" in res["warnings"][0]


def test_score_errors_are_one_line(tmp_path, capsys):
    scratch, grown, grown_eval = map(str, score_runs(tmp_path))
    argv = ["--scratch", scratch, "--grown", grown, "--grown_eval", grown_eval]
    err = error_line(capsys, argv + ["--task", "arc_easy"])
    assert "the scratch run has no arc_easy acc scores (its tasks with acc: sample_mc); score checkpoints with " \
        f"`python eval/run.py --run {scratch} --tasks arc_easy`" in err
    err = error_line(capsys, argv + ["--task", "sample_mc", "--metric", "acc_norm"])
    assert f"(none in {scratch}/eval.jsonl or {scratch}'s metrics.csv)" in err
    err = error_line(capsys, argv + ["--task", "sample_mc", "--scratch_eval", "-", "--metric", "acc"])
    assert f"the scratch run has no sample_mc acc scores (no eval file, and none in {scratch}'s metrics.csv)" in err
    err = error_line(capsys, argv + ["--task", "sample_mc", "--at_score", "0.9"])
    assert "the scratch run never reaches sample_mc acc 0.9000 (its best is 0.5000)" in err
    err = error_line(capsys, ["--scratch", scratch, "--grown", grown, "--grown_eval", str(tmp_path / "nope.jsonl"),
                              "--task", "sample_mc"])
    assert "nope.jsonl: no such file" in err
    err = error_line(capsys, argv + ["--task", "sample_mc", "--levels", "2", "--at_score", "0.3"])
    assert "give either --levels 2 or the levels themselves in --at_score, not both" in err
