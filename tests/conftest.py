import contextlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_gpt import Config  # noqa: E402

torch.set_num_threads(2)
# Tests run children under RLIMIT_FSIZE (a full disk); such a child would write truncated .pyc files without
# noticing, and later imports of those modules fail with "EOFError: marshal data too short".
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"

# (n_head, n_query_groups): MHA, GQA, MQA
ATTENTION_KINDS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}


def small_config(kind: str = "gqa", **overrides) -> Config:
    n_head, groups = ATTENTION_KINDS[kind]
    base = dict(name=f"test-{kind}", block_size=32, vocab_size=96, padding_multiple=32, n_layer=2, n_head=n_head,
                n_embd=64, n_query_groups=groups, intermediate_size=160)
    return Config(**{**base, **overrides})


@pytest.fixture(params=sorted(ATTENTION_KINDS))
def attention_kind(request):
    return request.param


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The embedded sample (scripts/prepare_sample_data.py), as `make demo` builds it: ~20 s once, then reused
    (its stages publish their outputs under final names only when complete)."""
    out = ROOT / "data" / "sample"
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_sample_data.py"), "--out", str(out)],
                       check=True, capture_output=True)
    return out


@contextlib.contextmanager
def umask(mask: int):
    """The process's umask set to `mask` for the block."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    """A file's permission bits, e.g. 0o640."""
    return stat.S_IMODE(path.stat().st_mode)


def run_group(argv, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command in its own session and SIGKILLs the whole group on timeout, then fails the test: a hung
    rank (and the ranks it started) cannot outlive the test or stall the suite."""
    import signal

    kwargs.setdefault("env", {**os.environ, "OMP_NUM_THREADS": "1"})
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=kwargs.pop("cwd", ROOT), **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, argv[:3]))} ... hung for {timeout} s and was killed:\n{out[-1500:]}\n{err[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # ranks left behind by a launcher that exited
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def command_error(capsys, main, argv, code: int = 1) -> str:
    """Runs a command's main(argv) in-process; asserts it ends with `code` (returned, or by SystemExit as argparse
    does for bad flags: 2) after printing exactly one `error:` line, and returns that line."""
    try:
        got = main(argv)
    except SystemExit as e:
        got = e.code
    err = capsys.readouterr().err
    assert got == code, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def in_one_process(commands, scratch: Path) -> None:
    """Runs `commands` ([["pretrain/tinyllama.py", flags...], ["growth", "grow", ...], ...]) one after another in
    one process (tests/one_process.py): each through its script's entry function, start-up paid once."""
    (scratch / "commands.json").write_text(json.dumps([[str(a) for a in c] for c in commands]))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "one_process.py"), str(scratch / "commands.json")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
