"""HF <-> lit conversion: exact weights, equal logits, clear refusals (scripts run as a user runs them)."""

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import ROOT, small_config
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


def test_tied_embeddings_are_untied(tmp_path):
    model = hf_model("mha", tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    assert run(HF_SCRIPT, "--checkpoint_dir", tmp_path).returncode == 0
    state = torch.load(tmp_path / "lit_model.pth", weights_only=True)
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])


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
