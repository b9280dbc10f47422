"""scripts/demo.py's budget: every run spends the same FLOPs, the base's counted in the grown runs."""

import importlib.util

from conftest import ROOT

from lit_gpt import Config
from lit_gpt.speed_monitor import flops_per_token

spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def test_every_run_spends_the_scratch_runs_flops():
    steps = demo.budget(400_000, 0.3)
    f4, f8 = (flops_per_token(Config.from_name(n), demo.BLOCK) * demo.TOKENS_PER_STEP for n in (demo.BASE, demo.TARGET))
    scratch = steps["8L"] * f8
    assert steps["8L"] == 400_000 // demo.TOKENS_PER_STEP
    assert abs(steps["4L"] * f4 - scratch) <= f4 / 2  # the base-size model on the whole budget
    assert abs(steps["base"] * f4 - 0.3 * scratch) <= f4 / 2  # d = 30% of C
    grown = steps["base"] * f4 + steps["grown"] * f8
    assert scratch - f8 < grown <= scratch  # never more compute than scratch: no favour to growth
