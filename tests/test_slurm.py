"""The sbatch templates and scripts/reproduce.py on a simulated slurm cluster (tests/fake_slurm): real jobs of 2 nodes
x 2 tasks run as local processes with the SLURM_* variables slurm would give them."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "fake_slurm"))
import fakeslurm  # noqa: E402

TRAIN = ["--model_name", "2L128H", "--train_data_dir", "data/sample/packed", "--global_batch_size", "8",
         "--micro_batch_size", "2", "--learning_rate", "3e-3", "--warmup_steps", "2", "--n_chunks", "2",
         "--eval_iters", "3", "--log_interval", "1"]
JOB_TIMEOUT = 300


class Cluster:
    """Jobs are submitted from the repository root, as a user does; their logs and outputs go to tmp_path."""

    def __init__(self, tmp_path: Path):
        self.dir, self.state = tmp_path, tmp_path / "state"
        # the rendezvous host is "the first node": here that is this machine
        self.env = {**fakeslurm.environ(self.state), "FAKE_SLURM_NODE_ADDR": "127.0.0.1", "PYTHON": sys.executable}

    def sbatch(self, *args, env=None) -> int:
        result = subprocess.run(["sbatch", "--parsable", f"--output={self.dir}/%x-%j.out", *map(str, args)],
                                cwd=ROOT, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    def run(self, *cmd) -> subprocess.CompletedProcess:
        return subprocess.run(list(map(str, cmd)), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=30)

    def wait(self, job, states=fakeslurm.FINISHED, reason=None, timeout=JOB_TIMEOUT) -> dict:
        return fakeslurm.wait_for(self.state, job, states, timeout=timeout, reason=reason)

    def log(self, job) -> str:
        return Path(fakeslurm.job(self.state, job)["output"]).read_text()


@pytest.fixture
def cluster(tmp_path, sample_data):
    c = Cluster(tmp_path)
    yield c
    fakeslurm.cleanup(c.state)


def pretrain(cluster, out, *extra, nodes=2, tasks=2, env=None):
    return cluster.sbatch(f"--nodes={nodes}", f"--ntasks-per-node={tasks}", f"--gpus-per-node={tasks}",
                          "--cpus-per-task=1", "scripts/slurm/pretrain.sbatch", *TRAIN, "--out_dir", out, *extra,
                          env=env)


def weights(out):
    return torch.load(Path(out) / "final" / "lit_model.pth", weights_only=True)


def metrics(out):
    lines = (Path(out) / "metrics.csv").read_text().splitlines()
    head = lines[0].split(",")
    return {int(row.split(",")[0]): dict(zip(head, row.split(","), strict=True)) for row in lines[1:]}


def test_two_nodes_train_and_a_requeued_job_resumes_bitwise(cluster, tmp_path):
    """pretrain.sbatch on 2 nodes x 2 tasks: checkpoints, final/, progress once for the whole job. A second job gets
    slurm's time-limit warning (SIGUSR1) mid-run: it saves, requeues itself, and the requeued run (--resume auto)
    ends with bitwise the weights of the uninterrupted one."""
    steps = ("--max_steps", 12, "--save_interval", 4, "--eval_interval", 8)
    straight = pretrain(cluster, tmp_path / "straight", *steps)
    warned = pretrain(cluster, tmp_path / "warned", *steps)
    fakeslurm.wait_for(cluster.state, warned, "RUNNING", timeout=60)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (tmp_path / "warned" / "step-00000004" / "meta.json").exists():
        assert time.monotonic() < deadline and fakeslurm.job(cluster.state, warned)["state"] == "RUNNING"
        time.sleep(0.05)
    assert cluster.run("scancel", "--signal=USR1", warned).returncode == 0

    for job in (straight, warned):
        record = cluster.wait(job)
        assert (record["state"], record["exit_code"]) == ("COMPLETED", 0), cluster.log(job)[-3000:]
    log = cluster.log(straight)
    assert "on 2 node(s) x 2 GPU(s)" in log
    for step in range(1, 13):  # once per job, not once per node or rank
        assert log.count(f"step {step}/12 |") == 1, log[-3000:]
    assert log.count("step 8: val loss") == 1 and log.count("Initializing distributed") <= 1
    assert sorted(p.name for p in (tmp_path / "straight").glob("step-*")) == [f"step-{s:08d}" for s in (4, 8, 12)]
    assert len(list((tmp_path / "straight" / "step-00000004").glob("*.distcp"))) == 4  # one shard per rank
    assert (tmp_path / "straight" / "final" / "tokenizer.model").is_file()

    requeued = fakeslurm.job(cluster.state, warned)
    assert requeued["restart_count"] == 1
    log = cluster.log(warned)
    assert "SIGUSR1 received" in log and "slurm requeued the job" in log and "restart 1" in log
    assert "resumed from" in log
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "warned")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [metrics(tmp_path / "warned")[s]["train_loss"] for s in range(1, 13)] == [
        metrics(tmp_path / "straight")[s]["train_loss"] for s in range(1, 13)]


@pytest.mark.parametrize("tasks,gpus,how", [(2, 1, "template"), (2, 1, "srun"), (1, 2, "srun")])
def test_tasks_per_node_must_match_devices(cluster, tmp_path, tasks, gpus, how):
    """8 tasks per node with --devices 1 made 8 independent runs race on one out_dir; 4 tasks with --devices 2 made
    ranks index past their devices. Both ways are refused before any work, with one line for the whole job."""
    out = tmp_path / "out"
    if how == "template":
        job = pretrain(cluster, out, "--max_steps", 2, tasks=tasks, env={"GPUS_PER_NODE": str(gpus)})
    else:
        command = " ".join(["srun", sys.executable, "pretrain/tinyllama.py", *TRAIN, "--max_steps", "2",
                            "--devices", str(gpus), "--out_dir", str(out)])
        job = cluster.sbatch("--nodes=1", f"--ntasks-per-node={tasks}", f"--wrap={command}")
    record = cluster.wait(job)
    assert record["state"] == "FAILED"
    errors = [line for line in cluster.log(job).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{tasks} task(s) per node" in errors[0] and str(gpus) in errors[0], errors
    assert not out.exists() or not list(out.glob("step-*"))


def test_templates_outside_slurm_say_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(["bash", "scripts/slurm/pretrain.sbatch", "--max_steps", "1"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "submit it with sbatch" in result.stderr
    assert subprocess.run(["bash", "-n", "scripts/slurm/common.sh"], cwd=ROOT).returncode == 0


def test_stages_template(cluster, tmp_path):
    """stages.sbatch on 2 nodes x 1 task (a 1-layer base, grown by G_stack to 2 layers, trained again). grow.sbatch
    and eval.sbatch run as jobs of the smoke experiment below."""
    recipe = tmp_path / "recipe.yaml"
    train = {k.lstrip("-"): v for k, v in zip(TRAIN[::2], TRAIN[1::2], strict=True) if k != "--model_name"}
    recipe.write_text(yaml.safe_dump({
        "out_dir": str(tmp_path / "stages"),
        "train": {**train, "max_steps": 3, "eval_interval": 0, "save_interval": 0},
        "stages": [{"name": "1L", "model_name": "1L128H"},
                   {"name": "2L", "grow": {"op": "stack"}, "model_name": "2L128H"}]}))
    job = cluster.sbatch("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1",
                         "scripts/slurm/stages.sbatch", recipe)
    record = cluster.wait(job)
    assert record["state"] == "COMPLETED", cluster.log(job)[-3000:]
    log = cluster.log(job)
    assert log.count("step 3/3 |") == 2  # each stage's progress once, from its rank 0
    final = tmp_path / "stages" / "2L" / "final"
    assert json.loads((final / "training.json").read_text())["step"] == 3


def test_reproduce_resubmits_a_failed_stage_and_everything_after_it(cluster, tmp_path, monkeypatch, capsys):
    """The smoke experiment as sbatch jobs. The grow job dies (a simulated node failure): its dependents stay queued
    for ever (DependencyNeverSatisfied), the rest finishes. A rerun resubmits the grow stage, cancels the stale
    jobs after it and queues new ones on the new job; then every stage finishes. Options reach every job."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import reproduce

    for key, value in {**cluster.env, "FAKE_SLURM_FAIL": "rp-grow-*", "SBATCH_PARTITION": "debug",
                       "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    flags = ["smoke", "--out_dir", str(tmp_path / "runs"), "--log_dir", str(tmp_path / "logs"), "--launcher", "sbatch",
             "--account", "growth", "--time", "0:30:00"]
    assert reproduce.main(flags) == 0, capsys.readouterr().err
    first = {r["name"]: r for r in fakeslurm.jobs(cluster.state)}
    assert len(first) == 14 and all(r["partition"] == "debug" and r["account"] == "growth" and r["time"] == "0:30:00"
                                   for r in first.values())
    assert cluster.wait(first["rp-grow-smoke-stack"]["id"])["reason"] == "NodeFail"
    figures = ["rp-figure-smoke-acc-vs-flops", "rp-figure-smoke-word_perplexity-vs-flops",
               "rp-figure-smoke-acc-vs-scratch_tokens"]
    stale = ["rp-train-smoke-stack", "rp-eval-smoke-stack", "rp-speedup-smoke-stack", "rp-table-smoke", "rp-plot-smoke",
             "rp-score-smoke-stack", *figures]
    for name in ("rp-train-smoke-base-2L128H", "rp-train-smoke-scratch", "rp-eval-smoke-scratch",
                 "rp-score-smoke-scratch"):
        assert cluster.wait(first[name]["id"])["state"] == "COMPLETED", cluster.log(first[name]["id"])[-3000:]
    cluster.wait(first["rp-train-smoke-stack"]["id"], "PENDING", reason="DependencyNeverSatisfied", timeout=10)
    assert all(fakeslurm.job(cluster.state, first[name]["id"])["state"] == "PENDING" for name in stale)

    monkeypatch.delenv("FAKE_SLURM_FAIL")
    capsys.readouterr()
    assert reproduce.main(flags) == 0
    out = capsys.readouterr().out
    assert "resubmit grow:smoke-stack" in out and out.count("cancel   ") == len(stale)
    assert out.count("done     ") == 4  # the base, the scratch run, its eval and its scores are not run again
    for name in stale:
        assert fakeslurm.job(cluster.state, first[name]["id"])["state"] == "CANCELLED"
    second = [r for r in fakeslurm.jobs(cluster.state) if r["id"] not in {j["id"] for j in first.values()}]
    assert sorted(r["name"] for r in second) == sorted(["rp-grow-smoke-stack", *stale])
    for record in second:
        assert cluster.wait(record["id"])["state"] == "COMPLETED", cluster.log(record["id"])[-3000:]
    report = tmp_path / "runs" / "report" / "smoke"
    assert (report / "smoke.md").is_file() and (report / "loss-vs-flops-exact.png").is_file()
    for png in ("acc-vs-flops", "word_perplexity-vs-flops", "acc-vs-scratch_tokens"):
        assert (report / f"{png}-exact.png").is_file()
    along = (tmp_path / "runs" / "smoke" / "eval" / "stack-along.jsonl").read_text().splitlines()
    assert [json.loads(line)["training"]["step"] for line in along] == [30, 35]  # the 2 checkpoints keep_last leaves
    json.loads((report / "speedup-stack-exact.json").read_text())  # written whole
    assert reproduce.main(flags) == 0 and capsys.readouterr().out.count("done     ") == 14
    assert not any(r["state"] in fakeslurm.ACTIVE for r in fakeslurm.jobs(cluster.state))
