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
