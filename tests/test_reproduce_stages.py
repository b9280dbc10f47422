"""scripts/reproduce.py's stages and launchers: every experiment's stages and dry-run commands, finished stages
skipped, bad input refused, the sbatch files and their submission chain, the local runner and its signals, the
checks before anything is submitted, and the curves (score stages along each run, the figures drawn from them, the
points the recipes' checkpoints allow). Recipes and budgets: tests/test_reproduce.py."""

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

import paper_experiments as pe  # noqa: E402, I001 - found through the sys.path entry above
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


# ------------------------------------------------------------------------------------------------ curves


def flag(argv, name):
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("convention", ["exact", "paper"])
def test_every_experiment_scores_its_runs_and_then_draws_its_figures(convention):
    """A score stage per evaluated run (not a @snapshot) and per run a speedup compares, after that run's training;
    three figures per experiment after all of them, fed the score stages' files and labels in the same order."""
    root = "/runs"
    for name, exp in rp.EXPERIMENTS.items():
        stages = rp.build_stages(exp, root, 1, convention)
        ids = [s.id for s in stages]
        for i, stage in enumerate(stages):  # in an order the local runner can follow
            assert all(ids.index(n) < i for n in stage.needs), (name, stage.id)
        keys = list(dict.fromkeys([k for k, _ in exp.evals if "@" not in k] + [k for p in exp.speedups for k in p]))
        scores = [s for s in stages if s.kind == "score"]
        figures = [s for s in stages if s.kind == "figure"]
        assert [s.id for s in scores] == [f"score:{k}" for k in keys] == [f"score:{k}" for k in pe.curve_runs(exp)]
        assert stages[-len(scores) - len(figures):] == scores + figures  # after the final-model reports
        for stage, key in zip(scores, keys):
            run = rp.RUNS[key]
            train = f"stages:{run.recipe}" if run.recipe else f"train:{key}"
            assert stage.needs == [train] and stage.min_step == run.steps and stage.run is run, stage.id
            argv = stage.args
            assert argv[0] == "eval/run.py" and "--checkpoint_dir" not in argv
            assert flag(argv, "--run") == f"{root}/{run.family.name}/{run.name}"
            assert flag(argv, "--tasks") == exp.eval_tasks
            assert (flag(argv, "--device"), flag(argv, "--dtype")) == exp.eval_device
            assert int(flag(argv, "--every")) == pe.score_every(run.family)
            assert flag(argv, "--name") == dict((k, lb) for k, lb in exp.evals).get(key, run.name)
            out = f"{root}/{run.family.name}/eval/{run.name.replace('/', '-')}-along.jsonl"
            assert flag(argv, "--out") == out and str(stage.done_file) == out
        assert [s.id for s in figures] == [f"figure:{name}:{m}-vs-{x}" for m, x in
                                           (("acc", "flops"), ("word_perplexity", "flops"), ("acc", "scratch_tokens"))]
        for stage in figures:
            argv = stage.args
            assert argv[0] == "eval/plot.py" and stage.needs == [s.id for s in scores]
            assert argv[1:1 + len(scores)] == [flag(s.args, "--run") for s in scores]
            assert flag(argv, "--evals").split(",") == [flag(s.args, "--out") for s in scores]
            assert flag(argv, "--labels").split(",") == [flag(s.args, "--name") for s in scores]
            assert flag(argv, "--convention") == convention and flag(argv, "--metric") in ("acc", "word_perplexity")
            metric, x = flag(argv, "--metric"), flag(argv, "--x")
            out = f"{root}/report/{name}/{metric}-vs-{x}-{convention}.png"
            assert flag(argv, "--out") == out and str(stage.done_file) == out
        speedups = [s for s in stages if s.kind == "speedup"]
        assert all(flag(s.args, "--levels") == "5" and "--json" in s.args for s in speedups)


def test_smoke_score_and_figure_commands():
    """The smoke experiment's curve stages exactly, on the offline sample tasks and the CPU."""
    root = "/r"
    stages = {s.id: s for s in rp.build_stages(rp.EXPERIMENTS["smoke"], root, 1)}
    assert stages["score:smoke-stack"].args == [
        "eval/run.py", "--run", "/r/smoke/stack", "--tasks", "sample", "--every", "20480", "--device", "cpu",
        "--dtype", "float32", "--name", "G_stack", "--out", "/r/smoke/eval/stack-along.jsonl"]
    assert stages["score:smoke-scratch"].needs == ["train:smoke-scratch"]
    assert stages["score:smoke-stack"].needs == ["train:smoke-stack"] and stages["score:smoke-stack"].min_step == 35
    assert stages["figure:smoke:acc-vs-flops"].args == [
        "eval/plot.py", "/r/smoke/stack", "/r/smoke/scratch", "--evals",
        "/r/smoke/eval/stack-along.jsonl,/r/smoke/eval/scratch-along.jsonl", "--metric", "acc", "--x", "flops",
        "--convention", "exact", "--labels", "G_stack,scratch", "--out", "/r/report/smoke/acc-vs-flops-exact.png"]
    assert stages["figure:smoke:word_perplexity-vs-flops"].needs == ["score:smoke-stack", "score:smoke-scratch"]


def test_runs_scored_by_several_experiments_share_one_file_and_one_task_list():
    """The along-file of a run is shared (1.1b-stack is scored by six experiments): it must be scored on the same
    tasks everywhere, or the experiments' figures would mix task lists."""
    tasks = {}
    for exp in rp.EXPERIMENTS.values():
        for stage in rp.build_stages(exp, "out/paper", 1):
            if stage.kind == "score":
                tasks.setdefault(str(stage.done_file), set()).add(flag(stage.args, "--tasks"))
    assert all(len(t) == 1 for t in tasks.values()), tasks
    assert "out/paper/1.1b/eval/stack-along.jsonl" in tasks


def test_score_stage_is_done_only_with_a_complete_record_of_the_last_step(tmp_path):
    """A killed scoring leaves records of early checkpoints, or half a line: not done, so a rerun resumes it."""
    out = tmp_path / "eval" / "stack-along.jsonl"
    stage = rp.Stage("score:x", "score", ["eval/run.py"], out, min_step=35)

    def record(step):
        return json.dumps({"results": {}, "training": {"step": step, "tokens": step * 2048}})

    assert not stage.done()  # no file yet
    out.parent.mkdir()
    out.write_text("")
    assert not stage.done()
    out.write_text(record(30) + "\n")
    assert not stage.done()  # an earlier checkpoint only
    out.write_text(record(30) + "\n" + record(35)[:-7])
    assert not stage.done()  # the last record cut off while being written
    out.write_text(record(30) + "\n" + record(35))
    assert not stage.done()  # whole, but without its newline: maybe not all flushed
    out.write_text(record(30) + "\n{not json\n" + json.dumps({"training": {"step": None}}) + "\n" + "[35]\n")
    assert not stage.done()  # lines that are not records of a step
    out.write_text(record(30) + "\n{not json\n" + record(35) + "\n")
    assert stage.done()
    out.write_text(record(36) + "\n")
    assert stage.done()  # past the last step
    out.write_bytes(b"\xff\xfe\n")
    assert not stage.done()
    # an existing file marks every other kind of stage done, as before
    assert rp.Stage("figure:x", "figure", ["eval/plot.py"], out).done()


def test_score_stage_is_marked_done_in_the_dry_run(capsys, tmp_path):
    eval_dir = tmp_path / "smoke" / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "stack-along.jsonl").write_text(json.dumps({"training": {"step": 30}}) + "\n")
    (eval_dir / "scratch-along.jsonl").write_text(json.dumps({"training": {"step": 40}}) + "\n")
    out = dry_run(capsys, "smoke", "--out_dir", str(tmp_path), "--launcher", "local")
    status = dict(re.findall(r"^  \[\d+\] (\S+): (done|to run)", out, re.M))
    assert status["score:smoke-stack"] == "to run" and status["score:smoke-scratch"] == "done"


@pytest.mark.parametrize("launcher", ["local", "sbatch"])
def test_dry_run_shows_score_and_figure_stages(capsys, launcher):
    """Score stages are jobs of eval.sbatch (one GPU, as eval stages), after their run's training job; figures are
    --wrap jobs after every score job. The dry run says how many points the recipes' checkpoints allow."""
    out = dry_run(capsys, "smoke", "--launcher", launcher)
    index = {m[1]: int(m[0]) for m in re.findall(r"^  \[(\d+)\] (\S+): ", out, re.M)}
    argvs = commands(out)
    by_id = {stage: argvs[i - 1] for stage, i in index.items()}
    score, figure = by_id["score:smoke-stack"], by_id["figure:smoke:word_perplexity-vs-flops"]
    assert re.search(rf"^  \[\d+\] score:smoke-stack: to run after {index['train:smoke-stack']}$", out, re.M)
    after = f"{index['score:smoke-stack']}, {index['score:smoke-scratch']}"
    assert re.search(rf"^  \[\d+\] figure:smoke:acc-vs-scratch_tokens: to run after {after}$", out, re.M)
    assert "--run" in score and flag(score, "--every") == "20480"
    assert flag(figure, "--metric") == "word_perplexity" and "eval/plot.py" in figure
    if launcher == "sbatch":
        assert score[score.index("scripts/slurm/eval.sbatch") + 1:score.index("--run")] == []
        assert f"--dependency=afterok:$J{index['train:smoke-stack']}" in score
        assert not any(a.startswith("--gpus") for a in score)  # the template's one GPU
        assert "#SBATCH --gpus-per-node=1" in (ROOT / "scripts/slurm/eval.sbatch").read_text()
        deps = f"--dependency=afterok:$J{index['score:smoke-stack']}:$J{index['score:smoke-scratch']}"
        assert deps in figure and any(a.startswith("--wrap=") for a in figure)
    else:
        assert score[1:3] == ["eval/run.py", "--run"]
    assert "each run has 2 points" in out and "--eval_tasks sample --eval_tasks_interval 10" in out
    # the smoke recipes are not scored during training (the suite trains them for real, at its time limit)
    assert "not scored during training" in out and "HF_DATASETS_OFFLINE" not in out
    for recipe in trained_recipes(argvs):
        assert (recipe.eval_tasks, recipe.eval_tasks_interval) == (None, 0)


def trained_recipes(argvs):
    """The TrainArgs of every training command of a dry run (its --config recipe and flags)."""
    from lit_gpt.cli import parse
    from pretrain.train_args import TrainArgs

    found = []
    for argv in argvs:
        script = next((a for a in argv if a.endswith(("pretrain/tinyllama.py", "slurm/pretrain.sbatch"))), None)
        if script is not None:
            flags = argv[argv.index(script) + 1:]
            flags = [str(ROOT / a) if a.endswith(".yaml") else a for a in flags]
            found.append(parse(TrainArgs, flags))
    return found


@pytest.mark.parametrize("name,interval,points", [("operators-1.1b", 5000, "10"), ("noise", 1250, "16"),
                                                  ("scaling-3b", 10000, "15"), ("small-gpu", 1000, "10"),
                                                  ("timing", 5000, "9-10"), ("scaling-7b", 10000, "15")])
@pytest.mark.parametrize("launcher", ["local", "sbatch"])
def test_paper_runs_are_scored_during_training(capsys, launcher, name, interval, points):
    """Every training command of a paper experiment runs a recipe with eval_tasks paper and its run's interval;
    the dry run's curves line gives the interval, the points per run and what the nodes' HF cache needs."""
    out = dry_run(capsys, name, "--launcher", launcher, "--out_dir", "/elsewhere")
    exp = rp.EXPERIMENTS[name]
    by_dir = {f"/elsewhere/{rp.RUNS[k].family.name}/{rp.RUNS[k].name}": rp.RUNS[k] for k in exp.runs}
    recipes = trained_recipes(commands(out))
    assert {args.out_dir for args in recipes} == set(by_dir)
    for args in recipes:
        run = by_dir[args.out_dir]
        key = run.key
        if run.steps:
            assert (args.eval_tasks, args.eval_tasks_interval) == ("paper", pr.eval_tasks_interval(run)), key
        else:  # the d = 0 base trains no step
            assert args.eval_tasks is None, key
    curves = exp.expected[-1]
    assert curves in out and f"every {interval} steps and at its last step" in curves
    assert f": {points} points a run (e.g. " in curves
    assert "HF datasets cache of the compute nodes" in curves and "export HF_DATASETS_OFFLINE=1" in curves
    assert f"eval/run.py --tasks {exp.eval_tasks} once" in curves


def test_points_along_each_run_follow_the_recipes_checkpoints():
    """What the dry run says: the recipes save every save_interval steps and keep the last keep_last = 2, so
    scoring after training finds 2 points per run (--every would pick 4-16 if every checkpoint were kept), the
    steps eval/run.py --run --every picks (eval/along.py's choose) among the checkpoints left. The paper runs are
    scored during training too, every eval_tasks_interval steps: 9-16 points a run in all; smoke's have 2."""
    from eval import along

    scratch = rp.RUNS["1.1b-scratch"]
    every = pe.score_every(scratch.family)
    assert every == 5000 * 1024 * pr.SEQ  # one checkpoint span: 10 points over 100B tokens
    assert pe.scored_steps(scratch, every, 2) == [45000, 47683]
    assert pe.scored_steps(scratch, every, None) == [5000 * i for i in range(1, 10)] + [47683]
    assert pe.scored_steps(rp.RUNS["smoke-stack"], pe.score_every(pr.FSMOKE), None) == [10, 20, 30, 35]
    assert pe.score_every(rp.RUNS["410m-scratch"].family) == 5 * 5000 * 1024 * pr.SEQ
    for exp in rp.EXPERIMENTS.values():
        for key in pe.curve_runs(exp):
            run = rp.RUNS[key]
            every, per_step = pe.score_every(run.family), run.family.batch * run.family.seq
            assert run.family.keep_last == 2
            kept = pe.scored_steps(run, every, run.family.keep_last)
            assert kept == pe.checkpoint_steps(run)[-2:], key
            full = pe.scored_steps(run, every, None)
            assert 4 <= len(full) <= pe.CURVE_POINTS + 1, (key, len(full))
            for steps, keep in ((kept, 2), (full, None)):
                saved = pe.checkpoint_steps(run)
                cands = [along.Candidate(s, s * per_step, ROOT, "step", str(s)) for s in saved[-keep if keep else 0:]]
                assert [c.step for c in along.choose(cands, every, None)] == steps, key
            points = pe.curve_points(run)
            assert set(kept) <= set(points) and set(pe.training_steps(run)) <= set(points)
            if run.family is pr.FSMOKE:
                assert pe.training_steps(run) == [] and points == kept, key
            else:
                assert 9 <= len(points) <= pe.CURVE_POINTS, (key, len(points))
        assert exp.expected[-1].startswith("curves (score:* and figure:* stages")
    assert pe.training_steps(scratch) == [5000 * i for i in range(1, 10)] + [47683] == pe.curve_points(scratch)
    assert pe.curve_points(rp.RUNS["410m-stack"])[-3:] == [350000, 355000, 356435]  # 355000: a kept checkpoint
