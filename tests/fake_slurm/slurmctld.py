"""The fake cluster's controller, shared by every command of fakeslurm.py: the job records under $FAKE_SLURM_STATE
(one JSON file per job, read and written under one fcntl lock, as slurmctld keeps them), killing and cancelling a
job's processes, the dependency rules, the batch script's SLURM_* environment, and the runner (`fakeslurm.py _run
ID`) that plays slurmctld's scheduling and slurmd's batch step for one job.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager, suppress
from pathlib import Path

FINISHED, ACTIVE = ("COMPLETED", "FAILED", "CANCELLED"), ("PENDING", "RUNNING")


class Fatal(Exception):
    """Ends a command with exit status 1 and this one line on stderr."""


# --- state: one JSON record per job, as slurmctld keeps them ---------------------------------------------------------

def state_dir() -> Path:
    if not os.environ.get("FAKE_SLURM_STATE"):
        raise Fatal("fake slurm: FAKE_SLURM_STATE is not set (it names the directory of the fake cluster's state)")
    state = Path(os.environ["FAKE_SLURM_STATE"]).resolve()
    (state / "jobs").mkdir(parents=True, exist_ok=True)
    return state


@contextmanager
def locked(state):
    """Every read-modify-write of the state holds this lock (a process killed while holding it releases it)."""
    with open(Path(state) / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def job(state, job_id) -> dict | None:
    """The record of job `job_id`, or None if there is no such job."""
    try:
        return json.loads((Path(state) / "jobs" / f"{int(job_id)}.json").read_text())
    except (ValueError, OSError):
        return None


def jobs(state) -> list[dict]:
    """Every job's record, by id."""
    records = (job(state, p.stem) for p in (Path(state) / "jobs").glob("*.json"))
    return sorted(filter(None, records), key=lambda r: r["id"])


def save(state, record: dict) -> None:
    write_atomically(Path(state) / "jobs" / f"{record['id']}.json", json.dumps(record, indent=1))


@contextmanager
def updating(state, job_id):
    """Under the lock: yield the job's record (None if there is none) and save it if the block changed it."""
    with locked(state):
        record = job(state, job_id)
        before = json.dumps(record)
        yield record
        if record is not None and json.dumps(record) != before:
            save(state, record)


def kill(pid, sig, group=False) -> None:
    with suppress(ProcessLookupError, PermissionError):
        if pid:
            (os.killpg if group else os.kill)(pid, sig)


def kill_job(record: dict, runner=True) -> None:
    """SIGKILL the job's step tasks, its batch script's process group (srun and whatever else the script started)
    and its runner: slurm kills every process of a job when it is cancelled or when its batch script ends."""
    for pid in record["task_pids"]:
        kill(pid, signal.SIGKILL)
    kill(record["batch_pid"], signal.SIGKILL, group=True)
    if runner and record["runner_pid"] != os.getpid():
        kill(record["runner_pid"], signal.SIGKILL)
    record["task_pids"] = []


def cancel(state, job_id) -> None:
    """scancel without a signal: a pending or running job ends CANCELLED and all its processes are killed."""
    with updating(state, job_id) as r:
        if r and r["state"] in ACTIVE:
            r.update(state="CANCELLED", reason="cancelled", end_time=time.time())
            kill_job(r)


# --- node names and the exported environment -------------------------------------------------------------------------

def nodelist(n: int) -> str:
    return "fake1" if n == 1 else f"fake[1-{n}]"


def exported(env, spec) -> dict:
    """--export: ALL (the default) passes the caller's environment; NONE only its SLURM_* variables (and PATH and
    FAKE_SLURM_*, so that the fake commands stay reachable); NAME and NAME=VALUE items add to either."""
    items = [s for s in (spec or "ALL").split(",") if s]
    keep = items[0] == "ALL"
    out = {k: v for k, v in env.items() if keep or k.startswith(("SLURM", "FAKE_SLURM")) or k == "PATH"}
    for item in items[items[0] in ("ALL", "NONE"):]:
        name, eq, value = item.partition("=")
        if eq or name in env:
            out[name] = value if eq else env[name]
    return out


# --- the runner: slurmctld's scheduling and slurmd's batch step, for one job -----------------------------------------

def dependency_verdict(state, deps) -> str:
    """"ready", "wait" or "never": afterok needs COMPLETED, afternotok FAILED or CANCELLED, afterany any end."""
    verdicts = set()
    for kind, dep in deps:
        st = (job(state, dep) or {"state": "CANCELLED"})["state"]
        ok = kind == "afterany" or (st == "COMPLETED") == (kind == "afterok")
        verdicts.add("wait" if st not in FINISHED else "ready" if ok else "never")
    return "never" if "never" in verdicts else "wait" if "wait" in verdicts else "ready"


def batch_environment(state, r: dict) -> dict:
    """The batch script's environment: the submitter's (through --export) less any SLURM_* it had, plus the job's
    variables. No task or step variables (SLURM_PROCID, SLURM_STEP_*): those come with srun."""
    env = {k: v for k, v in exported(os.environ, r["options"].get("export")).items() if not k.startswith("SLURM")}
    n = str(r["nodes"])
    env.update(SLURM_JOB_ID=str(r["id"]), SLURM_JOBID=str(r["id"]), SLURM_JOB_NAME=r["name"], SLURM_JOB_NUM_NODES=n,
               SLURM_NNODES=n, SLURM_JOB_NODELIST=nodelist(r["nodes"]), SLURM_NODELIST=nodelist(r["nodes"]),
               SLURM_NTASKS=str(r["ntasks"]), SLURM_SUBMIT_DIR=r["submit_dir"], SLURMD_NODENAME="fake1",
               SLURM_RESTART_COUNT=str(r["restart_count"]), SLURM_CLUSTER_NAME="fake", FAKE_SLURM_STATE=str(state))
    for var, value in dict(SLURM_NTASKS_PER_NODE=r["ntasks_per_node"], SLURM_CPUS_PER_TASK=r["cpus_per_task"],
                           SLURM_GPUS_PER_NODE=r["options"].get("gpus-per-node"), SLURM_JOB_PARTITION=r["partition"],
                           SLURM_JOB_ACCOUNT=r["account"], SLURM_JOB_QOS=r["qos"]).items():
        if value is not None:
            env[var] = str(value)
    return env


def start_batch(state, job_id):
    """PENDING -> RUNNING: open the output file (its directory is not created: if it is missing the job fails without
    running) and start the batch script in its own process group. All under the lock, so that scancel either finds
    the batch script's pid or kills the runner before it starts the script. Returns the Popen, or None."""
    with updating(state, job_id) as r:
        if r["state"] != "PENDING":
            return None
        mode = "ab" if r["open_mode"] == "append" else "wb"
        try:
            out = open(r["output"], mode)
            err = subprocess.STDOUT if r["error"] in (None, r["output"]) else open(r["error"], mode)
        except OSError:
            r.update(state="FAILED", reason="could not open output file", exit_code=1, end_time=time.time())
            return None
        r.update(state="RUNNING", reason="None", start_time=time.time())
        try:
            batch = subprocess.Popen([r["script"], *r["args"]], cwd=r["work_dir"], stdout=out, stderr=err,
                                     env=batch_environment(state, r), stdin=subprocess.DEVNULL, start_new_session=True)
            r["batch_pid"] = batch.pid
            return batch
        except OSError as e:
            out.write(f"slurmstepd: error: execve(): {r['script']}: {e.strerror}\n".encode())
            r.update(state="FAILED", reason="NonZeroExitCode", exit_code=1, end_time=time.time())
            return None
        finally:
            for f in {out, err} - {subprocess.STDOUT}:
                f.close()


def cmd_run(state, args):
    """Wait for the dependencies (the job stays PENDING with reason Dependency, or DependencyNeverSatisfied for ever
    once one can no longer be met), then run the batch script, again each time it was requeued while running."""
    job_id = int(args[0])
    try:
        with updating(state, job_id) as r:
            r["runner_pid"] = os.getpid()
        while (verdict := dependency_verdict(state, r["dependency"])) != "ready":
            with updating(state, job_id) as r:
                if r["state"] != "PENDING":
                    return
                r["reason"] = "DependencyNeverSatisfied" if verdict == "never" else "Dependency"
            if verdict == "never":
                return
            time.sleep(0.1)
        with updating(state, job_id) as r:  # FAKE_SLURM_FAIL: a node failure instead of the first run
            if r["state"] == "PENDING" and r["node_fail"]:
                r.update(state="FAILED", reason="NodeFail", exit_code=1, end_time=time.time())
        while batch := start_batch(state, job_id):
            status = batch.wait()
            with updating(state, job_id) as r:
                kill_job(r, runner=False)
                if r["state"] != "RUNNING":  # cancelled
                    return
                r["batch_pid"] = None
                if r["requeue_requested"]:
                    r.update(state="PENDING", requeue_requested=False, restart_count=r["restart_count"] + 1)
                else:
                    code = status if status >= 0 else 128 - status
                    r.update(state="COMPLETED" if code == 0 else "FAILED", exit_code=code, end_time=time.time(),
                             reason="None" if code == 0 else "NonZeroExitCode")
    except Exception as e:  # stderr goes nowhere: make the failure visible in the job instead
        with updating(state, job_id) as r:
            r.update(state="FAILED", reason=f"fake slurm runner crashed: {e!r}", end_time=time.time())
            kill_job(r, runner=False)
