"""The paper's experiments as data: each experiment (EXPERIMENTS) names the runs of scripts/paper_runs.py it trains,
the evaluations, speedups and tables it reports, and the paper's numbers it expects (partial stacking's R_c, Eq. 2's
growth timing, eval/paper_numbers.json). `scripts/reproduce.py` turns an experiment into stages and jobs.

Curves (the paper's figures: each task's score against FLOPs along every run): `curve_runs` are the runs an
experiment plots (its evals' runs and the runs its speedups compare). Each paper run is scored during training
(its recipe's eval_tasks and eval_tasks_interval, scripts/paper_runs.py: 10-16 points a run, `training_steps`),
into its metrics.csv. After training, the score stages add the checkpoints still on disk: `score_every` is the
tokens between the checkpoints they score (`eval/run.py --run --every`), `scored_steps` the steps they find, which
with keep_last 2 are the last two checkpoints and final/. The smoke recipes are not scored during training, so its
curves have those 2 points. `curve_note` says which in the dry run (the last line of `expected`).
"""

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from growth.layers import connection_rate, resolve  # noqa: E402
from paper_runs import (B, CURVE_POINTS, F3, F7, F8, F11, F410, FSMALL, FSMOKE, PARTIAL, RUNS,  # noqa: E402, F401
                        TIMING_D, Family, Run, eval_tasks_interval, family_interval, format_tokens,
                        scored_in_training)

PAPER_NUMBERS = ROOT / "eval" / "paper_numbers.json"
PARTIAL_RC = {"123456*4": 87.0, "12-3456*5-56": 78.3, "12-345*7-6": 74.0, "123-456*7": 74.0, "1234-56*10": 60.7,
              "12-34*10-56": 60.7, "1-234*7-56": 74.0, "123*7-456": 74.0}  # paper-numbers.json partial_stacking_rc
PARTIAL_GROUP = {"123456*4": "1st (all)", "12-3456*5-56": "1st (middle-back)", "12-345*7-6": "1st (middle-back)",
                 "123-456*7": "1st (back)", "1234-56*10": "2nd (back)", "12-34*10-56": "2nd (middle)",
                 "1-234*7-56": "2nd (front-middle)", "123*7-456": "3rd, worse than scratch (front)"}


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    runs: Tuple[str, ...]  # run keys, bases before what grows from them
    evals: Tuple[Tuple[str, str], ...]  # (run key, or run key + "@snapshot", column label)
    speedups: Tuple[Tuple[str, str], ...] = ()  # (reference run, compared run): eval/speedup.py --scratch --grown
    tables: Tuple[Tuple[str, Tuple[str, ...], Optional[str]], ...] = ()  # (file stem, labels, --paper)
    stages_recipes: Tuple[str, ...] = ()
    expected: Tuple[str, ...] = ()
    nodes: int = 4
    gpus_per_node: int = 8
    eval_tasks: str = "paper"
    eval_device: Tuple[str, str] = ("cuda", "bfloat16")  # eval/run.py --device, --dtype


def _k(family: Family, *names: str) -> Tuple[str, ...]:
    return tuple(f"{family.name}-{n}" for n in names)


def _paper(table: str) -> dict:
    return json.loads(PAPER_NUMBERS.read_text())[table]["columns"]


def _experiments() -> Dict[str, Experiment]:
    fig3 = _paper("fig3")
    ops = [("stack", "G_stack"), ("zero-depth", "G_zero_depth"), ("random-depth", "G_random_depth"),
           ("learn-depth", "G_learn_depth"), ("direct-width", "G_direct_width"), ("zero-width", "G_zero_width"),
           ("random-width", "G_random_width"), ("learn-width", "G_learn_width")]
    s11 = "1.1b-scratch"
    exps = [
        Experiment(
            "operators-1.1b", "Fig. 3 / Tab. 3: the eight growth operators vs scratch, 1.1B (24L2048H), 100B-token "
            "compute (8e20 FLOPs), bases trained on d = 10B, g = 4",
            _k(F11, "base-6L2048H", "base-24L1024H", "scratch", *[o for o, _ in ops]),
            tuple((f"1.1b-{o}", label) for o, label in ops) + ((s11, "scratch"),),
            tuple((s11, f"1.1b-{o}") for o, _ in ops),
            (("fig3", tuple(label for _, label in ops) + ("scratch",), "fig3"),
             ("tab3", ("G_stack", "scratch"), "tab3")),
            expected=tuple(f"{label}: avg acc {fig3[label]['avg']:.2f}, wikitext ppl {fig3[label]['wikitext_ppl']}, "
                           f"train loss {fig3[label]['train_loss']}, speedup {fig3[label]['speedup_pct']:+.1f}%"
                           for label in [lb for _, lb in ops] + ["scratch"])),
        Experiment(
            "scaling-410m", "§4.1 Fig. 6: G_stack vs scratch at 410M (24L1024H), 750B tokens, d = 10B, g = 4",
            _k(F410, "base-6L", "scratch", "stack"), (("410m-stack", "G_stack"), ("410m-scratch", "scratch")),
            (("410m-scratch", "410m-stack"),), (("410m", ("G_stack", "scratch"), None),),
            expected=("speedup 53.1% at the scratch loss of 400B tokens, 31.0% at 700B (Fig. 6a); the paper's 410M "
                      "architecture is inferred (reference §11.1)",)),
        Experiment(
            "scaling-3b", "§4.1 Fig. 4: G_stack vs scratch at 3B (tiny_LLaMA_3B), 300B tokens, d = 10B, g = 4",
            _k(F3, "base-8L", "scratch", "stack"), (("3b-stack", "G_stack"), ("3b-scratch", "scratch")),
            (("3b-scratch", "3b-stack"),), (("3b", ("G_stack", "scratch"), None),),
            expected=("speedup 48.6% at the scratch loss of 180B tokens, 54.5% at 240B; avg accuracy +2.1 over "
                      "scratch at 240B (Fig. 4, Fig. 18)",)),
        Experiment(
            "scaling-7b", "§4.1 Fig. 5 / Tab. 6: G_stack vs scratch at 7B (tiny_LLaMA_7B), 300B tokens, d = 10B, "
            "g = 4; Tab. 6 from the G_stack run's weights at 130B tokens",
            _k(F7, "base-8L", "scratch", "stack"),
            (("7b-stack", "G_stack"), ("7b-scratch", "scratch"), ("7b-stack@130B", "G_stack-7B")),
            (("7b-scratch", "7b-stack"),), (("7b", ("G_stack", "scratch"), None), ("tab6", ("G_stack-7B",), "tab6")),
            expected=("speedup 40.8% at the scratch loss of 160B tokens, 55.3% at 220B, 53.8% at 280B; G_stack "
                      "reaches scratch's 300B loss with 194B tokens: 54.6% (Abstract, Fig. 1, Fig. 5)",
                      "Tab. 6 at 130B: G_stack-7B avg 57.79 over ten tasks, wikitext ppl 12.56 (Pythia-6.9B 56.56 / "
                      "13.33); the paper's Tab. 6 model may be the MHA partial-stack 7B (reference §5.1, §9)"),
            eval_tasks="paper,boolq,hellaswag,openbookqa"),
        Experiment(
            "timing", "§4.2 Fig. 8, §7 Eq. 2: growth timing d in {0, 1, 5, 10, 20, 50}B for the 1.1B target at "
            "100B-token compute (IsoFLOP: d/4 + D = 100B), g = 4",
            _k(F11, *[f"base-6L2048H{'' if d == 10 * B else '-d0' if d == 0 else f'-d{d // B}B'}" for d in TIMING_D],
               "scratch", *[f"stack{'' if d == 10 * B else '-d0' if d == 0 else f'-d{d // B}B'}" for d in TIMING_D]),
            tuple((f"1.1b-stack{'' if d == 10 * B else '-d0' if d == 0 else f'-d{d // B}B'}",
                   f"d={d // B}B") for d in TIMING_D) + ((s11, "scratch"),),
            tuple((s11, f"1.1b-stack{'' if d == 10 * B else '-d0' if d == 0 else f'-d{d // B}B'}") for d in TIMING_D),
            (("timing", tuple(f"d={d // B}B" for d in TIMING_D) + ("scratch",), None),),
            expected=("d = 0 (stacking an untrained base) performs like scratch; d = 1B already gives a large speedup; "
                      "the loss has a valley in d (§4.5, Fig. 8)",
                      f"Eq. 2 (log10 d = 0.88 log10 N + 163.27/log10 C - 5.74, C = 6 N D) for N = 1.1B, D = 100B: "
                      f"d = {eq2(1.1 * B, 100 * B) / B:.1f}B (`python -m growth plan --params 1.1B --tokens 100B`)")),
        Experiment(
            "factor", "§4.2 Fig. 10, App. G.2 Figs. 29-30: growth factor g in {2, 4, 8, 24} (bases 12L, 6L, 3L, 1L "
            "on d = 10B) for the 1.1B target at 100B-token compute",
            _k(F11, "base-12L2048H", "base-6L2048H", "base-3L2048H", "base-1L2048H", "scratch", "stack-g2", "stack",
               "stack-g8", "stack-g24"),
            (("1.1b-stack-g2", "g=2"), ("1.1b-stack", "g=4"), ("1.1b-stack-g8", "g=8"), ("1.1b-stack-g24", "g=24"),
             (s11, "scratch")),
            tuple((s11, f"1.1b-{n}") for n in ("stack-g2", "stack", "stack-g8", "stack-g24")),
            (("factor", ("g=2", "g=4", "g=8", "g=24", "scratch"), None),),
            expected=("the optimum g lies between 2 and 4 (the paper recommends g = 4); a 1-layer base (g = 24) "
                      "underperforms scratch",)),
        Experiment(
            "factor-3b", "App. G.2 Figs. 31-32: growth factor g in {4, 8, 16, 32} (bases 8L, 4L, 2L, 1L on d = 10B) "
            "for the 3B target at 300B-token compute (the sweep's budget is not stated: that of scaling-3b)",
            _k(F3, "base-8L", "base-4L", "base-2L", "base-1L", "scratch", "stack", "stack-g8", "stack-g16",
               "stack-g32"),
            (("3b-stack", "g=4"), ("3b-stack-g8", "g=8"), ("3b-stack-g16", "g=16"), ("3b-stack-g32", "g=32"),
             ("3b-scratch", "scratch")),
            tuple(("3b-scratch", f"3b-{n}") for n in ("stack", "stack-g8", "stack-g16", "stack-g32")),
            (("factor-3b", ("g=4", "g=8", "g=16", "g=32", "scratch"), None),),
            expected=("even a 2-layer base (g = 16) beats the 3B baseline; a 1-layer base (g = 32) underperforms it",)),
        Experiment(
            "partial-stacking", "App. H.3 Fig. 37, Tab. 5: the eight partial-stacking maps, 6L -> 24L, d = 10B, 1.1B "
            "at 100B-token compute",
            _k(F11, "base-6L2048H", "scratch", "stack", *["partial-" + s.replace("*", "x") for s in PARTIAL[1:]]),
            tuple((_partial_key(s), s) for s in PARTIAL) + ((s11, "scratch"),),
            tuple((s11, _partial_key(s)) for s in PARTIAL),
            (("partial-stacking", tuple(PARTIAL) + ("scratch",), None),),
            expected=tuple(f"{s}: R_c {PARTIAL_RC[s]:.1f}% (ours {rc(s):.1f}%), group {PARTIAL_GROUP[s]}"
                           for s in PARTIAL) + ("by stacked part: all > middle ~ back >> front; for the same part, "
                                                "higher R_c is better",)),
        Experiment(
            "interpolation", "App. H.2 Fig. 35: cyclic stacking vs interpolation (--layers interleave), 8L -> 24L "
            "(tiny_LLaMA_400M_like1.1B -> tiny_LLaMA_1.1B), d = 10B, D = 40B",
            _k(F8, "base-8L", "stack-8L", "interleave-8L"),
            (("1.1b-stack-8L", "cyclic"), ("1.1b-interleave-8L", "interleave")),
            (("1.1b-stack-8L", "1.1b-interleave-8L"),), (("interpolation", ("cyclic", "interleave"), None),),
            expected=(f"R_c: cyclic 91.3% (ours {rc('cyclic', 8, 24):.1f}%), interleave 30.4% (ours "
                      f"{rc('interleave', 8, 24):.1f}%); interpolation matches cyclic early and falls behind later; "
                      "the speedup printed is interleave's over cyclic (negative: slower)",)),
        Experiment(
            "noise", "§5.2, App. I.2: noise W <- (1 - a) W + a eps at growth: G_stack 8L -> 24L with a in {0, 0.2, "
            "0.5} and G→direct with a in {0, 0.2}, compared after D = 40B tokens",
            _k(F8, "base-8L", "stack-8L", "stack-8L-noise0.2", "stack-8L-noise0.5")
            + _k(F11, "base-24L1024H", "direct-width-40B", "direct-width-40B-noise0.2"),
            (("1.1b-stack-8L", "stack a=0"), ("1.1b-stack-8L-noise0.2", "stack a=0.2"),
             ("1.1b-stack-8L-noise0.5", "stack a=0.5"), ("1.1b-direct-width-40B", "direct-width a=0"),
             ("1.1b-direct-width-40B-noise0.2", "direct-width a=0.2")),
            (("1.1b-stack-8L", "1.1b-stack-8L-noise0.2"), ("1.1b-stack-8L", "1.1b-stack-8L-noise0.5"),
             ("1.1b-direct-width-40B", "1.1b-direct-width-40B-noise0.2")),
            (("noise", ("stack a=0", "stack a=0.2", "stack a=0.5", "direct-width a=0", "direct-width a=0.2"), None),),
            expected=("G→direct with a = 0.2 beats a = 0 after 40B tokens: wikitext ppl better by 0.27, avg accuracy "
                      "+0.41; G_stack with a = 0.2 is slightly better than without; noise above 20% is worse "
                      "(speedups printed are of the noisy run over its a = 0 control)",)),
        Experiment(
            "gradual", "§5.1, App. H.1 Fig. 33: gradual stacking 6L -> 12L -> 24L (python -m growth stages) vs "
            "one-hop G_stack and scratch, 1.1B at 100B-token compute",
            _k(F11, "base-6L2048H", "scratch", "stack"),
            (("1.1b-gradual/24L", "G_gradual"), ("1.1b-stack", "G_stack"), (s11, "scratch")),
            ((s11, "1.1b-gradual/24L"), (s11, "1.1b-stack")),
            (("gradual", ("G_gradual", "G_stack", "scratch"), None),), stages_recipes=("gradual_stack",),
            expected=("one-hop G_stack beats gradual stacking by +2.4 avg accuracy and 0.6 wikitext ppl at 100B",)),
        Experiment(
            "small-gpu", "The cheapest real check, one GPU in hours: G_stack 6L512H (52M, d = 0.5B) -> 24L512H (110M) "
            "vs scratch at 5B-token compute, exact FLOPs matched",
            _k(FSMALL, "base-6L512H", "scratch", "stack"), (("small-stack", "G_stack"), ("small-scratch", "scratch")),
            (("small-scratch", "small-stack"),), (("small", ("G_stack", "scratch"), None),),
            expected=("no number in the paper at this size; the claim to check: G_stack reaches scratch's final "
                      "validation loss with fewer FLOPs (speedup > 0; the paper reports 31-55% from 410M to 7B)",),
            nodes=1, gpus_per_node=1),
        Experiment(
            "smoke", "The whole pipeline in minutes on CPU, on the embedded sample: 2L128H (10 steps) grown to 4L128H "
            "by G_stack vs 4L128H scratch, eval on the sample tasks, speedup, table, plot",
            _k(FSMOKE, "base-2L128H", "scratch", "stack"), (("smoke-stack", "G_stack"), ("smoke-scratch", "scratch")),
            (("smoke-scratch", "smoke-stack"),), (("smoke", ("G_stack", "scratch"), None),),
            expected=("no paper number: it checks that the jobs, templates and dependencies of a set-up work (sbatch "
                      "on a cluster, --launcher local here); its few tokens per parameter say nothing of the claim",),
            nodes=1, gpus_per_node=1, eval_tasks="sample", eval_device=("cpu", "float32")),
    ]
    return {e.name: e for e in exps}


def _partial_key(spec: str) -> str:
    return "1.1b-stack" if spec == PARTIAL[0] else "1.1b-partial-" + spec.replace("*", "x")


def rc(spec: str, base: int = 6, target: int = 24) -> float:
    return 100 * connection_rate(resolve(spec, base, target))


def eq2(N: float, D: float) -> float:
    from growth.plan import growth_timing

    return growth_timing(N, 6 * N * D)


# ------------------------------------------------------------------------------------------------ curves


def curve_runs(exp: Experiment) -> List[str]:
    """The runs scored along their training: every evaluated run (not its @snapshot) and every run a speedup
    compares, in that order, once each."""
    keys = [k for k, _ in exp.evals if "@" not in k] + [k for pair in exp.speedups for k in pair]
    return list(dict.fromkeys(keys))


def curve_label(exp: Experiment, key: str) -> str:
    """The run's column label in the experiment's evals (its name if only a speedup compares it)."""
    return next((label for k, label in exp.evals if k == key), RUNS[key].name)


def checkpoint_tokens(family: Family) -> int:
    """Tokens between two step-* checkpoints of the family's recipes (save_interval steps)."""
    return family.save_interval * family.batch * family.seq


def score_every(family: Family) -> int:
    """`eval/run.py --every` of the family: its in-training interval (paper_runs.family_interval: a whole number
    of checkpoint spans, at most CURVE_POINTS points over the family's scratch budget) in tokens."""
    return family_interval(family) * family.batch * family.seq


def checkpoint_steps(run: Run) -> List[int]:
    """The steps pretrain/tinyllama.py saves a step-* checkpoint at: every save_interval, and the last step."""
    every = run.family.save_interval
    steps = list(range(every, run.steps + 1, every)) if every else []
    return steps + [run.steps] if run.steps and (not steps or steps[-1] != run.steps) else steps


def scored_steps(run: Run, every: int, keep_last: Optional[int]) -> List[int]:
    """The steps `eval/run.py --run --every` scores once the run has finished: of the checkpoints still there
    (the last `keep_last`; all for None), the first at or past each multiple of `every` tokens, and final/."""
    saved = checkpoint_steps(run)
    kept = saved[-keep_last:] if keep_last else saved
    per_step = run.family.batch * run.family.seq
    picked = {next((s for s in kept if s * per_step >= m), None) for m in range(every, run.trained_tokens + 1, every)}
    return sorted((picked - {None}) | ({run.steps} if run.steps else set()))


def training_steps(run: Run) -> List[int]:
    """The steps the run is scored at during training (pretrain --eval_tasks): every eval_tasks_interval steps and
    the last step; none for a run its recipe does not score during training."""
    if not scored_in_training(run):
        return []
    every = eval_tasks_interval(run)
    return sorted(set(range(every, run.steps + 1, every)) | {run.steps})


def curve_points(run: Run) -> List[int]:
    """The steps of the run's curve once it is trained and scored: in training, and by its score stage."""
    return sorted(set(training_steps(run)) | set(scored_steps(run, score_every(run.family), run.family.keep_last)))


HF_CACHE_NOTE = ("Rank 0 loads the tasks when a run starts, so they must be in the HF datasets cache of the compute "
                 "nodes, or every training job fails at once: run eval/run.py --tasks {tasks} once where the hub is "
                 "reachable (the same HF_HOME), then export HF_DATASETS_OFFLINE=1 before submitting (eval/run.py's "
                 "docstring; the check before submitting does not look at the cache)")


def curve_note(exp: Experiment) -> str:
    """One line for the dry run: how each curve gets its points and how many, and what scoring during training
    needs."""
    runs = [RUNS[k] for k in curve_runs(exp)]
    fams = list(dict.fromkeys((r.family.save_interval, r.family.keep_last, score_every(r.family)) for r in runs))
    how = "; ".join(f"a checkpoint every {si} steps, keep_last {k}, --every {format_tokens(n)}" for si, k, n in fams)
    points = [len(curve_points(r)) for r in runs]
    first = runs[0]
    trained = [r for r in runs if scored_in_training(r)]
    if not trained:  # smoke: scored after training only
        full = [len(scored_steps(r, score_every(r.family), None)) for r in runs]
        interval = " / ".join(dict.fromkeys(str(family_interval(r.family)) for r in runs))
        return (f"curves (score:* and figure:* stages; recipes: {how}): not scored during training, so each run has "
                f"{_span(points)} points, the checkpoints keep_last leaves (e.g. {first.key} at step"
                f"{'s' * (len(curve_points(first)) > 1)} {_steps(curve_points(first))}), not the {_span(full)} of a "
                f"full curve. For the curves, train with --eval_tasks {exp.eval_tasks} --eval_tasks_interval "
                f"{interval} (scores go into metrics.csv, which the figures read too)")
    intervals: Dict[int, List[str]] = {}
    for r in trained:
        intervals.setdefault(eval_tasks_interval(r), []).append(r.key)
    every = " / ".join(f"{k}" + (f" ({', '.join(keys)})" if len(intervals) > 1 else "") for k, keys in
                       intervals.items())
    tasks = list(dict.fromkeys(r.family.eval_tasks for r in trained))
    after = "" if tasks == [exp.eval_tasks] else f" (on {exp.eval_tasks})"
    example = next(r for r in runs if r in trained)
    return (f"curves (score:* and figure:* stages; recipes: {how}): each run is scored on --eval_tasks "
            f"{' / '.join(tasks)} during training, every {every} steps and at its last step (eval_tasks_interval, "
            f"scripts/paper_runs.py), into its metrics.csv; after training its score:* stage scores{after} the last "
            f"keep_last checkpoints and final/, and the figures read both: {_span(points)} points a run (e.g. "
            f"{example.key} at steps {_steps(curve_points(example))}). "
            + HF_CACHE_NOTE.format(tasks=exp.eval_tasks))


def _steps(steps: List[int]) -> str:
    shown = steps if len(steps) <= 5 else steps[:2] + ["..."] + steps[-2:]
    return ", ".join(map(str, shown))


def _span(values: List[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _with_curve_notes(exps: Dict[str, Experiment]) -> Dict[str, Experiment]:
    return {name: dataclasses.replace(e, expected=e.expected + (curve_note(e),)) for name, e in exps.items()}


EXPERIMENTS: Dict[str, Experiment] = _with_curve_notes(_experiments())
