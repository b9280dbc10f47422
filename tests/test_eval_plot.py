"""eval/plot.py writes a PNG of loss curves; bad input is one error line."""

import subprocess
import sys

import pytest
from conftest import ROOT, command_error
from test_eval_speedup import FPT, TOKENS_PER_STEP, write_run

from eval import plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs(tmp_path):
    return [write_run(tmp_path / "scratch", steps=60),
            write_run(tmp_path / "gstack", steps=60, base_flops=5 * TOKENS_PER_STEP * FPT, factor=1.5)]


def test_curves_use_scratch_equivalent_tokens(runs):
    (sx, _), (gx, gy) = plot.curves(runs, "scratch_tokens", "val_loss")
    assert sx[0] == 2 * TOKENS_PER_STEP and gx[0] == pytest.approx(7 * TOKENS_PER_STEP)
    assert len(gx) == len(gy) == 30
    assert plot.curves(runs)[1][0] == gx  # the default axis


def test_tokens_are_a_grown_runs_own(runs):
    """--x tokens meant scratch-equivalent tokens until the downstream plots came; now it is the tokens column:
    a grown run's curve starts at its own first logged step, not at its base's cost."""
    (sx, _), (gx, _) = plot.curves(runs, "tokens", "val_loss")
    assert sx[0] == gx[0] == 2 * TOKENS_PER_STEP and gx[-1] == 60 * TOKENS_PER_STEP
    (fx, _), = plot.curves(runs[1:], "flops", "val_loss")
    assert fx[0] == pytest.approx((5 + 2) * TOKENS_PER_STEP * FPT)


@pytest.mark.parametrize("x", ["tokens", "scratch_tokens", "flops"])
def test_writes_png(runs, tmp_path, x, capsys):
    out = tmp_path / "plots" / f"{x}.png"
    plot.main([str(runs[0]), str(runs[1] / "metrics.csv"), "--x", x, "--y", "train_loss", "--labels", "a,b",
               "--logx", "--out", str(out)])
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind
    assert capsys.readouterr().out.startswith(f"wrote {out} (x: ")


def test_paper_convention_starts_a_grown_curve_at_d_over_g(tmp_path, capsys):
    """The same grown run (a 6L2048H base on 10B tokens, g = 4) starts at 2.5B scratch-equivalent tokens in the
    paper's convention and at 2.85B in exact FLOPs (lit_gpt/flops.py)."""
    from test_flops import B, _write

    run = _write(tmp_path / "grown", 10 * B, 100 * B)
    (paper, _), = plot.curves([run], "scratch_tokens", "val_loss", convention="paper")
    (exact, _), = plot.curves([run], "scratch_tokens", "val_loss")
    assert paper[0] - 1.05 * B == pytest.approx(2.5 * B) and exact[0] - 1.05 * B == pytest.approx(2.8512 * B, rel=1e-4)
    out = tmp_path / "paper.png"
    assert plot.main([str(run), "--convention", "paper", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out} (x: tokens (scratch-equivalent, paper's 6ND, base at d/g))\n"


def error_line(capsys, argv, code=1):  # 2: bad flags, as argparse
    return command_error(capsys, plot.main, argv, code)


def test_errors(runs, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert "2 names for 1 runs" in error_line(capsys, [str(runs[0]), "--labels", "a,b", "--out", out])
    assert "no such file" in error_line(capsys, [str(tmp_path / "nope"), "--out", out])
    assert "required" in error_line(capsys, [str(runs[0])], code=2)
    assert "invalid choice" in error_line(capsys, [str(runs[0]), "--x", "steps", "--out", out], code=2)
    assert not (tmp_path / "x.png").exists()


def test_script_runs(runs, tmp_path):
    out = tmp_path / "s.png"
    subprocess.run([sys.executable, str(ROOT / "eval" / "plot.py"), *map(str, runs), "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes().startswith(PNG_MAGIC)


GUARD_PROBE = """
import runpy, signal, sys
class Probe:  # notes the Ctrl-C handler in force when torch is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            handler = signal.getsignal(signal.SIGINT)
            print("torch imported under", getattr(handler, "__name__", handler), file=sys.stderr)
            sys.meta_path.remove(self)
        return None
sys.meta_path.insert(0, Probe())
sys.path.insert(0, {eval_dir!r})  # as `python eval/plot.py` has it
sys.argv = [{script!r}, "--help"]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_guard_command_comes_before_torch():
    """plot.py imported speedup (torch, through lit_gpt.flops) before calling guard_command(): Ctrl-C at 0.3-1.5 s
    printed a KeyboardInterrupt traceback from torch's import. tests/test_exits.py's static check looks only at
    top-level imports, not at the `if __package__:` one."""
    script = ROOT / "eval" / "plot.py"
    probe = GUARD_PROBE.format(eval_dir=str(script.parent), script=str(script))
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--convention" in done.stdout, done.stderr
    assert "torch imported under _interrupted_while_importing" in done.stderr, done.stderr


def test_paper_flops_in_some_rows_and_nonsense_counts_are_one_line(tmp_path, capsys):
    from test_eval_speedup import clean_rows, write_csv

    rows = clean_rows()
    for r in rows[:2]:
        r["paper_flops"] = None
    resumed = write_csv(tmp_path / "resumed", rows)
    out = tmp_path / "x.png"
    err = error_line(capsys, [str(resumed), "--convention", "paper", "--out", str(out)])
    assert "2 of 6 rows of metrics.csv have no paper_flops (steps 1 to 2); it has them from step 3 on; use " \
        "--convention exact" in err, err
    for column, value, expected in (("flops", "nan", "the row of step 4 has flops nan"),
                                    ("tokens", -1, "the row of step 4 has tokens -1"),
                                    ("paper_flops", 5, "the row of step 4 has paper_flops 5, less than 21000 at step 3")):
        rows = clean_rows()
        rows[3][column] = value
        bad = write_csv(tmp_path / f"bad_{column}", rows)
        err = error_line(capsys, [str(bad), "--convention", "paper", "--out", str(out)])
        assert err.startswith(f"error: {bad / 'metrics.csv'}: {expected}"), err
    assert not out.exists()


def scored(runs, tasks, steps=(20, 40, 60), base_flops=(0.0, 5 * TOKENS_PER_STEP * FPT)):
    """eval.jsonl in each write_run run: acc of each of `tasks` (a list per run) at `steps`, positions as its
    metrics.csv has them (the grown run's FLOPs include its base's)."""
    from test_eval_series import record, write_jsonl

    for run, names, base in zip(runs, tasks, base_flops):
        write_jsonl(run / "eval.jsonl", [
            record(s, {t: {"acc": 0.01 * s + 0.1 * i, "word_perplexity": 1e4 / s} for i, t in enumerate(names)},
                   tokens=s * TOKENS_PER_STEP, flops=base + s * TOKENS_PER_STEP * FPT,
                   scratch=base / FPT + s * TOKENS_PER_STEP) for s in steps])


def test_one_panel_per_task_in_a_grid_of_four_columns(runs, tmp_path, capsys):
    tasks = ["lambada", "arc_c", "arc_e", "logiqa", "piqa"]
    scored(runs, [tasks, tasks[:2]])
    out = tmp_path / "acc.png"
    assert plot.plot(runs, out, metric="acc") == tasks  # the tasks of any run, in the order they first appear
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert [plot.grid(n) for n in (1, 3, 4, 5, 8, 9)] == [(1, 1), (1, 3), (1, 4), (2, 4), (2, 4), (3, 4)]
    panels = plot.score_curves(runs, "acc")
    assert panels["piqa"][1] is None and panels["arc_c"][1] is not None  # the grown run has no piqa: not drawn
    assert panels["arc_c"][0] == ([20 * TOKENS_PER_STEP, 40 * TOKENS_PER_STEP, 60 * TOKENS_PER_STEP],
                                  [pytest.approx(0.3), pytest.approx(0.5), pytest.approx(0.7)])
    one = tmp_path / "one.png"
    assert plot.main([*map(str, runs), "--metric", "word_perplexity", "--task", "arc_e", "--out", str(one)]) == 0
    assert capsys.readouterr().out == f"wrote {one} (x: tokens (scratch-equivalent, exact FLOPs))\n"
    assert plot.plot(runs, one, metric="acc", task="arc_e", title="T") == ["arc_e"]


def test_scores_merge_by_step_and_follow_the_x_axis(tmp_path):
    """The grown run's series: metrics.csv's sample_mc/acc at steps 2, 4, 6, 8, its eval record's 0.35 replacing
    0.3 at step 4 and adding step 10. tokens are its own (100 a step); scratch_tokens and flops count its base
    (2000 FLOPs, 10 per token)."""
    from test_eval_speedup import score_runs

    scratch, grown, grown_eval = score_runs(tmp_path)
    runs, evals = [scratch, grown], ["", str(grown_eval)]  # "": the default, scratch/eval.jsonl
    ys = [0.2, 0.35, 0.5, 0.6, 0.65]
    assert plot.score_curves(runs, "acc", x="tokens", evals=evals)["sample_mc"][1] == ([200, 400, 600, 800, 1000], ys)
    assert plot.score_curves(runs, "acc", evals=evals)["sample_mc"][1] == ([400, 600, 800, 1000, 1200], ys)
    assert plot.score_curves(runs, "acc", x="flops", evals=evals)["sample_mc"][1][0] == [4000, 6000, 8000, 10000,
                                                                                        12000]
    (curve,), = plot.score_curves([scratch], "acc", x="tokens").values()
    assert curve[0] == [200, 400, 600, 800, 1000]  # the scratch run's own eval.jsonl, found by default
    without = plot.score_curves(runs, "acc", evals=["-", "-"])["sample_mc"]  # only the grown metrics.csv column
    assert without[0] is None and without[1][1] == [0.2, 0.3, 0.5, 0.6]
    out = tmp_path / "merged.png"
    assert plot.main([str(scratch), str(grown), "--metric", "acc", "--evals", f"-,{grown_eval}", "--x", "tokens",
                      "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_downstream_errors_are_one_line(runs, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    both = [*map(str, runs), "--out", out]
    err = error_line(capsys, both + ["--metric", "acc"])
    assert "no run has acc scores to plot: score checkpoints with `python eval/run.py --run RUN --tasks T`" in err
    assert "train with --eval_tasks T (metrics.csv columns T/acc)" in err
    scored(runs, [["piqa", "sciq"], ["sciq"]])
    err = error_line(capsys, both + ["--metric", "acc", "--task", "arc_easy"])
    assert err == "error: no run has acc scores of task arc_easy; tasks with acc: piqa, sciq\n"
    assert "--evals has 1 files for 2 runs" in error_line(capsys, both + ["--metric", "acc", "--evals", "-"])
    assert "nope.jsonl: no such file" in error_line(capsys, both + ["--metric", "acc", "--evals",
                                                                     f"-,{tmp_path / 'nope.jsonl'}"])
    assert "--y applies only with --metric loss" in error_line(capsys, both + ["--metric", "acc", "--y", "val_loss"])
    assert "--task and --evals apply only with a downstream --metric" in error_line(
        capsys, both + ["--task", "piqa", "--evals", "-,-"])
    assert "invalid choice" in error_line(capsys, both + ["--metric", "bleu"], code=2)
    assert not (tmp_path / "x.png").exists()
