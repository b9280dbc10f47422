"""Layer index maps for depthwise growth: G_stack and its variants (reference stacking-paper.md §3.1, §4).

An index map lists, for each target layer j (0-based, input to output), the source layer it copies: target
layer j takes the weights of source layer map[j]. It is the official code's `stacking_list` (§3.1). This
module turns a short spec into a map (`resolve`), measures its connection rate R_c (§4.3, `connection_rate`)
and renders a map back to text (`to_notation`, `describe`, and the `python -m growth layers` command).

Spec grammar. Layers in specs are 1-based; whitespace between tokens is ignored.

1. Presets, which need the target layer count L (l is the base's layer count):
     cyclic       G_stack, whole-model stacking (§3.1, §4.1): map[j] = j mod l.
     interleave   interpolation (§3.1, §4.3): map[j] = j*l // L, each layer repeated consecutively.
     solar:K      SOLAR depth up-scaling (§3.1) dropping K layers at each side of the seam.
     top          gradual stacking's rule (§4.4, StackBERT): the base, then copies of its top L-l layers.
     middle       MIDAS (§10, Saunshi et al. 2024): a copy of the base's middle L-l layers goes right
                  after them.
     pro:K        LLaMA-Pro block expansion (Wu et al. 2024; families-and-schedules.md §3): after every K base
                  layers a copy of the K-th, so L = l + l/K (32 -> 40 at K = 4). With --op zero-depth each copy
                  is an identity block, as LLaMA-Pro's expansion.
2. The paper's partial-stacking notation (§4.2), for bases of at most 9 layers. A spec with no ',', '(' or
   ')' is read this way:
     spec  := piece ('-' piece)*
     piece := DIGIT+ ['*' COUNT]
   Each digit is one layer; '*k' repeats the piece's digits k times; pieces concatenate, so
   '12-3456*5-56' is L1 L2, (L3 L4 L5 L6) x5, L5 L6.
3. The general form, for any base. A spec with a ',', '(' or ')' is read this way:
     sequence := term (',' term)*
     term     := '(' sequence ')' ['*' COUNT]  |  LAYER ['-' LAYER]  |  LAYER '*' COUNT
   'a-b' is the inclusive ascending range a..b. A range is repeated by wrapping it in parentheses, and a
   lone range is written in parentheses too: '1-2,(3-10)*3,11-12', '(1-12)*2', '(1-12)', '1,(2,3)*2,4'.

So a spec's meaning never depends on the base: '1-12' is always the paper's L1, L1, L2 (and is refused for
bases over 9 layers, where the general form '(1-12)' is meant).
"""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence, Tuple

from lit_gpt.cli import ArgumentParser

PRESETS = ("cyclic", "interleave", "solar:K", "top", "middle", "pro:K")
MAX_LAYERS = 100_000  # refuse specs that expand beyond this (e.g. '(1-9)*99999999')
PAPER_MAX_BASE = 9
_DIGITS = "0123456789"
_EXAMPLES = ("e.g. 'cyclic', 'interleave', 'solar:8', 'top', 'middle', 'pro:4', '12-3456*5-56' or "
             "'1-2,(3-10)*3,11-12'")


def resolve(spec: str, base_layers: int, target_layers: Optional[int] = None) -> List[int]:
    """The 0-based index map described by `spec` (grammar in the module docstring).

    Presets need `target_layers`. For the notations it is optional and, when given, must equal the number of
    layers the spec produces. Raises ValueError with a one-line message for any bad input.
    """
    if base_layers < 1:
        raise ValueError(f"the base must have at least 1 layer, got {base_layers}")
    if target_layers is not None and target_layers < 1:
        raise ValueError(f"the target must have at least 1 layer, got {target_layers}")
    for name, count in (("base", base_layers), ("target", target_layers)):
        if count is not None and count > MAX_LAYERS:
            raise ValueError(f"the {name} has {count} layers, more than the {MAX_LAYERS} a map may have")
    text = spec.strip()
    if not text:
        raise ValueError(f"empty layer spec; give a preset or a layer list, {_EXAMPLES}")
    if text[0].isalpha():
        index_map = _preset(text, base_layers, target_layers)
    else:
        index_map = _Parser(spec, base_layers).parse()
    if target_layers is not None and len(index_map) != target_layers:
        raise ValueError(f"spec {spec!r} gives {len(index_map)} layers but the target has {target_layers}; "
                         "change the repeat counts or the target layer count")
    return index_map


def _preset(text: str, base: int, target: Optional[int]) -> List[int]:
    """cyclic / interleave / solar:K (§3.1), top / middle (§4.4, §10), pro:K (LLaMA-Pro). cyclic with L not a
    multiple of l cuts
    the last copy short (map[j] = j mod l); interleave with L not a multiple of l repeats some layers once
    more than others."""
    name, colon, arg = text.partition(":")
    name = name.strip().lower()
    if name not in ("cyclic", "interleave", "solar", "top", "middle", "pro"):
        raise ValueError(f"unknown preset {text!r}; use cyclic, interleave, solar:K, top, middle, pro:K or a layer "
                         f"list, {_EXAMPLES}")
    if target is None:
        raise ValueError(f"preset {text!r} needs the target layer count (target_layers, or --target N)")
    if name == "solar":
        return _solar(arg.strip(), base, target)
    if name == "pro":
        return _pro(arg.strip(), base, target)
    if colon:
        raise ValueError(f"preset {name!r} takes no argument, got {text!r}; write just {name!r}")
    if name == "cyclic":
        return [j % base for j in range(target)]
    if name in ("top", "middle"):
        return _block_copy(name, base, target)
    return [j * base // target for j in range(target)]


def _block_copy(where: str, n: int, target: int) -> List[int]:
    """One copy of a block of k = L - n consecutive base layers, placed right after the original: the top k
    (gradual stacking: layers[0:n] + layers[n-k:n]) or the middle k (MIDAS: the block starts at (n-k)//2)."""
    k = target - n
    if not 0 < k <= n:
        raise ValueError(f"{where} copies a block of L - l layers once, so a {n}-layer base grows to "
                         f"{n + 1}..{2 * n} layers, not {target}; grow in several stages")
    start = n - k if where == "top" else (n - k) // 2
    return list(range(0, start + k)) + list(range(start, n))


def _pro(arg: str, n: int, target: int) -> List[int]:
    """LLaMA-Pro's placement: the base in groups of k layers, each followed by a copy of its last layer
    (n = 32, k = 4: 40 layers). k must divide n and the target must have n + n/k layers."""
    if not (arg.isascii() and arg.isdigit() and int(arg) > 0):
        raise ValueError(f"pro needs the group size K (a new layer after every K) as a whole number >= 1, e.g. "
                         f"'pro:4', got 'pro:{arg}'")
    k = int(arg)
    if n % k:
        raise ValueError(f"pro:{k} needs a base whose layer count is a multiple of {k}, but it has {n}; pick a K "
                         f"that divides {n}")
    if target != n + n // k:
        raise ValueError(f"pro:{k} on a {n}-layer base builds {n + n // k} layers, not {target}; use a target of "
                         f"{n + n // k} layers or another K")
    return [i for g in range(0, n, k) for i in (*range(g, g + k), g + k - 1)]


def _solar(arg: str, n: int, target: int) -> List[int]:
    """SOLAR depth up-scaling (§3.1): layers[0:n-k] + layers[k:k+(L-n)] + layers[n-k:n].

    For L = 2n-2k this is SOLAR's layers[0:n-k] + layers[k:n] (n=32, k=8: 48 layers). The middle copy must
    fit in the base, so 0 <= k <= n and n <= L <= 2n-k.
    """
    if not (arg.isascii() and arg.isdigit()):
        raise ValueError(f"solar needs the number K of dropped layers as a whole number, e.g. 'solar:8', "
                         f"got 'solar:{arg}'")
    k = int(arg)
    if k > n:
        raise ValueError(f"solar:{k} drops more layers than the {n}-layer base has; use 0 <= K <= {n}")
    if not n <= target <= 2 * n - k:
        fix = f"use K <= {2 * n - target}" if n < target <= 2 * n else f"use a target of {n} to {2 * n} layers"
        raise ValueError(f"solar:{k} on a {n}-layer base builds {n} to {2 * n - k} layers, not {target}; {fix}")
    return list(range(0, n - k)) + list(range(k, k + target - n)) + list(range(n - k, n))


class _Parser:
    """Recursive-descent parser for the paper notation and the general form (grammar in the module doc)."""

    def __init__(self, spec: str, base: int):
        self.spec, self.base, self.pos = spec, base, 0
        self.general = any(c in spec for c in ",()")

    def parse(self) -> List[int]:
        if not self.general and self.base > PAPER_MAX_BASE:
            raise ValueError(f"{self.spec.strip()!r} is the paper notation (digits 1-9), which covers bases of up "
                             f"to {PAPER_MAX_BASE} layers; for this {self.base}-layer base use the general form "
                             "with commas or parentheses, e.g. '(1-12)*2' or '1-2,(3-10)*3,11-12'")
        index_map = self._sequence() if self.general else self._pieces()
        if self._peek() == ")":
            raise self._error("unmatched ')'", "remove it or open the group with '('")
        if self._peek():
            raise self._error(f"unexpected {self._peek()!r}",
                              "separate items with ','" if self.general else "separate pieces with '-'")
        return index_map

    # paper notation: spec := piece ('-' piece)*;  piece := DIGIT+ ['*' COUNT]
    def _pieces(self) -> List[int]:
        out: List[int] = []
        while True:
            digits, start = self._digits("a run of layer digits")
            out += self._repeat([self._layer(int(d), start + i) for i, d in enumerate(digits)])
            if self._peek() != "-":
                return self._checked_size(out)
            self.pos += 1

    # general form: sequence := term (',' term)*
    def _sequence(self) -> List[int]:
        out = self._term()
        while self._peek() == ",":
            self.pos += 1
            out = self._checked_size(out + self._term())
        return out

    # term := '(' sequence ')' ['*' COUNT] | LAYER ['-' LAYER] | LAYER '*' COUNT
    def _term(self) -> List[int]:
        if self._peek() == "(":
            opened = self.pos
            self.pos += 1
            inner = self._sequence()
            if self._peek() != ")":
                raise self._error(f"expected ',' or ')', found {self._found()}",
                                  f"close the '(' opened at column {opened + 1}")
            self.pos += 1
            return self._repeat(inner)
        digits, start = self._digits("a layer number or '('")
        first = self._layer(int(digits), start)
        if self._peek() != "-":
            return self._repeat([first])
        self.pos += 1
        digits2, start2 = self._digits("the layer that ends the range")
        last = self._layer(int(digits2), start2)
        if last < first:
            raise self._error(f"range {digits}-{digits2} runs downwards", "ranges must ascend; list such layers "
                              "one by one", start)
        if self._peek() == "*":
            raise self._error(f"'*' after the range {digits}-{digits2}",
                              f"wrap a repeated range in parentheses: ({digits}-{digits2})*k")
        return list(range(first, last + 1))

    def _repeat(self, block: List[int]) -> List[int]:
        """Applies an optional '*COUNT' to `block`."""
        if self._peek() != "*":
            return block
        self.pos += 1
        digits, start = self._digits("a repeat count after '*'")
        count = int(digits)
        if count == 0:
            raise self._error(f"repeat count *{digits}", "repeat a block at least once (*1), or drop it", start)
        return self._checked_size(block * min(count, MAX_LAYERS + 1))

    def _checked_size(self, index_map: List[int]) -> List[int]:
        if len(index_map) > MAX_LAYERS:
            raise ValueError(f"spec {self.spec!r} expands to more than {MAX_LAYERS} layers; check the repeat counts")
        return index_map

    def _layer(self, number: int, pos: int) -> int:
        """The 0-based index of 1-based layer `number`, written at `pos`."""
        if number < 1:
            raise self._error(f"layer {number}", f"layers are 1-based: use 1-{self.base}", pos)
        if number > self.base:
            raise self._error(f"layer {number}", f"the base has only {self.base} layers, so use 1-{self.base}", pos)
        return number - 1

    def _digits(self, what: str) -> Tuple[str, int]:
        self._peek()
        start = self.pos
        while self.pos < len(self.spec) and self.spec[self.pos] in _DIGITS:
            self.pos += 1
        if self.pos == start:
            raise self._error(f"expected {what}, found {self._found()}", self._syntax())
        return self.spec[start:self.pos], start

    def _peek(self) -> str:
        """The next non-space character ('' at the end), skipping the spaces."""
        while self.pos < len(self.spec) and self.spec[self.pos].isspace():
            self.pos += 1
        return self.spec[self.pos] if self.pos < len(self.spec) else ""

    def _syntax(self) -> str:
        if self.general:
            return "the general form lists layers and ranges with ',' and repeats groups, e.g. '1-2,(3-10)*3,11-12'"
        return "the paper notation joins digit runs with single '-', e.g. '12-3456*5-56'"

    def _found(self) -> str:
        return repr(self._peek()) if self._peek() else "the end of the spec"

    def _error(self, problem: str, fix: str, pos: Optional[int] = None) -> ValueError:
        column = (self.pos if pos is None else pos) + 1
        return ValueError(f"{problem} at column {column} of {self.spec!r}; {fix}")


def connection_rate(index_map: Sequence[int]) -> float:
    """R_c = Con_r / Con_all (§4.3, paper App. H.2 Eq. 51).

    Con_all = L - 1 adjacent target pairs; Con_r counts those whose sources are adjacent in the base in the
    same order, src(i+1) = src(i) + 1. A single-layer map has no connections and gets R_c = 1.0.
    """
    kept, total = _connections(index_map)
    return 1.0 if total == 0 else kept / total


def _connections(index_map: Sequence[int]) -> Tuple[int, int]:
    if not index_map:
        raise ValueError("the index map is empty; a model needs at least 1 layer")
    kept = sum(1 for a, b in zip(index_map, index_map[1:]) if b == a + 1)
    return kept, len(index_map) - 1


def to_notation(index_map: Sequence[int], base_layers: int) -> str:
    """A short spec for `index_map`, such that resolve(to_notation(m, l), l) == m.

    The paper notation (§4.2) for bases of up to 9 layers, else the general form. Among the ways to cut the
    map into pieces (each a block of layers repeated k times) it picks the shortest text, fewest pieces on a
    tie, by dynamic programming over the map, so the §4.2 table's notations come back as written.
    """
    m = _checked_map(index_map, base_layers)
    paper = base_layers <= PAPER_MAX_BASE
    n = len(m)
    # best[i] = (characters, pieces, first piece's text, where the next piece starts) for the suffix m[i:]
    best: List[Optional[Tuple[int, int, str, int]]] = [None] * n + [(0, 0, "", n)]
    for i in reversed(range(n)):
        for size in range(1, n - i + 1):
            block, end, count = m[i:i + size], i + size, 1
            inner = "".join(str(s + 1) for s in block) if paper else _ranges(block)
            while True:
                text = _piece(inner, count, paper or size == 1)
                chars, pieces = best[end][0], best[end][1]
                candidate = (len(text) + chars + (1 if pieces else 0), pieces + 1, text, end)
                if best[i] is None or candidate[:2] < best[i][:2]:
                    best[i] = candidate
                if m[end:end + size] != block:
                    break
                end, count = end + size, count + 1
    parts, i = [], 0
    while i < n:
        parts.append(best[i][2])
        i = best[i][3]
    text = ("-" if paper else ",").join(parts)
    if not paper and not any(c in text for c in ",()"):
        text = f"({text})"  # a lone layer or range must look like the general form
    return text


def _ranges(block: Sequence[int]) -> str:
    """General-form items for a block: ascending runs as 'a-b', single layers as 'a' (1-based)."""
    items, start = [], 0
    for j in range(1, len(block) + 1):
        if j == len(block) or block[j] != block[j - 1] + 1:
            first, last = block[start] + 1, block[j - 1] + 1
            items.append(str(first) if first == last else f"{first}-{last}")
            start = j
    return ",".join(items)


def _piece(inner: str, count: int, bare: bool) -> str:
    if count == 1:
        return inner
    return f"{inner}*{count}" if bare else f"({inner})*{count}"


def _checked_map(index_map: Sequence[int], base_layers: int) -> List[int]:
    m = [int(s) for s in index_map]
    if not m:
        raise ValueError("the index map is empty; a model needs at least 1 layer")
    for j, s in enumerate(m):
        if not 0 <= s < base_layers:
            raise ValueError(f"index map entry {s} (target layer {j}) is outside the {base_layers}-layer base; "
                             f"0-based entries must be 0-{base_layers - 1}")
    return m


def describe(index_map: Sequence[int], base_layers: int) -> str:
    """Multi-line summary for the CLI: the 1-based map, the notation, the 0-based list and R_c (§4.3)."""
    m = _checked_map(index_map, base_layers)
    kept, total = _connections(m)
    targets = "1" if len(m) == 1 else f"1-{len(m)}"
    rate = ("R_c = 100.0% (a single layer has no connections)" if total == 0
            else f"R_c = {kept}/{total} = {100 * kept / total:.1f}%")
    return "\n".join([
        f"{base_layers} -> {len(m)} layers",
        f"target {targets} <- source {' '.join(str(s + 1) for s in m)}",
        f"notation: {to_notation(m, base_layers)}",
        f"stacking_list (0-based): {m}",
        rate,
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m growth layers SPEC --base L [--target N]`: prints describe(...) and returns 0, or one
    `error:` line on stderr and 1."""
    parser = ArgumentParser(
        prog="python -m growth layers",
        description="Show the layer index map of a depth-growth spec, its notation and connection rate R_c.",
        epilog="SPEC is a preset (cyclic, interleave, solar:K, top, middle, pro:K; these need --target), the paper's "
               "notation for bases of up to 9 layers (12-3456*5-56) or the general form ((1-12)*2, "
               "1-2,(3-10)*3,11-12). Quote it in the shell.")
    parser.add_argument("spec", metavar="SPEC", help="layer spec, see below")
    parser.add_argument("--base", type=int, required=True, metavar="L", help="layers in the base (source) model")
    parser.add_argument("--target", type=int, metavar="N", help="layers in the target model")
    try:
        args = parser.parse_args(argv)
        if args.target is not None and args.target < args.base:
            raise ValueError(f"--target {args.target} is below --base {args.base}: growth never removes layers")
        index_map = resolve(args.spec, args.base, args.target)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(describe(index_map, args.base))
    return 0


if __name__ == "__main__":
    from lit_gpt.exits import guard_command

    guard_command()
    sys.exit(main())
