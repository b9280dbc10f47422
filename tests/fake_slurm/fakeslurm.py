"""A simulated slurm cluster on one machine, for tests: sbatch, srun, scontrol, squeue and scancel.

The shims in bin/ run `fakeslurm.py COMMAND ARGS...`. Jobs are real local processes: a job "on N nodes" is its batch
script run with the SLURM_* environment of an N-node allocation (nodes fake1..fakeN), and srun starts
nodes x tasks-per-node local processes, each with its task's SLURM_* variables. All state lives under
$FAKE_SLURM_STATE (required): jobs/<id>.json per job (what slurmctld keeps; written atomically under one fcntl lock),
last_job_id (ids start at 1001) and spool/job<id>/slurm_script (like slurmd, the job runs a copy of the script taken
at submission, from the copy's path, so $0 is not the submitted file; it runs by its #! line).

Not imitated: time limits and --signal=SIG@TIME (signal a job with `scancel --signal`), node or CPU binding (every
task runs here; FAKE_SLURM_CPUS says how many CPUs it would get), GPUs (no CUDA_VISIBLE_DEVICES), priorities and
resources (a job starts as soon as its dependencies allow), automatic requeue after a node failure, KillWait (cancel
and --kill-on-bad-exit send SIGKILL at once), and `scontrol requeue` does not end the running job: it requeues when
its batch script exits. FAKE_SLURM_NODE_ADDR=ADDR makes `scontrol show hostnames` print ADDR for every node, so that
a rendezvous on "the first node" can be reached here.

For tests: environ(state), wait_for(state, id, states, timeout, reason), job(state, id), jobs(state), cleanup(state).

This file holds the commands (option parsing, sbatch, srun, scontrol, squeue, scancel) and the helpers for tests;
slurmctld.py holds the job records, their locking, the dependency rules and the runner that starts each job.
"""
from __future__ import annotations

import fnmatch
import getpass
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from slurmctld import (ACTIVE, FINISHED, Fatal, cancel, cmd_run, exported, job, jobs, kill, locked, nodelist, save,
                       state_dir, updating, write_atomically)

BIN = Path(__file__).resolve().parent / "bin"


# --- options and host lists ------------------------------------------------------------------------------------------

def parse_options(prog, args, table, short, permute=False):
    """getopt_long as slurm's commands use it: `--opt=value`, `--opt value`, `-Xvalue`, `-X value`, `-lK`. table maps
    a long name to "arg" (needs a value), "flag" or "opt" (optional value, only as --opt=value or -Xvalue). Stops at
    the first operand (the script or command, as sbatch and srun do) unless permute. Returns (options, operands)."""
    args, opts, operands, i = list(args), {}, [], 0
    while i < len(args):
        a, i = args[i], i + 1
        if a == "--":
            operands += args[i:]
            break
        if not a.startswith("-") or a == "-":
            operands += [a] if permute else args[i - 1:]
            if not permute:
                break
            continue
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            if name not in table:
                raise Fatal(f"{prog}: unrecognized option '{a}'")
            if table[name] == "flag" and eq:
                raise Fatal(f"{prog}: option '--{name}' doesn't allow an argument")
        else:
            if a[1] not in short:
                raise Fatal(f"{prog}: invalid option -- '{a[1]}'")
            name, value, eq = short[a[1]], a[2:], bool(a[2:])
            if table[name] == "flag" and eq:  # -lK: more short options in the same word
                args.insert(i, "-" + value)
                eq = False
        if table[name] == "arg" and not eq:
            if i >= len(args):
                raise Fatal(f"{prog}: option '{a}' requires an argument")
            value, i, eq = args[i], i + 1, True
        opts[name] = value if eq else True
    return opts, operands


def number(prog, opts, name, default=None):
    """An integer option; a range such as --nodes=2-4 counts as its minimum."""
    if opts.get(name) in (None, True):
        return default
    try:
        return int(str(opts[name]).split("-")[0])
    except ValueError:
        raise Fatal(f'{prog}: error: Invalid numeric value "{opts[name]}" for --{name}.') from None


def expand_hostlist(hostlist: str) -> list[str]:
    """`fake[1-3]`, `node[01,03-04]`, `a,b`: one name each, zero padding kept, as `scontrol show hostnames` does."""
    hosts = []
    for item in filter(None, re.split(r",(?![^\[]*\])", hostlist)):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        for part in m[2].split(",") if m else ():
            lo, _, hi = part.partition("-")
            hosts += [f"{m[1]}{i:0{len(lo)}d}{m[3]}" for i in range(int(lo), int(hi or lo) + 1)]
        hosts += [] if m else [item]
    return hosts


# --- sbatch ----------------------------------------------------------------------------------------------------------

SBATCH_OPTIONS = {name: "arg" for name in (
    "job-name nodes ntasks-per-node ntasks gpus-per-node gres cpus-per-task mem time signal open-mode output error "
    "partition account qos dependency wrap export chdir").split()}
SBATCH_OPTIONS.update(requeue="flag", parsable="flag", exclusive="opt")
SBATCH_SHORT = dict(J="job-name", N="nodes", n="ntasks", c="cpus-per-task", t="time", o="output", e="error",
                    p="partition", A="account", q="qos", d="dependency", D="chdir")
# input environment variables: they override #SBATCH lines, the command line overrides them
SBATCH_ENV = dict(SBATCH_PARTITION="partition", SBATCH_ACCOUNT="account", SBATCH_QOS="qos", SBATCH_TIMELIMIT="time",
                  SBATCH_JOB_NAME="job-name", SBATCH_OUTPUT="output", SBATCH_ERROR="error",
                  SBATCH_OPEN_MODE="open-mode", SBATCH_GPUS_PER_NODE="gpus-per-node", SBATCH_GRES="gres",
                  SBATCH_EXPORT="export", SBATCH_SIGNAL="signal", SBATCH_REQUEUE="requeue",
                  SBATCH_EXCLUSIVE="exclusive", SBATCH_MEM_PER_NODE="mem")
DEPENDENCY_ERROR = "sbatch: error: Batch job submission failed: Job dependency problem"


def script_directives(text: str) -> list[str]:
    """The words of the `#SBATCH` lines, read (after the #! line) up to the first line that is neither blank nor a
    comment: an #SBATCH line after the first command is ignored, as by sbatch."""
    words = []
    for line in text.splitlines()[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            break
        if re.match(r"#SBATCH\s", line):
            words += shlex.split(line[7:], comments=True)
    return words


def parse_dependency(state, spec) -> list[list]:
    """`afterok:ID[:ID...]` terms, comma-separated (afterany and afternotok too); a job id that slurm does not know
    fails the submission."""
    deps = []
    for term in filter(None, (spec or "").split(",")):
        kind, _, ids = term.partition(":")
        if kind not in ("afterok", "afterany", "afternotok") or not ids:
            raise Fatal(DEPENDENCY_ERROR)
        for dep in ids.split(":"):
            if job(state, dep) is None:
                raise Fatal(DEPENDENCY_ERROR)
            deps.append([kind, int(dep)])
    return deps


def cmd_sbatch(state, args):
    """Queue a batch script (or --wrap=CMD) and return at once: a detached runner (`_run ID`, playing slurmctld and
    slurmd for this job) starts it when its dependencies allow."""
    cli, operands = parse_options("sbatch", args, SBATCH_OPTIONS, SBATCH_SHORT)
    if "wrap" in cli:
        if operands:
            raise Fatal("sbatch: error: Script arguments not permitted with --wrap option")
        text, name, source = f"#!/bin/sh\n{cli['wrap']}\n", "wrap", None
    elif operands:
        source = os.path.abspath(operands[0])
        try:
            text = Path(source).read_text()
        except OSError:
            raise Fatal(f"sbatch: error: Unable to open file {operands[0]}") from None
        name, operands = os.path.basename(source), operands[1:]
    else:  # the script on stdin
        text, name, source = sys.stdin.read(), "sbatch", None
    if not text.startswith("#!"):
        raise Fatal("sbatch: error: This does not look like a batch script.  The first line must start with #! "
                    "followed by the path to an interpreter.")
    from_env = {opt: True if opt == "requeue" else os.environ[var]
                for var, opt in SBATCH_ENV.items() if os.environ.get(var)}
    opts = {**parse_options("sbatch", script_directives(text), SBATCH_OPTIONS, SBATCH_SHORT)[0], **from_env, **cli}
    name = opts.get("job-name") or name
    nodes, per_node = number("sbatch", opts, "nodes", 1), number("sbatch", opts, "ntasks-per-node")
    deps = parse_dependency(state, opts.get("dependency"))
    submit_dir = os.getcwd()
    work_dir = os.path.abspath(opts.get("chdir", submit_dir))
    fail = os.environ.get("FAKE_SLURM_FAIL")
    with locked(state):
        counter = state / "last_job_id"
        job_id = int(counter.read_text()) + 1 if counter.exists() else 1001
        write_atomically(counter, str(job_id))
        script = state / "spool" / f"job{job_id}" / "slurm_script"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(text)
        script.chmod(0o700)

        def path(pattern):  # %j job id, %x job name, %%; relative to the job's working directory
            subst = {"j": str(job_id), "A": str(job_id), "x": name, "%": "%"}
            return os.path.join(work_dir, re.sub(r"%([jAx%])", lambda m: subst[m[1]], pattern))

        save(state, dict(
            id=job_id, name=name, state="PENDING", reason="None", exit_code=None, restart_count=0, options=opts,
            partition=opts.get("partition"), account=opts.get("account"), qos=opts.get("qos"), time=opts.get("time"),
            nodes=nodes, ntasks_per_node=per_node, ntasks=number("sbatch", opts, "ntasks", nodes * (per_node or 1)),
            cpus_per_task=number("sbatch", opts, "cpus-per-task"), script=str(script), source=source, args=operands,
            submit_dir=submit_dir, work_dir=work_dir, dependency=deps, output=path(opts.get("output", "slurm-%j.out")),
            error=path(opts["error"]) if "error" in opts else None, open_mode=opts.get("open-mode", "truncate"),
            node_fail=bool(fail and fnmatch.fnmatchcase(name, fail)), requeue_requested=False, next_step=0,
            runner_pid=None, batch_pid=None, task_pids=[], user=os.environ.get("USER") or getpass.getuser(),
            submit_time=time.time(), start_time=None, end_time=None))
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "_run", str(job_id)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job_id if opts.get("parsable") else f"Submitted batch job {job_id}")


# --- srun ------------------------------------------------------------------------------------------------------------

SRUN_OPTIONS = {"nodes": "arg", "ntasks-per-node": "arg", "ntasks": "arg", "cpus-per-task": "arg",
                "kill-on-bad-exit": "opt", "label": "flag", "export": "arg", "job-name": "arg", "unbuffered": "flag"}
SRUN_SHORT = dict(N="nodes", n="ntasks", c="cpus-per-task", K="kill-on-bad-exit", l="label", u="unbuffered")


def step_layout(opts, env) -> list[int]:
    """Tasks on each node of the step: -N (default: all the job's nodes, or fewer if -n is smaller) with
    --ntasks-per-node, else -n spread in blocks (the first nodes take the remainder), else the job's
    SLURM_NTASKS_PER_NODE, else SLURM_NTASKS / nodes."""
    job_nodes, ntasks = int(env.get("SLURM_JOB_NUM_NODES", "1")), number("srun", opts, "ntasks")
    nodes = number("srun", opts, "nodes", min(job_nodes, ntasks) if ntasks else job_nodes)
    if nodes > job_nodes:
        raise Fatal(f"srun: error: Only allocated {job_nodes} nodes asked for {nodes}")
    per_node = number("srun", opts, "ntasks-per-node")
    if ntasks and not per_node:
        return [ntasks // nodes + (i < ntasks % nodes) for i in range(nodes)]
    per_node = per_node or int(env.get("SLURM_NTASKS_PER_NODE") or 0) or int(env.get("SLURM_NTASKS", nodes)) // nodes
    return [max(per_node, 1)] * nodes


def cmd_srun(state, args):
    """A job step: nodes x tasks-per-node copies of the command with node-major task ranks, their output inherited
    (into the job's output file), SIGTERM/SIGINT/SIGUSR1/SIGUSR2 forwarded to every task, the tasks' pids in the job's
    record while they run. Exit status: the highest of the tasks' (128 + N for a task killed by signal N)."""
    opts, command = parse_options("srun", args, SRUN_OPTIONS, SRUN_SHORT)
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise Fatal("srun: error: fake srun runs only inside a fake slurm job (SLURM_JOB_ID is not set)")
    if not command:
        raise Fatal("srun: fatal: No command given to execute.")
    layout = step_layout(opts, os.environ)
    # Slurm >= 22.05: srun does not inherit the job's --cpus-per-task; -c or SRUN_CPUS_PER_TASK, else 1
    cpus = str(number("srun", opts, "cpus-per-task") or os.environ.get("SRUN_CPUS_PER_TASK") or 1)
    base = exported(os.environ, opts.get("export"))
    base.update(SLURM_STEP_NUM_TASKS=str(sum(layout)), SLURM_STEP_NUM_NODES=str(len(layout)),
                SLURM_NTASKS=str(sum(layout)), SLURM_NNODES=str(len(layout)), SLURM_STEP_NODELIST=nodelist(len(layout)),
                SLURM_CPUS_PER_TASK=cpus, FAKE_SLURM_CPUS=cpus)
    if isinstance(opts.get("ntasks-per-node"), str):
        base["SLURM_NTASKS_PER_NODE"] = opts["ntasks-per-node"]
    if isinstance(opts.get("job-name"), str):
        base["SLURM_JOB_NAME"] = opts["job-name"]
    pipe = subprocess.PIPE if opts.get("label") else None
    procs, node_of = [], [node for node, count in enumerate(layout) for _ in range(count)]

    def forward(signum, _frame):
        for p in procs:
            if p.returncode is None:
                kill(p.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    with updating(state, job_id) as r:
        if not r or r["state"] != "RUNNING":
            raise Fatal(f"srun: error: Unable to create step for job {job_id}: Invalid job id specified")
        step, r["next_step"] = str(r["next_step"]), r["next_step"] + 1
        try:
            for rank, node in enumerate(node_of):
                env = dict(base, SLURM_PROCID=str(rank), SLURM_LOCALID=str(node_of[:rank].count(node)),
                           SLURM_NODEID=str(node), SLURMD_NODENAME=f"fake{node + 1}", SLURM_STEP_ID=step,
                           SLURM_STEPID=step)
                procs.append(subprocess.Popen(command, env=env, stdout=pipe,
                                              stderr=subprocess.STDOUT if pipe else None))
        except OSError as e:  # the same command for every task: the first one fails
            print(f"slurmstepd: error: execve(): {command[0]}: {e.strerror}", file=sys.stderr)
            return 2
        r["task_pids"] += [p.pid for p in procs]
    relays = [threading.Thread(target=relay, args=(p.stdout, f"{i:>{len(str(len(procs) - 1))}}: ".encode()))
              for i, p in enumerate(procs) if pipe]
    for t in relays:
        t.start()
    rank_of, codes = {p.pid: i for i, p in enumerate(procs)}, {}
    while len(codes) < len(procs):
        pid, status = os.wait()  # a forwarded signal interrupts it, then it resumes (PEP 475)
        if pid in rank_of:
            procs[rank_of[pid]].returncode = code = codes[rank_of[pid]] = os.waitstatus_to_exitcode(status)
            if code and opts.get("kill-on-bad-exit") not in (None, "0"):
                for p in procs:
                    if p.returncode is None:
                        kill(p.pid, signal.SIGKILL)
    for t in relays:
        t.join()
    for i, code in sorted(codes.items()):
        if code:
            what = f"Exited with exit code {code}" if code > 0 else signal.strsignal(-code)
            print(f"srun: error: fake{node_of[i] + 1}: task {i}: {what}", file=sys.stderr, flush=True)
    with updating(state, job_id) as r:
        if r:
            r["task_pids"] = [pid for pid in r["task_pids"] if pid not in rank_of]
    return max((c if c >= 0 else 128 - c for c in codes.values()), default=0)


_relay_lock = threading.Lock()


def relay(stream, prefix: bytes) -> None:
    """--label: each line of a task's output, prefixed with its task number."""
    for line in stream:
        with _relay_lock:
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()


# --- scontrol, squeue, scancel ---------------------------------------------------------------------------------------

def cmd_scontrol(state, args):
    """`show hostnames [LIST]` (default $SLURM_JOB_NODELIST), and `requeue ID[,ID]`: a running job goes back to
    PENDING (restart count + 1) and runs again when its batch script exits."""
    if args[:2] in (["show", "hostnames"], ["show", "hostname"]) and len(args) <= 3:
        try:
            hosts = expand_hostlist(args[2] if len(args) == 3 else os.environ.get("SLURM_JOB_NODELIST", ""))
        except ValueError:
            raise Fatal(f"scontrol: error: Invalid hostlist: {args[2:]}") from None
        for host in hosts:
            print(os.environ.get("FAKE_SLURM_NODE_ADDR") or host)
    elif args[:1] == ["requeue"] and len(args) == 2:
        for job_id in args[1].split(","):
            with updating(state, job_id) as r:
                if r is None:
                    raise Fatal(f"scontrol: error: Invalid job id specified for job {job_id}")
                if r["state"] != "RUNNING":
                    raise Fatal(f"scontrol: error: Job {job_id} is {r['state']}: the fake requeues only running jobs")
                r["requeue_requested"] = True
    else:
        raise Fatal(f"scontrol: error: the fake supports only `show hostnames [LIST]` and `requeue ID`, not {args}")


def elapsed(r: dict) -> str:
    s = int(time.time() - r["start_time"]) if r["state"] == "RUNNING" else 0
    d, h, m, s = s // 86400, s // 3600 % 24, s // 60 % 60, s % 60
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


SQUEUE_FIELDS = {  # format letter: (header, value)
    "i": ("JOBID", lambda r: str(r["id"])), "j": ("NAME", lambda r: r["name"]), "T": ("STATE", lambda r: r["state"]),
    "t": ("ST", lambda r: "R" if r["state"] == "RUNNING" else "PD"), "r": ("REASON", lambda r: r["reason"]),
    "M": ("TIME", elapsed), "D": ("NODES", lambda r: str(r["nodes"])), "u": ("USER", lambda r: r["user"]),
    "P": ("PARTITION", lambda r: r["partition"] or "fake"), "l": ("TIME_LIMIT", lambda r: r["time"] or "UNLIMITED"),
    "R": ("NODELIST(REASON)", lambda r: nodelist(r["nodes"]) if r["state"] == "RUNNING" else f"({r['reason']})"),
}
SQUEUE_DEFAULT = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"


def squeue_line(fmt: str, r: dict | None) -> str:
    """One row (or the header, for r None): %[.][size]letter; "." right-justifies; size pads and truncates."""
    def field(m):
        if m[3] not in SQUEUE_FIELDS:
            return "%" if m[3] == "%" else m[0]
        header, value = SQUEUE_FIELDS[m[3]]
        text, size = header if r is None else value(r), int(m[2] or 0)
        return (text[:size].rjust(size) if m[1] else text[:size].ljust(size)) if size else text
    return re.sub(r"%(\.?)(\d*)([a-zA-Z%])", field, fmt)


def cmd_squeue(state, args):
    """Pending and running jobs only (ended jobs leave squeue); -j with an unknown or ended job prints nothing."""
    opts, operands = parse_options("squeue", args, dict(noheader="flag", jobs="arg", format="arg", me="flag",
                                                        user="arg"), dict(h="noheader", j="jobs", o="format", u="user"))
    if operands:
        raise Fatal(f"squeue: error: Unrecognized option: {operands[0]}")
    wanted, fmt = opts["jobs"].split(",") if "jobs" in opts else None, opts.get("format", SQUEUE_DEFAULT)
    if not opts.get("noheader"):
        print(squeue_line(fmt, None))
    for r in jobs(state):
        if r["state"] in ACTIVE and (wanted is None or str(r["id"]) in wanted):
            print(squeue_line(fmt, r))


def parse_signal(text: str) -> int:
    """USR1, SIGUSR1 or 10."""
    try:
        return int(text) if text.isdigit() else signal.Signals["SIG" + text.upper().removeprefix("SIG")].value
    except KeyError:
        raise Fatal(f"scancel: error: Invalid job signal: {text}") from None


def cmd_scancel(state, args):
    """Without a signal: cancel (CANCELLED, every process killed). With -s/--signal: signal every step task (not the
    batch shell; with --batch only it) and leave the state alone. Jobs that already ended are passed over."""
    opts, ids = parse_options("scancel", args, dict(signal="arg", batch="flag"), dict(s="signal", b="batch"), True)
    if not ids:
        raise Fatal("scancel: error: No job identification provided")
    sig, rc = parse_signal(opts["signal"]) if "signal" in opts else None, 0
    for job_id in ids:
        r = job(state, job_id)
        if r is None:
            print(f"scancel: error: Invalid job id {job_id}", file=sys.stderr)
            rc = 1
        elif sig is None:
            cancel(state, job_id)
        elif r["state"] == "PENDING":
            print(f"scancel: error: Kill job error on job id {job_id}: Job is pending execution", file=sys.stderr)
            rc = 1
        elif r["state"] == "RUNNING":
            with updating(state, job_id) as r:
                for pid in [r["batch_pid"]] if opts.get("batch") else r["task_pids"]:
                    kill(pid, sig)
    return rc


# --- helpers for tests -----------------------------------------------------------------------------------------------

def environ(state, base=None) -> dict:
    """`base` (default os.environ) without SLURM_*/SBATCH_*/SRUN_* variables, with bin/ first on PATH,
    FAKE_SLURM_STATE=state and FAKE_SLURM_PYTHON=this interpreter."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(("SLURM", "SBATCH_", "SRUN_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", FAKE_SLURM_STATE=str(state),
               FAKE_SLURM_PYTHON=sys.executable)
    return env


def wait_for(state, job_id, states=FINISHED, timeout=30.0, reason=None) -> dict:
    """Poll until the job is in one of `states` (and has `reason`, if given) and return its record; on timeout raise
    AssertionError with the job's state and the tail of its output file."""
    states, deadline = (states,) if isinstance(states, str) else tuple(states), time.monotonic() + timeout
    while True:
        r = job(state, job_id)
        if r and r["state"] in states and reason in (None, r["reason"]):
            return r
        if time.monotonic() > deadline:
            try:
                tail = Path(r["output"]).read_text(errors="replace")[-3000:] if r else "(no such job)"
            except OSError:
                tail = "(no output file)"
            raise AssertionError(f"job {job_id} is {r and r['state']} ({r and r['reason']}) after {timeout} s, "
                                 f"not {states} {reason or ''}; its output:\n{tail}")
        time.sleep(0.05)


def cleanup(state) -> None:
    """Cancel every job that has not ended, killing all its processes: for test teardown."""
    for r in jobs(state) if (Path(state) / "jobs").is_dir() else ():
        cancel(state, r["id"])


COMMANDS = dict(sbatch=cmd_sbatch, srun=cmd_srun, scontrol=cmd_scontrol, squeue=cmd_squeue, scancel=cmd_scancel,
                _run=cmd_run)


def main(argv) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # a closed pipe ends the command silently, as it does slurm's
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(f"fake slurm: usage: fakeslurm.py {'|'.join(COMMANDS)} ARGS...", file=sys.stderr)
        return 1
    try:
        return COMMANDS[argv[1]](state_dir(), argv[2:]) or 0
    except Fatal as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
