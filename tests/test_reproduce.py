"""scripts/reproduce.py's recipes and budgets: the RUNS table (scripts/paper_runs.py) against the paper's
hyperparameters and FLOPs budgets, growth factors, sweeps, and the committed recipes `write-configs` writes.
Stages, launchers and dry-run commands: tests/test_reproduce_stages.py."""

import math
import re
import shlex
import sys

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
    and every grown recipe names the convention its budget matches scratch in."""
    grown = [r for r in rp.RUNS.values() if r.grow]
    for run in grown:
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


def test_growth_factors_come_from_the_two_models():
    """g is lit_gpt.flops.growth_factor of the base's and the grown run's configs, never typed in the table: the
    blocks' matrix parameters target / base, exactly L / l for depth growth (norm weights would make 6L2048H ->
    24L2048H 3.99998) and 4 for 24L1024H -> 24L2048H, whose matrices all double in both dims."""
    g = {key: run.grow.g for key, run in rp.RUNS.items() if run.grow}
    assert g["1.1b-stack"] == 4 and g["1.1b-direct-width"] == 4  # 6L2048H and 24L1024H -> 24L2048H
    assert g["1.1b-stack-8L"] == 3  # tiny_LLaMA_400M_like1.1B (8 layers, GQA) -> tiny_LLaMA_1.1B
    assert (g["1.1b-gradual/12L"], g["1.1b-gradual/24L"]) == (2, 2)
    assert (g["1.1b-stack-g24"], g["3b-stack-g32"]) == (24, 32)  # the sweeps' keys name the computed g
    assert None not in g.values()


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
    # `python -m growth stages` passes any TrainArgs field on: every stage is scored during training, at its own
    # interval (the shared train: section has the tasks, each stage its eval_tasks_interval)
    assert recipe["train"]["eval_tasks"] == "paper"
    runs = [r for r in rp.RUNS.values() if r.recipe == "gradual_stack"]
    intervals = [pr.eval_tasks_interval(r) for r in runs]
    assert [s["eval_tasks_interval"] for s in recipe["stages"]] == intervals == [5000] * 3
    for step, interval in zip([s for s in steps if s.kind == "train"], intervals):
        argv = step.command
        assert argv[argv.index("--eval_tasks") + 1] == "paper", argv
        assert argv[argv.index("--eval_tasks_interval") + 1] == str(interval), argv
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
        if family == "smoke" or run.steps == 0:  # not scored during training: the suite trains smoke for real
            assert (args.eval_tasks, args.eval_tasks_interval, args.eval_tasks_limit) == (None, 0, None), path.name
        else:  # the curves' points come from training (scripts/paper_runs.py eval_tasks_interval)
            assert (args.eval_tasks, args.eval_tasks_limit) == ("paper", None), path.name
            assert args.eval_tasks_interval == pr.eval_tasks_interval(run), path.name
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


def test_eval_tasks_intervals_give_every_curve_9_to_16_points():
    """The rule of scripts/paper_runs.py: a family's interval is the fewest whole checkpoint spans that score a run
    of its scratch budget at most 16 times (the last step included); a run the figures plot gets the shortest
    interval that is a multiple or a whole fraction of a checkpoint span with at most 16 scorings; a base is scored
    at its family's interval (mostly once: its curve is in no figure)."""
    per_family = {f.name if f is not pr.F8 else "8L": pr.family_interval(f)
                  for f in (pr.F11, pr.F8, pr.F410, pr.F3, pr.F7, pr.FSMALL)}
    assert per_family == {"1.1b": 5000, "8L": 5000, "410m": 25000, "3b": 10000, "7b": 10000, "small": 1000}
    assert pr.family_interval(pr.F11) == pr.F11.save_interval  # every checkpoint of the 1.1B runs
    bases = pr.grown_from()
    curves = {k for exp in rp.EXPERIMENTS.values() for k in pe.curve_runs(exp)}
    assert not curves & bases
    assert pr.scorings(47683, 5000) == 10 and pr.scorings(10000, 5000) == 2 and pr.scorings(1, 5000) == 1
    for key, run in rp.RUNS.items():
        if run.family is pr.FSMOKE:  # not scored during training
            continue
        interval, save = pr.eval_tasks_interval(run), run.family.save_interval
        assert interval % save == 0 or save % interval == 0, key  # aligned with the checkpoints
        if key in bases:
            assert interval == pr.family_interval(run.family), key
            continue
        allowed = sorted({save // k for k in range(1, save + 1) if save % k == 0} | {save * m for m in range(1, 50)})
        assert interval == next(i for i in allowed if pr.scorings(run.steps, i) <= pr.CURVE_POINTS), key
        points = pr.scorings(run.steps, interval)
        assert 9 <= points <= pr.CURVE_POINTS, (key, points)
        assert pe.training_steps(run)[-1] == run.steps and len(pe.training_steps(run)) == points, key
    for key in ("1.1b-stack-8L", "1.1b-interleave-8L", "1.1b-direct-width-40B"):  # 40B tokens: 5000 gives 4
        assert (pr.eval_tasks_interval(rp.RUNS[key]), pr.scorings(rp.RUNS[key].steps, 1250)) == (1250, 16)
    expected = {"1.1b-scratch": (5000, 10), "1.1b-stack": (5000, 10), "1.1b-stack-d50B": (5000, 9),
                "1.1b-gradual/24L": (5000, 9), "410m-stack": (25000, 15), "3b-scratch": (10000, 15),
                "7b-stack": (10000, 15), "small-scratch": (1000, 10), "small-stack": (1000, 10),
                "1.1b-base-6L2048H": (5000, 1), "1.1b-base-6L2048H-d50B": (5000, 5), "410m-base-6L": (25000, 1)}
    for key, (interval, points) in expected.items():
        run = rp.RUNS[key]
        assert (pr.eval_tasks_interval(run), pr.scorings(run.steps, pr.eval_tasks_interval(run))) == (interval,
                                                                                                       points), key
    assert not pr.scored_in_training(rp.RUNS["smoke-stack"]) and not pr.scored_in_training(
        rp.RUNS["1.1b-base-6L2048H-d0"])  # smoke: the suite's time; d = 0: no step to score


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


def test_expected_numbers_come_from_the_paper(capsys):
    out = dry_run(capsys, "operators-1.1b")
    assert "G_stack: avg acc 52.80, wikitext ppl 16.73, train loss 2.151, speedup +49.1%" in out
    assert "scratch: avg acc 50.12" in out
    assert "54.6%" in dry_run(capsys, "scaling-7b")
    timing = dry_run(capsys, "timing")
    assert re.search(r"d = 11\.\dB", timing)  # Eq. 2 at 1.1B / 100B (reference §7: 11.4B)
    assert math.isclose(pe.eq2(1.1 * B, 100 * B) / B, 11.4, abs_tol=0.05)
