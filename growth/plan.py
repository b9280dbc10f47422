"""Plan a G_stack run from the paper's guidelines (reference stacking-paper.md §4.1, §5.1, §5.4, §7).

Given the target's parameter count N and the compute budget C (or the scratch token budget D, C = 6 N D):

* growth timing (Eq. 2): log10(d) = 0.88 log10(N) + 163.27 / log10(C) - 5.74, d = tokens to train the base
  before stacking. Fitted at g = 4 on targets of 410M, 1.1B and 3B; with C = 6 N D it reproduces Table 4.
* growth factor: g = 4, the paper's recommendation (optimum between 2 and 4). Eq. 50,
  log10(g) = 1.01 log10(N) - 29.88 / log10(C) - 7.36, is printed for reference only: the authors call that
  fit "mediocre" (too little data) and recommend g = 4 instead.
* configs: registered targets close to N that have a registered base of the same layer shape with
  n_layer = target n_layer / g (so the base grows into the target by copying layers).
* FLOPs split: C = C_base + C_target, C_base = 6 n d, C_target = 6 N D', in two accountings: exact (n = the
  base's parameter count) and the paper's (the base costs d / g target tokens, i.e. n = N / g; §5.4: at
  g = 4, d = 10B base tokens + D' = 97.5B target tokens cost as much as 100B scratch tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from lit_gpt.cli import ArgumentParser, parse_count  # noqa: F401 - shared with the training flags; also this module's API
from lit_gpt.config import param_count  # noqa: F401 - also part of this module's API

DEFAULT_G = 4
FLOPS_PER_PARAM_TOKEN = 6  # C = 6 N D
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
    return f"{r:.3g}" if r < 1000 else format_sci(r)


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
    return FLOPS_PER_PARAM_TOKEN * N * D


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
    accounting: str  # "exact" (n given) or "d/g" (n = N / g, the paper's)
    base_params: float  # n
    base_tokens: float  # d
    base_flops: float  # 6 n d
    base_share: float  # of C
    base_scratch_tokens: float  # C_base / (6 N): target tokens the base stage costs
    target_tokens: float  # D', tokens left for the target after growth
    target_flops: float  # 6 N D'
    target_share: float
    total_flops: float  # C
    scratch_tokens: float  # C / (6 N)


def flops_split(N: float, C: float, d: float, g: int = DEFAULT_G, base_params: Optional[float] = None) -> Split:
    """Splits the budget C between the base stage (6 n d) and the target stage (6 N D'), C_base + C_target = C.

    n is `base_params` when given ("exact"), else N / g: the paper's accounting, where the base costs d / g
    target tokens (§5.4). Raises ValueError when the base stage alone uses the whole budget."""
    _check_positive(N=N, C=C, d=d)
    if base_params is None:
        if not isinstance(g, (int, float)) or g <= 0:
            raise ValueError(f"g must be positive, got {g!r}")
        n, accounting = N / g, "d/g"
    else:
        _check_positive(base_params=base_params)
        n, accounting = base_params, "exact"
    base_flops = FLOPS_PER_PARAM_TOKEN * n * d
    target_flops = C - base_flops
    if target_flops <= 0:
        raise ValueError(f"the base stage alone (6 n d with n = {format_count(n)} params, d = {format_count(d)} "
                         f"tokens: {format_sci(base_flops)} FLOPs) costs {_format_ratio(base_flops / C)}x the whole "
                         f"budget C = {format_sci(C)}; Eq. 2 does not fit budgets this small")
    return Split(accounting=accounting, base_params=n, base_tokens=d, base_flops=base_flops,
                 base_share=base_flops / C, base_scratch_tokens=base_flops / (FLOPS_PER_PARAM_TOKEN * N),
                 target_tokens=target_flops / (FLOPS_PER_PARAM_TOKEN * N), target_flops=target_flops,
                 target_share=target_flops / C, total_flops=C, scratch_tokens=C / (FLOPS_PER_PARAM_TOKEN * N))


# ----------------------------------------------------------------------------------------------- the plan


def make_plan(N: float, C: Optional[float] = None, D: Optional[float] = None, g: int = DEFAULT_G,
              base_params: Optional[float] = None) -> dict:
    """Everything `python -m growth plan` prints, as a JSON-ready dict. Give exactly one of C and D."""
    if (C is None) == (D is None):
        raise ValueError("give exactly one of the FLOPs budget C and the token budget D")
    _check_positive(N=N)
    if C is None:
        C = budget_flops(N, D)
    _check_budget(C)
    d = growth_timing(N, C)
    pairs = suggest_configs(N, g)
    best = pairs[0] if pairs else None
    exact_n = base_params if base_params is not None else (best.base_params if best else None)
    exact = flops_split(N, C, d, g, exact_n) if exact_n is not None else None
    paper = flops_split(N, C, d, g)
    notes = []
    if not FIT_N_RANGE[0] * 0.9 <= N <= FIT_N_RANGE[1] * 1.1:
        notes.append(f"N = {format_count(N, zeros=False)} is outside the targets Eq. 2 was fitted on (410M to 3B): "
                     "d is an extrapolation (the paper's Table 4 extrapolates the same way, to 70B)")
    if g != DEFAULT_G:
        notes.append(f"Eq. 2 was fitted at g = 4; the paper gives no growth timing for g = {g}")
    if best is None:
        notes.append(f"no registered config pair with a {g}x layer ratio has a target within 2x of "
                     f"N = {format_count(N, zeros=False)}; add configs to lit_gpt/config.py")
    elif abs(math.log(best.ratio)) > math.log(1.1):
        notes.append(f"the nearest registered target, {best.target}, has {format_count(best.target_params)} "
                     f"params ({best.ratio - 1:+.0%} vs N); the exact split uses its base's count against your N")
    if exact is not None and base_params is None and abs(exact.base_params * g / N - 1) > 0.05:
        notes.append(f"the exact base cost is {exact.base_scratch_tokens / paper.base_scratch_tokens:.2f}x the "
                     f"paper's d/g estimate: embeddings and lm_head do not shrink with depth (§5.4)")
    return {
        "params": N, "flops": C, "tokens": C / (FLOPS_PER_PARAM_TOKEN * N), "tokens_given": D is not None,
        "growth_timing": {"d": d, "equation": _EQ2 + ", C = 6 N D (Eq. 2)"},
        "growth_factor": {"g": g, "recommended": DEFAULT_G, "eq50": growth_factor_fit(N, C),
                          "equation": _EQ50 + " (Eq. 50)", "warning": _EQ50_WARNING},
        "configs": [asdict(p) for p in pairs],
        "split": {"exact": asdict(exact) if exact else None, "d_over_g": asdict(paper),
                  "exact_base_source": None if exact is None else ("--base_params" if base_params is not None
                                                                   else best.base)},
        "notes": notes,
    }


def format_plan(plan: dict) -> str:
    N, C, g = plan["params"], plan["flops"], plan["growth_factor"]["g"]
    D = format_count(plan["tokens"], zeros=not plan["tokens_given"])
    budget = (f"D = {D} scratch tokens -> C = 6 N D = {format_sci(C)} FLOPs" if plan["tokens_given"]
              else f"C = {format_sci(C)} FLOPs = 6 N D with D = {D} scratch tokens")
    gf = plan["growth_factor"]
    why = ("the paper's recommendation; optimum between 2 and 4" if g == DEFAULT_G
           else "from --g; the paper recommends 4")
    lines = [
        "G_stack growth plan (Du et al. 2024, stacking-paper.md §4.1, §5.4, §7)",
        f"  target params N    {format_count(N, zeros=False)}",
        f"  budget             {budget}",
        f"growth timing d      {format_count(plan['growth_timing']['d'])} tokens on the base before stacking",
        f"  Eq. 2              {_EQ2}",
        f"growth factor g      {g} ({why})",
        f"  Eq. 50 fit         g = {gf['eq50']:.3g} from {_EQ50}",
        f"                     {_EQ50_SHORT}",
    ]
    pairs = plan["configs"]
    if pairs:
        shown = [p for p in pairs[1:3] if abs(math.log(p["ratio"])) <= math.log(_ALTERNATIVE_RATIO)]
        for i, p in enumerate(pairs[:1] + shown):
            label = f"configs (g = {g})" if i == 0 else "  or"
            lines.append(f"{label:<21}target {p['target']} ({p['target_layers']} layers, "
                         f"{format_count(p['target_params'])} params) <- base {p['base']} ({p['base_layers']} layers, "
                         f"{format_count(p['base_params'])} params)")
    else:
        lines.append(f"configs (g = {g})      none registered (see notes)")
    split = plan["split"]
    if split["exact"] is not None:
        source = split["exact_base_source"]
        lines += _split_lines(f"FLOPs split, exact (n = {format_count(split['exact']['base_params'])} params, "
                              f"{'from ' + source if source.startswith('--') else 'the base ' + source}):",
                              split["exact"])
    lines += _split_lines(f"FLOPs split, paper's d/g accounting (n = N/g = "
                          f"{format_count(split['d_over_g']['base_params'])}; the base costs d/g target tokens):",
                          split["d_over_g"])
    if plan["notes"]:
        lines.append("notes:")
        lines += [f"  - {note}" for note in plan["notes"]]
    return "\n".join(lines)


def _split_lines(title: str, s: dict) -> List[str]:
    return [
        title,
        f"  base stage         6 n d  = {format_sci(s['base_flops'])} FLOPs ({s['base_share']:.1%}) "
        f"= {format_count(s['base_scratch_tokens'])} scratch-equivalent tokens (d = {format_count(s['base_tokens'])})",
        f"  target stage       6 N D' = {format_sci(s['target_flops'])} FLOPs ({s['target_share']:.1%}), "
        f"D' = {format_count(s['target_tokens'])} tokens after growth",
        f"  total              C      = {format_sci(s['total_flops'])} FLOPs = "
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


def _growth_factor(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of layer copies (>= 2), got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (the target has g times the base's layers), got {text!r}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m growth plan --params N (--flops C | --tokens D) [--base_params n] [--g G] [--json]`: prints the
    plan and returns 0, or one `error:` line on stderr and 1."""
    parser = ArgumentParser(
        prog="python -m growth plan",
        description="Plan a G_stack run from the guidelines of Du et al. 2024: growth timing d (Eq. 2), growth "
                    "factor g (4; Eq. 50 shown for reference), registered base/target configs and the split "
                    "of the FLOPs budget between the base and the grown target.",
        epilog="Numbers take K/M/B/T suffixes (B = 1e9, T = 1e12) or exponents: 7e9, 7B, 1.1B, 300B, 2T, 8e20. "
               "Example: python -m growth plan --params 1.1B --tokens 100B")
    parser.add_argument("--params", type=_positive_count, required=True, metavar="N",
                        help="target model parameter count N, e.g. 1.1B or 7e9")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=_positive_count, metavar="C",
                        help="total compute budget C in FLOPs, base stage included, e.g. 8e20")
    budget.add_argument("--tokens", type=_positive_count, metavar="D",
                        help="budget as tokens of a from-scratch run of the target: C = 6 N D, e.g. 100B")
    parser.add_argument("--base_params", type=_positive_count, metavar="n",
                        help="the base model's parameter count for the exact FLOPs split (default: the suggested "
                             "base config's count); the paper's d/g accounting is printed as well")
    parser.add_argument("--g", type=_growth_factor, default=DEFAULT_G, metavar="G",
                        help="growth factor: target layers / base layers (default 4, the paper's recommendation)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object instead of text")
    try:
        args = parser.parse_args(argv)
        plan = make_plan(args.params, C=args.flops, D=args.tokens, g=args.g, base_params=args.base_params)
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
