"""Multi-stage growth: gradual stacking and MIDAS recipes as grow + train stages, each a fresh process."""

import json

import pytest
import yaml
from test_pretrain import MODEL, data_dir, metrics  # noqa: F401 - data_dir is a fixture

from growth.layers import resolve
from growth.stages import main, plan
from lit_gpt import Config


def test_top_and_middle_presets():
    assert resolve("top", 6, 8) == [0, 1, 2, 3, 4, 5, 4, 5]  # gradual stacking copies the top block
    assert resolve("middle", 6, 8) == [0, 1, 2, 3, 2, 3, 4, 5]  # MIDAS copies the middle block after itself
    assert resolve("top", 6, 12) == resolve("middle", 6, 12) == resolve("cyclic", 6, 12)  # doubling
    assert resolve("middle", 5, 7) == [0, 1, 2, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="several stages"):
        resolve("middle", 6, 13)


def recipe(tmp_path, data_dir, stages):  # noqa: F811
    path = tmp_path / "recipe.yaml"
    shared = {"train_data_dir": str(data_dir), "global_batch_size": 8, "micro_batch_size": 4, "learning_rate": 3e-3,
              "min_lr": 3e-4, "warmup_steps": 1, "eval_interval": 0, "n_chunks": 2, "max_steps": 2}
    text = yaml.safe_dump({"out_dir": str(tmp_path / "out"), "train": shared, "stages": stages})
    path.write_text(text if isinstance(stages, list) else text.split("stages:")[0] + "stages:\n" + stages)
    return path


def test_plan_lists_grow_and_train_commands(tmp_path):
    path = recipe(tmp_path, tmp_path, [{"name": "small", "model_name": "2L128H"},
                                       {"grow": {"op": "stack", "layers": "top"}, "model_name": "4L128H"}])
    from growth.stages import load_recipe

    steps = plan(load_recipe(path), ["srun", "--kill-on-bad-exit"])
    assert [(s.kind, s.stage) for s in steps] == [("train", "small"), ("grow", "stage-2"), ("train", "stage-2")]
    grow = steps[1].command
    assert grow[grow.index("--src") + 1] == str(tmp_path / "out" / "small" / "final")
    assert grow[grow.index("--layers") + 1] == "top" and grow[grow.index("--target") + 1] == "4L128H"
    train = steps[2].command
    assert train[:2] == ["srun", "--kill-on-bad-exit"]
    assert train[train.index("--initial_checkpoint") + 1] == str(tmp_path / "out" / "stage-2-grown")
    assert train[train.index("--out_dir") + 1] == str(tmp_path / "out" / "stage-2")


@pytest.mark.parametrize("stages, message", [
    ([{"model_name": "2L128H", "grow": {"op": "stack"}}], "no earlier stage"),
    ([{"model_name": "2L128H", "lr": 1}], "unknown keys lr"),
    ([{"model_name": "2L128H"}, {"model_name": "4L128H", "grow": {"op": "stretch"}}], "grow.op must be"),
    ([{"name": "a", "model_name": "2L128H"}, {"name": "a", "model_name": "4L128H"}], "used twice"),
    ([{"max_steps": 3}], "no model_name"),
    # training values are checked as the flags are: `strategy: fdsp` would have run as FSDP
    ([{"model_name": "2L128H", "strategy": "fdsp"}], "stage 'stage-1': strategy: invalid choice 'fdsp' (did you "
                                                       "mean 'fsdp'?"),
    ([{"model_name": "2L128H", "max_tokens": "lots"}], "stage 'stage-1': max_tokens: cannot read 'lots'"),
    ([{"model_name": "2L128H", "compile": "maybe"}], "compile: expected true or false"),
    ([{"model_name": "2L128H"}, {"model_name": "4L128H", "grow": "stack"}], "grow must be a mapping"),
    (["2L128H"], "stage 1 must be a mapping"),
    ([{"model_name": "2L128H"}, {"model_name": "4L128H", "grow": {"op": "hyperclone", "clone_noise": "abc"}}],
     "grow.clone_noise must be a number"),
    ([{"model_name": "2L128H"}, {"model_name": "4L128H", "grow": {"op": "hyperclone", "clone_noise": float("inf")}}],
     "clone_noise must be from 0 to 1"),
    ([{"model_name": "2L128H"}, {"model_name": "4L128H", "grow": {"op": "stack", "init": "official"}}],
     "stack creates none"),
    ([{"model_name": "2L128H"}, {"model_name": "4L128H", "grow": {"op": "direct-width", "split": "foo"}}],
     "split must be even or lemon"),
    ("  - model_name: 2L128H\n    model_name: 4L128H\n", "line 4: key 'model_name' given twice"),
    ([{"model_name": "2L128H", "lr_schedule": "wsdd"}], "lr_schedule: invalid choice 'wsdd' (did you mean 'wsd'?"),
    ([{"model_name": "2L128H", "lr_schedule": "constant", "decay_steps": 1}],
     "stage 'stage-1': --decay_steps only shapes the decay of --lr_schedule wsd, not constant"),
    ([{"model_name": "2L128H", "lr_schedule": "wsd", "decay_steps": 2}], "--decay_steps 2 does not fit after the warm-up"),
    ([{"model_name": "2L128H", "trainable": "new"}], "stage 'stage-1': trainable: new needs a stage that grows"),
    ([{"model_name": "2L128H"}, {"model_name": "4L128H", "grow": {"op": "stack"}, "trainable": "foo"}],
     "stage 'stage-2': --trainable 'foo' matches none of the model's"),
])
def test_bad_recipes_are_refused(tmp_path, capsys, stages, message):
    path = recipe(tmp_path, tmp_path, stages)
    code = main([str(path), "--dry_run"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error:") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_the_wsd_recipe_grows_in_the_stable_phase_and_decays_once_at_the_end():
    from growth.stages import ROOT, load_recipe
    from lit_gpt.cli import parse
    from pretrain.tinyllama import get_lr
    from pretrain.train_args import TrainArgs

    steps = plan(load_recipe(ROOT / "pretrain" / "configs" / "stages" / "wsd_grow_cpu.yaml"))
    assert [(s.kind, s.stage) for s in steps] == [("train", "2L"), ("grow", "4L"), ("train", "4L"), ("grow", "8L"),
                                                  ("train", "8L")]
    trains = [s.command for s in steps if s.kind == "train"]
    # each stage's command, read by the parser the training script uses
    runs = [parse(TrainArgs, command[2:]) for command in trains]
    assert [r.lr_schedule for r in runs] == ["constant", "constant", "wsd"]
    assert all("--decay_steps" not in command and "--decay_shape" not in command for command in trains[:2])
    for run in runs:
        run.check()
        curve = [get_lr(step, run, run.max_steps) for step in range(run.max_steps)]
        assert curve[run.warmup_steps - 1] == run.learning_rate  # every stage warms up again to the same peak
        if run.lr_schedule == "constant":  # the next stage grows from weights that never annealed
            assert set(curve[run.warmup_steps:]) == {run.learning_rate}
    last = runs[-1]
    assert (last.decay_steps, last.decay_shape, last.max_steps) == (80, "1-sqrt", 200)
    assert set(curve[last.warmup_steps:120]) == {last.learning_rate} and curve[120] < last.learning_rate
    assert curve[-1] == last.min_lr


def test_training_values_are_converted_like_flags(tmp_path):
    from growth.stages import load_recipe

    path = recipe(tmp_path, tmp_path, [{"name": "a", "model_name": "2L128H", "max_steps": None, "max_tokens": "1.5M",
                                        "compile": True, "data_prefixes": "train_x"}])
    train = plan(load_recipe(path))[0].command
    assert train[train.index("--max_tokens") + 1] == "1500000" and train[train.index("--compile") + 1] == "true"
    after = train[train.index("--data_prefixes") + 1:train.index("--data_prefixes") + 3]
    assert after[0] == "train_x" and after[1].startswith("--")  # one prefix, not the letters of one
    assert "--max_steps" not in train


def test_a_stage_failing_at_run_time_gives_its_own_error_and_where(tmp_path, capfd):
    path = recipe(tmp_path, tmp_path / "no-data", [{"name": "small", "model_name": "2L128H"}])
    assert main([str(path)]) == 1
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("error: ") and "no-data" in err[0], err
    assert err[1].startswith("(from the train of stage 'small', exit 1;") and "error" not in err[1], err
    # the stage made nothing, so a fixed recipe is no "change" that needs --force (here: fixed wrongly again)
    path = recipe(tmp_path, tmp_path / "still-no-data", [{"name": "small", "model_name": "2L128H"}])
    assert main([str(path)]) == 1
    assert "still-no-data" in capfd.readouterr().err.splitlines()[0]


def test_a_grown_model_is_not_stale_when_only_its_training_settings_change(tmp_path):
    """A stage that grew its model and failed before its first step (bad training data) was "changed" once the data
    was fixed, and needed --force, though nothing it had made depended on the data."""
    from growth.stages import changes, load_recipe

    def steps(data, op="stack"):
        return plan(load_recipe(recipe(tmp_path, tmp_path / "data", [
            {"name": "a", "model_name": "2L128H"},
            {"name": "b", "model_name": "4L128H", "grow": {"op": op}, "train_data_dir": str(data)}])))[1:]

    grow, train = steps(tmp_path / "bad-data")
    grow.outputs[1].mkdir(parents=True)  # b-grown exists, b/ holds only its record
    grow.outputs[0].mkdir()
    grow.record_file.write_text(json.dumps(grow.record))
    assert changes(steps(tmp_path / "data")[1]) is None
    (train.outputs[0] / "step-00000001").mkdir()  # once it has trained, the data it trained on matters
    assert "train_data_dir" in changes(steps(tmp_path / "data")[1])
    assert "grow.op" in changes(steps(tmp_path / "bad-data", op="zero-depth")[0])


def test_gradual_stacking_runs_every_stage_and_carries_flops_and_data(tmp_path, data_dir, capsys):  # noqa: F811
    for n_layer in (1, 2, 4):
        Config(**{**MODEL, "n_layer": n_layer}).to_json(tmp_path / f"{n_layer}L.json")
    path = recipe(tmp_path, data_dir, [
        {"name": "1L", "model_name": str(tmp_path / "1L.json")},
        {"name": "2L", "model_name": str(tmp_path / "2L.json"), "grow": {"op": "stack", "layers": "top"}},
        {"name": "4L", "model_name": str(tmp_path / "4L.json"), "grow": {"op": "stack", "layers": "middle"}},
    ])
    assert main([str(path)]) == 0
    out = tmp_path / "out"
    trained = {name: json.loads((out / name / "final" / "training.json").read_text()) for name in ("1L", "2L", "4L")}
    assert [trained[n]["tokens"] for n in ("1L", "2L", "4L")] == [2 * 8 * 32] * 3
    assert trained["4L"]["stream_tokens"] == 3 * 2 * 8 * 32  # each stage reads fresh data after the last
    record = json.loads((out / "4L-grown" / "growth.json").read_text())
    assert record["index_map"] == [0, 1, 0, 1] and record["base_stream_tokens"] == 2 * 2 * 8 * 32
    assert float(metrics(out / "4L")[1]["flops"]) > trained["2L"]["flops"] > trained["1L"]["flops"]
    capsys.readouterr()
    assert main([str(path)]) == 0  # everything done: nothing reruns
    assert capsys.readouterr().out.count(": done") == 5
    assert json.loads((out / "4L" / "stage.json").read_text())["grow"] == {"op": "stack", "layers": "middle"}

    # what a stage runs changed after it ran: refused before anything runs, naming the change
    def edit(stage, **changes):
        data = yaml.safe_load(path.read_text())
        data["stages"][["1L", "2L", "4L"].index(stage)].update(changes)
        path.write_text(yaml.safe_dump(data))

    files = tree(out)
    edit("4L", log_interval=5, devices=1)  # how it runs, not what it computes: still done
    assert main([str(path)]) == 0 and capsys.readouterr().out.count(": done") == 5
    edit("1L", max_steps=3)
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: stage '1L' ran with other settings") and err.count("\n") == 1, err
    assert "max_steps 2 -> 3 (2 later stage(s) changed too)" in err and "--force" in err
    assert main([str(path), "--dry_run"]) == 0
    assert "train 4L: changed since it ran (its source stage '2L' changed)" in capsys.readouterr().out
    edit("1L", max_steps=2)
    edit("4L", grow={"op": "stack", "layers": "top"})
    assert main([str(path)]) == 1 and 'grow.layers "middle" -> "top"' in capsys.readouterr().err
    assert tree(out) == files  # refusals touch nothing

    # --force reruns only the changed stage, with the recipe's new settings
    edit("4L", grow={"op": "stack", "layers": "middle"}, max_steps=3)
    assert main([str(path), "--force"]) == 0
    assert "deleted" in capsys.readouterr().out
    assert json.loads((out / "4L" / "final" / "training.json").read_text())["tokens"] == 3 * 8 * 32
    def others(files):  # everything but the 4L stage's outputs (4L/ and 4L-grown/)
        return {p: b for p, b in files.items() if not p.relative_to(out).parts[0].startswith("4L")}

    assert others(tree(out)) == others(files)
    assert main([str(path)]) == 0 and capsys.readouterr().out.count(": done") == 5


def tree(path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
