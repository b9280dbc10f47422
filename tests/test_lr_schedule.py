"""Learning-rate schedules (cosine, wsd, constant): the rate at chosen steps, the flag checks, and a resume that
continues the same curve."""

import math

import pytest
import yaml
from conftest import in_one_process
from test_pretrain import args_for, data_dir, metrics  # noqa: F401 - data_dir is a fixture

from lit_gpt.cli import parse
from lit_gpt.lr_schedule import learning_rate, wsd_decay_steps
from pretrain.tinyllama import get_lr
from pretrain.train_args import TrainArgs, UsageError

PEAK, LOW = 1.0, 0.2
WARMUP, HORIZON, DECAY = 4, 20, 5  # warm-up steps 0-3, stable 4-14, decay 15-19


def lr(step, schedule, shape="1-sqrt"):
    return learning_rate(step, schedule, PEAK, LOW, WARMUP, HORIZON, DECAY if schedule == "wsd" else 0, shape)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_every_schedule_warms_up_linearly_to_the_peak(schedule):
    assert [lr(s, schedule) for s in range(WARMUP)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_is_the_upstream_curve():
    assert lr(4, "cosine") == PEAK
    assert lr(12, "cosine") == pytest.approx((PEAK + LOW) / 2, rel=1e-12)  # half way through the cosine
    assert lr(19, "cosine") == pytest.approx(LOW + 0.5 * (1 + math.cos(math.pi * 15 / 16)) * (PEAK - LOW), rel=1e-12)
    assert lr(20, "cosine") == lr(10_000, "cosine") == LOW


@pytest.mark.parametrize("shape, first_decay_step", [
    ("linear", 0.84),  # t = 1/5: 0.2 + 0.8 * 0.8
    ("cosine", 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 5))),
    ("1-sqrt", 0.6422291236000336),  # 0.2 + 0.8 * (1 - sqrt(0.2))
])
def test_wsd_holds_the_peak_then_decays_over_the_last_steps_of_the_horizon(shape, first_decay_step):
    assert [lr(s, "wsd", shape) for s in (4, 9, 14)] == [PEAK] * 3  # start, middle and end of the stable phase
    assert lr(15, "wsd", shape) == pytest.approx(first_decay_step, rel=1e-12)
    assert lr(19, "wsd", shape) == LOW  # the last step of the horizon is at min_lr exactly
    assert lr(20, "wsd", shape) == lr(10_000, "wsd", shape) == LOW
    decay = [lr(s, "wsd", shape) for s in range(14, 20)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_wsd_decay_shapes_at_the_middle_of_the_decay():
    middle = HORIZON - DECAY + 1  # step 16: t = 2/5
    assert lr(middle, "wsd", "linear") == pytest.approx(LOW + 0.8 * 0.6, rel=1e-12)
    assert lr(middle, "wsd", "cosine") == pytest.approx(LOW + 0.8 * 0.5 * (1 + math.cos(0.4 * math.pi)), rel=1e-12)
    assert lr(middle, "wsd", "1-sqrt") == pytest.approx(LOW + 0.8 * (1 - math.sqrt(0.4)), rel=1e-12)
    # 1-sqrt falls fastest at first and stays below linear; cosine stays above it through the first half
    assert all(lr(s, "wsd", "1-sqrt") < lr(s, "wsd", "linear") for s in range(15, 19))
    assert all(lr(s, "wsd", "cosine") > lr(s, "wsd", "linear") for s in (15, 16))


def test_constant_keeps_the_peak_past_any_horizon():
    assert [lr(s, "constant") for s in (4, 19, 20, 10_000)] == [PEAK] * 4


def test_no_warm_up_starts_at_the_peak():
    assert learning_rate(0, "wsd", PEAK, LOW, 0, 10, 10, "linear") == pytest.approx(PEAK - 0.8 / 10, rel=1e-12)
    assert learning_rate(0, "constant", PEAK, LOW, 0, 10) == learning_rate(0, "cosine", PEAK, LOW, 0, 10) == PEAK


def test_decay_length_from_steps_or_a_share_of_the_horizon():
    assert wsd_decay_steps(100) == 20  # the default share, 0.2
    assert wsd_decay_steps(100, fraction=0.1) == 10
    assert wsd_decay_steps(100, steps=7) == 7
    assert wsd_decay_steps(100, fraction=0.29) == 29  # 0.29 * 100 is 28.999...: the nearest step, not the floor
    assert wsd_decay_steps(10, fraction=0.01) == 1  # never less than one step


def args(**flags):
    return TrainArgs(**{"max_steps": 100, "warmup_steps": 10, "learning_rate": 1.0, "min_lr": 0.1, **flags})


def test_get_lr_follows_the_flags():
    wsd = args(lr_schedule="wsd")  # default decay: 20 steps of 1-sqrt, steps 80-99
    assert get_lr(79, wsd, 100) == 1.0 and get_lr(99, wsd, 100) == 0.1
    assert get_lr(80, wsd, 100) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(1 / 20)), rel=1e-12)
    horizon = args(lr_schedule="wsd", lr_decay_steps=1000, decay_fraction=0.1, decay_shape="linear")
    assert get_lr(899, horizon, 100) == 1.0 and get_lr(900, horizon, 100) == pytest.approx(0.1 + 0.9 * 0.99)
    assert get_lr(0, args(), 100) == 0.1  # cosine by default: today's curve
    assert get_lr(55, args(), 100) == pytest.approx(0.55, rel=1e-12)
    assert get_lr(500, args(lr_schedule="constant"), 100) == 1.0


@pytest.mark.parametrize("flags, words", [
    (dict(decay_steps=10), "--decay_steps only shapes the decay of --lr_schedule wsd, not cosine; drop it"),
    (dict(lr_schedule="constant", decay_fraction=0.1, decay_shape="linear"),
     "--decay_fraction and --decay_shape only shape the decay of --lr_schedule wsd, not constant; drop them"),
    (dict(decay_shape="1-sqrt"), "--decay_shape only shapes"),
    (dict(lr_schedule="wsd", decay_steps=10, decay_fraction=0.1), "give at most one of --decay_steps (10) and "
                                                                  "--decay_fraction (0.1)"),
    (dict(lr_schedule="wsd", decay_steps=0), "--decay_steps must be at least 1, got 0"),
    (dict(lr_schedule="wsd", decay_fraction=0.0), "--decay_fraction is a share of the horizon, above 0 and at most 1"),
    (dict(lr_schedule="wsd", decay_fraction=1.5), "--decay_fraction is a share"),
    (dict(lr_schedule="wsd", decay_fraction=float("nan")), "--decay_fraction is a share"),
    (dict(lr_schedule="wsd", decay_steps=91), "--decay_steps 91 does not fit after the warm-up: the horizon of 100 "
                                              "steps (--max_steps) less --warmup_steps 10 leaves 90"),
    (dict(lr_schedule="wsd", decay_fraction=1.0), "a decay of 100 steps (--decay_fraction 1 of 100)"),
    (dict(lr_schedule="wsd", warmup_steps=90), "a decay of 20 steps (the default --decay_fraction 0.2 of 100) does "
                                                   "not fit"),
    (dict(lr_schedule="wsd", lr_decay_steps=50, decay_steps=41), "horizon of 50 steps (--lr_decay_steps)"),
    (dict(lr_schedule="wsd", warmup_steps=200), "leaves 0"),
    (dict(lr_decay_steps=-1), "--lr_decay_steps must be at least 1"),
    (dict(lr_decay_steps=0), "--lr_decay_steps must be at least 1 (leave it out for the run's --max_steps)"),
])
def test_schedule_flags_are_checked_before_any_work(flags, words):
    with pytest.raises(UsageError) as e:
        args(**flags).check()
    assert words in str(e.value) and "\n" not in str(e.value)


def test_schedule_flags_that_fit_are_accepted():
    args(lr_schedule="wsd", decay_steps=90).check()  # the decay right after the warm-up: no stable phase
    args(lr_schedule="wsd", warmup_steps=0, decay_fraction=1.0).check()
    args(lr_schedule="wsd", lr_decay_steps=1000, decay_steps=500).check()  # the horizon, not the stop
    args(lr_schedule="wsd", max_steps=0).check()  # 0 steps export the initial weights and need no rate
    args(lr_schedule="constant", lr_decay_steps=1000).check()


def test_a_token_budget_is_checked_once_its_steps_are_known():
    budget = TrainArgs(max_tokens=8 * 32 * 10, global_batch_size=8, warmup_steps=5, lr_schedule="wsd", decay_steps=6)
    budget.check()  # the steps depend on the block size, which the model gives
    assert budget.run_steps(32) == 10
    with pytest.raises(UsageError, match="horizon of 10 steps \\(--max_tokens\\) less --warmup_steps 5 leaves 5"):
        budget.check_schedule(budget.run_steps(32))


def test_training_refuses_a_decay_that_does_not_fit_before_starting(tmp_path, capsys):
    from pretrain.tinyllama import run

    out = tmp_path / "out"
    code = run(["--model_name", "2L128H", "--max_tokens", "2560", "--global_batch_size", "8", "--micro_batch_size",
                "8", "--block_size", "32", "--warmup_steps", "5", "--lr_schedule", "wsd", "--decay_steps", "6",
                "--train_data_dir", str(tmp_path), "--out_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: --decay_steps 6 does not fit") and err.count("\n") == 1, err
    assert not out.exists()


def recipe(tmp_path, values, *argv):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return parse(TrainArgs, ["--config", str(path), *argv])


def test_recipes_are_parsed_like_flags(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        recipe(tmp_path, {"lr_schedule": "wsdd"})
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert "lr_schedule: invalid choice 'wsdd' (did you mean 'wsd'? choose from cosine, wsd, constant)" in err
    with pytest.raises(SystemExit):
        recipe(tmp_path, {"lr_schedule": "wsd", "decay_shape": "sqrt"})
    assert "decay_shape: invalid choice 'sqrt'" in capsys.readouterr().err
    got = recipe(tmp_path, {"lr_schedule": "wsd", "decay_shape": "1-sqrt", "decay_fraction": 0.1})
    assert (got.lr_schedule, got.decay_shape, got.decay_fraction, got.decay_steps) == ("wsd", "1-sqrt", 0.1, None)
    # a decay length on the command line replaces the recipe's, whichever way it is given
    got = recipe(tmp_path, {"lr_schedule": "wsd", "decay_fraction": 0.1}, "--decay_steps", "7")
    assert (got.decay_fraction, got.decay_steps) == (None, 7)


def test_help_documents_the_schedule_flags(capsys):
    with pytest.raises(SystemExit):
        parse(TrainArgs, ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--lr_schedule {cosine,wsd,constant}", "--decay_steps DECAY_STEPS", "--decay_fraction DECAY_FRACTION",
                  "--decay_shape {linear,cosine,1-sqrt}", "0.2 of the horizon", "(default with wsd: 1-sqrt)",
                  "(default: cosine)"):
        assert words in text, words


def test_a_stopped_and_resumed_run_continues_the_same_curve(data_dir, tmp_path):  # noqa: F811
    """Stopped in the middle of the decay and resumed: the same lr column as an unbroken run, step for step."""
    schedule = ("--lr_schedule", "wsd", "--lr_decay_steps", 8, "--decay_steps", 3, "--decay_shape", "cosine",
                "--eval_interval", 0, "--save_interval", 0)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    in_one_process([["pretrain/tinyllama.py", *args_for(data_dir, straight, "--max_steps", 8, *schedule)],
                    ["pretrain/tinyllama.py", *args_for(data_dir, resumed, "--max_steps", 6, *schedule)],
                    ["pretrain/tinyllama.py", *args_for(data_dir, resumed, "--max_steps", 8, *schedule,
                                                        "--resume", "auto")]], tmp_path)
    a, b = metrics(straight), metrics(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert [b[s]["lr"] for s in b] == [a[s]["lr"] for s in a]
    # warm-up (args_for: 2 steps to 3e-3), stable, then the decay of steps 5-7 to min_lr 3e-4
    expected = [learning_rate(s, "wsd", 3e-3, 3e-4, 2, 8, 3, "cosine") for s in range(8)]
    assert [float(a[s]["lr"]) for s in sorted(a)] == expected
    assert expected[2:5] == [3e-3] * 3 and expected[-1] == 3e-4


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_floor_above_the_peak_is_refused(schedule):
    """A small fine-tuning rate under the default --min_lr (4e-5) would make the 'decay' rise."""
    args = TrainArgs(max_steps=10, warmup_steps=1, learning_rate=2e-5, lr_schedule=schedule)
    with pytest.raises(UsageError, match="--min_lr 4e-05 is above --learning_rate 2e-05"):
        args.check()
    TrainArgs(max_steps=10, warmup_steps=1, learning_rate=2e-5, lr_schedule="constant").check()
