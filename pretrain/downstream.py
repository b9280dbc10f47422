"""Downstream scores during training (pretrain/tinyllama.py --eval_tasks TASKS --eval_tasks_interval N).

Every N steps and at the last step the full weights are gathered once (a collective every rank joins:
lit_gpt.checkpoint.full_weights, growth masks baked in as in the final export), rank 0 scores them with eval/'s
Scorer (the same adapter, tasks and settings as `eval/run.py --checkpoint_dir`, so the numbers equal those of the
step's export) while the other ranks wait in one broadcast (lit_gpt.distributed.on_rank_zero: a failure on rank 0
reaches them instead of a hang). Each task's metrics become metrics.csv columns TASK/METRIC (acc, acc_norm,
word_perplexity, ...), and TensorBoard/wandb scalars. The scoring runs on rank 0's device in the training dtype
(bfloat16 under bf16 precision, else float32) and must finish within --collective_timeout, which the other
ranks' watchdog allows for each phase.
"""

import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
EVAL_DIR = ROOT / "eval"
for path in (str(ROOT), str(EVAL_DIR)):  # eval/'s modules are imported by plain name ("eval" is a builtin)
    if path not in sys.path:
        sys.path.insert(0, path)

from lit_gpt.checkpoint import full_weights, rng_state, set_rng_state  # noqa: E402
from lit_gpt.distributed import on_rank_zero  # noqa: E402

SKIPPED = ("alias", "name", "sample_len")


def check_tasks(spec: str) -> None:
    """The spelling of --eval_tasks and that lm-eval is installed, checked on every rank before the processes
    start (without importing lm-eval: seconds).

    Raises:
        ValueError: one line naming the bad name, or how to install lm-eval."""
    import importlib.util

    from scoring import parse_tasks

    if importlib.util.find_spec("lm_eval") is None:
        raise ValueError("--eval_tasks scores with lm-eval-harness, which is not installed: pip install -r "
                         "requirements-eval.txt")

    try:
        parse_tasks(spec)
    except ValueError as e:
        raise ValueError(str(e).replace("--tasks", "--eval_tasks")) from None


def columns(results: Dict[str, Dict[str, object]]) -> Dict[str, float]:
    """lm-eval's results as metrics.csv cells: {"TASK/METRIC": value} for every number of every task (the
    `none` filter's name is dropped, other filters kept: `gsm8k/exact_match,strict-match`); stderrs left out."""
    out = {}
    for task, scores in results.items():
        for key, value in scores.items():
            metric, _, flt = key.partition(",")
            if key in SKIPPED or "stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            out[f"{task}/{metric if flt in ('', 'none') else key}"] = float(value)
    return out


class DownstreamEval:
    """Rank 0 holds the loaded tasks; every rank calls `maybe_score` at every step."""

    def __init__(self, fabric, spec: str, interval: int, limit: Optional[int], tokenizer_dir: Path,
                 dtype: str) -> None:
        """Collective: rank 0 loads the tasks (an unknown task or unloadable data fails the run now, on every
        rank, not at the first scoring)."""
        self.interval, self.tokenizer_dir = interval, tokenizer_dir
        self.scorer: List = []

        def load() -> None:
            from scoring import Scorer

            # no bootstrapped stderrs (they are not logged): lm-eval computes them in a forked pool, which in a
            # process with threads (the watchdog's, torch's) can deadlock; it did here, on the second scoring
            self.scorer.append(Scorer(spec, limit=limit, bootstrap_iters=0, device=fabric.device.type, dtype=dtype))

        on_rank_zero(fabric, load)

    def due(self, step: int, last_step: int) -> bool:
        return step % self.interval == 0 or step == last_step

    def score(self, fabric, model, config) -> Dict[str, float]:
        """Collective: the metrics of the current weights on rank 0 ({} on the others)."""
        state = full_weights(model, config)
        found: Dict[str, float] = {}

        def run() -> None:
            rng = rng_state()  # lm-eval seeds the global generators: training's must go on as without scoring
            try:
                found.update(columns(self.scorer[0].score(state=state, config=config,
                                                          tokenizer_dir=self.tokenizer_dir)))
            finally:
                set_rng_state(rng)

        try:
            on_rank_zero(fabric, run)
        finally:
            state.clear()
        return found
