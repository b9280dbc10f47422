"""Writing outputs safely: under a temporary name beside the target, renamed into place when complete, with the
permissions the user's umask asks for, and nothing left behind when a write fails.

`tempfile.mkstemp`/`mkdtemp` create 0600 files and 0700 directories; renamed as they are, group members on a
shared cluster could not read the results. Every output of every command goes through these helpers.
"""

import hashlib
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

PathLike = Union[str, Path]


def umask() -> int:
    """The process's umask (reading it means setting it: restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def missing(path: PathLike, kind: str = "file") -> Optional[str]:
    """Why `path` is not an existing `kind` ("file" or "directory"), e.g. "is a directory, not a file"; None when it
    is one. For error lines that tell a wrong path from a wrong kind of path."""
    path = Path(path)
    if (path.is_file() if kind == "file" else path.is_dir()):
        return None
    if not path.exists():
        return "not found"
    other = "directory" if path.is_dir() else "file" if path.is_file() else "special file"
    return f"is a {other}, not a {kind}"


def check_writable_target(path: PathLike, force: bool, flag: str = "--force",
                          inputs: Optional[Dict[str, PathLike]] = None, what: str = "") -> None:
    """Refuses to replace an existing file or a non-empty directory unless `force`, and always refuses an output
    that is or holds one of the command's `inputs` ({flag: path}), which replacing it would delete.

    Raises:
        ValueError: one line naming `path` (as `what`, e.g. "--out_dir X", when given) and the flag that allows
            replacing it, or the input it holds.
    """
    path = Path(path)
    check_keeps_inputs(path, inputs or {}, what)
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ValueError(f"{path} exists and is not empty; pass {flag} to replace it")
    if path.exists() and not path.is_dir() and not force:
        raise ValueError(f"{path} exists; pass {flag} to replace it")


def check_keeps_inputs(path: PathLike, inputs: Dict[str, PathLike], what: str = "") -> None:
    """Refuses an output that would destroy one of the command's `inputs` ({name: path}), even with --force: the
    output is the input, holds it (a directory above it), or is an existing file inside an input directory.

    Raises:
        ValueError: one line naming the output (as `what` when given) and the input.
    """
    out = Path(path).resolve()
    for name, source in inputs.items():
        src = Path(source).resolve()
        inside = src.is_dir() and src in out.parents and out.is_file()
        if src == out or out in src.parents or inside:
            raise ValueError(f"{what or path} {'is inside' if inside else 'holds'} {name} {source}, which replacing it "
                             f"would {'overwrite' if inside else 'delete'}; choose another path")


def _make_parent(path: Path) -> List[Path]:
    """Creates the missing directories above `path`; returns them, deepest first, for `_cleanup`."""
    missing = [p for p in path.parents if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(20, "a path component is a file, not a directory", str(path.parent)) from None
    return missing


@contextmanager
def _cleanup(path: Path, created: List[Path], tmp: Path) -> Iterator[None]:
    """Removes `tmp` when the block ends; on an error also the directories `_make_parent` created (while empty).
    An OSError names what the user asked for, never `tmp` (gone by the time they read it): a file inside `tmp`
    as the same file inside `path`, and a failed write that names no file (a full disk) as `path`."""
    try:
        yield
    except OSError as e:
        _remove(tmp, created)
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, f"write failed ({e.strerror or e})", str(path)) from None
        named = str(e.filename) if e.filename is not None else ""
        if named == str(tmp) or named.startswith(str(tmp) + os.sep):
            raise OSError(e.errno, e.strerror, str(path) + named[len(str(tmp)):]) from None
        raise
    except BaseException:
        _remove(tmp, created)
        raise
    finally:
        _remove(tmp, [])


def _remove(tmp: Path, directories: List[Path]) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


@contextmanager
def atomic_dir(out: PathLike) -> Iterator[Path]:
    """Yields an empty temporary directory beside `out`; when the block ends without error it replaces `out`
    (whatever was there) in one rename, with mode 0777 & ~umask. On error the temporary directory and any parent
    directories made for it are removed, and `out` is left as it was.

    Raises:
        OSError: the parent of `out` cannot be created or written, or a write failed; the error names a path.
    """
    out = Path(out)
    created = _make_parent(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    with _cleanup(out, created, tmp):
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())
        if out.is_dir() and not out.is_symlink():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.exists() or out.is_symlink():
                out.unlink()
            tmp.rename(out)


@contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write; when the block ends without error it is renamed onto
    `path` with mode 0666 & ~umask. On error the temporary file and any parent directories made for it are
    removed, and `path` is left as it was.

    Raises:
        OSError: the parent of `path` cannot be created or written, or a write failed; the error names a path.
    """
    path = Path(path)
    created = _make_parent(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    with _cleanup(path, created, tmp):
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)


def write_text(path: PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically (see `atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: PathLike) -> str:
    """The sha256 of a file's bytes, hex, read in 16 MiB pieces (a multi-GB checkpoint never sits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def writing(path: PathLike) -> Iterator[None]:
    """Reports a failed write of `path` inside the block as an OSError naming `path` and the cause.

    A full disk or a file-size limit reaches Python as an OSError naming no file, a RuntimeError from torch.save's
    zip writer ("unexpected pos 704 vs 598"), or safetensors' SafetensorError ("... os error 27"). Use it around
    one writer call only: any RuntimeError inside is taken for a failed write.

    Raises:
        OSError: the write failed; `filename` is `path`, the message gives the cause and the free space there.
    """
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, f"write failed ({e.strerror or e})", str(path)) from None
    except Exception as e:
        if not isinstance(e, RuntimeError) and type(e).__name__ != "SafetensorError":
            raise
        code = re.search(r"os error (\d+)", str(e))
        if code:
            raise OSError(int(code.group(1)), f"write failed ({os.strerror(int(code.group(1)))})", str(path)) from None
        parent = Path(path).parent
        free = f" {shutil.disk_usage(parent).free / 2**30:.1f} GiB free there" if parent.is_dir() else ""
        detail = re.sub(r"\[enforce fail at [^\]]*\]\s*\.?\s*", "", (str(e).strip().splitlines() or [""])[-1])[:160]
        raise OSError(None, f"write failed (disk full or file size limit?{free}): {detail}", str(path)) from None


def save_torch(obj, path: PathLike) -> None:
    """`torch.save` whose failed write is an OSError naming the file (see `writing`)."""
    import torch

    with writing(path):
        torch.save(obj, path)


def os_error_line(e: OSError) -> str:
    """One line for an OSError: the path, what failed and, for write errors, a hint."""
    path = e.filename if e.filename is not None else None
    reason = e.strerror or str(e)
    if path is None:
        return reason
    extra = f" -> {e.filename2}" if e.filename2 else ""
    return f"{path}{extra}: {reason}"
