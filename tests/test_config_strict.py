"""Configs and recipes are read strictly: a misspelt key, a value of the wrong type or a value outside a flag's
choices is one `error:` line naming the file and the key, never a silent default (issue 11, item 2)."""

import json

import pytest
import yaml
from conftest import small_config

from lit_gpt.cli import parse, parse_count, whole_count
from lit_gpt.config import Config, name_to_config
from pretrain.train_args import TrainArgs

# upstream TinyLlama's lit_config.json for tiny_LLaMA_1b: `asdict` of its Config, which has no rope_base
UPSTREAM_1B = {"org": "Lightning-AI", "name": "tiny_LLaMA_1b", "block_size": 2048, "vocab_size": 32000,
               "padding_multiple": 64, "padded_vocab_size": 32000, "n_layer": 22, "n_head": 32, "n_embd": 2048,
               "rotary_percentage": 1.0, "parallel_residual": False, "bias": False, "n_query_groups": 4,
               "shared_attention_norm": False, "_norm_class": "FusedRMSNorm", "norm_eps": 1e-05,
               "_mlp_class": "LLaMAMLP", "intermediate_size": 5632, "condense_ratio": 1}


def write_config(tmp_path, text):
    path = tmp_path / "lit_config.json"
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


@pytest.mark.parametrize("change, words", [
    ({"n_layers": 4}, ["unknown key 'n_layers' (did you mean 'n_layer'?)"]),
    ({"rope_theta": 500000}, ["unknown key 'rope_theta' (did you mean 'rope_base'?)"]),
    ({"n_layer": "4"}, ['n_layer must be a whole number, got "4"']),
    ({"n_layer": 4.0}, ["n_layer must be a whole number, got 4.0"]),
    ({"bias": 1}, ["bias must be true or false, got 1"]),
    ({"n_embd": None}, ["n_embd must be a whole number, got null"]),
    ({"norm_eps": "1e-5"}, ['norm_eps must be a number, got "1e-5"']),
    ({"n_query_groups": "all"}, ['n_query_groups must be a whole number or null, got "all"']),
    ({"n_head": 0}, ["n_head=0 must be at least 1"]),
    ({"norm_eps": -1}, ["norm_eps=-1 must be a positive finite number"]),
    ({"n_head": 3}, ["not divisible by n_head=3"]),
    ({"tie_embeddings": 1}, ["tie_embeddings must be true or false, got 1"]),
    ({"head_dim": 64.0}, ["head_dim must be a whole number or null, got 64.0"]),
    ({"qkv_bias": True, "bias": True}, ["bias=true already puts a bias on every Linear"]),
])
def test_faulty_keys_and_values_are_refused_naming_the_file(tmp_path, change, words):
    path = write_config(tmp_path, {**UPSTREAM_1B, **change})
    with pytest.raises(ValueError) as refused:
        Config.from_json(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert all(w in message for w in words), message


@pytest.mark.parametrize("text, words", [
    ('{"n_layer": 4,\n "n_head": }\n', ["not valid JSON", "line 2, column 12"]),
    ("", ["not valid JSON", "line 1"]),
    ("[1, 2]", ["expected a JSON object", "list"]),
    (b"\xff\xfe\x00", ["not a text file"]),
])
def test_files_that_are_not_configs_are_refused(tmp_path, text, words):
    path = tmp_path / "lit_config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as refused:
        Config.load(tmp_path)
    assert str(refused.value).startswith(f"{path}: ") and all(w in str(refused.value) for w in words)


def test_every_config_we_and_upstream_wrote_still_reads(tmp_path):
    assert Config.from_json(write_config(tmp_path, UPSTREAM_1B)) == Config.from_name("tiny_LLaMA_1b")
    for name in name_to_config:
        config = Config.from_name(name)
        config.to_json(tmp_path / "lit_config.json")
        assert Config.from_json(tmp_path / "lit_config.json") == config
    # an int is a number; padded_vocab_size and n_query_groups may be null (derived)
    config = Config.from_json(write_config(tmp_path, {**UPSTREAM_1B, "norm_eps": 1, "rotary_percentage": 1,
                                                      "padded_vocab_size": None, "n_query_groups": None}))
    assert (config.norm_eps, config.padded_vocab_size, config.n_query_groups) == (1, 32000, 32)


def test_rope_settings_take_floats_and_write_whole_values_as_ints(tmp_path):
    config = small_config(condense_ratio=2.5, rope_base=500000.0)
    config.to_json(tmp_path / "lit_config.json")
    written = json.loads((tmp_path / "lit_config.json").read_text())
    assert written["condense_ratio"] == 2.5 and type(written["rope_base"]) is int  # as older readers expect
    assert Config.from_json(tmp_path / "lit_config.json") == config
    assert small_config(condense_ratio=4.0).condense_ratio == 4 and isinstance(small_config(rope_base=1e4).rope_base,
                                                                               int)


def test_load_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="did you mean '4L128H'"):
        Config.load("4L128")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'nope.json'}: file not found$"):
        Config.load(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="no lit_config.json in this directory"):
        Config.load(tmp_path)


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_grow_to_a_misspelt_target_is_refused(tmp_path, capsys):
    """The misspelt target used to grow to the default 22 layers under the file's name."""
    from growth.__main__ import main
    from test_growth_depth import save_base

    save_base(tmp_path / "base")
    target = tmp_path / "target.json"
    target.write_text(json.dumps({**json.loads((tmp_path / "base" / "lit_config.json").read_text()), "n_layers": 4}))
    before = sorted(tmp_path.rglob("*"))
    assert main(["grow", "--src", str(tmp_path / "base"), "--target", str(target), "--op", "stack",
                 "--out", str(tmp_path / "grown")]) == 1
    err = one_error_line(capsys)
    assert f"{target}: unknown key 'n_layers' (did you mean 'n_layer'?)" in err
    assert sorted(tmp_path.rglob("*")) == before


def test_training_with_a_misspelt_config_is_refused(tmp_path, capsys):
    from pretrain.tinyllama import run

    config = tmp_path / "model.json"
    config.write_text(json.dumps({**name_to_config["2L128H"], "n_layers": 4}))
    assert run(["--model_name", str(config), "--max_steps", "1", "--out_dir", str(tmp_path / "out")]) == 1
    assert f"{config}: unknown key 'n_layers'" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


# ---- YAML recipes and flags: one validation for both ----

def recipe_args(tmp_path, recipe, *argv):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return parse(TrainArgs, ["--config", str(path), *map(str, argv)])


@pytest.mark.parametrize("recipe, words", [
    ({"strategy": "fdsp"}, ["strategy: invalid choice 'fdsp' (did you mean 'fsdp'? choose from auto, single, ddp, "
                            "fsdp)"]),
    ({"logger": "tensorbord"}, ["logger: invalid choice 'tensorbord' (did you mean 'tensorboard'?"]),
    ({"max_steps": 2.5}, ["max_steps: expected a whole number, got 2.5"]),
    ({"max_steps": True}, ["max_steps: expected a whole number, got True"]),
    ({"learning_rate": "fast"}, ["learning_rate: expected a number, got 'fast'"]),
    ({"max_tokens": "5 bn"}, ["max_tokens: cannot read '5 bn' as a number"]),
    ({"max_tokens": 1.5}, ["max_tokens: '1.5' is not a whole number"]),
    ({"compile": "maybe"}, ["compile: expected true or false, got 'maybe'"]),
    ({"strategy": None}, ["strategy: needs a value", "default auto"]),
    ({"data_prefixes": []}, ["data_prefixes: needs at least one value"]),
    ({"data_weights": [1, "x"]}, ["data_weights: expected a number, got 'x'"]),
    ({"seed": [1, 2]}, ["seed: takes one value, got a list of 2"]),
    ({"out_dir": {"a": 1}}, ["out_dir: expected a single value"]),
    ({"learning_rat": 1e-3}, ["unknown key 'learning_rat' (did you mean 'learning_rate'?)"]),
    ("max_steps: [1\n", ["not valid YAML at line 2"]),
    ("- max_steps\n", ["expected a mapping of flag names to values, found list"]),
    # plain YAML keeps the last of two equal keys: a recipe edited by appending would silently change
    ("max_steps: 3\nseed: 1\nmax_steps: 4\n", ["not valid YAML at line 3: key 'max_steps' given twice"]),
])
def test_recipe_values_are_checked_as_flags_are(tmp_path, capsys, recipe, words):
    with pytest.raises(SystemExit) as stopped:
        recipe_args(tmp_path, recipe)
    err = one_error_line(capsys)
    assert stopped.value.code == 2 and err.startswith(f"error: --config {tmp_path / 'recipe.yaml'}: ")
    assert all(w in err for w in words), err


def test_a_flag_replaces_the_recipes_alternative_and_merge_keys_work(tmp_path):
    """`--max_tokens` over a recipe's `max_steps` was refused as "give exactly one of" both."""
    args = recipe_args(tmp_path, "max_steps: 3\n", "--max_tokens", "512")
    assert (args.max_steps, args.max_tokens) == (None, 512)
    assert recipe_args(tmp_path, "max_steps: 3\n").max_steps == 3
    merged = recipe_args(tmp_path, "<<: {seed: 1, max_steps: 3}\nseed: 2\n")
    assert (merged.seed, merged.max_steps) == (2, 3)  # explicit keys override merged ones, not "given twice"


def test_recipe_values_are_converted_as_flags_are(tmp_path):
    args = recipe_args(tmp_path, "max_tokens: 5B\ncompile: yes\ndata_prefixes: train_x\nval_data_dir: null\n"
                                 "learning_rate: 3e-4\ndata_weights: 2\n")
    assert (args.max_tokens, args.compile, args.data_prefixes, args.val_data_dir) == (5 * 10**9, True, ["train_x"],
                                                                                      None)
    assert (args.learning_rate, args.data_weights) == (3e-4, [2.0])
    for value, tokens in (("2e4", 20000), ("1.5M", 1_500_000), (97500000000, 97_500_000_000), (5.0e9, 5 * 10**9)):
        assert recipe_args(tmp_path, {"max_tokens": value}).max_tokens == tokens
    args = recipe_args(tmp_path, {"max_tokens": "5B", "compile": True}, "--max_tokens", "1e3", "--compile", "false")
    assert (args.max_tokens, args.compile) == (1000, False)  # the command line wins


def test_bool_flags_work_without_a_value_and_counts_take_suffixes():
    assert parse(TrainArgs, ["--compile"]).compile is True
    assert parse(TrainArgs, ["--compile", "false", "--activation_checkpointing"]).compile is False
    args = parse(TrainArgs, ["--compile", "--max_tokens", "5B", "--skip_tokens", "1.5M"])
    assert (args.compile, args.max_tokens, args.skip_tokens) == (True, 5 * 10**9, 1_500_000)
    assert parse(TrainArgs, ["--max_tokens", "2e4"]).max_tokens == 20000
    assert parse(TrainArgs, []).model_name is None  # resolved by pretrain.parallel.model_config


@pytest.mark.parametrize("argv, words", [
    (["--max_tokens", "1.5"], ["argument --max_tokens: '1.5' is not a whole number"]),
    (["--max_tokens", "lots"], ["argument --max_tokens: cannot read 'lots'"]),
    (["--compile", "maybe"], ["argument --compile: expected true or false"]),
    (["--strategy", "fdsp"], ["argument --strategy: invalid choice: 'fdsp'"]),
])
def test_bad_flags_are_one_line(capsys, argv, words):
    with pytest.raises(SystemExit) as stopped:
        parse(TrainArgs, argv)
    err = one_error_line(capsys)
    assert stopped.value.code == 2 and all(w in err for w in words), err


def test_one_count_parser_for_training_and_planning():
    from growth import plan

    assert plan.parse_count is parse_count and parse_count("1.1B") == 1_100_000_000
    assert whole_count("1.1B") == 1_100_000_000 and whole_count("-5") == -5  # the sign is TrainArgs.check's
