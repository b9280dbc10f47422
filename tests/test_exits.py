"""How commands end when the user presses Ctrl-C early or the reader of their output goes away (lit_gpt/exits.py)."""

import ast
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from conftest import ROOT, small_config

from lit_gpt import GPT

# the commands a user runs as scripts; each calls guard_command() before anything that imports torch
SCRIPTS = ["pretrain/tinyllama.py", "eval/run.py", "eval/speedup.py", "eval/table.py", "eval/plot.py",
           "scripts/reproduce.py", "scripts/demo.py", "scripts/prepare_sample_data.py", "scripts/prepare_slimpajama.py",
           "scripts/prepare_starcoder.py", "scripts/convert_hf_checkpoint.py", "scripts/convert_lit_checkpoint.py", "scripts/export_checkpoint.py"]
STDLIB_OR_LIGHT = ("lit_gpt.exits", "lit_gpt.cli", "tqdm", *sys.stdlib_module_names)


def test_every_command_guards_before_heavy_imports():
    for path in SCRIPTS:
        before = []
        for node in ast.parse((ROOT / path).read_text()).body:
            if isinstance(node, ast.If) and "guard_command()" in ast.unparse(node):
                break
            for inner in ast.walk(node):  # imports inside an `if __package__:` block count too
                names = ([a.name for a in inner.names] if isinstance(inner, ast.Import)
                         else [inner.module or "."] if isinstance(inner, ast.ImportFrom) else [])
                before += [n for n in names
                           if n not in STDLIB_OR_LIGHT and n.split(".")[0] not in sys.stdlib_module_names]
        else:
            raise AssertionError(f"{path} never calls guard_command()")
        assert before == [], f"{path} imports {before} before guard_command()"
    # python -m growth guards in its __main__ block, so nothing it imports on the way may load torch
    probe = "import sys, growth.__main__; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True).stdout == "False\n"


def test_ctrl_c_while_torch_imports_is_one_line():
    """Around 0.5 s numpy's C initialisation turned the KeyboardInterrupt into an ImportError traceback, or a
    library swallowed it and the command ran to the end."""
    interrupted = 0
    for delay, script in [(d, ["-m", "growth", "grow"]) for d in (0.4, 0.5, 0.55, 0.6, 0.65, 0.8)] + [
            (d, ["pretrain/tinyllama.py"]) for d in (1.2, 2.2)]:
        proc = subprocess.Popen([sys.executable, *script, "--help"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        if proc.returncode != 0:
            assert (proc.returncode, err.strip()) == (-signal.SIGINT, "error: interrupted")
            interrupted += 1
    assert interrupted >= 1, "the command finished before any signal: raise the delays' resolution"


def _closed_stdout(*args):
    """Runs a command whose reader has gone (`| true`): stdout is a pipe already closed at our end."""
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=120), err


def test_a_closed_stdout_changes_nothing(tmp_path):
    for args in (["-m", "growth", "plan", "--params", "1e9", "--tokens", "20B"], ["scripts/reproduce.py", "list"],
                 ["scripts/reproduce.py", "smoke", "--dry_run"]):
        assert _closed_stdout(*args) == (0, ""), args
    config = small_config("gqa")
    (tmp_path / "base").mkdir()
    torch.save(GPT(config).state_dict(), tmp_path / "base" / "lit_model.pth")
    config.to_json(tmp_path / "base" / "lit_config.json")
    replace(config, n_layer=2 * config.n_layer).to_json(tmp_path / "deep.json")
    code, err = _closed_stdout("-m", "growth", "grow", "--src", tmp_path / "base", "--target", tmp_path / "deep.json",
                               "--op", "stack", "--out", tmp_path / "grown")
    assert (code, err) == (0, "")
    assert (tmp_path / "grown" / "lit_model.pth").is_file() and (tmp_path / "grown" / "growth.json").is_file()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_ends_a_command_after_its_cleanup(tmp_path, capsys, signum):
    """kill, timeout, a slurm time limit or a closed terminal: every command's temporary output goes with it (the
    default action would end the process on the spot and leave it), one line, 128 + N."""
    from lit_gpt.exits import exit_code
    from lit_gpt.files import atomic_dir

    def action():
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half-written").write_text("x")
            os.kill(os.getpid(), signum)
            time.sleep(10)

    assert exit_code(action) == 128 + signum
    assert capsys.readouterr().err == f"error: terminated by {signal.Signals(signum).name}\n"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signum) is signal.SIG_DFL
