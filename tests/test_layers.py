"""Layer index maps for depth growth: growth.layers (reference stacking-paper.md §3.1, §4.2-4.3)."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from growth.layers import MAX_LAYERS, connection_rate, describe, main, resolve, to_notation

# §4.2 table: 6-layer base -> 24 layers; (notation, 0-based stacking_list, recomputed R_c)
PAPER_TABLE = [
    ("123456*4", [0, 1, 2, 3, 4, 5] * 4, Fraction(20, 23)),
    ("12-3456*5-56", [0, 1] + [2, 3, 4, 5] * 5 + [4, 5], Fraction(18, 23)),
    ("12-345*7-6", [0, 1] + [2, 3, 4] * 7 + [5], Fraction(17, 23)),
    ("123-456*7", [0, 1, 2] + [3, 4, 5] * 7, Fraction(17, 23)),
    ("1234-56*10", [0, 1, 2, 3] + [4, 5] * 10, Fraction(14, 23)),
    ("12-34*10-56", [0, 1] + [2, 3] * 10 + [4, 5], Fraction(14, 23)),
    ("1-234*7-56", [0] + [1, 2, 3] * 7 + [4, 5], Fraction(17, 23)),
    ("123*7-456", [0, 1, 2] * 7 + [3, 4, 5], Fraction(17, 23)),
]


@pytest.mark.parametrize("notation, expected, rate", PAPER_TABLE, ids=[row[0] for row in PAPER_TABLE])
def test_paper_table(notation, expected, rate):
    index_map = resolve(notation, 6, 24)
    assert index_map == expected
    assert connection_rate(index_map) == pytest.approx(float(rate))
    assert to_notation(index_map, 6) == notation  # the shortest rendering is the paper's own


def test_cyclic_is_whole_model_stacking():
    assert resolve("cyclic", 6, 24) == PAPER_TABLE[0][1] == resolve("(1-6)*4", 6, 24)
    assert resolve("Cyclic", 6, 8) == [0, 1, 2, 3, 4, 5, 0, 1]  # not a multiple: j mod l, the last copy cut short


@pytest.mark.parametrize("base, target, preset, expected, rate", [
    (3, 6, "cyclic", [0, 1, 2, 0, 1, 2], Fraction(4, 5)),
    (3, 6, "interleave", [0, 0, 1, 1, 2, 2], Fraction(2, 5)),
    (8, 24, "cyclic", list(range(8)) * 3, Fraction(21, 23)),
    (8, 24, "interleave", [j // 3 for j in range(24)], Fraction(7, 23)),
])
def test_connection_rate_worked_examples(base, target, preset, expected, rate):
    index_map = resolve(preset, base, target)
    assert index_map == expected
    assert connection_rate(index_map) == pytest.approx(float(rate))


def test_connection_rate_edge_cases():
    assert connection_rate([3]) == 1.0
    assert connection_rate([2, 2]) == 0.0
    with pytest.raises(ValueError, match="empty"):
        connection_rate([])


def test_solar():
    assert resolve("solar:8", 32, 48) == list(range(24)) + list(range(8, 32))
    # general formula layers[0:n-k] + layers[k:k+(L-n)] + layers[n-k:n]: n=32, k=8, L=40
    assert resolve("solar:8", 32, 40) == list(range(24)) + list(range(8, 16)) + list(range(24, 32))
    assert resolve("solar:0", 4, 8) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert resolve("solar:2", 6, 6) == list(range(6))


@given(st.data())
def test_presets_length_and_range(data):
    base = data.draw(st.integers(1, 40))
    target = data.draw(st.integers(1, 160))
    for preset in ("cyclic", "interleave"):
        index_map = resolve(preset, base, target)
        assert len(index_map) == target and all(0 <= s < base for s in index_map)
        assert index_map == sorted(index_map) or preset == "cyclic"
    if target % base == 0:
        g = target // base
        assert resolve("cyclic", base, target) == list(range(base)) * g
        assert resolve("interleave", base, target) == [j // g for j in range(target)]


@given(st.data())
def test_solar_length_and_range(data):
    n = data.draw(st.integers(1, 40))
    k = data.draw(st.integers(0, n))
    target = data.draw(st.integers(n, 2 * n - k))
    index_map = resolve(f"solar:{k}", n, target)
    assert len(index_map) == target and all(0 <= s < n for s in index_map)
    assert index_map == list(range(n - k)) + list(range(k, k + target - n)) + list(range(n - k, n))
    if target == 2 * n - 2 * k:
        assert index_map == list(range(n - k)) + list(range(k, n))  # SOLAR's own [0:n-k] + [k:n]


def test_pro_is_llama_pros_block_expansion():
    """LLaMA-Pro (families-and-schedules.md §3): LLaMA-2-7B's 32 blocks in 8 groups of 4, each followed by a
    copy of the group's last block: 40 layers."""
    index_map = resolve("pro:4", 32, 40)
    assert len(index_map) == 40 and index_map[:10] == [0, 1, 2, 3, 3, 4, 5, 6, 7, 7]
    assert [j for j in range(40) if index_map[j] == index_map[j - 1]] == [4 + 5 * i for i in range(8)]
    assert resolve("pro:1", 3, 6) == [0, 0, 1, 1, 2, 2] and resolve("PRO:3", 3, 4) == [0, 1, 2, 2]


def test_general_form_with_twelve_layers():
    assert resolve("1-2,(3-10)*3,11-12", 12, 28) == [0, 1] + list(range(2, 10)) * 3 + [10, 11]
    assert resolve("(1-12)*2", 12, 24) == list(range(12)) * 2
    assert resolve("(1-12)", 12) == list(range(12))
    assert resolve(" 1, (2, 3-4)*2 , 12*3 ", 12) == [0, 1, 2, 3, 1, 2, 3, 11, 11, 11]
    assert resolve("((1,2)*2,3)*2", 12) == [0, 1, 0, 1, 2] * 2
    assert resolve("1-12", 6) == [0, 0, 1]  # no ',' or '(': always the paper notation


def test_to_notation_examples():
    assert to_notation(list(range(12)) * 2, 12) == "(1-12)*2"
    assert to_notation(list(range(12)), 12) == "(1-12)"  # a lone range still reads as the general form
    assert to_notation([4], 12) == "(5)"
    assert to_notation(resolve("solar:8", 32, 48), 32) == "1-24,9-32"
    assert to_notation([0, 0, 1, 1], 2) == "1122"
    assert to_notation(resolve("interleave", 2, 8), 2) == "1*4-2*4"
    with pytest.raises(ValueError, match="6-layer base"):
        to_notation([0, 6], 6)
    with pytest.raises(ValueError, match="empty"):
        to_notation([], 6)


@st.composite
def base_and_map(draw):
    """A base and an index map made of a few repeated blocks (random layers or ascending runs)."""
    base = draw(st.integers(1, 14))
    layer = st.integers(0, base - 1)
    run = st.builds(lambda start, size: list(range(start, min(base, start + size))), layer, st.integers(1, 5))
    blocks = draw(st.lists(st.tuples(st.one_of(st.lists(layer, min_size=1, max_size=4), run), st.integers(1, 4)),
                           min_size=1, max_size=4))
    return base, [s for block, count in blocks for s in block * count]


@settings(max_examples=150, deadline=None)
@given(base_and_map())
def test_to_notation_round_trip(case):
    base, index_map = case
    text = to_notation(index_map, base)
    assert resolve(text, base, len(index_map)) == index_map
    if base > 9:
        assert any(c in text for c in ",()")


@st.composite
def general_spec(draw, base, depth=0):
    """(text, expected 0-based map) for the general form, built independently of the parser."""
    terms = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["layer", "range", "repeat", "group"] if depth < 2 else ["layer", "range"]))
        first = draw(st.integers(1, base))
        if kind == "layer":
            terms.append((str(first), [first - 1]))
        elif kind == "range":
            last = draw(st.integers(first, base))
            terms.append((f"{first}-{last}", list(range(first - 1, last))))
        elif kind == "repeat":
            count = draw(st.integers(1, 4))
            terms.append((f"{first}*{count}", [first - 1] * count))
        else:
            text, expected = draw(general_spec(base, depth + 1))
            count = draw(st.integers(1, 3))
            terms.append((f"({text})*{count}", expected * count))
    text = draw(st.sampled_from([",", ", "])).join(t for t, _ in terms)
    return text, [s for _, expected in terms for s in expected]


@st.composite
def any_spec(draw):
    base = draw(st.integers(1, 20))
    if base <= 9 and draw(st.booleans()):  # paper notation
        pieces = []
        for _ in range(draw(st.integers(1, 4))):
            digits = draw(st.lists(st.integers(1, base), min_size=1, max_size=5))
            count = draw(st.integers(1, 5))
            pieces.append(("".join(map(str, digits)) + (f"*{count}" if count > 1 else ""),
                           [d - 1 for d in digits] * count))
        return base, "-".join(t for t, _ in pieces), [s for _, e in pieces for s in e]
    text, expected = draw(general_spec(base))
    if not any(c in text for c in ",()"):
        text = f"({text})"
    return base, text, expected


@settings(max_examples=150, deadline=None)
@given(any_spec())
def test_resolve_matches_independent_expansion(case):
    base, text, expected = case
    index_map = resolve(text, base, len(expected))
    assert index_map == expected
    assert len(index_map) == len(expected) and all(0 <= s < base for s in index_map)


@pytest.mark.parametrize("spec, base, target, fragments", [
    ("1234567", 6, None, ["layer 7", "only 6 layers", "column 7"]),
    ("1203", 6, None, ["layer 0", "1-based", "column 3"]),
    ("1,(3-13)*2", 12, None, ["layer 13", "only 12 layers"]),
    ("(0-5)", 12, None, ["layer 0", "1-based"]),
    ("123456*3", 6, 24, ["18", "24"]),
    ("solar:8", 32, 60, ["solar:8", "60", "K <= 4"]),
    ("12--34", 6, None, ["column 4", "'-'"]),
    ("(1-3", 6, None, ["column 5", "'(' opened at column 1"]),
    ("1,2)", 6, None, ["unmatched ')'", "column 4"]),
    ("12a", 6, None, ["'a'", "column 3"]),
    ("1,(2)*", 6, None, ["repeat count", "column 7"]),
    ("1,3-10*3", 12, None, ["(3-10)*k"]),
    ("(5-3)", 6, None, ["5-3", "downwards"]),
    ("1-12", 12, None, ["general form", "12-layer base"]),
    ("cyclc", 6, 24, ["unknown preset", "cyclc"]),
    ("interleave:2", 6, 24, ["takes no argument"]),
    ("cyclic", 6, None, ["cyclic", "target"]),
    ("solar:x", 32, 48, ["solar:x", "K"]),
    ("solar:40", 32, 48, ["solar:40", "32-layer base"]),
    ("123*0", 6, None, ["*0", "column 5"]),
    ("(1-6)*0", 6, None, ["*0"]),
    ("", 6, None, ["empty"]),
    ("(1-9)*99999999", 9, None, [str(MAX_LAYERS)]),
    ("cyclic", 100_000, 100_000_000, ["target has 100000000 layers", str(MAX_LAYERS)]),  # ran for minutes
    ("1", MAX_LAYERS + 1, None, ["base has 100001 layers"]),
    ("123", 0, None, ["at least 1 layer"]),
    ("pro:3", 32, 42, ["multiple of 3", "32"]),
    ("pro:4", 32, 48, ["builds 40 layers, not 48"]),
    ("pro:0", 32, 40, ["pro:0", "whole number >= 1"]),
    ("pro", 32, 40, ["'pro:'"]),
])
def test_errors(spec, base, target, fragments):
    with pytest.raises(ValueError) as info:
        resolve(spec, base, target)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_describe():
    text = describe(resolve("123456*4", 6, 24), 6)
    assert "target 1-24 <- source 1 2 3 4 5 6 1 2 3" in text
    assert "notation: 123456*4" in text
    assert "R_c = 20/23 = 87.0%" in text
    assert "R_c = 100.0%" in describe([2], 6) and "target 1 <- source 3" in describe([2], 6)


def test_main_prints_map_and_rate(capsys):
    assert main(["12-3456*5-56", "--base", "6", "--target", "24"]) == 0
    out, err = capsys.readouterr()
    assert "source 1 2 3 4 5 6 3 4 5 6" in out and "R_c = 18/23 = 78.3%" in out and err == ""
    assert main(["solar:8", "--base", "32", "--target", "48"]) == 0
    assert "notation: 1-24,9-32" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment, code", [
    (["1234567", "--base", "6"], "layer 7", 1),
    (["cyclic", "--base", "6"], "target", 1),
    (["123456*4", "--base", "6", "--target", "20"], "24 layers", 1),
    (["123"], "--base", 2),  # bad flags: 2, as argparse
    (["123", "--base", "six"], "six", 2),
])
def test_main_bad_input(capsys, argv, fragment, code):
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]


def test_main_help(capsys):
    assert main(["--help"]) == 0
    assert "python -m growth layers" in capsys.readouterr().out
