"""What keeps the processes of one run in step: a local launcher, a watchdog, agreement on failures and stops.

Every rank runs the same collectives in the same order. Work that only rank 0 does (writing files) reports its
outcome to every rank (`on_rank_zero`), and failures or stop signals that one rank sees are agreed on at step
boundaries (`Agreement`), so that no rank is left waiting in a collective for a rank that has given up. What
still hangs (a frozen node, a deadlock) is ended by the `Watchdog` with one line.

Exit codes (README, "Exit codes"): 0 finished, 1 an error (one `error:` line), 2 bad flags (argparse),
124 a rank waited longer than --collective_timeout, 128 + N stopped by signal N after saving a checkpoint
(130 Ctrl-C, 138 SIGUSR1, 143 SIGTERM), 0 again when slurm requeued the job after such a save.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, List, Optional

EXIT_ERROR = 1
EXIT_TIMEOUT = 124
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class RankFailure(RuntimeError):
    """Another rank failed and reported it; this rank stops without repeating the message."""


class Stopped(Exception):
    """A stop signal was agreed on and the checkpoint saved: exit 128 + signum, or 0 if slurm requeued the job."""

    def __init__(self, signum: int, requeued: bool) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.requeued = signum, requeued

    @property
    def code(self) -> int:
        return 0 if self.requeued else 128 + self.signum


class StoppedEarly(BaseException):
    """SIGINT or SIGTERM before the first step: nothing to save, so the rank stops at once (exit 128 + signum)
    instead of finishing a set-up that may take minutes. A BaseException, as KeyboardInterrupt is, so that no
    `except Exception` on the way holds it up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_starting = threading.Event()  # set from stop_early_on_signals until Agreement.begin: the rank is starting up
_stop_reported = threading.Event()  # the main thread has said why it stops


def stop_early_on_signals(speak: bool, cleanup: Callable[[], None], grace: float = 10.0) -> None:
    """Until `Agreement.begin`, SIGINT and SIGTERM raise `StoppedEarly` (the default SIGTERM would end the process
    without a word). A Python handler runs only when the main thread is back in Python, and a process group's
    TCPStore connect retries through EINTR in C++ for many minutes, so a watcher thread, woken by the signal
    itself (`signal.set_wakeup_fd`), ends the process `grace` seconds later if it is still starting up: one
    line where `speak` and the main thread has not said it, `cleanup()`, exit 128 + signal."""
    def stop(signum, frame):
        raise StoppedEarly(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write)
    _starting.set()
    threading.Thread(target=_end_if_held, args=(read, speak, cleanup, grace), daemon=True).start()


def stop_reported() -> None:
    """The main thread has printed why the rank stops: the watcher of `stop_early_on_signals` stays silent."""
    _stop_reported.set()


def _end_if_held(read: int, speak: bool, cleanup: Callable[[], None], grace: float) -> None:
    while True:
        signum = os.read(read, 1)[0]
        if signum in (signal.SIGINT, signal.SIGTERM) and _starting.is_set():
            break
    time.sleep(grace)
    if not _starting.is_set():
        return
    if speak and not _stop_reported.is_set():
        print(f"error: stopped by {signal.Signals(signum).name} during start-up, before the first step: nothing "
              "was saved", file=sys.stderr, flush=True)
    cleanup()
    os._exit(128 + signum)


def launch_rank() -> int:
    """This process's global rank from the launcher's environment, before any process group exists: srun's
    SLURM_PROCID, torchrun's RANK, our local launcher's LOCAL_RANK; 0 for a process started by hand."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ and (key != "SLURM_PROCID" or under_slurm()):
            return int(os.environ[key])
    return int(os.environ.get("LOCAL_RANK", 0))


def under_slurm() -> bool:
    """Lightning's rule (SLURMEnvironment.detect): SLURM_NTASKS set and the job is not an interactive shell."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def externally_launched() -> bool:
    """True when a launcher (srun, torchrun, our own) started one process per rank."""
    return under_slurm() or "LOCAL_RANK" in os.environ


def check_launcher_layout(devices: int, num_nodes: int) -> None:
    """Refuses a launch whose process count (torchrun's or `fabric run`'s WORLD_SIZE) is not --devices x
    --num_nodes: with --devices left at 1 every process would train alone on one out_dir; with more, a traceback.
    Slurm's tasks are `check_slurm_layout`'s. Raises ValueError naming both numbers and the flags to give."""
    world = os.environ.get("WORLD_SIZE")
    if under_slurm() or "LOCAL_RANK" not in os.environ or not (world or "").isdigit():
        return
    local = os.environ.get("LOCAL_WORLD_SIZE") or ""
    per_node = int(local) if local.isdigit() else int(world) // max(1, num_nodes)
    if int(world) != devices * num_nodes:
        raise ValueError(f"the launcher started {world} processes (WORLD_SIZE), but --devices {devices} x "
                         f"--num_nodes {num_nodes} make {devices * num_nodes}: every process is one rank of the run; "
                         f"give --devices {per_node} --num_nodes {max(1, int(world) // max(1, per_node))}")


def check_slurm_layout(devices: int, num_nodes: int) -> None:
    """Refuses a slurm allocation whose tasks do not match --devices x --num_nodes, before any work: with fewer
    processes than tasks each task would train on its own and race the others on one out_dir; with more, ranks
    index past the device list. Raises ValueError naming both numbers and the fix."""
    if not under_slurm():
        step_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1)
        if step_tasks > 1 and "LOCAL_RANK" not in os.environ:
            raise ValueError(f"this srun step runs {step_tasks} tasks, but the job's name "
                             f"{os.environ.get('SLURM_JOB_NAME')!r} means 'not a slurm launch' (Lightning's rule for "
                             "salloc shells), so every task would be a run of its own on one out_dir: rename the "
                             "job (sbatch -J NAME) or start one task")
        return
    nodes = int(os.environ.get("SLURM_STEP_NUM_NODES") or os.environ.get("SLURM_NNODES")
                or os.environ.get("SLURM_JOB_NUM_NODES") or 1)
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ["SLURM_NTASKS"])
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
    per_node = int(per_node) if per_node and per_node.isdigit() else tasks // max(1, nodes)
    if per_node != devices:
        raise ValueError(f"slurm runs {per_node} task(s) per node but --devices is {devices}: every task is one "
                         f"process of the run; make them equal (sbatch --ntasks-per-node={devices}, or "
                         f"GPUS_PER_NODE={per_node} / --devices {per_node})")
    if nodes != num_nodes:
        raise ValueError(f"slurm allocated {nodes} node(s) but --num_nodes is {num_nodes}; make them equal "
                         f"(sbatch --nodes={num_nodes}, or --num_nodes {nodes})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(devices: int, argv: List[str], grace_s: float = 10.0) -> int:
    """Starts `devices` ranks of this command on this machine (torchrun's standalone mode) and returns the run's
    exit code: the first failing rank's, else rank 0's (a rank killed by signal N counts as 128 + N); after a stop
    signal to this process, 128 + that signal unless every rank finished (a rank that saw its peer stop first
    fails in a collective, and that is no failure of the run). SIGTERM,
    SIGUSR1 and SIGINT sent to this process go to every rank (a terminal's Ctrl-C, which reaches them too, then
    arrives twice within milliseconds: `Agreement` counts that as one). When a rank fails, the others get
    `grace_s` to notice, then SIGKILL: a rank blocked in a collective cannot run Python signal handlers."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(devices),
           "NODE_RANK": "0"}
    procs = [subprocess.Popen([sys.executable, *argv], env={**env, "LOCAL_RANK": str(r)},
                              preexec_fn=stop_with_parent) for r in range(devices)]

    received: List[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    failed: Optional[int] = None
    deadline = None
    while None in (codes := [p.poll() for p in procs]):  # every rank polled: any of them may end first
        bad = [_code(c) for c in codes if c not in (None, 0) and not _is_stop(c)]
        if bad and failed is None:
            failed, deadline = bad[0], time.monotonic() + grace_s
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)
    if received and any(codes):
        return 128 + received[0]
    if failed is not None:
        return failed
    return _code(codes[0]) or next((_code(c) for c in codes if c), 0)


def _code(returncode: int) -> int:
    """A child's exit status as a shell reports it: 128 + N when it was killed by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def stop_with_parent() -> None:
    """In a child process (a rank, before exec; a tokenizer worker): SIGTERM when the parent dies (even by
    SIGKILL), so that the child stops instead of running on, or hanging, without it (Linux's PR_SET_PDEATHSIG;
    elsewhere nothing)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _is_stop(code: int) -> bool:
    return code in {128 + s for s in STOP_SIGNALS}


class Watchdog:
    """Ends this process with one line and exit code 124 when a phase (a step, a validation, a save) lasts longer
    than `timeout_s`: the other ranks stopped answering (a crash, a frozen node) and a collective would otherwise
    wait until the job's time limit. It runs in a thread because a rank blocked in a collective runs no Python
    code: not even signal handlers, which is why such a rank ignores SIGTERM."""

    def __init__(self, rank: int, world: int, timeout_s: float) -> None:
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self._what: Optional[str] = None
        self._since = time.monotonic()
        self._lock = threading.Lock()
        if world > 1:
            threading.Thread(target=self._watch, daemon=True, name="collective-watchdog").start()

    def phase(self, what: Optional[str]) -> None:
        """Starts the clock for `what` (None: nothing to watch, e.g. after the run)."""
        with self._lock:
            self._what, self._since = what, time.monotonic()

    def _watch(self) -> None:
        while True:
            time.sleep(min(5.0, max(0.05, self.timeout_s / 20)))
            with self._lock:
                what, waited = self._what, time.monotonic() - self._since
            if what is not None and waited > self.timeout_s:
                sys.stderr.write(f"error: rank {self.rank} of {self.world}: {what} has not finished after "
                                 f"{waited / 60:.1f} min; another rank has failed or hangs (see its output), or "
                                 "this phase is slower than --collective_timeout allows\n")
                sys.stderr.flush()
                os._exit(EXIT_TIMEOUT)


class Agreement:
    """Stop signals and local failures, agreed on by every rank at step boundaries (one small all-reduce).

    SIGTERM, SIGUSR1 and SIGINT set a flag (a second SIGINT, 2 s or more after the first, interrupts at once);
    before `begin`, i.e. during set-up, SIGINT and SIGTERM raise `StoppedEarly`. Code that only one rank runs
    (rank 0's metrics file, checkpoint pruning) records its exception with `attempt`; at the next `check` every
    rank learns of it: the failing rank raises its own error, the others raise `RankFailure`.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._since = 0.0
        self._training = False
        self.failure: Optional[BaseException] = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def begin(self) -> None:
        """Training starts: from now on a stop signal saves a checkpoint at the next step boundary."""
        self._training = True
        _starting.clear()
        signal.set_wakeup_fd(-1)

    def _handle(self, signum, frame) -> None:
        if not self._training and signum != signal.SIGUSR1:
            raise StoppedEarly(signum)
        now = time.monotonic()
        if signum == signal.SIGINT and self.signum == signal.SIGINT and now - self._since > 2.0:
            raise KeyboardInterrupt  # Ctrl-C again: a duplicate of the first arrives within milliseconds
        if self.signum is None:
            self.signum, self._since = signum, now

    def attempt(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as e:  # noqa: BLE001 - re-raised on every rank at the next check
            self.failure = self.failure or e

    def check(self, fabric) -> Optional[int]:
        """Collective: raises if any rank failed; else returns the stop signal any rank received (the highest
        number when they differ), or None."""
        import torch

        flags = torch.tensor([1.0 if self.failure else 0.0, float(self.signum or 0)], device=fabric.device)
        failed, signum = fabric.all_reduce(flags, reduce_op="max").tolist()
        if self.failure is not None:
            raise self.failure
        if failed:
            raise RankFailure("another rank failed")
        return int(signum) or None


def on_rank_zero(fabric, action: Callable[[], Any]) -> None:
    """Collective: runs `action` on rank 0 and tells every rank whether it failed. Rank 0 re-raises the error;
    the others raise `RankFailure`, instead of waiting at the next barrier for a rank that is gone."""
    error = None
    if fabric.global_rank == 0:
        try:
            action()
        except Exception as e:  # noqa: BLE001 - re-raised below, after every rank knows
            error = e
    failed = fabric.broadcast(error is not None, src=0) if fabric.world_size > 1 else error is not None
    if error is not None:
        raise error
    if failed:
        raise RankFailure("rank 0 failed")


def agree(fabric, action: Callable[[], Any]) -> None:
    """Collective: runs `action` on every rank, then all learn whether it failed anywhere (one all-reduce). The
    lowest failing rank re-raises its error, every other rank raises `RankFailure`: one report for the job, and
    no rank left at the next collective while another is gone. Catches BaseException subclasses that are not
    interrupts, e.g. torch.distributed.checkpoint's CheckpointException."""
    import torch

    error: Optional[BaseException] = None
    try:
        action()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - reported below, on one rank
        error = e
    world = fabric.world_size
    first = torch.tensor(float(fabric.global_rank if error is not None else world), device=fabric.device)
    first = int(fabric.all_reduce(first, reduce_op="min").item()) if world > 1 else int(first.item())
    if first == world:
        return
    if error is not None and first == fabric.global_rank:
        raise error
    raise RankFailure(f"rank {first} failed")


def first_line(error: BaseException) -> str:
    """`Type: message`, first line only; for a CheckpointException, that of the first rank's underlying error."""
    failures = getattr(error, "failures", None)
    if failures:
        error = next(iter(failures.values()))[0]
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"
