"""How every command ends: one `error:` line for an expected failure, one line and exit code 130 for Ctrl-C
(even while torch is still importing), 128 + N for SIGTERM or SIGHUP after the command's cleanup, and no failure
when a reader closes stdout (`... | head -1`).

Torch-free on purpose: `guard_command` must run before a script's heavy imports."""

import os
import signal
import sys
import threading
from typing import Any, Callable, Optional


def error_line(e: BaseException) -> Optional[str]:
    """The one line a command prints for an expected failure, or None for a bug (which keeps its traceback).

    Expected: ValueError (bad input, CheckpointError), OSError (a path that cannot be read or written, a full
    disk) and torch.distributed.checkpoint's CheckpointException, which derives from BaseException."""
    from lit_gpt.files import os_error_line

    if isinstance(e, OSError):
        return os_error_line(e)
    if isinstance(e, ValueError):
        return str(e)
    if type(e).__name__ == "CheckpointException":
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        return "a distributed checkpoint could not be read or written: " + (lines[-1] if lines else type(e).__name__)
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP during a command's action (`kill`, `timeout`, a slurm time limit, a closed terminal),
    raised like Ctrl-C's KeyboardInterrupt so that the command removes its temporary outputs on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def exit_code(action: Callable[[], Any]) -> int:
    """Runs a command-line action: an expected failure (`error_line`) becomes one `error:` line on stderr and
    exit code 1; Ctrl-C one line and 130; SIGTERM or SIGHUP one line and 128 + N, after the action's cleanup (a
    signal a handler already takes, or that is ignored, keeps its handling)."""
    installed = []
    if threading.current_thread() is threading.main_thread():
        for sig in TERMINATING:
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _terminate)
                installed.append(sig)
    try:
        action()
    except Terminated as e:
        print(f"error: terminated by {signal.Signals(e.signum).name}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
        line = error_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    finally:
        for sig in installed:
            if signal.getsignal(sig) is _terminate:
                signal.signal(sig, signal.SIG_DFL)
    if sys.excepthook is _quiet_interrupt:  # a command's process (guard_command), about to exit
        # the output is in place: a Ctrl-C or SIGTERM while the interpreter shuts down must not report a failure
        ignore_signals((signal.SIGINT, *TERMINATING))
    return 0


def ignore_signals(signals) -> None:
    """Ignores `signals` from now on: for a command whose work is complete, so that a stop arriving while it
    shuts down cannot turn its success into an exit 128 + N."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)


class _ReaderMayLeave:
    """stdout that drops what it is given once the reader has closed the pipe: the command's messages are
    lost, its work (files written, a training run) is not, and it exits as it would have."""

    def __init__(self, stream):
        self._stream = stream

    def _closed(self) -> None:
        # later writes, the interpreter's final flush and child processes' output all go to /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._closed()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _interrupted_while_importing(signum, frame) -> None:
    """Ctrl-C before the command has parsed its flags, i.e. while it imports: nothing is written yet, so it ends
    here. A KeyboardInterrupt raised inside a C extension's initialisation would surface as an ImportError
    traceback (numpy: "cannot load module more than once"), or be swallowed by a library's `except`."""
    try:
        sys.stderr.write("error: interrupted\n")
        sys.stderr.flush()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # dies by SIGINT, as a shell expects of an interrupted command


def imports_done() -> None:
    """Ctrl-C raises KeyboardInterrupt again, so that a command's work cleans up after itself (temporary outputs)
    and ends with one line. Called when flags are parsed (`lit_gpt.cli.ArgumentParser`); a no-op unless
    `guard_command` deferred it."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_importing:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _quiet_interrupt(kind, value, traceback) -> None:
    if issubclass(kind, KeyboardInterrupt):
        # Python still ends the process by SIGINT, so the exit status is 130
        print("error: interrupted", file=sys.stderr)
        return
    sys.__excepthook__(kind, value, traceback)


def guard_command() -> None:
    """Call at the top of a command's script, before importing torch: Ctrl-C at any moment prints one line
    (exit 130), and a closed stdout (`| head -1`, `| true`) neither prints a BrokenPipeError traceback nor
    changes the exit status. Until the command parses its flags (`imports_done`), Ctrl-C ends the process at
    once; after that it is a KeyboardInterrupt, reported by `exit_code` or the excepthook set here."""
    sys.excepthook = _quiet_interrupt
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the shell made us ignore it
        signal.signal(signal.SIGINT, _interrupted_while_importing)
    if not isinstance(sys.stdout, _ReaderMayLeave) and sys.stdout is not None:
        try:
            sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):
            return  # captured (pytest, notebooks): no pipe to lose
        sys.stdout = _ReaderMayLeave(sys.stdout)
