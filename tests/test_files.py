"""lit_gpt.files: outputs appear whole or not at all, with the umask's permissions, and name the path on failure."""

import resource
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, mode, umask

from lit_gpt.files import atomic_dir, atomic_file, check_writable_target, os_error_line, save_torch, write_text


@pytest.fixture(params=[0o022, 0o002, 0o077])
def mask(request):
    with umask(request.param):
        yield request.param


def test_outputs_follow_the_umask(tmp_path, mask):
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "w.txt").write_text("x")
    write_text(tmp_path / "f.txt", "y")
    assert mode(tmp_path / "d") == 0o777 & ~mask
    assert mode(tmp_path / "d" / "w.txt") == 0o666 & ~mask
    assert mode(tmp_path / "f.txt") == 0o666 & ~mask


def test_failed_writes_leave_the_old_output_and_no_temporaries(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("old")
    (tmp_path / "f.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("failed half-way")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "f.txt") as tmp:
            tmp.write_text("new")
            raise RuntimeError("failed half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt"]
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["old.txt"]
    assert (tmp_path / "f.txt").read_text() == "old"
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt"]


def test_replacing_needs_force(tmp_path):
    (tmp_path / "d").mkdir()
    check_writable_target(tmp_path / "d", force=False)  # an empty directory is not the user's data
    (tmp_path / "d" / "x").write_text("x")
    with pytest.raises(ValueError, match=r"d exists and is not empty; pass --force"):
        check_writable_target(tmp_path / "d", force=False)
    with pytest.raises(ValueError, match=r"d/x exists; pass --overwrite"):
        check_writable_target(tmp_path / "d" / "x", force=False, flag="--overwrite")
    check_writable_target(tmp_path / "d", force=True)


def test_a_path_below_a_file_names_the_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError) as e:
        write_text(tmp_path / "f" / "out.txt", "y")
    assert os_error_line(e.value).startswith(str(tmp_path / "f"))
    assert (tmp_path / "f").read_text() == "x"


def test_save_torch_reports_a_full_disk_with_the_path(tmp_path):
    """torch.save's own error on a full disk names no file ("unexpected pos ..."); ours does, in one line."""
    code = ("import resource, sys, torch; from lit_gpt.files import os_error_line, save_torch\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "try:\n    save_torch({'w': torch.zeros(100000)}, sys.argv[1])\n"
            "except OSError as e:\n    print(os_error_line(e))\n")
    target = tmp_path / "w.pth"
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=ROOT,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30)))
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith(f"{target}: write failed (disk full or file size limit?") and "\n" not in line
    save_torch({"w": torch.ones(3)}, target)
    assert torch.load(target)["w"].tolist() == [1.0, 1.0, 1.0]


def test_a_full_disk_names_the_file_and_removes_the_directories_made_for_it(tmp_path):
    """A write that fails on an open file names no file (plain "File too large"); ours names the output, and the
    directories created above it go too."""
    code = ("import resource, sys; from lit_gpt.files import write_text\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "try:\n    write_text(sys.argv[1], 'x' * 100000)\n"
            "except OSError as e:\n    print(os_error_line(e))\n").replace(
        "from lit_gpt.files import write_text", "from lit_gpt.files import os_error_line, write_text")
    target = tmp_path / "a" / "b" / "table.md"
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{target}: write failed (File too large)"
    assert list(tmp_path.iterdir()) == []
