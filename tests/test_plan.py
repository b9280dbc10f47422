"""`python -m growth plan`: the paper's guidelines (reference stacking-paper.md §4.1, §5.1, §5.4, §7)."""

import json
import math

import pytest

from growth import __main__ as dispatcher
from growth.plan import (
    exact_split,
    flops_split,
    format_count,
    format_sci,
    growth_factor_fit,
    growth_timing,
    main,
    param_count,
    paper_split,
    parse_count,
    suggest_configs,
)
from lit_gpt.config import Config, name_to_config
from lit_gpt.flops import base_accounting, flops_per_token


# Table 4 (Llama models, C = 6 N D): d printed with two decimals, in billions
@pytest.mark.parametrize("N, D, d", [(8e9, 15e12, 6.58), (7e9, 2e12, 11.11), (13e9, 2e12, 15.84),
                                     (70e9, 2e12, 42.48)])
def test_growth_timing_reproduces_table_4(N, D, d):
    assert round(growth_timing(N, 6 * N * D) / 1e9, 2) == d


# §7's further values of the same formula, one decimal, in billions
@pytest.mark.parametrize("N, D, d", [(1.1e9, 100e9, 11.4), (3e9, 300e9, 13.0), (7e9, 300e9, 20.5),
                                     (410e6, 750e9, 3.3)])
def test_growth_timing_reference_values(N, D, d):
    assert round(growth_timing(N, 6 * N * D) / 1e9, 1) == d


def test_growth_timing_shrinks_as_the_budget_grows():  # b > 0 (§7): Llama3-8B at 15T gets less than at 2T
    assert growth_timing(8e9, 6 * 8e9 * 15e12) < growth_timing(8e9, 6 * 8e9 * 2e12)


def test_growth_factor_fit_llama2_7b():  # §7: "predicts g ≈ 19 for Llama2-7B"
    assert round(growth_factor_fit(7e9, 6 * 7e9 * 2e12)) == 19


@pytest.mark.parametrize("fn", [growth_timing, growth_factor_fit])
@pytest.mark.parametrize("N, C", [(0, 1e20), (-1e9, 1e20), (1e9, 0), (1e9, -1.0), (1e9, 1.0), (1e9, 1.0001),
                                  (math.nan, 1e20), (1e9, math.inf)])
def test_fits_refuse_bad_input(fn, N, C):
    with pytest.raises(ValueError):
        fn(N, C)


def _model_params(config: Config) -> int:
    from lit_gpt.model import GPT

    return sum(p.numel() for p in GPT(config).parameters())  # small CPU models: no meta-device warm-up (~2 s)


@pytest.mark.parametrize("name", ["2L128H", "8L256H"])
def test_param_count_matches_the_model(name):
    assert param_count(name_to_config[name]) == _model_params(Config.from_name(name))


@pytest.mark.parametrize("bias", [False, True])
def test_param_count_matches_the_model_any_attention(attention_kind, bias):
    from conftest import small_config

    config = small_config(attention_kind, bias=bias)
    assert param_count(config) == _model_params(config)


def test_param_counts_of_the_paper_configs():  # §5.1's table
    assert param_count(name_to_config["24L2048H"]) == 1_364_297_728
    assert round(param_count(name_to_config["6L2048H"]) / 1e6) == 439
    assert param_count(name_to_config["tiny_LLaMA_3B"]) == 2_397_473_280  # §5.1 rounds it to 2.398B


@pytest.mark.parametrize("N, target, base", [(1.364e9, "24L2048H", "6L2048H"),
                                             (2.4e9, "tiny_LLaMA_3B", "tiny_LLaMA_750M_like3B"),
                                             (5.9e9, "tiny_LLaMA_7B", "tiny_LLaMA_1.7B_like7B"),
                                             (374e6, "24L1024H", "6L1024H")])
def test_suggest_configs_paper_pairs(N, target, base):
    best = suggest_configs(N, 4)[0]
    assert (best.target, best.base) == (target, base)
    assert best.target_layers == 4 * best.base_layers


def test_suggest_configs_pairs_share_the_layer_shape():
    for g in (2, 3, 4, 8):
        for N in (374e6, 1.364e9, 2.4e9, 6e9):
            for pair in suggest_configs(N, g):
                target, base = Config.from_name(pair.target), Config.from_name(pair.base)
                assert target.n_layer == g * base.n_layer
                assert (target.n_embd, target.n_head, target.n_query_groups, target.intermediate_size) == \
                       (base.n_embd, base.n_head, base.n_query_groups, base.intermediate_size)
                assert 0.5 <= pair.ratio <= 2


def test_suggest_configs_other_factors_and_misses():
    assert [(p.target, p.base) for p in suggest_configs(1.364e9, 8)][:1] == [("24L2048H", "3L2048H")]
    assert ("tiny_LLaMA_1.1B", "tiny_LLaMA_400M_like1.1B") in [(p.target, p.base) for p in suggest_configs(1.2e9, 3)]
    assert suggest_configs(70e9, 4) == []  # no registered 70B
    assert suggest_configs(1.364e9, 5) == []  # no layer count divisible by 5 with a partner
    registry = {n: name_to_config[n] for n in ("24L2048H", "tiny_LLaMA_1b")}  # no base registered
    assert suggest_configs(1.364e9, 4, registry=registry) == []
    with pytest.raises(ValueError):
        suggest_configs(1e9, 1)


def test_paper_split():  # §5.4: at g = 4, 10B base + 97.5B target = 100B scratch tokens
    N = 1.364e9
    s = paper_split(N, 6 * N * 100e9, d=10e9, g=4)
    assert s.convention == "paper"
    assert s.base_scratch_tokens == pytest.approx(2.5e9)
    assert s.target_tokens == pytest.approx(97.5e9)
    assert s.scratch_tokens == pytest.approx(100e9)
    assert s.base_flops + s.target_flops == pytest.approx(s.total_flops)
    assert s.base_share + s.target_share == pytest.approx(1)
    assert s.base_share == pytest.approx(0.025)


def test_exact_split_uses_lit_gpt_flops():
    """The exact split is lit_gpt.flops.flops_per_token of both configs, as training logs it: the 10B-token
    6L2048H base costs 2.85B 24L2048H tokens at 2048-token sequences, not the paper's 2.5B."""
    target, base = Config.from_name("24L2048H"), Config.from_name("6L2048H")
    s = exact_split(target, base, 2048, d=10e9, D=100e9)
    assert s.convention == "exact"
    assert s.base_flops == flops_per_token(base, 2048) * 10e9
    assert s.total_flops == flops_per_token(target, 2048) * 100e9
    assert s.base_scratch_tokens == pytest.approx(2.8512e9, rel=1e-4)
    assert s.target_tokens == pytest.approx(100e9 - 2.8512e9, rel=1e-5)
    assert exact_split(target, base, 2048, d=10e9, C=8e20).total_flops == 8e20


def test_flops_split_refuses_a_base_that_eats_the_budget():
    with pytest.raises(ValueError, match="budget"):
        paper_split(1e9, 6 * 1e9 * 1e9, d=10e9, g=4)
    assert paper_split(1e9, 1e20, d=0).target_tokens == pytest.approx(1e20 / 6e9)  # a d = 0 base costs nothing
    with pytest.raises(ValueError):
        paper_split(1e9, 1e20, d=-1)
    with pytest.raises(ValueError):
        flops_split("exact", -1, 1e9, 1e9, 1e20)


@pytest.mark.parametrize("text, value", [("7e9", 7e9), ("7B", 7e9), ("1.1B", 1.1e9), ("300B", 300e9),
                                         ("2T", 2e12), ("8e20", 8e20), ("410M", 410e6), ("1.5k", 1500.0),
                                         (" 15T ", 15e12), ("1b", 1e9), ("2.5e3M", 2.5e9), (".5B", 5e8),
                                         ("100", 100.0), ("1e9", 1e9), ("-5B", -5e9), ("0", 0.0)])
def test_parse_count(text, value):
    assert parse_count(text) == value


def test_parse_count_is_exact_for_decimal_suffixes():
    assert parse_count("1.1B") == 1_100_000_000  # not 1.1 * 1e9 = 1100000000.0000002
    assert parse_count("1.364B") == 1_364_000_000


@pytest.mark.parametrize("text", ["", "B", "7X", "7BB", "7 billion", "1e", "inf", "nan", "1e400", "1e999999999T",
                                  "1e99999999999999999999", "1,000", "0x10", "7B7", "--1"])
def test_parse_count_refuses(text):
    with pytest.raises(ValueError):
        parse_count(text)


@pytest.mark.parametrize("x, text", [(11.11e9, "11.1B"), (6.58e9, "6.58B"), (100e9, "100B"), (2e12, "2.00T"),
                                     (439_379_968, "439M"), (999.6e6, "1.00B"), (1500, "1.50K"), (12.0, "12.0"),
                                     (42.475e9, "42.5B"), (12.96e9, "13.0B"), (2.5e9, "2.50B"), (-5e9, "-5.00B"),
                                     (2.5e15, "2.5e15")])
def test_format_count(x, text):
    assert format_count(x) == text


def test_format_count_without_zeros():
    assert [format_count(x, zeros=False) for x in (2e12, 1.1e9, 100e9, 7e9)] == ["2T", "1.1B", "100B", "7B"]


def test_format_sci():
    assert format_sci(8.184e20) == "8.18e20"
    assert format_sci(6.6e20) == "6.6e20"
    assert format_sci(1e19) == "1e19"


def test_main_text(capsys):
    assert main(["--params", "1.1B", "--tokens", "100B"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "11.4B tokens" in out
    assert "growth factor g      4" in out
    assert "g = 2.17" in out and "mediocre" in out
    assert "target 24L2048H" in out and "base 6L2048H" in out
    assert "D = 100B scratch tokens" in out and "6.6e20 FLOPs" in out
    assert "FLOPs split, exact convention (24L2048H <- 6L2048H, 2048-token" in out
    assert "FLOPs split, paper's convention" in out
    assert "2.86B scratch-equivalent tokens" in out  # 11.4B / 4
    assert "D' = 97.1B" in out


def test_main_agrees_with_the_paper_and_with_speedup(capsys):
    """§5.4: d = 10B on 6L2048H, then 97.5B on 24L2048H, is 100B scratch tokens in the paper's convention: the
    2.5B that eval/speedup.py --convention paper and training's paper_flops count for the same base."""
    argv = ["--target", "24L2048H", "--base", "6L2048H", "--tokens", "100B", "--base_tokens", "10B"]
    assert main([*argv, "--convention", "paper"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs split, exact" not in out and "target params N    1.36B" in out
    assert "= 2.50B scratch-equivalent tokens (d = 10.0B)" in out and "D' = 97.5B tokens after growth" in out
    assert main([*argv, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    record = base_accounting(Config.from_name("6L2048H"), {"tokens": 10e9}, Config.from_name("24L2048H"))
    assert plan["split"]["paper"]["base_scratch_tokens"] == pytest.approx(record["base_scratch_tokens_paper"])
    assert plan["split"]["exact"]["base_scratch_tokens"] == pytest.approx(2.8512e9, rel=1e-4)
    assert plan["split"]["exact_configs"] == {"target": "24L2048H", "base": "6L2048H", "seq_len": 2048, "given": True}


def test_a_given_pair_sets_g_and_n_and_conflicts_are_refused(capsys):
    """4L128H <- 2L128H grows by g = 2: the paper split counts d/2, as growth.json and training do; a --g or
    --params that disagrees with the pair, or a base as large as the target, is refused."""
    argv = ["--target", "4L128H", "--base", "2L128H", "--tokens", "1M", "--base_tokens", "100K", "--seq_len", "64"]
    assert main([*argv, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["growth_factor"]["g"] == 2 and plan["params"] == param_count(Config.from_name("4L128H"))
    assert plan["split"]["paper"]["base_scratch_tokens"] == pytest.approx(50e3)
    assert main([*argv, "--base_tokens", "0", "--convention", "paper"]) == 0
    assert "D' = 1.00M tokens after growth" in capsys.readouterr().out
    for extra, words in ((["--g", "4"], "--g 4 disagrees with --target/--base, whose growth factor is 2"),
                         (["--params", "7B"], "--params 7B disagrees with --target 4L128H's")):
        assert main([*argv, *extra]) == 1
        assert words in capsys.readouterr().err
    assert main(["--target", "4L128H", "--base", "4L128H", "--tokens", "1M"]) == 1
    assert "nothing grows" in capsys.readouterr().err


def test_main_flops_budget(capsys):
    assert main(["--params", "1.364e9", "--flops", "8e20", "--g", "4"]) == 0
    out = capsys.readouterr().out
    assert "C = 8e20 FLOPs" in out and "D = 97.8B" in out
    assert "total              C = 8e20 FLOPs = 95.3B scratch tokens" in out  # exact: 8.4e9 FLOPs per token


def test_main_json_matches_the_functions(capsys):
    assert main(["--params", "7B", "--tokens", "2T", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    C = 6 * 7e9 * 2e12
    assert plan["params"] == 7e9 and plan["flops"] == pytest.approx(C) and plan["tokens"] == pytest.approx(2e12)
    assert round(plan["growth_timing"]["d"] / 1e9, 2) == 11.11
    assert plan["growth_factor"]["g"] == 4 and round(plan["growth_factor"]["eq50"]) == 19
    assert "mediocre" in plan["growth_factor"]["warning"]
    assert plan["configs"][0]["target"] in ("32L4096H", "tiny_LLaMA_7B")
    assert plan["split"]["exact"]["convention"] == "exact"
    paper = plan["split"]["paper"]
    assert paper["base_flops_per_token"] == pytest.approx(6 * 7e9 / 4)
    assert paper["base_flops"] + paper["target_flops"] == pytest.approx(C)
    assert any("extrapolation" in note for note in plan["notes"])


def test_main_without_a_registered_pair(capsys):
    assert main(["--params", "70B", "--tokens", "2T"]) == 0
    out = capsys.readouterr().out
    assert "42.5B tokens" in out and "none registered" in out and "FLOPs split, exact" not in out


@pytest.mark.parametrize("argv, message", [
    (["--params", "0", "--tokens", "1T"], "--params: must be positive"),
    (["--params", "-5B", "--tokens", "1T"], "--params"),
    (["--params=-5B", "--tokens", "1T"], "--params: must be positive"),
    (["--params", "1B", "--tokens", "-1T"], "--tokens"),
    (["--params", "1B", "--flops", "0"], "--flops: must be positive"),
    (["--params", "1B", "--tokens", "1T", "--base-tokens", "-1"], "--base_tokens"),
    (["--params", "1B", "--tokens", "1T", "--target", "24L2048H"], "--target and --base go together"),
    (["--target", "24L2048H", "--base", "nope", "--tokens", "1T"], "nope"),
    (["--target", "6L2048H", "--base", "24L2048H", "--tokens", "1T"], "cannot shrink"),
    (["--params", "1B", "--tokens", "1T", "--seq_len", "0"], "--seq_len must be positive"),
    (["--params", "1B", "--tokens", "1T", "--convention", "both"], "--convention"),
    (["--params", "1B"], "one of the arguments --flops --tokens is required"),
    (["--params", "1B", "--tokens", "1T", "--flops", "1e20"], "not allowed with"),
    (["--tokens", "1T"], "--params"),
    (["--params", "seven", "--tokens", "1T"], "cannot read 'seven'"),
    (["--params", "1B", "--tokens", "1T", "--g", "1"], "--g"),
    (["--params", "1B", "--tokens", "1T", "--g", "2.5"], "--g"),
    (["--params", "1B", "--tokens", "1B"], "budget"),  # the base stage alone costs more than C
    (["--params", "1B", "--flops", "1.0001"], "outside its range"),
    (["--params", "1B", "--tokens", "1T", "--bogus"], "unrecognized arguments"),
])
def test_main_errors(capsys, argv, message):
    assert main(argv) == (1 if message in ("budget", "outside its range", "nope", "cannot shrink") else 2)  # 2: bad flags, as argparse
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


def test_main_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m growth plan")
    for flag in ("--params", "--flops", "--tokens", "--target", "--base", "--base_tokens", "--seq_len",
                 "--convention", "--g", "--json"):
        assert flag in out


def test_dispatcher_routes_plan(capsys):
    assert "plan" in dispatcher.COMMANDS
    assert dispatcher.main(["plan", "--params", "3B", "--tokens", "300B"]) == 0
    assert "13.0B tokens" in capsys.readouterr().out  # §7: 3B@300B -> 13.0B
