"""Plan a G_stack run from the paper's guidelines (reference stacking-paper.md §4.1, §5.1, §5.4, §7).

Given the target's parameter count N and the compute budget C (or the scratch token budget D, C = 6 N D):

* growth timing (Eq. 2): log10(d) = 0.88 log10(N) + 163.27 / log10(C) - 5.74, d = tokens to train the base
  before stacking. Fitted at g = 4 on targets of 410M, 1.1B and 3B; with C = 6 N D it reproduces Table 4.
* growth factor: g = 4, the paper's recommendation (optimum between 2 and 4). Eq. 50,
  log10(g) = 1.01 log10(N) - 29.88 / log10(C) - 7.36, is printed for reference only: the authors call that
  fit "mediocre" (too little data) and recommend g = 4 instead.
* configs: registered targets close to N that have a registered base of the same layer shape with
  n_layer = target n_layer / g (so the base grows into the target by copying layers).
* FLOPs split: C = C_base + C_target in the two conventions of lit_gpt/flops.py: exact (each config's own FLOPs
  per token at --seq_len, attention and embeddings included) and the paper's (C = 6 N D, the base costs d / g
  target tokens; §5.4: at g = 4, d = 10B base tokens + D' = 97.5B target tokens cost as much as 100B scratch
  tokens). Eq. 2 always takes the paper's C = 6 N D, the convention it was fitted in.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from lit_gpt.cli import ArgumentParser, parse_count  # noqa: F401 - shared with the training flags; also this module's API
from lit_gpt.config import param_count  # noqa: F401 - also part of this module's API
from lit_gpt.flops import CONVENTIONS, PAPER_FLOPS_PER_PARAM

DEFAULT_G = 4
FIT_N_RANGE = (410e6, 3e9)  # the targets Eq. 2 was fitted on (App. G.1)
_ALTERNATIVE_RATIO = 1.25  # the text lists other pairs whose target is within this factor of N (JSON: all)
_EQ2 = "log10(d) = 0.88 log10(N) + 163.27 / log10(C) - 5.74"
_EQ50 = "log10(g) = 1.01 log10(N) - 29.88 / log10(C) - 7.36"
_EQ50_SHORT = 'the authors call this fit "mediocre" (too little data) and recommend g = 4 instead'
_EQ50_WARNING = ('the authors call this fit "mediocre" (too little data: 1.1B and 3B only) and recommend g = 4 '
                 'instead; the optimum lies between 2 and 4')


# ----------------------------------------------------------------------------------------------- numbers


def format_count(x: float, digits: int = 3, zeros: bool = True) -> str:
    """`digits` significant digits with a K/M/B/T suffix: 11.1B, 6.58B, 13.0B, 100B, 2.00T, 439M; plain below
    1000. zeros=False drops trailing zeros (for echoing inputs: 2T, 1.1B)."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    r = float(f"{x:.{digits}g}")  # round first, so 999.6M becomes 1.00B and not 1000M
    scale, suffix = 1, ""
    for s, exponent in (("T", 12), ("B", 9), ("M", 6), ("K", 3)):
        if abs(r) >= 10 ** exponent:
            if abs(r) >= 10 ** (exponent + 3):  # beyond 999T
                return format_sci(x, digits)
            scale, suffix = 10 ** exponent, s
            break
    text = f"{r / scale:{'#' if zeros else ''}.{digits}g}".rstrip(".")
    return text + suffix


def format_sci(x: float, digits: int = 3) -> str:
    """8.18e20 (no '+', no leading exponent zeros)."""
    mantissa, _, exponent = f"{x:.{digits - 1}e}".partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    return f"{mantissa}e{int(exponent)}"


def _format_ratio(r: float) -> str:
    return f"{r:.4g}" if r < 1000 else format_sci(r)


# ----------------------------------------------------------------------------------------------- the fits


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_budget(C: float) -> None:
    _check_positive(C=C)
    if C <= 1:
        raise ValueError(f"C = {format_sci(C)} FLOPs is too small: the fits divide by log10(C)")


def _power_of_ten(exponent: float, what: str) -> float:
    if abs(exponent) > 300:  # C just above 1 FLOP: 1 / log10(C) explodes
        raise ValueError(f"the fit gives {what} = 10^{exponent:.3g}: the budget C is far outside its range")
    return 10 ** exponent


def growth_timing(N: float, C: float) -> float:
    """Eq. 2: the tokens d to train the base before stacking, for a target of N parameters and C total FLOPs."""
    _check_positive(N=N)
    _check_budget(C)
    return _power_of_ten(0.88 * math.log10(N) + 163.27 / math.log10(C) - 5.74, "d")


def growth_factor_fit(N: float, C: float) -> float:
    """Eq. 50 (App. F), a preliminary fit the authors call mediocre; the paper recommends g = 4 instead."""
    _check_positive(N=N)
    _check_budget(C)
    return _power_of_ten(1.01 * math.log10(N) - 29.88 / math.log10(C) - 7.36, "g")


def budget_flops(N: float, D: float) -> float:
    """C = 6 N D."""
    _check_positive(N=N, D=D)
    return PAPER_FLOPS_PER_PARAM * N * D


# ----------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class ConfigPair:
    target: str
    target_layers: int
    target_params: int
    base: str
    base_layers: int
    base_params: int
    ratio: float  # target_params / N


def _layer_shape(config: Any) -> tuple:
    """Everything but the name and the depth: equal shapes mean the base grows into the target by stacking."""
    fields = asdict(config)
    return tuple(sorted((k, v) for k, v in fields.items() if k not in ("name", "n_layer")))


def suggest_configs(N: float, g: int = DEFAULT_G, registry: Optional[Mapping[str, dict]] = None,
                    max_ratio: float = 2.0) -> List[ConfigPair]:
    """Registered (target, base) pairs for depth growth by g, best first: the target has the base's layer shape
    and g times its layers, and its parameter count is within a factor `max_ratio` of N (closest in log scale
    first). Empty if no registered pair fits."""
    from lit_gpt.config import Config, name_to_config

    _check_positive(N=N)
    if not isinstance(g, int) or g < 2:
        raise ValueError(f"g must be an integer >= 2, got {g!r}")
    configs = {name: Config(**cfg) for name, cfg in (name_to_config if registry is None else registry).items()}
    by_shape: Dict[tuple, Dict[int, str]] = {}
    for name, config in configs.items():
        by_shape.setdefault(_layer_shape(config), {}).setdefault(config.n_layer, name)
    pairs = []
    for name, config in configs.items():
        if config.n_layer % g:
            continue
        base = by_shape[_layer_shape(config)].get(config.n_layer // g)
        if base is None:
            continue
        target_params = param_count(config)
        ratio = target_params / N
        if 1 / max_ratio <= ratio <= max_ratio:
            pairs.append(ConfigPair(name, config.n_layer, target_params, base, configs[base].n_layer,
                                    param_count(configs[base]), ratio))
    return sorted(pairs, key=lambda p: (abs(math.log(p.ratio)), p.target))


# ----------------------------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class Split:
    convention: str  # "exact" or "paper" (lit_gpt/flops.py)
    base_flops_per_token: float  # exact: flops_per_token(base, T); paper: 6 N / g
    target_flops_per_token: float  # exact: flops_per_token(target, T); paper: 6 N
    base_tokens: float  # d
    base_flops: float
    base_share: float  # of C
    base_scratch_tokens: float  # C_base / target FLOPs per token: target tokens the base stage costs
    target_tokens: float  # D', tokens left for the target after growth
    target_flops: float
    target_share: float
    total_flops: float  # C
    scratch_tokens: float  # C / target FLOPs per token


def flops_split(convention: str, base_fpt: float, target_fpt: float, d: float, C: float,
                d_given: bool = False) -> Split:
    """Splits the budget C (FLOPs) between the base stage (d tokens at `base_fpt` FLOPs each) and the target stage,
    C_base + C_target = C, in one convention (lit_gpt/flops.py): `paper_split` and `exact_split` give the FLOPs
    per token. Raises ValueError when the base stage alone uses the whole budget."""
    _check_positive(base_fpt=base_fpt, target_fpt=target_fpt, C=C)
    if not (isinstance(d, (int, float)) and math.isfinite(d) and d >= 0):
        raise ValueError(f"d must be a number >= 0, got {d!r}")
    base_flops = base_fpt * d
    target_flops = C - base_flops
    if target_flops <= 0:
        raise ValueError(f"the base stage alone ({format_count(d)} tokens at {format_sci(base_fpt)} FLOPs each: "
                         f"{format_sci(base_flops)} FLOPs) costs {_format_ratio(base_flops / C)}x the whole "
                         f"budget C = {format_sci(C)}; "
                         + ("lower --base_tokens or raise the budget" if d_given
                            else "Eq. 2 does not fit budgets this small: give --base_tokens"))
    return Split(convention=convention, base_flops_per_token=base_fpt, target_flops_per_token=target_fpt,
                 base_tokens=d, base_flops=base_flops, base_share=base_flops / C,
                 base_scratch_tokens=base_flops / target_fpt, target_tokens=target_flops / target_fpt,
                 target_flops=target_flops, target_share=target_flops / C, total_flops=C,
                 scratch_tokens=C / target_fpt)


def paper_split(N: float, C: float, d: float, g: float = DEFAULT_G, d_given: bool = False) -> Split:
    """The paper's accounting (§5.4): C = 6 N D, the base has n = N / g parameters, so d base tokens cost d / g
    target tokens (at g = 4, d = 10B and D' = 97.5B cost 100B scratch tokens)."""
    _check_positive(N=N, g=g)
    return flops_split("paper", PAPER_FLOPS_PER_PARAM * N / g, PAPER_FLOPS_PER_PARAM * N, d, C, d_given)


def exact_split(target: Any, base: Any, seq_len: int, d: float, C: Optional[float] = None,
                D: Optional[float] = None, d_given: bool = False) -> Split:
    """Exact FLOPs (`lit_gpt.flops.flops_per_token` of both configs at `seq_len`-token sequences, attention and
    embeddings included). The budget is C FLOPs, or D scratch tokens of the target (C = its FLOPs per token x D)."""
    from lit_gpt.flops import flops_per_token

    target_fpt = flops_per_token(target, seq_len)
    return flops_split("exact", flops_per_token(base, seq_len), target_fpt, d, C if C is not None else target_fpt * D,
                       d_given)


# ----------------------------------------------------------------------------------------------- the plan


def make_plan(N: Optional[float] = None, C: Optional[float] = None, D: Optional[float] = None, g: Optional[int] = None,
              pair: Optional[Sequence[str]] = None, seq_len: int = 2048,
              conventions: Sequence[str] = ("exact", "paper"), base_tokens: Optional[float] = None) -> dict:
    """Everything `python -m growth plan` prints, as a JSON-ready dict. Give exactly one of C and D.

    `pair` (target, base) names the configs (names or lit_config.json paths) of the exact split; by default the
    best suggested pair. With a pair, N and g default to its target's parameter count and its growth factor
    (`lit_gpt.flops.growth_factor`), and a different N or g is refused. Without, g defaults to 4. Splits not in
    `conventions` are None.
    `base_tokens` replaces Eq. 2's d in the splits (the growth timing is still reported).
    Raises ValueError for bad numbers or configs, and a base stage that eats the budget."""
    from lit_gpt.config import Config

    if (C is None) == (D is None):
        raise ValueError("give exactly one of the FLOPs budget C and the token budget D")
    configs = None
    if pair is not None:
        configs = [Config.load(name) for name in pair]
        N, g = _check_pair(*configs, N, g)
    g = DEFAULT_G if g is None else g
    if N is None:
        raise ValueError("give the target's parameter count N (--params) or its config (--target)")
    _check_positive(N=N)
    paper_C = C if C is not None else budget_flops(N, D)
    _check_budget(paper_C)
    d = growth_timing(N, paper_C)
    split_d = d if base_tokens is None else base_tokens
    pairs = suggest_configs(N, g) if pair is None else []
    best = pairs[0] if pairs else None
    if configs is None and best is not None:
        configs = [Config.load(best.target), Config.load(best.base)]
    given = base_tokens is not None
    exact = (exact_split(*configs, seq_len, split_d, C, D, given) if configs is not None and "exact" in conventions
             else None)
    paper = paper_split(N, paper_C, split_d, g, given) if "paper" in conventions else None
    notes = []
    if not FIT_N_RANGE[0] * 0.9 <= N <= FIT_N_RANGE[1] * 1.1:
        notes.append(f"N = {format_count(N, zeros=False)} is outside the targets Eq. 2 was fitted on (410M to 3B): "
                     "d is an extrapolation (the paper's Table 4 extrapolates the same way, to 70B)")
    if g != DEFAULT_G and pair is None:
        notes.append(f"Eq. 2 was fitted at g = 4; the paper gives no growth timing for g = {g}")
    if best is None and pair is None:
        notes.append(f"no registered config pair with a {g}x layer ratio has a target within 2x of "
                     f"N = {format_count(N, zeros=False)}; add configs to lit_gpt/config.py, or name them with "
                     "--target and --base, for the exact split")
    elif pair is None and abs(math.log(best.ratio)) > math.log(1.1):
        notes.append(f"the nearest registered target, {best.target}, has {format_count(best.target_params)} "
                     f"params ({best.ratio - 1:+.0%} vs N); the exact split uses its shapes")
    if (exact is not None and paper is not None and paper.base_scratch_tokens > 0
            and abs(exact.base_scratch_tokens / paper.base_scratch_tokens - 1) > .05):
        notes.append(f"the exact base cost is {exact.base_scratch_tokens / paper.base_scratch_tokens:.2f}x the "
                     "paper's d/g: g counts the blocks' matrices only, while embeddings, the LM head and attention "
                     "cost FLOPs too (§5.4)")
    return {
        "params": N, "flops": paper_C, "tokens": paper_C / (PAPER_FLOPS_PER_PARAM * N), "tokens_given": D is not None,
        "growth_timing": {"d": d, "equation": _EQ2 + ", C = 6 N D (Eq. 2)"}, "base_tokens": split_d,
        "base_tokens_given": base_tokens is not None,
        "growth_factor": {"g": g, "recommended": DEFAULT_G, "eq50": growth_factor_fit(N, paper_C),
                          "equation": _EQ50 + " (Eq. 50)", "warning": _EQ50_WARNING},
        "configs": [asdict(p) for p in pairs],
        "split": {"exact": asdict(exact) if exact else None, "paper": asdict(paper) if paper else None,
                  "pair_given": [configs[0].name, configs[1].name] if pair is not None else None,
                  "exact_configs": None if exact is None else {"target": configs[0].name, "base": configs[1].name,
                                                               "seq_len": seq_len, "given": pair is not None}},
        "notes": notes,
    }


def _check_pair(target: Any, base: Any, N: Optional[float], g: Optional[float]) -> Tuple[float, float]:
    """(N, g) of a given target/base pair.

    Raises:
        ValueError: a base larger than or as large as the target, or an N or g that disagrees with the pair."""
    from growth.operators import check_no_shrink
    from lit_gpt.flops import growth_factor

    check_no_shrink(base, target)
    pair_g = growth_factor(base, target)
    if pair_g <= 1 + 1e-9:
        raise ValueError(f"--base {base.name} is as large as --target {target.name}: nothing grows; give a smaller "
                         "base")
    if g is not None and abs(g / pair_g - 1) > 1e-6:
        raise ValueError(f"--g {g} disagrees with --target/--base, whose growth factor is {pair_g:.4g}; drop --g")
    n = param_count(target)
    if N is not None and abs(N / n - 1) > 1e-3:
        raise ValueError(f"--params {format_count(N, zeros=False)} disagrees with --target {target.name}'s "
                         f"{format_count(n)} parameters; drop --params")
    return float(n), pair_g


def format_plan(plan: dict) -> str:
    N, C, g = plan["params"], plan["flops"], plan["growth_factor"]["g"]
    D = format_count(plan["tokens"], zeros=not plan["tokens_given"])
    budget = (f"D = {D} scratch tokens -> C = 6 N D = {format_sci(C)} FLOPs" if plan["tokens_given"]
              else f"C = {format_sci(C)} FLOPs = 6 N D with D = {D} scratch tokens")
    gf = plan["growth_factor"]
    why = ("from --target/--base" if plan["split"].get("pair_given") else
           "the paper's recommendation; optimum between 2 and 4" if g == DEFAULT_G else "from --g; the paper "
           "recommends 4")
    lines = [
        "G_stack growth plan (Du et al. 2024, stacking-paper.md §4.1, §5.4, §7)",
        f"  target params N    {format_count(N, zeros=False)}",
        f"  budget             {budget}",
        f"growth timing d      {format_count(plan['growth_timing']['d'])} tokens on the base before stacking"
        + (f" (the splits use --base_tokens {format_count(plan['base_tokens'], zeros=False)})"
           if plan["base_tokens_given"] else ""),
        f"  Eq. 2              {_EQ2}",
        f"growth factor g      {g:g} ({why})",
        f"  Eq. 50 fit         g = {gf['eq50']:.3g} from {_EQ50}",
        f"                     {_EQ50_SHORT}",
    ]
    pairs = plan["configs"]
    given = plan["split"].get("pair_given")
    if given:
        lines.append(f"{'configs (given)':<21}target {given[0]} <- base {given[1]}")
    elif pairs:
        shown = [p for p in pairs[1:3] if abs(math.log(p["ratio"])) <= math.log(_ALTERNATIVE_RATIO)]
        for i, p in enumerate(pairs[:1] + shown):
            label = f"configs (g = {g})" if i == 0 else "  or"
            lines.append(f"{label:<21}target {p['target']} ({_layers(p['target_layers'])}, "
                         f"{format_count(p['target_params'])} params) <- base {p['base']} ({_layers(p['base_layers'])}, "
                         f"{format_count(p['base_params'])} params)")
    else:
        lines.append(f"configs (g = {g})      none registered (see notes)")
    split = plan["split"]
    if split["exact"] is not None:
        cfg = split["exact_configs"]
        lines += _split_lines(f"FLOPs split, exact convention ({cfg['target']} <- {cfg['base']}"
                              f"{' (given)' if cfg['given'] else ''}, {cfg['seq_len']}-token sequences; each "
                              "model's own FLOPs per token, attention included):", split["exact"])
    if split["paper"] is not None:
        lines += _split_lines("FLOPs split, paper's convention (6 N D; the base has N/g params, so it costs d/g "
                              "target tokens):", split["paper"])
    if plan["notes"]:
        lines.append("notes:")
        lines += [f"  - {note}" for note in plan["notes"]]
    return "\n".join(lines)


def _layers(n: int) -> str:
    return f"{n} layer{'s' if n != 1 else ''}"


def _split_lines(title: str, s: dict) -> List[str]:
    return [
        title,
        f"  FLOPs per token    base {format_sci(s['base_flops_per_token'])}, target "
        f"{format_sci(s['target_flops_per_token'])}",
        f"  base stage         {format_sci(s['base_flops'])} FLOPs ({s['base_share']:.1%}) "
        f"= {format_count(s['base_scratch_tokens'])} scratch-equivalent tokens (d = {format_count(s['base_tokens'])})",
        f"  target stage       {format_sci(s['target_flops'])} FLOPs ({s['target_share']:.1%}), "
        f"D' = {format_count(s['target_tokens'])} tokens after growth",
        f"  total              C = {format_sci(s['total_flops'])} FLOPs = "
        f"{format_count(s['scratch_tokens'])} scratch tokens",
    ]


# ----------------------------------------------------------------------------------------------- CLI


def _positive_count(text: str) -> float:
    try:
        value = parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _count(text: str) -> float:
    try:
        value = parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _growth_factor(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of layer copies (>= 2), got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (the target has g times the base's layers), got {text!r}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m growth plan (--params N | --target T --base B) (--flops C | --tokens D) [--g G] [--seq_len T]
    [--convention exact|paper] [--json]`: prints the plan and returns 0, or one `error:` line on stderr and 1."""
    parser = ArgumentParser(
        prog="python -m growth plan",
        description="Plan a G_stack run from the guidelines of Du et al. 2024: growth timing d (Eq. 2), growth "
                    "factor g (4; Eq. 50 shown for reference), registered base/target configs and the split "
                    "of the FLOPs budget between the base and the grown target.",
        epilog="Numbers take K/M/B/T suffixes (B = 1e9, T = 1e12) or exponents: 7e9, 7B, 1.1B, 300B, 2T, 8e20. "
               "Example: python -m growth plan --params 1.1B --tokens 100B")
    parser.add_argument("--params", type=_positive_count, metavar="N",
                        help="target model parameter count N, e.g. 1.1B or 7e9 (default: --target's)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=_positive_count, metavar="C",
                        help="total compute budget C in FLOPs, base stage included, e.g. 8e20")
    budget.add_argument("--tokens", type=_positive_count, metavar="D",
                        help="budget as tokens of a from-scratch run of the target: C = 6 N D, e.g. 100B")
    parser.add_argument("--target", help="the target's config (a name or a lit_config.json) for the exact split "
                        "(default: the suggested pair); give --base with it")
    parser.add_argument("--base", help="the base's config for the exact split; give --target with it")
    parser.add_argument("--base_tokens", type=_count, metavar="d",
                        help="tokens the base trains before growth, for the FLOPs split (default: Eq. 2's d)")
    parser.add_argument("--seq_len", type=int, default=2048, metavar="T",
                        help="training sequence length of the exact split's attention FLOPs (default 2048)")
    parser.add_argument("--convention", choices=CONVENTIONS, default=None,
                        help="print only this FLOPs split: exact (lit_gpt.flops.flops_per_token of both configs) "
                             "or paper (6 N D, the base at d/g target tokens); default: both")
    parser.add_argument("--g", type=_growth_factor, default=None, metavar="G",
                        help="growth factor: target layers / base layers (default 4, the paper's recommendation; "
                             "with --target/--base, theirs)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object instead of text")
    try:
        args = parser.parse_args(argv)
        if (args.target is None) != (args.base is None):
            parser.error("--target and --base go together (the exact split needs both configs)")
        if args.params is None and args.target is None:
            parser.error("give the target's parameter count (--params N) or its config (--target with --base)")
        if args.seq_len < 1:
            parser.error(f"--seq_len must be positive, got {args.seq_len}")
        plan = make_plan(args.params, C=args.flops, D=args.tokens, g=args.g,
                         pair=(args.target, args.base) if args.target else None, seq_len=args.seq_len,
                         conventions=(args.convention,) if args.convention else CONVENTIONS,
                         base_tokens=args.base_tokens)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


if __name__ == "__main__":
    from lit_gpt.exits import guard_command

    guard_command()
    sys.exit(main())
