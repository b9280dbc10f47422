"""scripts/reproduce.py: every experiment's stages, budgets against the paper's, recipes, sbatch files, skipping."""

import json
import math
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

sys.path.insert(0, str(ROOT / "scripts"))

import paper_experiments as pe  # noqa: E402, I001 - found through the sys.path entry above
import paper_recipes as recipes  # noqa: E402
import paper_runs as pr  # noqa: E402
import reproduce as rp  # noqa: E402
from lit_gpt.cli import parse  # noqa: E402
from pretrain.train_args import TrainArgs  # noqa: E402

B = 10 ** 9
EXPERIMENTS = sorted(rp.EXPERIMENTS)
PAPER_LR = {"410m": 6e-4, "1.1b": 3e-4, "3b": 1.6e-4, "7b": 1e-4}  # Tab. 1 (§5.3), targets


def dry_run(capsys, *args):
    code = rp.main([*args, "--dry_run"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def commands(text):
    """Every command line a dry run printed, split into argv (sbatch --wrap commands split again)."""
    argvs = []
    for line in text.splitlines():
        stripped = line.strip()
        if not line.startswith("    ") or not stripped:
            continue
        match = re.match(r"^J\d+=\$\((.*)\)$", stripped)
        argv = shlex.split(match.group(1) if match else stripped)
        for arg in list(argv):
            if arg.startswith("--wrap="):
                argv += shlex.split(arg[len("--wrap="):].replace("${PYTHON:-.venv/bin/python}", "python"))
        argvs.append(argv)
    return argvs


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


def test_operators_budget_paper_identity_and_exact_accounting(capsys):
    """§3.1/§5.4: d = 10B base tokens + D = 97.5B continued tokens cost as much as 100B scratch tokens at g = 4,
    counting the base as d/g target tokens. The recipes follow those token numbers; in exact FLOPs (embeddings and
    LM head do not shrink with the base) each grown run costs a little more, which the dry run prints too."""
    exp = rp.EXPERIMENTS["operators-1.1b"]
    grown = [rp.RUNS[k] for k in exp.runs if rp.RUNS[k].grow]
    assert sorted(r.grow.op for r in grown) == sorted(
        ["stack", "zero-depth", "random-depth", "learn-depth", "direct-width", "zero-width", "random-width",
         "learn-width"])
    scratch = rp.RUNS["1.1b-scratch"]
    assert scratch.tokens == 100 * B and scratch.model == "24L2048H"
    for run in grown:
        base = rp.RUNS[run.grow.base]
        assert (base.tokens, run.tokens, run.grow.g) == (10 * B, 97_500_000_000, 4)
        assert base.tokens / run.grow.g + run.tokens == scratch.tokens  # the paper's identity, exactly
        # the same identity in trained tokens (whole steps) holds to within one step on each side
        b = rp.budget(run)
        assert abs(b.paper_tokens - scratch.trained_tokens) <= 2 * 1024 * pr.SEQ
        # exact FLOPs: the base costs more than d/g target tokens, but within 1% of the scratch budget
        scratch_flops = rp.budget(scratch).flops
        assert scratch_flops < b.total < 1.01 * scratch_flops
        # g = 4 in non-embedding parameters for depth and width bases alike (the paper's definition of g)
        assert pr.non_embedding(run.model) / pr.non_embedding(base.model) == pytest.approx(4, rel=0.01)
    out = dry_run(capsys, "operators-1.1b")
    row = next(line for line in out.splitlines() if line.strip().startswith("1.1b-stack "))
    assert "100.3B" in row and row.split()[-2] == "100B"  # exact | paper accounting, side by side
    assert "ASSUMED" in out and "0.45" in out


@pytest.mark.parametrize("name", ["timing", "factor", "partial-stacking", "gradual", "scaling-410m", "scaling-3b",
                                  "scaling-7b", "factor-3b"])
def test_grown_runs_match_their_scratch_budget_in_the_papers_accounting(name):
    exp = rp.EXPERIMENTS[name]
    keys = list(exp.runs) + [r.key for n in exp.stages_recipes for r in rp.RUNS.values() if r.recipe == n]
    scratch = next(rp.RUNS[k] for k in keys if rp.RUNS[k].name == "scratch")
    grown = [rp.RUNS[k] for k in keys if rp.RUNS[k].grow and not rp.RUNS[k].name.startswith("gradual/12")]
    assert grown
    for run in grown:
        # d/g + D = T with the recipes' token counts
        assert nominal_paper_tokens(run) == pytest.approx(scratch.tokens, abs=1024 * pr.SEQ), run.key
        exact = rp.budget(run).exact_tokens / scratch.trained_tokens
        assert 1.0 <= exact < 1.02, run.key  # exact FLOPs: the base costs a bit more than d/g


def nominal_paper_tokens(run):
    """d/g + D over the run's chain of bases, with the recipes' nominal token counts (no rounding to steps)."""
    if not run.grow:
        return run.tokens
    return nominal_paper_tokens(rp.RUNS[run.grow.base]) / run.grow.g + run.tokens


def test_recipes_carry_operator_options_and_budget_convention(capsys):
    """Issue 12: G→direct splits unevenly (the paper's LEMON split; an even split never breaks the copies'
    symmetry), the operators that create random parameters use the official code's init (Fig. 3 came from it),
    every grown recipe names the convention its budget matches scratch in, and g is lit_gpt.flops.growth_factor."""
    from lit_gpt.flops import growth_factor

    grown = [r for r in rp.RUNS.values() if r.grow]
    for run in grown:
        base = rp.RUNS[run.grow.base]
        assert run.grow.g == growth_factor(pr.load_config(base.model), pr.load_config(run.model)), run.key
        assert run.grow.split == ("lemon" if run.grow.op == "direct-width" else None), run.key
        wants_init = run.grow.op in ("random-depth", "zero-width", "random-width")
        assert run.grow.init == ("official" if wants_init else None), run.key
        text = recipes.recipe_path(run).read_text() if not run.recipe else ""
        for flag in run.grow.flags():
            assert not text or flag in text.replace("\n# ", " "), (run.key, flag)
        if text and run.convention:
            assert f"Budget convention: {run.convention}" in text.replace("\n# ", " "), run.key
        scratch = next((r for r in rp.RUNS.values() if r.family is run.family and r.name == "scratch"), None)
        if run.convention == "paper":
            assert abs(rp.budget(run).paper_tokens - scratch.trained_tokens) <= 2 * run.family.batch * run.family.seq
        elif run.convention == "exact":
            assert abs(rp.budget(run).exact_tokens - scratch.trained_tokens) <= run.family.batch * run.family.seq
    assert {r.convention for r in grown} == {"paper", "exact", None}
    argvs = commands(dry_run(capsys, "operators-1.1b"))
    grows = {argv[argv.index("--op") + 1]: argv for argv in argvs if "grow" in argv and "--op" in argv}
    assert grows["direct-width"][grows["direct-width"].index("--split") + 1] == "lemon"
    for op in ("random-depth", "zero-width", "random-width"):
        assert grows[op][grows[op].index("--init") + 1] == "official"
    assert "--init" not in grows["stack"] and "--split" not in grows["stack"]


def test_write_configs_dry_run_writes_nothing(capsys, monkeypatch, tmp_path):
    recipe = next(iter(recipes.generated_files()))
    before = (ROOT / recipe).read_bytes()
    monkeypatch.setattr(recipes.Path, "write_text", lambda *a, **k: pytest.fail("--dry_run wrote a file"))
    assert rp.main(["write-configs", "--dry_run"]) == 0
    assert capsys.readouterr().out.startswith("would write ") and (ROOT / recipe).read_bytes() == before


def test_a_d0_base_costs_nothing():
    """Issue 12 item 7: the d = 0 base trains 0 steps (max_tokens 0), so its budget is 0, not one step."""
    base = rp.RUNS["1.1b-base-6L2048H-d0"]
    assert (base.steps, base.trained_tokens, rp.budget(base).flops) == (0, 0, 0)
    stacked = rp.budget(rp.RUNS["1.1b-stack-d0"])
    assert stacked.total == stacked.flops and stacked.paper_tokens == rp.RUNS["1.1b-stack-d0"].trained_tokens


def test_reproduce_passes_its_convention_to_speedup_and_plot(capsys):
    for convention in ("exact", "paper"):
        argvs = commands(dry_run(capsys, "operators-1.1b", "--convention", convention))
        tools = [argv for argv in argvs if any(a.endswith(("speedup.py", "plot.py")) for a in argv)]
        assert tools and all(argv[argv.index("--convention") + 1] == convention for argv in tools)
        assert any(a.endswith(f"loss-vs-flops-{convention}.png") for argv in tools for a in argv)


def test_timing_and_factor_sweeps_cover_the_papers_values():
    timing = [rp.RUNS[k] for k in rp.EXPERIMENTS["timing"].runs if rp.RUNS[k].grow]
    d = sorted(rp.RUNS[r.grow.base].tokens for r in timing)
    assert d[0] == 0  # d = 0: the base exports its initial weights (max_tokens 0)
    assert d[1:] == [1 * B, 5 * B, 10 * B, 20 * B, 50 * B]
    factor = sorted(rp.RUNS[k].grow.g for k in rp.EXPERIMENTS["factor"].runs if rp.RUNS[k].grow)
    assert factor == [2, 4, 8, 24]
    for key in rp.EXPERIMENTS["factor"].runs:
        run = rp.RUNS[key]
        if run.grow:
            base = pr.load_config(rp.RUNS[run.grow.base].model)
            assert pr.load_config(run.model).n_layer == run.grow.g * base.n_layer
    assert sorted(rp.RUNS[k].grow.g for k in rp.EXPERIMENTS["factor-3b"].runs if rp.RUNS[k].grow) == [4, 8, 16, 32]


def test_partial_stacking_maps_and_connection_rates():
    exp = rp.EXPERIMENTS["partial-stacking"]
    specs = [rp.RUNS[k].grow.layers or "123456*4" for k in exp.runs if rp.RUNS[k].grow]
    assert sorted(specs) == sorted(pr.PARTIAL)
    for spec in pr.PARTIAL:  # the paper's printed R_c, which has two rounding slips (reference §4.2)
        assert pe.rc(spec) == pytest.approx(pe.PARTIAL_RC[spec], abs=0.25), spec
    assert pe.rc("cyclic", 8, 24) == pytest.approx(91.3, abs=0.05)
    assert pe.rc("interleave", 8, 24) == pytest.approx(30.4, abs=0.05)
    interp = rp.RUNS["1.1b-interleave-8L"]
    assert interp.grow.layers == "interleave" and rp.RUNS["1.1b-stack-8L"].grow.layers is None


def test_noise_and_gradual_recipes():
    noises = {rp.RUNS[k].grow.noise for k in rp.EXPERIMENTS["noise"].runs if rp.RUNS[k].grow}
    assert noises == {0.0, 0.2, 0.5}
    recipe = yaml.safe_load((ROOT / "pretrain/configs/paper/gradual_stack.yaml").read_text())
    assert [s["model_name"] for s in recipe["stages"]] == ["6L2048H", "12L2048H", "24L2048H"]
    assert [s.get("grow") for s in recipe["stages"]][1:] == [{"op": "stack", "layers": "top"}] * 2
    from growth.stages import load_recipe, plan

    steps = plan(load_recipe(ROOT / "pretrain/configs/paper/gradual_stack.yaml"))
    assert [s.kind for s in steps] == ["train", "grow", "train", "grow", "train"]
    # 10B/4 + 10B/2 + 92.5B = 100B scratch-equivalent tokens, the budget of one-hop G_stack
    tokens = [s["max_tokens"] for s in recipe["stages"]]
    assert tokens[0] / 4 + tokens[1] / 2 + tokens[2] == 100 * B


def test_recipes_have_the_papers_hyperparameters():
    files = sorted((ROOT / "pretrain/configs/paper").glob("*.yaml"))
    assert len(files) >= 50
    for path in files:
        if path.name == "gradual_stack.yaml":
            continue
        args = parse(TrainArgs, ["--config", str(path)])  # unknown keys or bad types fail here
        run = rp.RUNS[path.stem]
        family = path.stem.split("-")[0]
        assert args.keep_last == 2  # a 1.1B checkpoint is ~16 GB, a 7B one ~71 GB: every one kept would fill disks
        if family == "smoke":  # not a paper run: minutes on CPU, on the sample data
            assert (args.precision, args.train_data_dir, args.model_name) == ("32-true", "data/sample/packed", "4L128H"
                                                                              if not run.key.startswith("smoke-base")
                                                                              else "2L128H")
            continue
        if family != "small":
            assert (args.global_batch_size, args.block_size) == (1024, None)  # 1024 x 2048 = 2M tokens
            assert (args.warmup_steps, args.lr_decay_steps) == (3000, 300_000)
            assert args.max_tokens < 300_000 * 1024 * 2048 or family == "410m"  # the early stop
        assert (args.weight_decay, args.beta1, args.beta2, args.grad_clip) == (0.1, 0.9, 0.95, 1.0)
        assert (args.precision, args.seed, args.max_steps) == ("bf16-mixed", 3407, None)
        assert args.min_lr == pytest.approx(args.learning_rate / 10)
        assert args.train_data_dir == "data/slimpajama/train" and args.val_data_dir == "data/slimpajama/validation"
        assert args.skip_tokens is None  # the default continues after the base's tokens
        assert (args.initial_checkpoint is not None) == (run.grow is not None)
        if run.grow:
            assert "skip_tokens is unset on purpose" in " ".join(path.read_text().replace("#", " ").split())
        if run.grow and family in PAPER_LR:
            assert args.learning_rate == PAPER_LR[family]
        if family == "1.1b" and "base-6L2048H" in path.stem:
            assert args.learning_rate == 1e-3  # the one base LR the paper's scripts give (base_model.sh)
        assert args.out_dir == recipes.out_dir(run, rp.DEFAULT_OUT)
    assert parse(TrainArgs, ["--config", str(ROOT / "pretrain/configs/paper/1.1b-scratch.yaml")]).learning_rate == 3e-4


def test_recipes_match_the_table():
    """The committed recipes are what `write-configs` writes: none edited by hand, none stale."""
    files = recipes.generated_files()
    on_disk = {p.relative_to(ROOT) for p in (ROOT / pr.CONFIG_DIR).rglob("*") if p.is_file()}
    assert on_disk == set(files)
    for path, text in files.items():
        assert (ROOT / path).read_text() == text, f"{path} differs from the table: run write-configs"
    markers = re.compile(r"T[O]DO|X{3}")  # unfinished-work markers, spelled so this file has none either
    assert not markers.search("".join(files.values()) + (ROOT / "scripts/reproduce.py").read_text())


def test_small_gpu_recipe_is_about_100M_and_flops_matched():
    from lit_gpt.config import Config, param_count

    target = Config.load(str(ROOT / pr.FSMALL.target))
    base = Config.load(str(ROOT / pr.SMALL_DIR / "6L512H.json"))
    assert 90e6 < param_count(target) < 130e6 and target.n_layer == 4 * base.n_layer
    stack, scratch = rp.RUNS["small-stack"], rp.RUNS["small-scratch"]
    assert 2 * B <= scratch.tokens <= 10 * B
    step_flops = pr.fpt(stack.model) * pr.FSMALL.batch * pr.SEQ
    assert abs(rp.budget(stack).total - rp.budget(scratch).flops) <= step_flops  # exact FLOPs, one step
    exp = rp.EXPERIMENTS["small-gpu"]
    assert (exp.nodes, exp.gpus_per_node) == (1, 1)
    hours = sum(rp.gpu_hours(rp.budget(rp.RUNS[k]).flops, 0.45, 989e12) for k in exp.runs)
    assert hours < 24  # "hours on one GPU" at the assumed MFU


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


def test_expected_numbers_come_from_the_paper(capsys):
    out = dry_run(capsys, "operators-1.1b")
    assert "G_stack: avg acc 52.80, wikitext ppl 16.73, train loss 2.151, speedup +49.1%" in out
    assert "scratch: avg acc 50.12" in out
    assert "54.6%" in dry_run(capsys, "scaling-7b")
    timing = dry_run(capsys, "timing")
    assert re.search(r"d = 11\.\dB", timing)  # Eq. 2 at 1.1B / 100B (reference §7: 11.4B)
    assert math.isclose(pe.eq2(1.1 * B, 100 * B) / B, 11.4, abs_tol=0.05)


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
