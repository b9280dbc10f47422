"""The simulated slurm cluster in tests/fake_slurm, exercised with tiny job scripts (the repository's sbatch
templates are submitted to it by other tests)."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_slurm"))
import fakeslurm  # noqa: E402


def wait_until(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Cluster:
    """Runs the fake commands in tmp_path with bin/ first on PATH and the state in tmp_path/state."""

    def __init__(self, tmp_path: Path):
        self.dir, self.state = tmp_path, tmp_path / "state"
        self.env = fakeslurm.environ(self.state)

    def run(self, *cmd, env=None, check=True):
        result = subprocess.run([str(c) for c in cmd], check=False, cwd=self.dir, env={**self.env, **(env or {})},
                                capture_output=True, text=True, timeout=30)
        assert not check or result.returncode == 0, result.stderr
        return result

    def script(self, name: str, body: str) -> Path:
        path = self.dir / name
        path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
        return path

    def submit(self, *args, env=None) -> int:
        return int(self.run("sbatch", "--parsable", *args, env=env).stdout)

    def wait(self, job_id, states=fakeslurm.FINISHED, reason=None) -> dict:
        return fakeslurm.wait_for(self.state, job_id, states, timeout=20, reason=reason)

    def output(self, job_id) -> str:
        return Path(fakeslurm.job(self.state, job_id)["output"]).read_text()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    fakeslurm.cleanup(c.state)


@pytest.mark.parametrize("srun_cpus", [None, "3"])
def test_two_nodes_two_tasks_per_node(cluster, srun_cpus):
    script = cluster.script("step.sh", """\
        #SBATCH --nodes=2
        #SBATCH --ntasks-per-node 2
        #SBATCH --cpus-per-task=4
        echo "batch ${SLURM_PROCID:-unset} ${SLURM_STEP_ID:-unset} $SLURM_NTASKS $SLURM_CPUS_PER_TASK $SLURM_NODELIST"
        task='echo "task $SLURM_STEP_ID $SLURM_STEPID $SLURM_PROCID $SLURM_LOCALID $SLURM_NODEID $SLURMD_NODENAME \
        $SLURM_NTASKS $SLURM_NNODES $SLURM_STEP_NUM_TASKS $SLURM_STEP_NUM_NODES $SLURM_STEP_NODELIST \
        $SLURM_CPUS_PER_TASK $FAKE_SLURM_CPUS"'
        srun sh -c "$task"
        srun sh -c "$task"
        srun -N 1 -n 1 --cpus-per-task=2 sh -c "$task"
        """)
    job_id = cluster.submit(script, env={"SRUN_CPUS_PER_TASK": srun_cpus} if srun_cpus else None)
    assert cluster.wait(job_id)["state"] == "COMPLETED", cluster.output(job_id)
    lines = cluster.output(job_id).splitlines()
    assert lines[0] == "batch unset unset 4 4 fake[1-2]"
    cpus = srun_cpus or "1"
    expected = [f"task {step} {step} {rank} {rank % 2} {rank // 2} fake{rank // 2 + 1} 4 2 4 2 fake[1-2] {cpus} {cpus}"
                for step in (0, 1) for rank in range(4)] + ["task 2 2 0 0 0 fake1 1 1 1 1 fake1 2 2"]
    assert sorted(" ".join(line.split()) for line in lines[1:]) == sorted(expected)


def test_scontrol_show_hostnames_and_state_required(cluster):
    for hostlist, hosts in [("fake[1-3]", "fake1 fake2 fake3"), ("fake[1,3-4]", "fake1 fake3 fake4"),
                            ("a,b", "a b"), ("node[08-10],x", "node08 node09 node10 x"), ("fake1", "fake1")]:
        assert cluster.run("scontrol", "show", "hostnames", hostlist).stdout.split() == hosts.split()
    assert cluster.run("scontrol", "show", "hostnames", env={"SLURM_JOB_NODELIST": "fake[1-2]"}).stdout == \
        "fake1\nfake2\n"
    other = cluster.run("scontrol", "show", "jobs", check=False)
    assert other.returncode == 1 and len(other.stderr.splitlines()) == 1
    no_state = {k: v for k, v in cluster.env.items() if k != "FAKE_SLURM_STATE"}
    for command in ("sbatch", "srun", "scontrol", "squeue", "scancel"):
        result = subprocess.run([command, "x"], check=False, env=no_state, capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and result.stderr.startswith("fake slurm: "), result
        assert len(result.stderr.splitlines()) == 1


def test_output_path_and_missing_log_directory(cluster):
    (cluster.dir / "logs").mkdir()
    script = cluster.script("hello.sh", """\
        #SBATCH --output=logs/%x-%j.out
        echo "hello $SLURM_JOB_ID"
        touch "ran-$SLURM_JOB_ID"
        """)
    first = cluster.submit("-J", "named", script)
    assert cluster.wait(first)["state"] == "COMPLETED"
    assert (cluster.dir / "logs" / f"named-{first}.out").read_text() == f"hello {first}\n"
    default_name = cluster.submit(script)
    assert cluster.wait(default_name)["state"] == "COMPLETED"
    assert (cluster.dir / "logs" / f"hello.sh-{default_name}.out").is_file()
    missing = cluster.submit("--output", "missing/%j.out", script)
    record = cluster.wait(missing)
    assert (record["state"], record["reason"]) == ("FAILED", "could not open output file")
    assert not (cluster.dir / "missing").exists() and not (cluster.dir / f"ran-{missing}").exists()


def test_option_precedence(cluster):
    script = cluster.script("prec.sh", """\
        #SBATCH --partition=script --account=script

        #SBATCH -q script -t 1:00 --job-name=script-name  # a comment
        echo "$SLURM_JOB_PARTITION $SLURM_JOB_ACCOUNT $SLURM_JOB_QOS $SLURM_JOB_NAME"
        #SBATCH --partition=after-the-first-command
        """)
    env = {"SBATCH_PARTITION": "env", "SBATCH_QOS": "env", "SBATCH_TIMELIMIT": "2:00"}
    first = cluster.submit("-p", "cli", script, env=env)
    record = cluster.wait(first)
    assert [record[k] for k in ("partition", "account", "qos", "time", "name")] == \
        ["cli", "script", "env", "2:00", "script-name"]
    assert cluster.output(first) == "cli script env script-name\n"
    second = cluster.submit("--account", "cli", script, env={"SBATCH_JOB_NAME": "env-name"})
    record = cluster.wait(second)
    assert [record[k] for k in ("partition", "account", "qos", "time", "name")] == \
        ["script", "cli", "script", "1:00", "env-name"]
    bad = cluster.run("sbatch", "--bogus=1", script, check=False)
    assert (bad.returncode, bad.stderr) == (1, "sbatch: unrecognized option '--bogus=1'\n")


def test_wrap_chdir_and_submission_message(cluster):
    result = cluster.run("sbatch", "-N", "3", "--wrap=echo hi $SLURM_JOB_NAME $SLURM_NNODES $SLURM_JOB_NODELIST")
    assert result.stdout.startswith("Submitted batch job ")
    job_id = int(result.stdout.split()[-1])
    assert cluster.wait(job_id)["state"] == "COMPLETED"
    assert (cluster.dir / f"slurm-{job_id}.out").read_text() == "hi wrap 3 fake[1-3]\n"
    (cluster.dir / "sub").mkdir()
    job_id = cluster.submit("--chdir", "sub", "--wrap", "pwd; echo $SLURM_SUBMIT_DIR")
    assert cluster.wait(job_id)["state"] == "COMPLETED"
    assert (cluster.dir / "sub" / f"slurm-{job_id}.out").read_text() == f"{cluster.dir / 'sub'}\n{cluster.dir}\n"


def test_afterok_chain_runs_in_order(cluster):
    first = cluster.submit("--wrap", "while [ ! -e go ]; do sleep 0.05; done; echo A >> order")
    second = cluster.submit(f"--dependency=afterok:{first}", "--wrap", "echo B >> order")
    third = cluster.submit("-d", f"afterok:{first},afterok:{second}", "--wrap", "echo C >> order")
    cluster.wait(third, "PENDING", reason="Dependency")
    cluster.wait(first, "RUNNING")
    queue = cluster.run("squeue", "--noheader", "--format=%i %T %r", "-j", f"{second},{third}").stdout
    assert queue == f"{second} PENDING Dependency\n{third} PENDING Dependency\n"
    (cluster.dir / "go").touch()
    assert [cluster.wait(j)["state"] for j in (first, second, third)] == ["COMPLETED"] * 3
    assert (cluster.dir / "order").read_text() == "A\nB\nC\n"
    unknown = cluster.run("sbatch", "--dependency=afterok:999", "--wrap", "true", check=False)
    assert (unknown.returncode, unknown.stderr) == \
        (1, "sbatch: error: Batch job submission failed: Job dependency problem\n")


def test_failed_dependency_stays_pending_until_cancelled(cluster):
    failing = cluster.submit("--wrap", "exit 3")
    dependent = cluster.submit(f"--dependency=afterok:{failing}", "-J", "dep", "--wrap", "touch ran")
    record = cluster.wait(failing)
    assert (record["state"], record["exit_code"]) == ("FAILED", 3)
    cluster.wait(dependent, "PENDING", reason="DependencyNeverSatisfied")
    assert cluster.run("squeue", "-h", "-o", "%i %T %r").stdout == f"{dependent} PENDING DependencyNeverSatisfied\n"
    assert cluster.run("squeue", "-h", "-j", str(failing)).stdout == ""
    table = cluster.run("squeue", "--me").stdout.splitlines()
    assert table[0].split() == ["JOBID", "PARTITION", "NAME", "USER", "ST", "TIME", "NODES", "NODELIST(REASON)"]
    assert table[1].split()[-1] == "(DependencyNeverSatisfied)" and len(table) == 2
    cluster.run("scancel", dependent)
    assert (fakeslurm.job(cluster.state, dependent)["state"]) == "CANCELLED"
    assert cluster.run("squeue", "-h").stdout == ""
    assert not (cluster.dir / "ran").exists()


def test_injected_node_failure(cluster):
    env = {"FAKE_SLURM_FAIL": "train-*"}
    failing = cluster.submit("-J", "train-1", "--wrap", "touch ran-train", env=env)
    passing = cluster.submit("-J", "eval", "--wrap", "touch ran-eval", env=env)
    record = cluster.wait(failing)
    assert (record["state"], record["reason"], record["exit_code"], record["node_fail"]) == \
        ("FAILED", "NodeFail", 1, True)
    assert cluster.wait(passing)["state"] == "COMPLETED"
    assert not (cluster.dir / "ran-train").exists() and (cluster.dir / "ran-eval").exists()


def test_scancel_pending_and_running_jobs(cluster):
    running = cluster.submit("--wrap", "echo $$ > pid; exec sleep 30")
    pending = cluster.submit(f"--dependency=afterok:{running}", "--wrap", "touch ran")
    wait_until(lambda: (cluster.dir / "pid").is_file() and (cluster.dir / "pid").read_text().strip(), what="pid")
    pid = int((cluster.dir / "pid").read_text())
    cluster.run("scancel", pending)
    assert fakeslurm.job(cluster.state, pending)["state"] == "CANCELLED"
    row = cluster.run("squeue", "-h", "-o", "%i|%j|%T|%M").stdout.strip().split("|")
    assert row[:3] == [str(running), "wrap", "RUNNING"] and row[3].count(":") == 1
    cluster.run("scancel", running)
    record = fakeslurm.job(cluster.state, running)
    assert (record["state"], record["reason"]) == ("CANCELLED", "cancelled")
    wait_until(lambda: not alive(pid), timeout=5, what="the job's process to die")
    unknown = cluster.run("scancel", "4242", check=False)
    assert (unknown.returncode, unknown.stderr) == (1, "scancel: error: Invalid job id 4242\n")
    assert not (cluster.dir / "ran").exists()


def test_scancel_signal_reaches_the_tasks_not_the_batch_shell(cluster):
    script = cluster.script("sig.sh", """\
        #SBATCH --nodes=2
        trap 'echo batch got USR1' USR1
        srun sh -c 'trap "echo task \\$SLURM_PROCID got USR1; touch got-\\$SLURM_PROCID" USR1
                    touch up-$SLURM_PROCID; while [ ! -e stop ]; do sleep 0.05; done'
        echo "srun exit $?"
        """)
    job_id = cluster.submit(script)
    wait_until(lambda: all((cluster.dir / f"up-{i}").exists() for i in (0, 1)), what="the tasks to start")
    cluster.run("scancel", "--signal=USR1", job_id)
    wait_until(lambda: all((cluster.dir / f"got-{i}").exists() for i in (0, 1)), what="the tasks to get USR1")
    assert fakeslurm.job(cluster.state, job_id)["state"] == "RUNNING"
    (cluster.dir / "stop").touch()
    assert cluster.wait(job_id)["state"] == "COMPLETED"
    lines = cluster.output(job_id).splitlines()
    assert sorted(lines) == ["srun exit 0", "task 0 got USR1", "task 1 got USR1"]
    assert fakeslurm.parse_signal("SIGUSR1") == fakeslurm.parse_signal("10") == signal.SIGUSR1


def test_srun_forwards_signals_to_its_tasks(cluster):
    script = cluster.script("fwd.sh", """\
        #SBATCH --ntasks-per-node=2
        srun sh -c 'trap "echo task \\$SLURM_PROCID got USR2; exit 5" USR2
                    touch up-$SLURM_PROCID; while :; do sleep 0.05; done' &
        while [ ! -e up-0 ] || [ ! -e up-1 ]; do sleep 0.05; done
        kill -USR2 $!
        wait $!
        echo "srun exit $?"
        """)
    job_id = cluster.submit(script)
    assert cluster.wait(job_id)["state"] == "COMPLETED"
    lines = [line for line in cluster.output(job_id).splitlines() if not line.startswith("srun: error")]
    assert sorted(lines) == ["srun exit 5", "task 0 got USR2", "task 1 got USR2"]


@pytest.mark.parametrize("open_mode", ["append", "truncate"])
def test_requeue_runs_the_job_again(cluster, open_mode):
    script = cluster.script("requeue.sh", f"""\
        #SBATCH --open-mode={open_mode}
        #SBATCH --output=requeue.log
        echo "run $SLURM_RESTART_COUNT"
        if [ "$SLURM_RESTART_COUNT" = 0 ]; then scontrol requeue "$SLURM_JOB_ID"; fi
        echo "done $SLURM_RESTART_COUNT"
        """)
    (cluster.dir / "requeue.log").write_text("old\n")
    job_id = cluster.submit(script)
    record = cluster.wait(job_id)
    assert (record["state"], record["restart_count"]) == ("COMPLETED", 1)
    runs = "run 0\ndone 0\nrun 1\ndone 1\n" if open_mode == "append" else "run 1\ndone 1\n"
    assert cluster.output(job_id) == ("old\n" + runs if open_mode == "append" else runs)
    again = cluster.run("scontrol", "requeue", job_id, check=False)
    assert again.returncode == 1 and again.stderr.startswith("scontrol: error: ")


def test_kill_on_bad_exit_kills_the_other_tasks(cluster):
    script = cluster.script("kob.sh", """\
        #SBATCH --nodes=2 --ntasks-per-node=2
        start=$(date +%s)
        srun --kill-on-bad-exit=1 sh -c 'if [ "$SLURM_PROCID" = 2 ]; then sleep 0.2; exit 3; fi; exec sleep 30'
        echo "srun exit $? after $(( $(date +%s) - start )) s"
        """)
    job_id = cluster.submit(script)
    assert cluster.wait(job_id)["state"] == "COMPLETED"
    lines = cluster.output(job_id).splitlines()
    assert "srun: error: fake2: task 2: Exited with exit code 3" in lines
    assert "srun: error: fake1: task 0: Killed" in lines
    exit_line = next(line for line in lines if line.startswith("srun exit"))
    assert exit_line.split()[2] == "137" and int(exit_line.split()[4]) < 10


def test_srun_exit_status(cluster):
    script = cluster.script("rc.sh", """\
        #SBATCH --ntasks=3
        srun sh -c 'exit 0'; echo "all ok $?"
        srun sh -c 'exit $SLURM_PROCID'; echo "highest $?"
        srun -n 1 sh -c 'kill -TERM $$'; echo "signal $?"
        srun -K -l sh -c 'echo out; exit 0'; echo "labelled $?"
        srun no-such-command-here; echo "missing $?"
        """)
    job_id = cluster.submit(script)
    assert cluster.wait(job_id)["state"] == "COMPLETED"
    lines = [line for line in cluster.output(job_id).splitlines() if not line.startswith(("srun:", "slurmstepd:"))]
    assert lines[:3] + lines[-2:] == ["all ok 0", "highest 2", "signal 143", "labelled 0", "missing 2"]
    assert sorted(lines[3:6]) == ["0: out", "1: out", "2: out"]
    outside = cluster.run("srun", "true", check=False)
    assert outside.returncode == 1 and len(outside.stderr.splitlines()) == 1
