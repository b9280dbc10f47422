"""What keeps the processes of one run in step: a local launcher, a watchdog, agreement on failures and stops.

Every rank runs the same collectives in the same order. Work that only rank 0 does (writing files) reports its
outcome to every rank (`on_rank_zero`), and failures or stop signals that one rank sees are agreed on at step
boundaries (`Agreement`), so that no rank is left waiting in a collective for a rank that has given up. What
still hangs (a frozen node, a deadlock) is ended by the `Watchdog` with one line.

Exit codes (README, "Exit codes"): 0 finished, 1 an error (one `error:` line), 2 bad flags (argparse),
124 a rank waited longer than --collective_timeout, 128 + N stopped by signal N after saving a checkpoint
(130 Ctrl-C, 138 SIGUSR1, 143 SIGTERM), 0 again when slurm requeued the job after such a save.
"""

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


def check_slurm_layout(devices: int, num_nodes: int) -> None:
    """Refuses a slurm allocation whose tasks do not match --devices x --num_nodes, before any work: with fewer
    processes than tasks each task would train on its own and race the others on one out_dir; with more, ranks
    index past the device list. Raises ValueError naming both numbers and the fix."""
    if not under_slurm():
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
    exit code: the first failing rank's, else rank 0's. Stop signals sent to this process go to every rank (a
    Ctrl-C in a terminal reaches them directly). When a rank fails, the others get `grace_s` to notice, then
    SIGKILL: a rank blocked in a collective cannot run Python signal handlers."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(devices),
           "NODE_RANK": "0"}
    procs = [subprocess.Popen([sys.executable, *argv], env={**env, "LOCAL_RANK": str(r)}) for r in range(devices)]

    def forward(signum, frame) -> None:
        if signum != signal.SIGINT:  # a terminal's Ctrl-C already reached every rank
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    failed: Optional[int] = None
    deadline = None
    while any(p.poll() is None for p in procs):
        codes = [p.returncode for p in procs]
        bad = [c for c in codes if c not in (None, 0) and not _is_stop(c)]
        if bad and failed is None:
            failed, deadline = bad[0], time.monotonic() + grace_s
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)
    codes = [p.wait() for p in procs]
    if failed is not None:
        return failed if failed > 0 else 128 - failed
    bad = [c for c in codes if c != 0]
    return codes[0] if codes[0] != 0 or not bad else (bad[0] if bad[0] > 0 else 128 - bad[0])


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

    SIGTERM, SIGUSR1 and SIGINT set a flag (a second SIGINT interrupts at once). Code that only one rank runs
    (rank 0's metrics file, checkpoint pruning) records its exception with `attempt`; at the next `check` every
    rank learns of it: the failing rank raises its own error, the others raise `RankFailure`.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.failure: Optional[BaseException] = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

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
