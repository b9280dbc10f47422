"""Llama-family checkpoints (issue 13, item 1): tied embeddings, Llama 3 RoPE, q/k/v biases (Qwen2), Llama's
attention_bias and a head_dim apart from hidden / heads, each exact against transformers' own implementation:
HF -> lit logits within 1e-4 in fp32, HF -> lit -> HF bit-exact, transformers' Auto classes load what we write.
Shapes and settings follow reference families-and-schedules.md §1-2, at a tiny size."""

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from conftest import ROOT, small_config
from safetensors.torch import load_file

from lit_gpt import GPT, Config
from lit_gpt.config import name_to_config, param_count
from lit_gpt.convert import copy_weights_llama, lit_config_to_hf
from lit_gpt.fused_rotary_embedding import build_rope_cache, llama3_inv_freq
from lit_gpt.materialize import init_parameters, load_parameters, open_weights
from lit_gpt.utils import CheckpointError, num_parameters


def _script(name: str):
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HF_TO_LIT, LIT_TO_HF = _script("convert_hf_checkpoint"), _script("convert_lit_checkpoint")


def run(script, *args):
    """(exit code, stderr) of the script's main() in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = script.main(list(map(str, args)))
    return code, err.getvalue()


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               # 64 with head size 16 and theta 500000 puts frequencies in all three bands (kept, blended, scaled)
               "original_max_position_embeddings": 64, "rope_theta": 500000.0}
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)
# family -> (transformers config class, its settings, the Config fields the conversion must produce)
FAMILIES = {
    "llama": (transformers.LlamaConfig, dict(tie_word_embeddings=False), dict(tie_embeddings=False)),
    "smollm2": (transformers.LlamaConfig,
                dict(hidden_size=96, num_attention_heads=6, tie_word_embeddings=True, rms_norm_eps=1e-5,
                     rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
                dict(tie_embeddings=True, rope_base=100000, n_head=6, n_query_groups=2)),
    "llama3.2": (transformers.LlamaConfig, dict(tie_word_embeddings=True, rope_parameters=dict(LLAMA3_ROPE)),
                 dict(tie_embeddings=True, rope_base=500000, condense_ratio=32, rope_low_freq_factor=1,
                      rope_high_freq_factor=4, rope_original_max_seq_len=64)),
    "qwen2": (transformers.Qwen2Config,
              dict(tie_word_embeddings=True, rms_norm_eps=1e-6,
                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
              dict(tie_embeddings=True, qkv_bias=True, proj_bias=False, bias=False, rope_base=1000000, norm_eps=1e-6)),
    "head_dim": (transformers.LlamaConfig, dict(head_dim=24, attention_bias=True, tie_word_embeddings=False),
                 dict(head_dim=24, qkv_bias=True, proj_bias=True, bias=False)),
    "all_bias": (transformers.LlamaConfig, dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
                 dict(bias=True, qkv_bias=False, proj_bias=False)),
}
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM"}


def hf_family_model(family: str, seed: int = 0):
    """A random tiny transformers model of `family`. Every parameter is drawn at random (transformers' init
    leaves biases at zero and norms at one, which would hide a misplaced bias or norm)."""
    config_class, settings, _ = FAMILIES[family]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config_class(**{**TINY, **settings}), dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.5 if name.endswith("bias") else 1 / math.sqrt(param.shape[-1]))
    return model.eval()


def logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return getattr(out, "logits", out)


MEASURED = {}  # family -> max |lit - HF| of the logits, printed with -s


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_is_exact_both_ways(tmp_path, family):
    hf = hf_family_model(family)
    hf.save_pretrained(tmp_path / "hf")
    code, err = run(HF_TO_LIT, "--checkpoint_dir", tmp_path / "hf")
    assert code == 0, err
    config = Config.from_json(tmp_path / "hf" / "lit_config.json")
    for field, value in FAMILIES[family][2].items():
        assert getattr(config, field) == value, field
    state = torch.load(tmp_path / "hf" / "lit_model.pth", weights_only=True)
    if config.tie_embeddings:  # one tensor under both keys, stored once
        assert state["lm_head.weight"].untyped_storage().data_ptr() == \
            state["transformer.wte.weight"].untyped_storage().data_ptr()
    lit = GPT(config).eval()
    lit.load_state_dict(state)
    assert (lit.lm_head.weight is lit.transformer.wte.weight) == config.tie_embeddings
    assert num_parameters(lit) == param_count(config) == hf.num_parameters()

    idx = torch.randint(0, config.padded_vocab_size, (2, config.block_size), generator=torch.Generator().manual_seed(1))
    expected = logits(hf, idx)
    diff = (logits(lit, idx) - expected).abs().max().item()
    MEASURED[family] = diff
    print(f"{family}: max |logit diff| = {diff:.2e} (logits up to {expected.abs().max().item():.1f})")
    assert diff <= 1e-4

    code, err = run(LIT_TO_HF, "--checkpoint_path", tmp_path / "hf" / "lit_model.pth", "--out_dir", tmp_path / "back")
    assert code == 0, err
    before, after = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(before) == sorted(after)
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert written["architectures"] == [ARCHITECTURES.get(family, "LlamaForCausalLM")]
    assert written["tie_word_embeddings"] is config.tie_embeddings
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    assert type(back) is type(hf) and back.config.rope_parameters == hf.config.rope_parameters
    assert torch.equal(logits(back, idx), expected)  # the same model, computed the same way
    # and what we wrote reads back as the same Config
    code, err = run(HF_TO_LIT, "--checkpoint_dir", tmp_path / "back")
    assert code == 0, err
    assert Config.from_json(tmp_path / "back" / "lit_config.json").differences(config, ignore=("name",)) == {}


# ---- Llama 3 RoPE against transformers' own init function ----

@pytest.mark.parametrize("head_dim, theta, factor, low, high, original", [
    (64, 500000.0, 32.0, 1.0, 4.0, 8192),  # Llama-3.2-1B (reference §1)
    (128, 500000.0, 8.0, 1.0, 4.0, 8192),  # Llama-3.1-8B
    (16, 500000.0, 32.0, 1.0, 4.0, 64),  # the tiny family above
    (32, 12345.5, 2.5, 1.5, 3.25, 100),  # non-integer factors
])
def test_llama3_inv_freq_equals_transformers(head_dim, theta, factor, low, high, original):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": original, "rope_theta": theta}
    hf_config = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2,
                                         max_position_embeddings=2 * original, rope_parameters=rope)
    expected, scale = ROPE_INIT_FUNCTIONS["llama3"](hf_config)
    plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    ours = llama3_inv_freq(plain, factor, low, high, original)
    assert scale == 1.0 and torch.equal(ours, expected)
    assert not torch.equal(ours, plain) and not torch.equal(ours, plain / factor)
    # the whole cache, as the model uses it, against transformers' rotary embedding
    config = small_config(block_size=256, n_embd=head_dim * 2, n_head=2, n_query_groups=2, rope_base=theta,
                          condense_ratio=factor, rope_low_freq_factor=low, rope_high_freq_factor=high,
                          rope_original_max_seq_len=original)
    model = GPT(config)
    cos, sin = model.rope_cos, model.rope_sin
    cos_hf, sin_hf = LlamaRotaryEmbedding(hf_config)(torch.zeros(1, 256, head_dim), torch.arange(256)[None])
    assert torch.equal(cos, cos_hf[0, :, :head_dim // 2]) and torch.equal(sin, sin_hf[0, :, :head_dim // 2])
    assert torch.equal(cos, build_rope_cache(256, head_dim, theta, factor, llama3=(low, high, original))[0])


# ---- a tied model stays tied: meta build, materialize, training step ----

def tied_config(**overrides):
    return small_config("gqa", tie_embeddings=True, qkv_bias=True, **overrides)


def meta_model(config):
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    return model


def test_tied_model_stays_tied_through_meta_build_and_materialize(tmp_path):
    config = tied_config()
    model = meta_model(config)
    assert model.lm_head.weight is model.transformer.wte.weight  # to_empty gives modules new parameters
    init_parameters(model, 3407)
    model.reset_rope_cache()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert num_parameters(model) == param_count(config) == param_count(small_config("gqa", qkv_bias=True)) - 96 * 64
    torch.save(model.state_dict(), tmp_path / "lit_model.pth")
    loaded = meta_model(config)
    load_parameters(loaded, open_weights(tmp_path / "lit_model.pth"))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert loaded.to(torch.bfloat16).lm_head.weight is loaded.transformer.wte.weight


def test_untied_weights_are_refused_by_a_tied_config(tmp_path):
    untied = GPT(small_config("gqa", qkv_bias=True)).state_dict()
    torch.save(untied, tmp_path / "lit_model.pth")
    with pytest.raises(CheckpointError, match="ties lm_head.weight to transformer.wte.weight.*saved untied"):
        load_parameters(meta_model(tied_config()), open_weights(tmp_path / "lit_model.pth"))
    with pytest.raises(CheckpointError, match="ties the embeddings.*saved untied"):
        copy_weights_llama(tied_config(), untied)


def test_tied_gradient_sums_both_uses_and_one_optimizer_state():
    config = tied_config()
    torch.manual_seed(0)
    tied = GPT(config)
    untied = GPT(small_config("gqa", qkv_bias=True))
    untied.load_state_dict(tied.state_dict())  # the same values, two parameters
    idx = torch.randint(0, 96, (2, 16))
    for model in (tied, untied):
        torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    summed = untied.transformer.wte.weight.grad + untied.lm_head.weight.grad
    torch.testing.assert_close(tied.transformer.wte.weight.grad, summed, rtol=1e-5, atol=1e-7)
    optimizer = torch.optim.AdamW(tied.parameters(), lr=1e-2)
    optimizer.step()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert len(optimizer.state) == len(list(tied.parameters())) == len(tied.state_dict()) - 1


# ---- configs: named shapes, old files, round trips, refusals ----

PUBLIC = ["SmolLM2-135M", "SmolLM2-360M", "Llama-3.2-1B", "Qwen2.5-0.5B"]


@pytest.mark.parametrize("name", PUBLIC)
def test_named_public_shapes_match_transformers(name):
    """Our config of each public model, written as config.json, builds in transformers the model with the same
    parameters and tensor shapes (on the meta device: no memory)."""
    config = Config.from_name(name)
    hf_config = transformers.AutoConfig.for_model(**lit_config_to_hf(config, torch.bfloat16))
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config)
        ours = copy_weights_llama(config, GPT(config).state_dict())
    assert param_count(config) == hf.num_parameters()
    hf_shapes = {k: v.shape for k, v in hf.state_dict().items()}
    assert {k: v.shape for k, v in ours.items()} == {k: s for k, s in hf_shapes.items()
                                                     if not (config.tie_embeddings and k == "lm_head.weight")}


def test_public_configs_hold_the_reference_table():
    table = {  # reference families-and-schedules.md §1: hidden, ffn, layers, heads, kv heads, vocab, theta, eps
        "SmolLM2-135M": (576, 1536, 30, 9, 3, 49152, 100000, 1e-5),
        "SmolLM2-360M": (960, 2560, 32, 15, 5, 49152, 100000, 1e-5),
        "Llama-3.2-1B": (2048, 8192, 16, 32, 8, 128256, 500000, 1e-5),
        "Qwen2.5-0.5B": (896, 4864, 24, 14, 2, 151936, 1000000, 1e-6),
    }
    for name, shape in table.items():
        c = Config.from_name(name)
        assert (c.n_embd, c.intermediate_size, c.n_layer, c.n_head, c.n_query_groups, c.padded_vocab_size,
                c.rope_base, c.norm_eps) == shape, name
        assert c.head_size == 64 and c.tie_embeddings, name
    assert Config.from_name("Llama-3.2-1B").rope_llama3 == (1, 4, 8192)
    assert Config.from_name("Llama-3.2-1B").condense_ratio == 32
    assert Config.from_name("Qwen2.5-0.5B").qkv_bias and not Config.from_name("SmolLM2-135M").qkv_bias


def test_new_fields_round_trip_and_stay_out_of_plain_files(tmp_path):
    config = small_config(tie_embeddings=True, qkv_bias=True, proj_bias=True, head_dim=24, condense_ratio=8.5,
                          rope_low_freq_factor=1.5, rope_high_freq_factor=4.0, rope_original_max_seq_len=16)
    config.to_json(tmp_path / "new.json")
    assert Config.from_json(tmp_path / "new.json") == config
    assert json.loads((tmp_path / "new.json").read_text())["rope_high_freq_factor"] == 4
    plain = Config.from_name("tiny_LLaMA_1b")
    plain.to_json(tmp_path / "plain.json")
    written = json.loads((tmp_path / "plain.json").read_text())
    assert not {"tie_embeddings", "qkv_bias", "proj_bias", "head_dim", "rope_low_freq_factor"} & set(written)
    assert Config.from_json(tmp_path / "plain.json") == plain == Config(**written)
    # a head_dim equal to n_embd / n_head is the plain model
    assert small_config(head_dim=16) == small_config() and small_config(head_dim=16).head_dim is None


@pytest.mark.parametrize("overrides, words", [
    ({"bias": True, "qkv_bias": True}, ["bias=true already puts a bias on every Linear"]),
    ({"rope_low_freq_factor": 1.0}, ["go together"]),
    ({"rope_low_freq_factor": 4, "rope_high_freq_factor": 1, "rope_original_max_seq_len": 16},
     ["rope_low_freq_factor=4 must be below rope_high_freq_factor=1"]),
    ({"rope_low_freq_factor": -1, "rope_high_freq_factor": 1, "rope_original_max_seq_len": 16},
     ["rope_low_freq_factor=-1 must be a positive finite number"]),
    ({"head_dim": 0}, ["head_dim=0 must be at least 1"]),
    ({"n_embd": 66}, ["n_embd=66 is not divisible by n_head=4", "set head_dim"]),
])
def test_inconsistent_new_fields_are_refused(tmp_path, overrides, words):
    with pytest.raises(ValueError) as refused:
        small_config(**overrides)
    assert "\n" not in str(refused.value) and all(w in str(refused.value) for w in words), str(refused.value)


def test_head_dim_allows_widths_that_heads_do_not_divide():
    config = small_config(n_embd=66, head_dim=16)
    model = GPT(config)
    assert model.transformer.h[0].attn.proj.weight.shape == (66, 64)
    assert model(torch.randint(0, 96, (1, 8))).shape == (1, 8, 96)


# ---- conversions we refuse, one line each ----

def assert_refused(code, err, *words):
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert all(w in errors[0] for w in words), errors[0]


def edit_config(directory: Path, **changes) -> None:
    hf = json.loads((directory / "config.json").read_text())
    hf.update(changes)
    (directory / "config.json").write_text(json.dumps(hf))


@pytest.mark.parametrize("family, changes, words", [
    ("qwen2", {"use_sliding_window": True}, ["use_sliding_window=true", "whole sequence"]),
    ("llama", {"mlp_bias": True}, ["mlp_bias=true with attention_bias=false"]),
    ("llama", {"tie_word_embeddings": "yes"}, ["tie_word_embeddings='yes'", "true or false"]),
    ("llama", {"head_dim": 0}, ["head_dim=0", "positive integer"]),
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}},
     ["rope_parameters.rope_type='yarn'", "default, linear and llama3"]),
    ("llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
     ["rope_parameters.rope_type='dynamic'"]),
    ("llama", {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, ["not a Llama or Qwen2 model"]),
])
def test_unsupported_settings_are_refused(tmp_path, family, changes, words):
    hf_family_model(family).save_pretrained(tmp_path)
    edit_config(tmp_path, **changes)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_refused(*run(HF_TO_LIT, "--checkpoint_dir", tmp_path), f"{tmp_path / 'config.json'} ", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_weights_that_do_not_match_the_family_are_refused(tmp_path):
    from safetensors.torch import save_file

    hf_family_model("qwen2").save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file({**state, "lm_head.weight": state["model.embed_tokens.weight"] + 1}, tmp_path / "model.safetensors")
    assert_refused(*run(HF_TO_LIT, "--checkpoint_dir", tmp_path), "ties the embeddings",
                   "lm_head.weight differs from model.embed_tokens.weight")
    del state["model.layers.1.self_attn.k_proj.bias"]
    save_file(state, tmp_path / "model.safetensors")
    assert_refused(*run(HF_TO_LIT, "--checkpoint_dir", tmp_path), "model.layers.1.self_attn.k_proj.bias")
    edit_config(tmp_path, tie_word_embeddings=False)  # untied: the checkpoint must carry its own LM head
    assert_refused(*run(HF_TO_LIT, "--checkpoint_dir", tmp_path), "missing", "lm_head.weight")


def test_proj_bias_alone_has_no_hf_family(tmp_path):
    config = small_config(proj_bias=True)
    torch.save(GPT(config).state_dict(), tmp_path / "lit_model.pth")
    config.to_json(tmp_path / "lit_config.json")
    assert_refused(*run(LIT_TO_HF, "--checkpoint_path", tmp_path / "lit_model.pth", "--out_dir", tmp_path / "hf"),
                   "proj_bias without qkv_bias")
    assert not (tmp_path / "hf").exists()


def test_registry_names_are_unique_and_load():
    for name in PUBLIC:
        assert name in name_to_config and Config.load(name).name == name
