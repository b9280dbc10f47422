"""scripts/demo.py's budget: every run spends the same FLOPs, the base's counted in the grown runs."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT

from lit_gpt import Config
from lit_gpt.flops import flops_per_token

spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def test_every_run_spends_the_scratch_runs_flops():
    steps = demo.budget(400_000, 0.3)
    f4, f8 = (flops_per_token(Config.from_name(n), demo.BLOCK) * demo.TOKENS_PER_STEP for n in (demo.BASE, demo.TARGET))
    scratch = steps["8L"] * f8
    assert steps["8L"] == 400_000 // demo.TOKENS_PER_STEP
    assert abs(steps["4L"] * f4 - scratch) <= f4 / 2  # the base-size model on the whole budget
    assert abs(steps["base"] * f4 - 0.3 * scratch) <= f4 / 2  # d = 30% of C
    grown = steps["base"] * f4 + steps["grown"] * f8
    assert scratch - f8 < grown <= scratch  # never more compute than scratch: no favour to growth


def test_ctrl_c_to_the_demo_alone_stops_its_runs(tmp_path):
    """A signal to the demo's process only (not its group) must not leave its training runs going on their own."""
    proc = subprocess.Popen([sys.executable, "scripts/demo.py", "--out_dir", str(tmp_path / "demo")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not all((tmp_path / "demo" / run / "metrics.csv").is_file() for run in ("4L", "8L")):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert (proc.returncode, err.splitlines()[-1]) == (-signal.SIGINT, "error: interrupted"), err
        assert not processes_naming(tmp_path / "demo"), "training runs outlived the demo"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def processes_naming(path) -> list:
    """The command lines of running processes that mention `path`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in text:
            found.append(text)
    return found
