"""Learning-rate schedules as pure functions of the optimizer step: cosine, WSD and constant.

Units are optimizer steps counted from 0: `learning_rate(step, ...)` is the rate of the update that step `step`
makes, so a run of `horizon` steps takes steps 0 .. horizon - 1. The rate depends on nothing but the step and the
settings, so a resumed run continues the same curve with no scheduler state in its checkpoint.

Every schedule starts with the same linear warm-up: step s < warmup gets peak * (s + 1) / warmup. Then:

- cosine (upstream TinyLlama, the stacking paper): a half cosine from `peak` to `min_lr`, which it reaches at step
  `horizon`; min_lr from there on. The horizon is not where a run stops (the paper stops long before it).
- wsd, warmup-stable-decay (MiniCPM, Hu et al. 2024; Hägele et al. 2024, "Scaling laws and compute-optimal
  training beyond fixed training durations"): `peak` held constant, then a decay to `min_lr` over the last `decay`
  steps of the horizon. Decay step k (k = 0 .. decay - 1, i.e. step horizon - decay + k) is at t = (k + 1) / decay,
  so the first decay step is already below the peak and the last step of the horizon is at min_lr exactly, as the
  last warm-up step is at the peak exactly; min_lr from there on. The rate over the decay is
  min_lr + f(t) * (peak - min_lr) with f one of `DECAY_SHAPES`: linear 1 - t, cosine (1 + cos(pi t)) / 2, 1-sqrt
  1 - sqrt(t) (the best shape in Hägele et al.: below linear throughout, it falls fastest at the start and spends
  longer near min_lr). Warm-up, stable and decay steps add up to the horizon; `wsd_decay_steps` gives the decay
  from a share of the horizon.
- constant: `peak` from the end of the warm-up on, forever; no horizon, no min_lr.

A wsd run in its stable phase has not annealed, so a checkpoint taken there can be grown and trained on at the
same peak, and the run decays once, at its end (section 4 of the schedules reference).
"""

import math
from typing import Callable, Dict, Optional

SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES: Dict[str, Callable[[float], float]] = {
    "linear": lambda t: 1.0 - t,
    "cosine": lambda t: 0.5 * (1.0 + math.cos(math.pi * t)),
    "1-sqrt": lambda t: 1.0 - math.sqrt(t),
}
DEFAULT_DECAY_FRACTION = 0.2  # the top of the 10-20% commonly used; Hägele et al. match cosine with 20%
DEFAULT_DECAY_SHAPE = "1-sqrt"


def wsd_decay_steps(horizon: int, steps: Optional[int] = None, fraction: Optional[float] = None) -> int:
    """WSD's decay length: `steps` when given, else `fraction` (default `DEFAULT_DECAY_FRACTION`) of the horizon
    rounded to the nearest step, at least 1."""
    if steps is not None:
        return steps
    share = DEFAULT_DECAY_FRACTION if fraction is None else fraction
    return max(1, round(share * horizon))


def learning_rate(step: int, schedule: str, peak: float, min_lr: float, warmup: int, horizon: int,
                  decay: int = 0, shape: str = DEFAULT_DECAY_SHAPE) -> float:
    """The rate of optimizer step `step` (module docstring). For wsd, 1 <= decay <= horizon - warmup (callers
    check it, naming their flags).

    Raises:
        ValueError: an unknown schedule or decay shape.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if schedule == "wsd" and shape not in DECAY_SHAPES:
        raise ValueError(f"unknown decay shape {shape!r}; choose from {', '.join(DECAY_SHAPES)}")
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if step >= horizon:
        return min_lr
    if schedule == "cosine":
        ratio = (step - warmup) / max(1, horizon - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - min_lr)
    decay_start = horizon - decay
    if step < decay_start:
        return peak
    return min_lr + DECAY_SHAPES[shape]((step - decay_start + 1) / decay) * (peak - min_lr)
