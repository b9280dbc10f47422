"""The paper's training runs as data: every run (RUNS), the families of target sizes they belong to, the sweeps
they are built from (partial stacking, growth timing, growth factor), their FLOPs budgets (`budget`) and how often
each is scored on the paper's tasks during training (`eval_tasks_interval`: the points of its curves).
scripts/paper_experiments.py groups them into experiments; `scripts/reproduce.py` turns those into recipes, stages
and jobs, and its docstring explains the accounting. Edit the table here, then `python scripts/reproduce.py
write-configs`.
"""


import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lit_gpt.config import Config, param_count  # noqa: E402
from lit_gpt.flops import flops_per_token, growth_factor  # noqa: E402

B = 10 ** 9
SEQ = 2048
CONFIG_DIR = Path("pretrain/configs/paper")
DEFAULT_OUT = "out/paper"


class UsageError(ValueError):
    """Bad input: reported as one `error:` line, exit status 1."""


# ------------------------------------------------------------------------------------------------ the run table


@dataclass(frozen=True)
class Family:
    """Settings every run of one target size shares (paper §5.3, Tab. 1)."""

    name: str  # output subdirectory and recipe prefix
    target: str  # config name or lit_config.json path
    lr: float  # the target's peak LR; min_lr is lr / 10
    micro: int  # the target's micro-batch per GPU
    scratch_tokens: int  # the budget T of the experiment's scratch baseline
    batch: int = 1024  # sequences of 2048 tokens: 2M tokens per step
    warmup: int = 3000
    horizon: int = 300_000  # the long cosine the paper stopped early on (§5.3, §7 Limitations)
    eval_interval: int = 1000
    eval_iters: int = 100
    save_interval: int = 5000
    keep_last: int = 2  # step-* checkpoints kept per run (~16 GB each at 1.1B, ~71 GB at 7B): the newest and one more
    seq: int = SEQ  # tokens per sequence
    precision: str = "bf16-mixed"
    train_data: str = "data/slimpajama/train"  # prepare_slimpajama.py output; its tokenizer in ../tokenizer
    val_data: str = "data/slimpajama/validation"
    # pretrain --eval_tasks: the tasks every run is scored on during training, every `eval_tasks_interval(run)`
    # steps (the curves' points; None: not scored during training, only by the score stages after it)
    eval_tasks: Optional[str] = "paper"


@dataclass(frozen=True)
class Grow:
    base: str  # key of the base run
    op: str  # python -m growth grow/learn --op
    layers: Optional[str] = None
    noise: float = 0.0
    learn_steps: int = 100  # G_learn's operator fit: LiGO's ~100 steps; the paper does not say (reference §3.3)
    split: Optional[str] = None  # direct-width's --split
    init: Optional[str] = None  # --init of the operators that create random parameters
    # the paper's growth factor (its d/g accounting), base run's model -> grown run's: `_grown` computes it from
    # the two configs (lit_gpt.flops.growth_factor), so that no run's g can disagree with its models
    g: Optional[float] = None

    def flags(self) -> List[str]:
        """The operator options of its `python -m growth grow/learn` command."""
        out = ["--layers", self.layers] if self.layers else []
        out += ["--noise", str(self.noise)] if self.noise else []
        out += ["--split", self.split] if self.split else []
        return out + (["--init", self.init] if self.init else [])


@dataclass(frozen=True)
class Run:
    key: str  # "<family>-<name>": recipe pretrain/configs/paper/<key>.yaml, output <out>/<family>/<name>
    family: Family
    name: str
    model: str
    tokens: int  # max_tokens
    lr: float
    micro: int
    about: str
    grow: Optional[Grow] = None
    extra: Tuple[Tuple[str, object], ...] = ()  # more TrainArgs fields
    snapshot: Optional[int] = None  # also export the weights at this many tokens (a mid-run checkpoint)
    recipe: Optional[str] = None  # a stage of this `python -m growth stages` recipe, not a recipe of its own
    convention: Optional[str] = None  # lit_gpt/flops.py convention its tokens match the scratch budget in, if any

    @property
    def steps(self) -> int:
        # what pretrain/tinyllama.py trains: at least one step, none for max_tokens 0 (a d = 0 base)
        return max(1 if self.tokens else 0, self.tokens // (self.family.batch * self.family.seq))

    @property
    def trained_tokens(self) -> int:
        return self.steps * self.family.batch * self.family.seq

    @property
    def fpt(self) -> float:
        """Training FLOPs per token of this run's model at its family's sequence length."""
        return fpt(self.model, self.family.seq)


F11 = Family("1.1b", "24L2048H", 3e-4, 8, 100 * B)
F410 = Family("410m", "24L1024H", 6e-4, 16, 750 * B)
F3 = Family("3b", "tiny_LLaMA_3B", 1.6e-4, 4, 300 * B)
F7 = Family("7b", "tiny_LLaMA_7B", 1e-4, 2, 300 * B)
# 8 -> 24 layer ablations (App. H.2 Fig. 35, App. I.2): the GQA 1.1B of the noise study, compared over 40B tokens
F8 = Family("1.1b", "tiny_LLaMA_1.1B", 3e-4, 8, 40 * B)
SMALL_DIR = CONFIG_DIR / "small"
SMALL_CONFIGS = {  # ~110M / 52M: the 1.1B pair's shape (MHA, head size 64, FFN 2.75 d, 6 -> 24 layers) at width 512
    f"{n}L512H": dict(name=f"{n}L512H", block_size=2048, vocab_size=32000, padding_multiple=64, n_layer=n, n_head=8,
                      n_embd=512, n_query_groups=8, intermediate_size=1408, rotary_percentage=1.0,
                      parallel_residual=False, bias=False, _norm_class="FusedRMSNorm", norm_eps=1e-5,
                      _mlp_class="LLaMAMLP")
    for n in (24, 6)}
# minutes on CPU, on the embedded sample (scripts/prepare_sample_data.py): checks a cluster set-up, not the claim
# Not scored during training (eval_tasks None): tests/test_slurm.py and tests/test_reproduce.py train it for real, at
# the limit of the suite's time; its curves come from the score stages.
FSMOKE = Family("smoke", "4L128H", 3e-3, 8, 81_920, batch=8, warmup=4, horizon=10_000, eval_interval=10, eval_iters=4,
                save_interval=10, seq=256, precision="32-true", train_data="data/sample/packed",
                val_data="data/sample/packed", eval_tasks=None)
# one GPU: 0.5M-token batches; the paper's schedule shape scaled to the shorter run (warm-up, horizon 6x the run)
FSMALL = Family("small", str(SMALL_DIR / "24L512H.json"), 6e-4, 16, 5 * B, batch=256, warmup=600, horizon=60_000,
                eval_interval=200, eval_iters=50, save_interval=1000)

BASE_NOTE = ("The paper gives a base LR only for 6L2048H (1e-3 with a 3e-4 target); every base here uses the same "
             "10/3 x its target's LR, capped at 1e-3 and rounded to one digit.")
DATA_NOTE = ("skip_tokens is unset on purpose: the run skips the tokens its base read (growth.json) and continues on "
             "fresh data; the official g_stack.sh re-read about 7.9B of them (reference §5.3).")


OFFICIAL_INIT = ("New parameters use --init official, the released code's fan-in init (new attn.proj std 1.4e-2 at "
                 "24L2048H vs upstream's 9.2e-4): the paper's Fig. 3 came from that code (reference §2).")
LEMON_SPLIT = ("--split lemon: LEMON's uneven fan-in split, which the paper says it uses to break the copies' "
               "symmetry (App. A.1.1); with the released code's even split the copies get equal gradients and never "
               "diverge.")


def base_lr(family: Family) -> float:
    return float(f"{min(1e-3, family.lr * 10 / 3):.0e}")


def format_tokens(n: float) -> str:
    for scale, suffix in ((B, "B"), (10 ** 6, "M"), (10 ** 3, "K")):
        if n >= scale:
            return f"{n / scale:.4g}{suffix}"
    return f"{n:g}"


def _base(family: Family, name: str, model: str, tokens: int, micro: int, why: str) -> Run:
    about = (f"Base for growth: {model} from scratch on d = {format_tokens(tokens)} tokens, on the same long cosine as "
             f"every run, so its weights at d are those the paper grew (its base_model.sh kept step 5000, ~10.5B). "
             f"{why} {BASE_NOTE}")
    return Run(f"{family.name}-{name}", family, name, model, tokens, base_lr(family), micro, about)


def _scratch(family: Family, name: str = "scratch", tokens: Optional[int] = None, model: Optional[str] = None) -> Run:
    tokens = tokens or family.scratch_tokens
    about = (f"Baseline: {model or family.target} from scratch on {format_tokens(tokens)} tokens, stopped early on the "
             f"{family.horizon:,}-step cosine as the paper's runs were (§5.3, §7 Limitations).")
    return Run(f"{family.name}-{name}", family, name, model or family.target, tokens, family.lr, family.micro, about)


OP_TEXT = {"stack": "G_stack (G↑direct, whole-model stacking)", "zero-depth": "G↑zero",
           "random-depth": "G↑random", "learn-depth": "G↑learn", "direct-width": "G→direct",
           "zero-width": "G→zero", "random-width": "G→random", "learn-width": "G→learn"}


def _grown(family: Family, name: str, grow: Grow, base: Run, tokens: Optional[int] = None, why: str = "",
           extra: Tuple[Tuple[str, object], ...] = (), snapshot: Optional[int] = None, model: Optional[str] = None,
           recipe: Optional[str] = None, convention: Optional[str] = "paper") -> Run:
    """A grown run; without `tokens`, D follows the paper's convention d/g + D = T (e.g. 10B/4 + 97.5B = 100B).
    `convention` names the lit_gpt/flops.py convention in which its budget equals the scratch run's (None: none)."""
    grow = dataclasses.replace(grow, g=growth_factor(load_config(base.model), load_config(model or family.target)))
    if tokens is None:
        tokens = round(family.scratch_tokens - base.tokens / grow.g)
    how = f"`python -m growth {'learn' if grow.op.startswith('learn') else 'grow'} --op {grow.op}" + "".join(
        f" {flag}" for flag in grow.flags()) + "`"
    about = (f"{OP_TEXT.get(grow.op, grow.op)}: {model or family.target} grown from {base.key} ({base.model}, "
             f"d = {format_tokens(base.tokens)}) by {how}, then D = {format_tokens(tokens)} tokens. {why} Fresh AdamW "
             f"and a new warm-up, as the paper restarts both at growth. {DATA_NOTE}").replace("  ", " ")
    if convention:
        about += f" Budget convention: {convention} (scratch-equivalent tokens = {family.scratch_tokens:,})."
    return Run(f"{family.name}-{name}", family, name, model or family.target, tokens, family.lr, family.micro, about,
               grow, extra, snapshot, recipe, convention)


def _runs() -> Dict[str, Run]:
    runs: List[Run] = []
    add = runs.append

    # ---- 1.1B: operator grid (Fig. 3, Tab. 3), partial stacking, timing, factor, gradual
    b6 = _base(F11, "base-6L2048H", "6L2048H", 10 * B, 32, "Depth base of the 1.1B target, g = 4 (§3.1).")
    bw = _base(F11, "base-24L1024H", "24L1024H", 10 * B, 16,
               "Width base of the 1.1B target: the same 308M non-embedding parameters, head size 64 kept, g = 4.")
    add(b6), add(bw), add(_scratch(F11))
    add(_grown(F11, "stack", Grow(b6.key, "stack"), b6, why="d/g + D = 2.5B + 97.5B = the cost of 100B scratch "
               "tokens in the paper's accounting (§3.1, §5.4)."))
    add(_grown(F11, "zero-depth", Grow(b6.key, "zero-depth", layers="interleave"), b6,
               why="Interleaved order (112233...) as the official G_zero_depthwise.py does (reference §3.4)."))
    add(_grown(F11, "random-depth", Grow(b6.key, "random-depth", init="official"), b6,
               extra=(("mask_ramp_steps", 5000),),
               why="New layers on top, their residual branches ramped 0 -> 1 over 5000 steps (the official code's "
                   f"grow_step; the paper does not give it). {OFFICIAL_INIT}"))
    add(_grown(F11, "learn-depth", Grow(b6.key, "learn-depth"), b6,
               why="The operator is fitted for 100 steps first (LiGO's count; the paper gives none)."))
    add(_grown(F11, "direct-width", Grow(bw.key, "direct-width", split="lemon"), bw,
               why=f"Neuron splitting. {LEMON_SPLIT}"))
    add(_grown(F11, "zero-width", Grow(bw.key, "zero-width", init="official"), bw,
               why=f"New fan-out rows zero (function-preserving). {OFFICIAL_INIT}"))
    add(_grown(F11, "random-width", Grow(bw.key, "random-width", init="official"), bw,
               extra=(("mask_ramp_steps", 5000),),
               why=f"MSG masks ramped in three phases of 5000 steps (the official default). {OFFICIAL_INIT}"))
    add(_grown(F11, "learn-width", Grow(bw.key, "learn-width"), bw,
               why="The operator is fitted for 100 steps first (LiGO's count; the paper gives none)."))
    for spec in PARTIAL[1:]:
        add(_grown(F11, "partial-" + spec.replace("*", "x"), Grow(b6.key, "stack", layers=spec), b6,
                   why=f"Partial stacking {spec} (App. H.3, Tab. 5); 123456*4 is G_stack itself (1.1b-stack)."))
    for d in TIMING_D:
        if d == 10 * B:
            continue  # 1.1b-base-6L2048H and 1.1b-stack
        label = "d0" if d == 0 else f"d{d // B}B"
        if d == 0:  # max_tokens 0: the run exports its initial weights
            base = _base(F11, f"base-6L2048H-{label}", "6L2048H", 0, 32,
                         "Growth timing d = 0: no training, i.e. stacking an untrained model (§4.5).")
        else:
            base = _base(F11, f"base-6L2048H-{label}", "6L2048H", d, 32, "Growth-timing sweep (§4.2 Fig. 8, §7).")
        add(base)
        add(_grown(F11, f"stack-{label}", Grow(base.key, "stack"), base,
                   why=f"Growth timing d = {format_tokens(d) if d else 0}: d/4 + D = 100B (IsoFLOP with the scratch "
                       "baseline)."))
    for layers in FACTOR_11:
        g = growth_factor(load_config(f"{layers}L2048H"), load_config(F11.target))
        base = _base(F11, f"base-{layers}L2048H", f"{layers}L2048H", 10 * B, 16 if layers > 6 else 32,
                     f"Growth-factor sweep, g = {g:g} (§4.2, App. G.2 Figs. 29-30).")
        add(base)
        add(_grown(F11, f"stack-g{g:g}", Grow(base.key, "stack"), base,
                   why=f"Growth factor g = {g:g}: d/g + D = 100B."))
    # 8 -> 24 layers (g = 3 in non-embedding parameters): interpolation and noise, over 40B tokens
    b8 = _base(F8, "base-8L", "tiny_LLaMA_400M_like1.1B", 10 * B, 32,
               "Base of the 8 -> 24 layer ablations (App. H.2 Fig. 35, App. I.2).")
    add(b8)
    for name, grow, why in (
            ("stack-8L", Grow(b8.key, "stack"), "Cyclic G_stack, R_c = 21/23; the no-noise control."),
            ("interleave-8L", Grow(b8.key, "stack", layers="interleave"),
             "Interpolation (112233...), R_c = 7/23 (App. H.2 Fig. 35)."),
            ("stack-8L-noise0.2", Grow(b8.key, "stack", noise=0.2), "Noise alpha = 0.2 (§5.2, App. I.2)."),
            ("stack-8L-noise0.5", Grow(b8.key, "stack", noise=0.5), "Noise alpha = 0.5, above the 20% the paper "
                                                                       "finds harmful.")):
        add(_grown(F8, name, grow, b8, tokens=40 * B, why=why + " All 8 -> 24 runs train D = 40B.", convention=None))
    for name, noise in (("direct-width-40B", 0.0), ("direct-width-40B-noise0.2", 0.2)):
        add(_grown(F11, name, Grow(bw.key, "direct-width", noise=noise, split="lemon"), bw, tokens=40 * B,
                   why=f"Noise ablation of G→direct, alpha = {noise}, compared after 40B tokens (§5.2). "
                       f"{LEMON_SPLIT}", convention=None))
    # gradual stacking: 6L -> 12L -> 24L, each stage trained on 10B (the text; Fig. 33's legend says 50B)
    g6 = _base(F11, "gradual/6L", "6L2048H", 10 * B, 32, "Gradual stacking, stage 1.")
    g12 = _grown(F11, "gradual/12L", Grow(g6.key, "stack", layers="top"), g6, tokens=10 * B, model="12L2048H",
                 convention=None,
                 why="Gradual stacking, stage 2 (doubling: the top block is the whole stack).", recipe="gradual_stack")
    g12 = dataclasses.replace(g12, lr=base_lr(F11), micro=16)
    g24 = _grown(F11, "gradual/24L", Grow(g12.key, "stack", layers="top"), g12, tokens=92_500_000_000,
                 why="Gradual stacking, stage 3: 10B/4 + 10B/2 + 92.5B = 100B scratch-equivalent tokens.",
                 recipe="gradual_stack")
    add(dataclasses.replace(g6, recipe="gradual_stack")), add(g12), add(g24)

    # ---- scaling: 410M (750B), 3B (300B), 7B (300B), d = 10B, g = 4 (§4.1)
    for family, base_model, base_micro in ((F410, "6L1024H", 32), (F3, "tiny_LLaMA_750M_like3B", 16),
                                           (F7, "tiny_LLaMA_1.7B_like7B", 8)):
        layers = Config.load(base_model).n_layer
        base = _base(family, f"base-{layers}L", base_model, 10 * B, base_micro, "Scaling runs: d = 10B, g = 4 (§4.1).")
        add(base), add(_scratch(family))
        why = (f"d/g + D = 2.5B + {format_tokens(family.scratch_tokens - 2.5 * B)} = "
               f"{format_tokens(family.scratch_tokens)} (§4.1).")
        if family is F410:
            why += (" 750B tokens pass SlimPajama's ~600B and the 300k-step horizon: the stream wraps and the LR "
                    "ends at min_lr.")
        add(_grown(family, "stack", Grow(base.key, "stack"), base, why=why,
                   snapshot=130 * B if family is F7 else None))
    for layers, model in FACTOR_3B.items():
        g = growth_factor(load_config(model), load_config(F3.target))
        base = _base(F3, f"base-{layers}L", model, 10 * B, 32,
                     f"Growth-factor sweep at 3B, g = {g:g} (App. G.2 Figs. 31-32).")
        add(base)
        add(_grown(F3, f"stack-g{g:g}", Grow(base.key, "stack"), base, why=f"Growth factor g = {g:g}: d/g + D = 300B "
                   "(the budget of the 3B scaling run; the paper does not state the sweep's)."))

    # ---- one GPU, hours: the cheapest real check of the claim
    sb = _base(FSMALL, "base-6L512H", str(SMALL_DIR / "6L512H.json"), 500_000_000, 16,
               "d = 10% of the scratch budget, as the paper's 10B of 100B.")
    add(sb), add(_scratch(FSMALL))
    exact = small_exact_tokens(sb)
    cfg = load_config(FSMALL.target)
    embedding_share = 2 * cfg.padded_vocab_size * cfg.n_embd / param_count(cfg)
    ratio = fpt(sb.model) / fpt(FSMALL.target) * 4
    add(_grown(FSMALL, "stack", Grow(sb.key, "stack"), sb, tokens=exact,
               why=f"D = 5B - {format_tokens(5 * B - exact)} (rounded to whole steps): the base's exact FLOPs, so "
                   f"G_stack and scratch cost the same. Embeddings are {embedding_share:.0%} of this model, so the "
                   f"base costs {ratio:.2f}x the paper's d/g estimate.", convention="exact"))

    # ---- the whole pipeline in minutes on CPU (no paper number): base 10 steps, G_stack g = 2, scratch 40 steps
    smoke = _base(FSMOKE, "base-2L128H", "2L128H", 20_480, 8, "The smoke test's base: 10 steps on the sample data.")
    add(smoke), add(_scratch(FSMOKE))
    add(_grown(FSMOKE, "stack", Grow(smoke.key, "stack"), smoke, why="d/g + D = 10,240 + 71,680 = 81,920 tokens."))
    return {r.key: r for r in runs}


PARTIAL = ["123456*4", "12-3456*5-56", "12-345*7-6", "123-456*7", "1234-56*10", "12-34*10-56", "1-234*7-56",
           "123*7-456"]
TIMING_D = [0, 1 * B, 5 * B, 10 * B, 20 * B, 50 * B]  # §4.2 Fig. 8, App. G.1
FACTOR_11 = [12, 3, 1]  # base layers of 24L2048H's g = 2, 8, 24; g = 4 is 1.1b-stack
# base layers: model of tiny_LLaMA_3B's g = 8, 16, 32; g = 4 is 3b-stack
FACTOR_3B = {4: "tiny_LLaMA_375M_like3B", 2: "tiny_LLaMA_190M_like3B", 1: "tiny_LLaMA_80M_like3B"}


def small_exact_tokens(base: Run) -> int:
    """D such that FLOPs(base, d) + FLOPs(target, D) = FLOPs(target, T), rounded down to whole steps."""
    fam = base.family
    per_target = fpt(fam.target)
    d_equiv = base.trained_tokens * fpt(base.model) / per_target
    step = fam.batch * SEQ
    return int((fam.scratch_tokens - d_equiv) // step * step)


_FPT_CACHE: Dict[Tuple[str, int], float] = {}


def load_config(model: str) -> Config:
    small = Path(model)
    if small.parent == SMALL_DIR and small.stem in SMALL_CONFIGS:  # before write-configs has written the file
        return Config(**SMALL_CONFIGS[small.stem])
    return Config.load(model)


def fpt(model: str, seq: int = SEQ) -> float:
    if (model, seq) not in _FPT_CACHE:
        _FPT_CACHE[(model, seq)] = flops_per_token(load_config(model), seq)
    return _FPT_CACHE[(model, seq)]


def non_embedding(model: str) -> int:
    c = load_config(model)
    return param_count(c) - 2 * c.padded_vocab_size * c.n_embd


RUNS: Dict[str, Run] = _runs()


# ------------------------------------------------------------------------------------------------ budgets


@dataclass
class Budget:
    run: Run
    flops: float  # this run's own training (and operator fit) FLOPs
    total: float  # with its base's (recursively): C = C_base + C_grown
    paper_tokens: float  # scratch-equivalent tokens, the paper's d/g accounting
    exact_tokens: float  # total / flops_per_token(target)


def budget(run: Run) -> Budget:
    own = run.trained_tokens * run.fpt
    if not run.grow:
        return Budget(run, own, own, run.trained_tokens, run.trained_tokens)
    base = budget(RUNS[run.grow.base])
    if run.grow.op.startswith("learn"):
        own += run.fpt * run.grow.learn_steps * 4 * run.family.seq  # the fit: micro_batch_size 4 sequences per step
    total = base.total + own
    return Budget(run, own, total, base.paper_tokens / run.grow.g + run.trained_tokens, total / run.fpt)


# ------------------------------------------------------------------------------------------------ curves

CURVE_POINTS = 16  # at most this many downstream scorings along a run, its last step included


def scorings(steps: int, interval: int) -> int:
    """How often a run of `steps` steps is scored with --eval_tasks_interval `interval`: at every multiple of it
    and at the last step (pretrain/downstream.py)."""
    return steps // interval + (steps % interval != 0)


def family_interval(family: Family) -> int:
    """Steps between the family's downstream scorings: the fewest whole checkpoint spans (save_interval) that score
    a run of the family's scratch budget at most CURVE_POINTS times. 1.1B: 5000, every checkpoint (10 points over
    100B tokens); 410M: 25000 (15 over 750B); 3B and 7B: 10000 (15 over 300B); small: 1000 (10 over 5B). Also the
    --every of the score stages (paper_experiments.score_every)."""
    steps = family.scratch_tokens // (family.batch * family.seq)
    spans = 1
    while scorings(steps, spans * family.save_interval) > CURVE_POINTS:
        spans += 1
    return spans * family.save_interval


def scored_in_training(run: Run) -> bool:
    """Whether the run's recipe scores it on its family's eval_tasks during training: every family but smoke's,
    every run that trains at least one step (a d = 0 base has nothing to score)."""
    return bool(run.family.eval_tasks and run.steps)


def grown_from() -> Set[str]:
    """The bases: the runs some other run (or gradual-stacking stage) grows from."""
    return {r.grow.base for r in RUNS.values() if r.grow}


def eval_tasks_interval(run: Run) -> int:
    """The run's --eval_tasks_interval, so that each curve has about 10-16 points (9 for the 1.1B runs a little
    short of the budget: d = 50B's G_stack, gradual stacking's last stage).

    A run the figures plot (every run but the bases): the shortest interval that is a whole multiple or a whole
    fraction of its checkpoint interval (save_interval) and scores the run at most CURVE_POINTS times. For a run of
    about its family's budget that is `family_interval` (1.1B 5000: 9-10 points; 410M 25000, 3B/7B 10000: 15;
    small 1000: 10); the 40B-token runs of the 1.1B ablations (noise, interpolation), which 5000 would score 4
    times, get 1250 (16 points). Checkpoint-aligned (a fraction scores every checkpoint's step, a multiple only
    checkpoint steps), so where the score stage scores a checkpoint again its record replaces the point logged in
    training (eval/plot.py: a record wins at a step both have) instead of adding one a few steps beside it.

    A base is scored at its family's interval, mostly at its last step only: its curve is in no figure, and each
    scoring idles all the job's GPUs but rank 0's."""
    if run.key in grown_from() or not run.steps:
        return family_interval(run.family)
    every = run.family.save_interval
    fractions = sorted(every // k for k in range(1, every + 1) if every % k == 0)
    interval = next((i for i in fractions if scorings(run.steps, i) <= CURVE_POINTS), None)
    if interval is None:
        spans = 2
        while scorings(run.steps, spans * every) > CURVE_POINTS:
            spans += 1
        interval = spans * every
    return interval
