"""scripts/reproduce.py's curves: a score stage along each run (done only with a complete record of its last step),
the figures drawn from the score stages' files, the paper recipes' scores during training and the points per run
the recipes' checkpoints allow. The other stages and launchers: tests/test_reproduce_stages.py."""

import json
import re
import sys

import pytest
from conftest import ROOT
from test_reproduce import commands, dry_run

sys.path.insert(0, str(ROOT / "scripts"))

import paper_experiments as pe  # noqa: E402, I001 - found through the sys.path entry above
import paper_runs as pr  # noqa: E402
import reproduce as rp  # noqa: E402

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
