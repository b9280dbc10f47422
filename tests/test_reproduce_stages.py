"""scripts/reproduce.py's stages and launchers: every experiment's stages and dry-run commands, finished stages
skipped, bad input refused, the sbatch files and their submission chain, the local runner and its signals, the
checks before anything is submitted. The curves' stages: tests/test_reproduce_curves.py; recipes and budgets:
tests/test_reproduce.py."""

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT
from test_reproduce import commands, dry_run

sys.path.insert(0, str(ROOT / "scripts"))

import paper_runs as pr  # noqa: E402
import reproduce as rp  # noqa: E402

B = 10 ** 9
EXPERIMENTS = sorted(rp.EXPERIMENTS)


def test_list_names_every_experiment(capsys):
    assert rp.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["operators-1.1b", "scaling-410m", "scaling-3b", "scaling-7b", "timing", "factor",
                 "partial-stacking", "interpolation", "gradual", "noise", "small-gpu"]:
        assert re.search(rf"^  {re.escape(name)}\s", out, re.M), name
    assert "ASSUMED" in out


@pytest.mark.parametrize("launcher", ["local", "sbatch"])
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_dry_run_commands_refer_to_existing_files(capsys, name, launcher):
    out = dry_run(capsys, name, "--launcher", launcher, "--nodes", "1")
    argvs = commands(out)
    stages = [line for line in out.splitlines() if re.match(r"^  \[\d+\] ", line)]
    assert argvs and len(argvs) == len(stages)
    checked = 0
    for argv in argvs:
        for arg in argv:
            if re.search(r"\.(py|yaml|sbatch|json)$", arg) and not arg.startswith(("out/", "/", "--")):
                assert (ROOT / arg).is_file(), f"{name}: {arg} does not exist"
                checked += 1
    assert checked >= len(argvs)  # every command names at least one script or recipe of the repository
    if launcher == "sbatch":
        assert all(a[0] == "sbatch" and "--parsable" in a for a in argvs)
        for argv in argvs:  # a job depends on the jobs of the stages it needs, by the variables assigned above
            deps = [a for a in argv if a.startswith("--dependency=afterok:")]
            assert all(re.fullmatch(r"--dependency=afterok:\$J\d+(:\$J\d+)*", d) for d in deps)


def test_reproduce_passes_its_convention_to_speedup_and_plot(capsys):
    for convention in ("exact", "paper"):
        argvs = commands(dry_run(capsys, "operators-1.1b", "--convention", convention))
        tools = [argv for argv in argvs if any(a.endswith(("speedup.py", "plot.py")) for a in argv)]
        assert tools and all(argv[argv.index("--convention") + 1] == convention for argv in tools)
        assert any(a.endswith(f"loss-vs-flops-{convention}.png") for argv in tools for a in argv)


def test_gpu_hours_follow_mfu_and_peak(capsys):
    out = dry_run(capsys, "operators-1.1b", "--mfu", "0.5", "--gpu_flops", "1e15")
    row = next(line for line in out.splitlines() if line.strip().startswith("1.1b-scratch "))
    expected = rp.budget(rp.RUNS["1.1b-scratch"]).flops / (0.5 * 1e15) / 3600
    assert int(row.split()[-1].replace(",", "")) == round(expected)
    assert "(given)" in out and "ASSUMED" not in out.split("budget:")[0]


def test_finished_stages_are_marked_done(capsys, tmp_path):
    root = tmp_path / "runs"
    out = dry_run(capsys, "operators-1.1b", "--out_dir", str(root))
    assert "done" not in " ".join(line for line in out.splitlines() if re.match(r"^  \[\d+\]", line))
    base = rp.RUNS["1.1b-base-6L2048H"]
    final = root / "1.1b" / "base-6L2048H" / "final"
    final.mkdir(parents=True)
    (final / "training.json").write_text(json.dumps({"step": base.steps}))
    (root / "1.1b" / "stack-grown").mkdir(parents=True)
    (root / "1.1b" / "stack-grown" / "growth.json").write_text("{}")
    scratch_final = root / "1.1b" / "scratch" / "final"
    scratch_final.mkdir(parents=True)
    (scratch_final / "training.json").write_text(json.dumps({"step": 10}))  # a run cut short is not done
    (root / "1.1b" / "eval").mkdir(parents=True)
    (root / "1.1b" / "eval" / "zero-depth.json").write_text("{}")
    out = dry_run(capsys, "operators-1.1b", "--out_dir", str(root))
    status = dict(re.findall(r"^  \[\d+\] (\S+): (done|to run)", out, re.M))
    assert status["train:1.1b-base-6L2048H"] == "done"
    assert status["grow:1.1b-stack"] == "done"
    assert status["train:1.1b-scratch"] == "to run"
    assert status["eval:1.1b-zero-depth"] == "done"
    assert status["train:1.1b-stack"] == "to run"
    assert str(root) in out and "--out_dir" in out  # the recipes' paths are redirected under the given root
    assert "--initial_checkpoint " + str(root / "1.1b" / "stack-grown") in out


def test_snapshot_stage_of_the_7b_run(capsys, tmp_path):
    out = dry_run(capsys, "scaling-7b", "--out_dir", str(tmp_path))
    stack = rp.RUNS["7b-stack"]
    step = (130 * B) // (1024 * pr.SEQ)
    assert f"--max_tokens {130 * B}" in out and f"step-{step:08d}" in out
    stages = rp.build_stages(rp.EXPERIMENTS["scaling-7b"], str(tmp_path), 32)
    ids = [s.id for s in stages]
    assert ids.index("train:7b-stack@130B") < ids.index("export:7b-stack@130B") < ids.index("eval:7b-stack@130B")
    full = stages[ids.index("train:7b-stack")]
    # it waits for the export too: with keep_last it deletes the 130B checkpoint the export reads
    assert full.needs == ["train:7b-stack@130B", "export:7b-stack@130B"] and full.min_step == stack.steps
    # the part run writes final/ too: the full stage is done only at its own last step
    (tmp_path / "7b" / "stack" / "final").mkdir(parents=True)
    (tmp_path / "7b" / "stack" / "final" / "training.json").write_text(json.dumps({"step": step}))
    assert not full.done()
    assert sum(s.flops for s in stages if s.run is stack and s.kind == "train") == pytest.approx(
        rp.budget(stack).flops)


@pytest.mark.parametrize("args", [
    ["no-such-experiment"], ["small-gpu", "--mfu", "0"], ["small-gpu", "--mfu", "1.5"], ["small-gpu", "--mfu", "nan"],
    ["small-gpu", "--mfu", "abc"], ["small-gpu", "--nodes", "0"], ["small-gpu", "--gpus_per_node", "-1"],
    ["small-gpu", "--gpu_flops", "inf"], ["small-gpu", "--gpu_flops", "-1e15"], ["small-gpu", "--bogus"],
    ["operators-1.1b", "--nodes", "2", "--launcher", "local"],
    ["operators-1.1b", "--nodes", "1024", "--gpus_per_node", "8", "--launcher", "sbatch"],
    ["small-gpu", "--gpus_per_node", "3", "--launcher", "sbatch"], [],
])
def test_bad_input_is_one_error_line(capsys, args):
    usage = any(a in args for a in ("0", "-1", "nan", "abc", "inf", "-1e15", "--bogus")) or not args
    assert rp.main([*args, "--dry_run"]) == (2 if usage else 1)  # 2: bad flags, as argparse
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_micro_batch_shrinks_to_fit_many_gpus(capsys):
    out = dry_run(capsys, "operators-1.1b", "--nodes", "8", "--gpus_per_node", "8", "--launcher", "sbatch")
    line = next(line for line in out.splitlines() if "1.1b-base-6L2048H.yaml" in line)
    assert "--micro_batch_size 16" in line  # 32 x 64 GPUs would exceed the 1024-sequence batch
    assert "--nodes=8" in line and "--gpus-per-node=8" in line


def test_sbatch_files_pass_bash_n():
    files = sorted((ROOT / "scripts" / "slurm").glob("*.sbatch"))
    assert {f.name for f in files} >= {"pretrain.sbatch", "grow.sbatch", "eval.sbatch", "stages.sbatch"}
    for f in files:
        result = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert result.returncode == 0, f"{f.name}: {result.stderr}"
        assert "#SBATCH --output=logs/" in f.read_text()


def test_stages_sbatch_adds_devices_and_resume_outside_slurm(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "out"), "train": {"max_steps": 1},
                                      "stages": [{"name": "a", "model_name": "2L128H"}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_SUBMIT_DIR=str(tmp_path), PYTHON=sys.executable, GPUS_PER_NODE="2",
               PYTHONPATH=str(ROOT))
    result = subprocess.run(["bash", str(ROOT / "scripts/slurm/stages.sbatch"), str(recipe), "--dry_run"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    for flags in ("--devices 2", "--num_nodes 1", "--resume auto"):
        assert flags in result.stdout
    assert "srun" not in result.stdout
    written = list((tmp_path / "logs").glob("stages-*-r.yaml"))
    assert len(written) == 1 and yaml.safe_load(written[0].read_text())["train"]["devices"] == 2


def test_grow_sbatch_refuses_other_commands(tmp_path):
    env = {**os.environ, "SLURM_SUBMIT_DIR": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "scripts/slurm/grow.sbatch"), "plan"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 1 and result.stderr.startswith("error:")


def test_submission_chains_dependencies_and_skips_queued_jobs(monkeypatch, tmp_path, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    fake = bin_dir / "sbatch"
    fake.write_text("#!/bin/bash\necho \"$@\" >> " + shlex.quote(str(log)) + "\n"
                    "n=$(wc -l < " + shlex.quote(str(log)) + ")\necho $((100 + n))\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/bash\necho PENDING\n")  # every earlier job still queued
    squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "runs"
    flags = ["--out_dir", str(root), "--log_dir", str(tmp_path / "logs"), "--skip_checks"]  # no SlimPajama here
    assert rp.main(["small-gpu", *flags]) == 0
    lines = log.read_text().splitlines()
    stages = rp.build_stages(rp.EXPERIMENTS["small-gpu"], str(root), 1)
    assert len(lines) == len(stages)
    ids = {s.id: 100 + i for i, s in enumerate(stages, 1)}
    grow = next(i for i, s in enumerate(stages) if s.id == "grow:small-stack")
    assert f"--dependency=afterok:{ids['train:small-base-6L512H']}" in lines[grow]
    train = next(i for i, s in enumerate(stages) if s.id == "train:small-stack")
    assert f"--dependency=afterok:{ids['grow:small-stack']}" in lines[train]
    assert "scripts/slurm/pretrain.sbatch --config pretrain/configs/paper/small-stack.yaml" in lines[train]
    assert (tmp_path / "logs").is_dir() and (root / ".jobs").is_dir()
    capsys.readouterr()
    assert rp.main(["small-gpu", *flags]) == 0  # a second call: all still queued, none resubmitted
    assert len(log.read_text().splitlines()) == len(stages)
    assert "from an earlier call" in capsys.readouterr().out


def test_local_runner_writes_stdout_whole_and_stops_on_failure(tmp_path, capsys):
    good = rp.Stage("speedup:a", "speedup", ["-c", "print('{\"x\": 1}')"], tmp_path / "a.json",
                    stdout=tmp_path / "a.json")
    bad = rp.Stage("speedup:b", "speedup", ["-c", "print('partial'); raise SystemExit(3)"], tmp_path / "b.json",
                   stdout=tmp_path / "b.json")
    never = rp.Stage("table:c", "table", ["-c", "open(r'%s', 'w')" % (tmp_path / "c.md")], tmp_path / "c.md")
    assert rp.run_locally([good, bad, never], 1) == 3  # the failing stage's exit code
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "c.md").exists()
    assert "error: speedup:b failed (exit 3)" in capsys.readouterr().err
    assert rp.run_locally([good, never], 1) == 0  # the finished stage is skipped, the next one runs
    assert (tmp_path / "c.md").exists()


def test_nothing_is_submitted_without_data_tokenizer_or_disk(tmp_path, monkeypatch, capsys, sample_data):
    """Missing data, tokenizer or disk would fail jobs hours later on the cluster: the check runs before the first
    sbatch, prints one line, and submits nothing; --dry_run shows the same problems as warnings."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\necho \"$@\" >> {shlex.quote(str(log))}\necho 7\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    flags = ["--out_dir", str(tmp_path / "runs"), "--log_dir", str(tmp_path / "logs"), "--launcher", "sbatch"]
    capsys.readouterr()
    assert rp.main(["small-gpu", *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nothing submitted: no train_slimpajama*.bin files in "
                                               "data/slimpajama/train"), err
    assert "no tokenizer in" in err[0] and "--skip_checks" in err[0]
    assert not log.exists()
    assert "warning: no train_slimpajama*.bin files" in dry_run(capsys, "small-gpu", *flags)

    import stage_jobs

    stages = rp.build_stages(rp.EXPERIMENTS["smoke"], str(tmp_path / "runs"), 1)
    assert stage_jobs.preflight(stages, str(tmp_path / "runs")) == []  # the sample data and its tokenizer exist
    params = {m: pr.param_count(pr.load_config(m)) for m in ("2L128H", "4L128H")}
    # 3 checkpoints of 12 B per parameter at most (keep_last 2, one more while saving) and 4 B for final/ per run,
    # 4 B for the grown model
    need = sum(min(steps // 10 + 1, 3) * 12 * params[m] + 4 * params[m]
               for m, steps in (("2L128H", 10), ("4L128H", 40), ("4L128H", 35))) + 4 * params["4L128H"]
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=need - 1))
    assert rp.main(["smoke", *flags]) == 1
    err = capsys.readouterr().err
    assert "GB of checkpoints and exports" in err and err.count("\n") == 1 and not log.exists()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=need))
    assert stage_jobs.preflight(stages, str(tmp_path / "runs")) == []
    assert rp.main(["small-gpu", *flags, "--skip_checks"]) == 0 and log.exists()


def test_gpu_check_dry_run_lists_its_four_checks():
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry_run"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = re.findall(r"^\[(\w+)\]", result.stdout, re.M)
    assert names == ["kernels", "model_step", "tiny_LLaMA_1b", "grow_continue"]
    assert "--device cuda --dtype bfloat16" in result.stdout and "--max_steps 30" in result.stdout


def test_runs_from_any_directory(tmp_path):
    """Recipes and data paths are the repository's: the checks read them from there, not from the caller's
    directory."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "smoke", "--dry_run",
                             "--launcher", "local", "--out_dir", str(tmp_path / "out")], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" not in result.stderr, result.stderr[-2000:]


def test_a_signal_to_the_local_runner_reaches_the_running_stage(tmp_path):
    """SIGTERM to `reproduce.py` (run locally) is passed to the stage, which saves and stops (here: writes a file
    and exits 143); the runner ends with the stage's code instead of leaving it to run on unwatched."""
    stage = ("import signal, sys, time, pathlib\n"
             "def stop(s, f):\n    pathlib.Path(sys.argv[1]).write_text('saved'); sys.exit(143)\n"
             "signal.signal(signal.SIGTERM, stop)\npathlib.Path(sys.argv[2]).touch()\ntime.sleep(60)\n")
    program = (f"import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); import stage_jobs\n"
               f"s = stage_jobs.Stage('train:x', 'speedup', ['-c', {stage!r}, {str(tmp_path / 'saved')!r}, "
               f"{str(tmp_path / 'started')!r}], stage_jobs.Path({str(tmp_path / 'done')!r}))\n"
               "sys.exit(stage_jobs.run_locally([s], 1))\n")
    proc = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and (tmp_path / "saved").read_text() == "saved"
    assert "was stopped after saving a checkpoint (exit 143)" in err
