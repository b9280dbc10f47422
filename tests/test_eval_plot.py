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
    (sx, _), (gx, gy) = plot.curves(runs, "tokens", "val_loss")
    assert sx[0] == 2 * TOKENS_PER_STEP and gx[0] == pytest.approx(7 * TOKENS_PER_STEP)
    assert len(gx) == len(gy) == 30


@pytest.mark.parametrize("x", ["tokens", "flops"])
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
    (paper, _), = plot.curves([run], "tokens", "val_loss", convention="paper")
    (exact, _), = plot.curves([run], "tokens", "val_loss")
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
