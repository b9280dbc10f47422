"""HF <-> lit conversion: exact weights, equal logits, clear refusals (scripts run as a user runs them)."""

import contextlib
import importlib.util
import io
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import ROOT, command_error, mode, small_config, umask
from safetensors.torch import load_file, save_file

from lit_gpt import GPT, Config

HF_SCRIPT = ROOT / "scripts" / "convert_hf_checkpoint.py"
LIT_SCRIPT = ROOT / "scripts" / "convert_lit_checkpoint.py"


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPTS = {HF_SCRIPT: load_script(HF_SCRIPT), LIT_SCRIPT: load_script(LIT_SCRIPT)}


def run(script: Path, *args) -> subprocess.CompletedProcess:
    """The script's main() in this process (importing torch per call would triple the suite's time)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = SCRIPTS[script].main(list(map(str, args)))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_cli(script: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)


def hf_model(kind: str, **overrides):
    c = small_config(kind)
    hf_config = transformers.LlamaConfig(
        vocab_size=c.padded_vocab_size, hidden_size=c.n_embd, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_query_groups,
        max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, **{"tie_word_embeddings": False, **overrides})
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(hf_config).eval()


def files_in(directory: Path):
    return sorted(p.name for p in directory.iterdir())


def test_hf_to_lit_logits(tmp_path, attention_kind):
    model = hf_model(attention_kind)
    model.save_pretrained(tmp_path)
    result = run(HF_SCRIPT, "--checkpoint_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    config = Config.from_json(tmp_path / "lit_config.json")
    lit = GPT(config)
    lit.load_state_dict(torch.load(tmp_path / "lit_model.pth", weights_only=True))
    idx = torch.randint(0, config.padded_vocab_size, (2, config.block_size))
    with torch.no_grad():
        diff = (lit(idx) - model(idx).logits).abs().max().item()
    assert diff <= 1e-4


def test_lit_to_hf_logits(tmp_path, attention_kind):
    torch.manual_seed(1)
    config = small_config(attention_kind)
    lit = GPT(config).eval()
    torch.save(lit.state_dict(), tmp_path / "lit_model.pth")
    config.to_json(tmp_path / "lit_config.json")
    result = run(LIT_SCRIPT, "--checkpoint_path", tmp_path / "lit_model.pth", "--out_dir", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    idx = torch.randint(0, config.padded_vocab_size, (2, config.block_size))
    with torch.no_grad():
        diff = (lit(idx) - hf(idx).logits).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("attention_kind", ["gqa"])
def test_round_trip_is_bit_exact_from_the_command_line(tmp_path, attention_kind):
    test_round_trip_is_bit_exact(tmp_path, attention_kind, runner=run_cli)


def test_round_trip_is_bit_exact(tmp_path, attention_kind, runner=run):
    hf_model(attention_kind).save_pretrained(tmp_path / "a")
    assert runner(HF_SCRIPT, "--checkpoint_dir", tmp_path / "a").returncode == 0
    result = runner(LIT_SCRIPT, "--checkpoint_path", tmp_path / "a" / "lit_model.pth", "--out_dir", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    before, after = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert sorted(before) == sorted(after)
    for k in before:
        assert before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]), k
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in "ab")
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "vocab_size", "max_position_embeddings", "rms_norm_eps"):
        assert a[key] == b[key], key


def test_pytorch_bin_and_upstream_training_checkpoint(tmp_path):
    model = hf_model("gqa")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    assert run(HF_SCRIPT, "--checkpoint_dir", tmp_path, "--dtype", "bfloat16").returncode == 0
    lit_state = torch.load(tmp_path / "lit_model.pth", weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in lit_state.values())
    # upstream's iter-NNNNNN-ckpt.pth keeps the weights under "model"
    ckpt = tmp_path / "run" / "iter-000100-ckpt.pth"
    ckpt.parent.mkdir()
    torch.save({"model": lit_state, "iter_num": 100, "step_count": 12}, ckpt)
    result = run(LIT_SCRIPT, "--checkpoint_path", ckpt, "--out_dir", tmp_path / "hf",
                 "--model_name", "tiny_LLaMA_1b")
    assert result.returncode == 1 and "do not match the config" in result.stderr  # wrong config: refused
    (tmp_path / "lit_config.json").rename(ckpt.parent / "lit_config.json")
    assert run(LIT_SCRIPT, "--checkpoint_path", ckpt, "--out_dir", tmp_path / "hf").returncode == 0
    assert files_in(tmp_path / "hf") == ["config.json", "model.safetensors"]


def test_tied_embeddings_stay_tied(tmp_path):  # every family and both directions: tests/test_families.py
    model = hf_model("mha", tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    assert run(HF_SCRIPT, "--checkpoint_dir", tmp_path).returncode == 0
    assert Config.from_json(tmp_path / "lit_config.json").tie_embeddings
    state = torch.load(tmp_path / "lit_model.pth", weights_only=True)
    assert state["lm_head.weight"].untyped_storage().data_ptr() == state["transformer.wte.weight"].untyped_storage().data_ptr()


def test_tokenizer_files_travel(tmp_path):
    from tokenizers import Tokenizer, models

    config = small_config("mha")
    torch.save(GPT(config).state_dict(), tmp_path / "lit_model.pth")
    config.to_json(tmp_path / "lit_config.json")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i + 3 for i in range(40)}}
    Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    assert run(LIT_SCRIPT, "--checkpoint_path", tmp_path / "lit_model.pth", "--out_dir", tmp_path / "hf").returncode == 0
    assert files_in(tmp_path / "hf") == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"], hf_config["vocab_size"]) == (1, 2, 96)


# ---- bad input: one line on stderr, exit 1, nothing written ----

def assert_refused(result, *words):
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert "Traceback" not in result.stderr
    for w in words:
        assert w in errors[0]


def test_missing_inputs(tmp_path):
    assert_refused(run(HF_SCRIPT, "--checkpoint_dir", tmp_path / "nope"), "not found")
    (tmp_path / "empty").mkdir()
    assert_refused(run(HF_SCRIPT, "--checkpoint_dir", tmp_path / "empty"), "config.json")
    assert files_in(tmp_path / "empty") == []
    assert_refused(run(HF_SCRIPT, "--checkpoint_dir", tmp_path / "empty", "--model_name", "tiny_LLaMA_120M"),
                   "no *.safetensors")
    assert_refused(run(LIT_SCRIPT, "--checkpoint_path", tmp_path / "x.pth", "--out_dir", tmp_path / "o"),
                   "not found")
    assert not (tmp_path / "o").exists()


def test_mismatched_state_dict_writes_nothing(tmp_path):
    model = hf_model("gqa")
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, tmp_path / "model.safetensors")
    before = files_in(tmp_path)
    assert_refused(run(HF_SCRIPT, "--checkpoint_dir", tmp_path), "up_proj")
    assert files_in(tmp_path) == before


def test_vocab_mismatch(tmp_path):
    hf_model("gqa").save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf["vocab_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert_refused(run(HF_SCRIPT, "--checkpoint_dir", tmp_path), "vocab mismatch")
    assert not (tmp_path / "lit_model.pth").exists()


def test_lit_checkpoint_vocab_mismatch(tmp_path):
    config = small_config("mqa")
    torch.save(GPT(config).state_dict(), tmp_path / "lit_model.pth")
    small_config("mqa", vocab_size=200).to_json(tmp_path / "lit_config.json")
    assert_refused(run(LIT_SCRIPT, "--checkpoint_path", tmp_path / "lit_model.pth", "--out_dir", tmp_path / "hf"),
                   "vocab mismatch")
    assert not (tmp_path / "hf").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_pickle_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "lit_model.pth")
    small_config().to_json(tmp_path / "lit_config.json")
    result = run(LIT_SCRIPT, "--checkpoint_path", tmp_path / "lit_model.pth", "--out_dir", tmp_path / "hf")
    assert_refused(result, "cannot read")
    assert "pwned" not in result.stdout


# ---- RoPE settings: either config style, exact factors, refusals ----

def write_rope_style(directory: Path, style: str, settings: dict) -> None:
    """Rewrites a saved config.json with `settings` (rope_type, factor, rope_theta, ...) the way transformers 5
    (`rope_parameters`) or older versions (`rope_scaling` with `type`, top-level rope_theta) write them."""
    hf = json.loads((directory / "config.json").read_text())
    hf.pop("rope_parameters", None)
    settings = dict(settings)
    if style == "rope_parameters":
        hf["rope_parameters"] = settings
    else:
        hf["rope_theta"] = settings.pop("rope_theta", 10000.0)
        hf["rope_scaling"] = {"type": settings.pop("rope_type"), **settings}
    (directory / "config.json").write_text(json.dumps(hf))


@pytest.mark.parametrize("style", ["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("factor, theta", [(2, 10000.0), (2.5, 12345.5)])
def test_linear_rope_scaling_is_exact_both_ways(tmp_path, style, factor, theta):
    settings = {"rope_type": "linear", "factor": float(factor), "rope_theta": theta}
    hf_model("gqa", rope_parameters=dict(settings)).save_pretrained(tmp_path / "a")
    write_rope_style(tmp_path / "a", style, settings)
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "a", dtype=torch.float32).eval()
    assert (model.config.rope_parameters["factor"], model.config.rope_parameters["rope_theta"]) == (factor, theta)
    result = run(HF_SCRIPT, "--checkpoint_dir", tmp_path / "a")
    assert result.returncode == 0, result.stderr
    config = Config.from_json(tmp_path / "a" / "lit_config.json")
    assert (config.condense_ratio, config.rope_base) == (factor, theta)
    lit = GPT(config).eval()
    lit.load_state_dict(torch.load(tmp_path / "a" / "lit_model.pth", weights_only=True))
    idx = torch.randint(0, config.padded_vocab_size, (2, config.block_size))
    with torch.no_grad():
        assert (lit(idx) - model(idx).logits).abs().max().item() <= 1e-4
    # and back: transformers loads the same model from what the reverse converter writes
    result = run(LIT_SCRIPT, "--checkpoint_path", tmp_path / "a" / "lit_model.pth", "--out_dir", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "b", dtype=torch.float32).eval()
    assert back.config.rope_parameters == {"rope_type": "linear", "factor": factor, "rope_theta": theta}
    with torch.no_grad():
        assert (lit(idx) - back(idx).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("style", ["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("settings, words", [  # {block}: the key written; {type}: rope_type or its old name type
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
      "original_max_position_embeddings": 16}, ["{block}.{type}='longrope'", "default, linear and llama3"]),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, ["{block}.{type}='yarn'"]),
    ({"rope_type": "dynamic", "factor": 2.0}, ["{block}.{type}='dynamic'"]),
    ({"rope_type": "linear"}, ["{block}.{type}='linear' without a factor"]),
    ({"rope_type": "linear", "factor": "2"}, ["{block}.factor='2'", "positive number"]),
    ({"rope_type": "llama3", "factor": 8.0}, ["{block}.{type}='llama3' without a low_freq_factor, a high_freq_factor"]),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0},
     ["{block}.low_freq_factor=4 and {block}.high_freq_factor=4", "low_freq_factor < high_freq_factor"]),
    ({"rope_type": "default", "partial_rotary_factor": 0.5}, ["{block}.partial_rotary_factor=0.5"]),
])
def test_rope_we_cannot_represent_is_refused(tmp_path, style, settings, words):
    hf_model("gqa").save_pretrained(tmp_path)
    write_rope_style(tmp_path, style, settings)
    before = files_in(tmp_path)
    names = {"block": style, "type": "rope_type" if style == "rope_parameters" else "type"}
    result = run(HF_SCRIPT, "--checkpoint_dir", tmp_path)
    assert_refused(result, f"{tmp_path / 'config.json'} sets ", *(w.format(**names) for w in words))
    assert files_in(tmp_path) == before


def test_rope_settings_that_disagree_are_refused(tmp_path):
    hf_model("gqa", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}).save_pretrained(
        tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf["rope_scaling"] = {"type": "linear", "factor": 4.0}  # transformers 5 would take this one, 4.x the other
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert_refused(run(HF_SCRIPT, "--checkpoint_dir", tmp_path), "rope_parameters.factor=2.0",
                   "rope_scaling.factor=4.0", "keep one")


# ---- outputs: replaced only with --force, written whole under the umask, failed writes leave nothing ----

def lit_checkpoint(directory: Path) -> Path:
    config = small_config("gqa")
    directory.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(GPT(config).state_dict(), directory / "lit_model.pth")
    config.to_json(directory / "lit_config.json")
    return directory / "lit_model.pth"


def test_lit_output_is_replaced_only_with_force(tmp_path):
    ckpt = lit_checkpoint(tmp_path / "run")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_refused(run(LIT_SCRIPT, "--checkpoint_path", ckpt, "--out_dir", out), f"{out} exists", "--force")
    assert files_in(out) == ["notes.txt"]
    with umask(0o027):
        result = run(LIT_SCRIPT, "--checkpoint_path", ckpt, "--out_dir", out, "--force")
    assert result.returncode == 0, result.stderr
    assert files_in(out) == ["config.json", "model.safetensors"]
    assert mode(out) == 0o750 and {mode(out / f) for f in files_in(out)} == {0o640}
    assert files_in(tmp_path) == ["hf", "run"]  # no temporary directory left


@pytest.mark.parametrize("out", [".", "run"])
def test_out_dir_holding_the_checkpoint_is_refused(tmp_path, out):
    ckpt = lit_checkpoint(tmp_path / "run")
    result = run(LIT_SCRIPT, "--checkpoint_path", ckpt, "--out_dir", tmp_path / out, "--force")
    assert_refused(result, "holds the checkpoint", "choose another path")
    assert files_in(tmp_path) == ["run"] and files_in(tmp_path / "run") == ["lit_config.json", "lit_model.pth"]


def test_hf_conversion_replaces_lit_files_only_with_force(tmp_path):
    hf_model("gqa").save_pretrained(tmp_path)
    assert run(HF_SCRIPT, "--checkpoint_dir", tmp_path).returncode == 0
    before, weights = files_in(tmp_path), (tmp_path / "lit_model.pth").read_bytes()
    result = run(HF_SCRIPT, "--checkpoint_dir", tmp_path, "--dtype", "bfloat16")
    assert_refused(result, f"{tmp_path / 'lit_model.pth'} exists", "--force")
    assert files_in(tmp_path) == before and (tmp_path / "lit_model.pth").read_bytes() == weights
    with umask(0o027):
        assert run(HF_SCRIPT, "--checkpoint_dir", tmp_path, "--dtype", "bfloat16", "--force").returncode == 0
    state = torch.load(tmp_path / "lit_model.pth", weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    assert files_in(tmp_path) == before
    assert mode(tmp_path / "lit_model.pth") == mode(tmp_path / "lit_config.json") == 0o640


def run_limited(script: Path, *args, limit: int = 64 * 1024) -> subprocess.CompletedProcess:
    """The script with writes past `limit` bytes failing (EFBIG), as on a full disk; root ignores chmod."""
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit_file_size)


def test_failed_hf_conversion_write_names_the_file_and_leaves_nothing(tmp_path):
    hf_model("gqa").save_pretrained(tmp_path)
    before = files_in(tmp_path)
    result = run_limited(HF_SCRIPT, "--checkpoint_dir", tmp_path)
    assert_refused(result, f"{tmp_path / 'lit_model.pth'}: write failed", "disk full or file size limit?")
    assert files_in(tmp_path) == before


def test_failed_lit_conversion_write_names_the_file_and_leaves_nothing(tmp_path):
    ckpt = lit_checkpoint(tmp_path / "run")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "old.txt").write_text("old")
    # over an existing output (--force): the old one stays as it was
    result = run_limited(LIT_SCRIPT, "--checkpoint_path", ckpt, "--out_dir", out, "--force")
    assert_refused(result, f"{out / 'model.safetensors'}: write failed (File too large)")
    assert files_in(out) == ["old.txt"] and files_in(tmp_path) == ["hf", "run"]
    # a path below a regular file
    (tmp_path / "file").write_text("x")
    result = run(LIT_SCRIPT, "--checkpoint_path", ckpt, "--out_dir", tmp_path / "file" / "hf")
    assert_refused(result, f"{tmp_path / 'file'}: a path component is a file")
    assert files_in(tmp_path) == ["file", "hf", "run"]


# ---- upstream TinyLlama's form: --checkpoint_name NAME --out_dir DIR (the folder holding it) ----

ITER = "iter-000100-ckpt.pth"


def upstream_checkpoint(directory: Path, config: Config = None) -> GPT:
    """An upstream training checkpoint, DIR/iter-000100-ckpt.pth, of a tiny named config; returns its model."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2)
    model = GPT(config or Config.from_name("2L128H")).eval()
    torch.save({"model": model.state_dict(), "iter_num": 100, "step_count": 12}, directory / ITER)
    return model


def test_upstream_form_loads_in_transformers(tmp_path):
    lit = upstream_checkpoint(tmp_path)
    argv = ["--checkpoint_name", ITER, "--out_dir", tmp_path, "--model_name", "2L128H"]
    assert run(LIT_SCRIPT, *argv).returncode == 0  # upstream's default --model_only True: the weights alone
    assert files_in(tmp_path) == ["iter-000100-ckpt.bin", ITER]
    assert_refused(run(LIT_SCRIPT, *argv, "--model_only", "False"), f"{tmp_path / 'iter-000100-ckpt.bin'} exists",
                   "--force")
    result = run(LIT_SCRIPT, *argv, "--model_only", "False", "--force")
    assert result.returncode == 0, result.stderr
    assert files_in(tmp_path) == ["config.json", "iter-000100-ckpt.bin", ITER]
    hf = transformers.LlamaForCausalLM(transformers.AutoConfig.from_pretrained(tmp_path)).eval()
    hf.load_state_dict(torch.load(tmp_path / "iter-000100-ckpt.bin", weights_only=True))  # strict: every key
    idx = torch.randint(0, lit.config.padded_vocab_size, (2, 64))
    with torch.no_grad():
        assert (lit(idx) - hf(idx).logits).abs().max().item() <= 1e-4


def test_upstream_form_writes_the_tensors_of_our_form(tmp_path):
    """A bare lit_model.pth with lit_config.json beside it (no --model_name); --model_only in every spelling."""
    lit_checkpoint(tmp_path / "run")
    result = run(LIT_SCRIPT, "--checkpoint_path", tmp_path / "run" / "lit_model.pth", "--out_dir", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    ours = load_file(tmp_path / "hf" / "model.safetensors")
    for spelling, with_config in (("True", False), ("1", False), ("true", False), ("false", True), ("0", True)):
        result = run(LIT_SCRIPT, "--checkpoint_name", "lit_model.pth", "--out_dir", tmp_path / "run", "--model_only",
                     spelling, "--force")
        assert result.returncode == 0, result.stderr
        assert ((tmp_path / "run" / "config.json").is_file()) == with_config, spelling
    assert files_in(tmp_path / "run") == ["config.json", "lit_config.json", "lit_model.bin", "lit_model.pth"]
    upstream = torch.load(tmp_path / "run" / "lit_model.bin", weights_only=True)
    assert sorted(upstream) == sorted(ours) and all(torch.equal(upstream[k], ours[k]) for k in ours)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == json.loads(
        (tmp_path / "hf" / "config.json").read_text())


def test_upstream_form_bad_input(tmp_path, capsys):
    main = SCRIPTS[LIT_SCRIPT].main
    upstream_checkpoint(tmp_path)
    name = ["--checkpoint_name", ITER, "--out_dir", str(tmp_path)]
    assert "or --checkpoint_name NAME (upstream's form, --out_dir the folder holding it), not both" in command_error(
        capsys, main, [*name, "--checkpoint_path", str(tmp_path / ITER)], 2)
    assert "--model_only belongs to upstream's form" in command_error(
        capsys, main, ["--checkpoint_path", str(tmp_path / ITER), "--out_dir", str(tmp_path / "hf"),
                       "--model_only", "False"], 2)
    assert "give --checkpoint_path FILE" in command_error(capsys, main, ["--out_dir", str(tmp_path)], 2)
    assert "expected true or false, got 'maybe'" in command_error(capsys, main, [*name, "--model_only", "maybe"], 2)
    err = command_error(capsys, main, ["--checkpoint_name", "iter-000200-ckpt.pth", "--out_dir", str(tmp_path)], 1)
    assert f"{tmp_path / 'iter-000200-ckpt.pth'}: not found; in upstream's form (--checkpoint_name) --out_dir is " \
           "the folder that holds the checkpoint" in err
    assert "no lit_config.json beside" in command_error(capsys, main, name, 1)
    assert "keys do not match the config" in command_error(capsys, main, [*name, "--model_name", "1L128H"], 1)
    (tmp_path / "config.json").write_text("{}")  # someone's: kept without --force, and nothing else is written
    err = command_error(capsys, main, [*name, "--model_name", "2L128H", "--model_only", "False"], 1)
    assert f"{tmp_path / 'config.json'} exists; pass --force to replace it" in err
    assert files_in(tmp_path) == ["config.json", ITER]
    # the checks of our form hold here too: a tokenizer with more tokens than embedding rows
    from tokenizers import Tokenizer, models

    lit_checkpoint(tmp_path / "run")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i + 3 for i in range(100)}}
    Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(tmp_path / "run" / "tokenizer.json"))
    err = command_error(capsys, main, ["--checkpoint_name", "lit_model.pth", "--out_dir", str(tmp_path / "run")], 1)
    assert "vocab mismatch: the tokenizer" in err and "103 tokens" in err
    assert files_in(tmp_path / "run") == ["lit_config.json", "lit_model.pth", "tokenizer.json"]


def test_failed_upstream_form_write_leaves_nothing(tmp_path):
    upstream_checkpoint(tmp_path)
    (tmp_path / "iter-000100-ckpt.bin").write_text("old")
    (tmp_path / "config.json").write_text("{}")
    result = run_limited(LIT_SCRIPT, "--checkpoint_name", ITER, "--out_dir", tmp_path, "--model_name", "2L128H",
                         "--model_only", "False", "--force")
    assert_refused(result, f"{tmp_path / 'iter-000100-ckpt.bin'}: write failed", "disk full or file size limit?")
    assert files_in(tmp_path) == ["config.json", "iter-000100-ckpt.bin", ITER]  # no temporary file left
    assert (tmp_path / "iter-000100-ckpt.bin").read_text() == "old" and (tmp_path / "config.json").read_text() == "{}"
