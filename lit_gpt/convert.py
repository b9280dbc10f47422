"""HF Llama-family <-> lit_gpt: configs and state dicts, exact in both directions (reference upstream §5.1-5.2,
families-and-schedules.md §1-2).

Families: transformers' `LlamaForCausalLM` (Llama, TinyLlama, SmolLM2, Llama 3.x; `attention_bias`) and
`Qwen2ForCausalLM` (q/k/v biases), with tied embeddings, a `head_dim` apart from hidden / heads, and default,
linear or Llama 3 RoPE. A tied model's lit state dict holds `transformer.wte.weight` and `lm_head.weight` as one
tensor; its HF state dict has no `lm_head.weight` (as `save_pretrained` writes it).
"""

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from lit_gpt.config import Config
from lit_gpt.files import umask, writing
from lit_gpt.materialize import same_tensor
from lit_gpt.model import GPT, fuse_qkv, split_qkv
from lit_gpt.tokenizer import TOKENIZER_FILES, Tokenizer, has_tokenizer  # noqa: F401 - TOKENIZER_FILES re-exported
from lit_gpt.utils import CheckpointError, check_state_dict, load_torch_file

# lit key template -> HF key template; "{}" is the layer index. QKV is handled separately. Which of them a model
# has (biases, lm_head) follows from its config: `expected_shapes`.
WEIGHT_MAP = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.h.{}.norm_1.weight": "model.layers.{}.input_layernorm.weight",
    "transformer.h.{}.attn.proj.weight": "model.layers.{}.self_attn.o_proj.weight",
    "transformer.h.{}.attn.proj.bias": "model.layers.{}.self_attn.o_proj.bias",
    "transformer.h.{}.norm_2.weight": "model.layers.{}.post_attention_layernorm.weight",
    "transformer.h.{}.mlp.swiglu.w1.weight": "model.layers.{}.mlp.gate_proj.weight",
    "transformer.h.{}.mlp.swiglu.w1.bias": "model.layers.{}.mlp.gate_proj.bias",
    "transformer.h.{}.mlp.swiglu.w2.weight": "model.layers.{}.mlp.up_proj.weight",
    "transformer.h.{}.mlp.swiglu.w2.bias": "model.layers.{}.mlp.up_proj.bias",
    "transformer.h.{}.mlp.swiglu.w3.weight": "model.layers.{}.mlp.down_proj.weight",
    "transformer.h.{}.mlp.swiglu.w3.bias": "model.layers.{}.mlp.down_proj.bias",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# fused lit key template -> the HF q, k, v key templates it is made of (weights, and biases laid out alike)
QKV_MAP = {f"transformer.h.{{}}.attn.attn.{kind}": tuple(f"model.layers.{{}}.self_attn.{p}_proj.{kind}" for p in "qkv")
           for kind in ("weight", "bias")}
TIED = ("lm_head.weight", "transformer.wte.weight")  # (the key that follows, the key that holds the tensor)
Number = Union[int, float]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def expected_shapes(config: Config) -> Dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in GPT(config).state_dict().items()}


def hf_config_to_lit(hf: dict, name: str, source: str = "config.json") -> Config:
    """A `Config` equal to the HF config read from `source`: transformers' LlamaConfig (`model_type` llama) or
    Qwen2Config (qwen2: biases on q, k, v, none on o_proj or the MLP, as `Qwen2Attention` builds them).

    Llama's `attention_bias` (q, k, v and o_proj, `LlamaAttention`) becomes qkv_bias + proj_bias, and with
    `mlp_bias` as well lit's `bias`; `tie_word_embeddings` becomes tie_embeddings; `head_dim` is kept when it is
    not hidden_size / num_attention_heads; RoPE as `hf_rope_settings` reads it.

    Raises:
        CheckpointError: one line naming `source` and the setting, for features our model does not implement
            (another model type, mlp_bias without attention_bias, Qwen2's sliding window, an activation other
            than silu, RoPE types other than default, linear and llama3, ...) or sizes that are missing or not
            positive integers.
    """
    arch = hf.get("architectures") or []
    family = hf.get("model_type")
    if family not in ("llama", "qwen2"):
        family = "llama" if "LlamaForCausalLM" in arch else "qwen2" if "Qwen2ForCausalLM" in arch else None
    if family is None:
        raise CheckpointError(f"{source} describes model_type={hf.get('model_type')!r}, not a Llama or Qwen2 model")
    flags = {}
    for flag in ("attention_bias", "mlp_bias", "tie_word_embeddings", "use_sliding_window"):
        flags[flag] = hf.get(flag) or False
        if not isinstance(flags[flag], bool):
            raise CheckpointError(f"{source} sets {flag}={hf[flag]!r}; it must be true or false")
    if family == "qwen2":
        if flags["use_sliding_window"]:
            raise CheckpointError(f"{source} sets use_sliding_window=true; lit_gpt attends over the whole "
                                  "sequence in every layer, so this model cannot be converted exactly")
        biases = dict(qkv_bias=True)  # Qwen2Attention: q/k/v always biased, o_proj and the MLP never
    elif flags["mlp_bias"] and not flags["attention_bias"]:
        raise CheckpointError(f"{source} sets mlp_bias=true with attention_bias=false; lit_gpt puts MLP biases "
                              "only beside attention biases (its `bias`)")
    elif flags["attention_bias"]:
        biases = dict(bias=True) if flags["mlp_bias"] else dict(qkv_bias=True, proj_bias=True)
    else:
        biases = {}
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source} sets hidden_act={hf['hidden_act']!r}; only silu (SwiGLU) is supported")
    _check_sizes(hf, source)
    n_head = hf["num_attention_heads"]
    # transformers' default when absent or null (LlamaConfig, Qwen2Attention): hidden_size // heads, rounded down
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_head
    return Config(
        name=name, block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
        padded_vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=n_head,
        n_embd=hf["hidden_size"], n_query_groups=hf.get("num_key_value_heads") or n_head,
        intermediate_size=hf["intermediate_size"], rotary_percentage=1.0,
        norm_eps=_positive_number(hf.get("rms_norm_eps", 1e-6), "rms_norm_eps", source),  # both configs' default
        parallel_residual=False, _norm_class="FusedRMSNorm", _mlp_class="LLaMAMLP",
        tie_embeddings=flags["tie_word_embeddings"], head_dim=head_dim, **biases,
        **hf_rope_settings(hf, source))


# the sizes every Llama config.json states; a missing one would otherwise surface as a KeyError
HF_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings")


def _check_sizes(hf: dict, source: str) -> None:
    """Raises CheckpointError when one of HF_SIZES is missing, or it, num_key_value_heads or head_dim is not a
    positive integer."""
    for key in (*HF_SIZES, "num_key_value_heads", "head_dim"):
        value = hf.get(key)
        if key in ("num_key_value_heads", "head_dim") and value is None:
            continue  # LlamaConfig's defaults: one key/value head per query head, hidden_size // heads
        if key not in hf:
            raise CheckpointError(f"{source} has no {key}; is it a Llama config.json?")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"{source} sets {key}={value!r}; it must be a positive integer")


def hf_rope_settings(hf: dict, source: str = "config.json") -> Dict[str, Number]:
    """The RoPE fields of `Config` (rope_base, condense_ratio and, for llama3, rope_low_freq_factor,
    rope_high_freq_factor, rope_original_max_seq_len) of an HF config in either style: transformers 5 keeps the
    RoPE settings in `rope_parameters`, older versions in `rope_scaling` (`type` or `rope_type`, `factor`, ...)
    beside a top-level `rope_theta`. Values are kept exactly: ints when integral (upstream's lit_config.json),
    floats otherwise. llama3's original_max_position_embeddings may also stand at the top level and defaults to
    max_position_embeddings, as transformers 5's `standardize_rope_params` reads it (reference
    families-and-schedules.md §2).

    Raises:
        CheckpointError: one line naming `source` and the setting, for anything lit_gpt's RoPE does not compute
            as transformers does: a rope type other than default, linear and llama3 (yarn, dynamic, longrope,
            ...), partial_rotary_factor != 1, a theta or factor that is not a positive number, a linear or
            llama3 type without its factors, llama3 factors with low_freq_factor >= high_freq_factor, or one
            setting given two different values.
    """
    found = _rope_settings(hf, source)
    rope_type, where = found.get("rope_type", ("default", "rope_type"))
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointError(f"{source} sets {where}={rope_type!r}; lit_gpt implements only the default, linear "
                              "and llama3 RoPE types, so this model cannot be converted exactly")
    partial, partial_where = found.get("partial_rotary_factor", (1, ""))
    if partial != 1:
        raise CheckpointError(f"{source} sets {partial_where}={partial!r}; lit_gpt converts only RoPE over the "
                              "whole head (partial_rotary_factor 1)")
    settings = {"rope_base": _positive_number(*found.get("rope_theta", (10000, "rope_theta")), source),
                "condense_ratio": 1}
    if rope_type == "default":
        return settings
    needed = ("factor",) if rope_type == "linear" else ("factor", "low_freq_factor", "high_freq_factor")
    absent = [key for key in needed if key not in found]
    if absent:
        raise CheckpointError(f"{source} sets {where}={rope_type!r} without a {', a '.join(absent)}; add the "
                              "scaling settings beside it")
    settings["condense_ratio"] = _positive_number(*found["factor"], source)
    if rope_type == "linear":
        return settings
    low, high = (_positive_number(*found[key], source) for key in ("low_freq_factor", "high_freq_factor"))
    if not low < high:
        raise CheckpointError(f"{source} sets {found['low_freq_factor'][1]}={low!r} and "
                              f"{found['high_freq_factor'][1]}={high!r}; llama3 RoPE needs low_freq_factor < "
                              "high_freq_factor")
    original, original_where = found.get("original_max_position_embeddings",
                                         (hf["max_position_embeddings"], "max_position_embeddings"))
    if isinstance(original, bool) or not isinstance(original, int) or original <= 0:
        raise CheckpointError(f"{source} sets {original_where}={original!r}; it must be a positive integer")
    settings.update(rope_low_freq_factor=low, rope_high_freq_factor=high, rope_original_max_seq_len=original)
    return settings


def _rope_settings(hf: dict, source: str) -> Dict[str, Tuple[Any, str]]:
    """RoPE setting -> (value, where it was found) over the top level, `rope_parameters` and `rope_scaling`;
    `type` is the old spelling of `rope_type`, and null means absent.

    Raises:
        CheckpointError: a block that is not an object, or one setting with two different values (transformers
            versions disagree on which wins).
    """
    places = [("", {k: hf.get(k) for k in ("rope_theta", "partial_rotary_factor", "original_max_position_embeddings")})]
    for key in ("rope_parameters", "rope_scaling"):
        block = hf.get(key)
        if block is not None and not isinstance(block, dict):
            raise CheckpointError(f"{source} sets {key}={block!r}; it must be an object")
        places.append((f"{key}.", block or {}))
    found: Dict[str, Tuple[Any, str]] = {}
    for prefix, block in places:
        for name, value in block.items():
            setting = "rope_type" if name == "type" else name
            if value is None:
                continue
            if setting in found and found[setting][0] != value:
                first, where = found[setting]
                raise CheckpointError(f"{source} sets {where}={first!r} and {prefix}{name}={value!r}; "
                                      "keep one of them")
            found.setdefault(setting, (value, prefix + name))
    return found


def _positive_number(value: Any, where: str, source: str) -> Number:
    """`value` as an int when integral, else as the float it is.

    Raises:
        CheckpointError: not a finite number > 0 (booleans and strings included).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{source} sets {where}={value!r}; it must be a positive number")
    return int(value) if float(value).is_integer() else float(value)


def model_family(config: Config) -> Dict[str, Any]:
    """What a growth record says of the model's family: the HF class it converts to (`lit_config_to_hf`; None when
    neither Llama nor Qwen2 can express it), tied embeddings, where the biases are (none, qkv = Qwen2's, attention
    = Llama's attention_bias, all), the RoPE variant (default, linear, llama3) and head_dim."""
    qwen2 = config.qkv_bias and not config.proj_bias
    expressible = (config.rotary_percentage == 1.0 and not config.parallel_residual
                   and not config.shared_attention_norm and not (config.proj_bias and not config.qkv_bias))
    biases = "all" if config.bias else "attention" if config.proj_bias else "qkv" if config.qkv_bias else "none"
    rope = "llama3" if config.rope_llama3 is not None else "linear" if config.condense_ratio != 1 else "default"
    return {"hf_architecture": ("Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM") if expressible else None,
            "tie_embeddings": config.tie_embeddings, "biases": biases, "rope": rope, "head_dim": config.head_size}


def lit_config_to_hf(config: Config, dtype: torch.dtype, bos_id: Optional[int] = 1,
                     eos_id: Optional[int] = 2) -> dict:
    """The HF config.json of `config`: `LlamaForCausalLM` (model_type llama; `attention_bias` for qkv_bias +
    proj_bias, with `mlp_bias` for `bias`), or `Qwen2ForCausalLM` (model_type qwen2) for biases on q, k, v only,
    so that transformers' Auto classes build the same model. RoPE is written both as `rope_parameters`
    (transformers 5) and as `rope_theta` + `rope_scaling` (older versions).

    Raises:
        CheckpointError: one line for settings neither family can express (partial rotary, parallel residual,
            a shared attention norm, proj_bias without qkv_bias).
    """
    unsupported = {"rotary_percentage": config.rotary_percentage != 1.0, "parallel_residual": config.parallel_residual,
                   "shared_attention_norm": config.shared_attention_norm,
                   "proj_bias without qkv_bias": config.proj_bias and not config.qkv_bias}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise CheckpointError(f"config {config.name!r} sets {', '.join(bad)}, which HF Llama and Qwen2 cannot express")
    qwen2 = config.qkv_bias and not config.proj_bias
    hf = {
        "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen2 else "llama", "hidden_act": "silu",
        "hidden_size": config.n_embd, "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.n_head, "num_hidden_layers": config.n_layer,
        "num_key_value_heads": config.n_query_groups, "head_dim": config.head_size,
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
        # the padded size: lm_head and wte have that many rows (upstream wrote vocab_size, #5.2 caveat)
        "vocab_size": config.padded_vocab_size, "rope_theta": float(config.rope_base),
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": str(dtype).replace("torch.", ""),
    }
    if qwen2:
        hf["use_sliding_window"] = False
    else:
        hf["attention_bias"] = config.bias or config.qkv_bias
        hf["mlp_bias"] = config.bias
    # transformers 5 reads rope_parameters, older versions the top-level rope_theta and rope_scaling
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": float(config.rope_base)}
    if config.rope_llama3 is not None:
        low, high, original = config.rope_llama3
        scaling = {"rope_type": "llama3", "factor": float(config.condense_ratio), "low_freq_factor": float(low),
                   "high_freq_factor": float(high), "original_max_position_embeddings": original}
    elif config.condense_ratio != 1:
        scaling = {"rope_type": "linear", "factor": float(config.condense_ratio)}
    else:
        scaling = None
    if scaling is not None:
        hf["rope_parameters"].update(scaling)
        hf["rope_scaling"] = scaling
    return hf


def copy_weights_hf_llama(config: Config, hf_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF Llama/Qwen2 state dict -> lit state dict (q, k, v weights and biases fused per query group).

    A tied config takes the LM head from `model.embed_tokens.weight`: the lit state dict holds it under both
    keys, one tensor.

    Raises:
        CheckpointError: one line for a missing, unexpected or mis-shaped tensor, or a tied config whose
            checkpoint has an `lm_head.weight` different from its embedding.
    """
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_embeddings and "lm_head.weight" in hf_state:
        head = hf_state.pop("lm_head.weight")
        embedding = hf_state.get(WEIGHT_MAP[TIED[1]])
        if embedding is not None and not (head.shape == embedding.shape and torch.equal(head, embedding)):
            raise CheckpointError("HF checkpoint: config.json ties the embeddings, but lm_head.weight differs from "
                                  "model.embed_tokens.weight")
    missing = sorted(set(expected_hf_keys(config)) - set(hf_state), key=_natural)
    if missing:
        raise CheckpointError(f"HF checkpoint: {len(missing)} tensors the config needs are missing "
                              f"(first: {missing[0]})")
    inverse = {hf: lit for lit, hf in WEIGHT_MAP.items()}
    qkv_inverse = {hf: (lit, i) for lit, parts in QKV_MAP.items() for i, hf in enumerate(parts)}
    lit: Dict[str, torch.Tensor] = {}
    qkv: Dict[Tuple[str, int], Dict[int, torch.Tensor]] = {}
    for key, tensor in hf_state.items():
        layer, template = _template(key)
        if template in qkv_inverse:
            fused, index = qkv_inverse[template]
            qkv.setdefault((fused, layer), {})[index] = tensor
        elif template in inverse:
            lit[inverse[template].format(layer)] = tensor
        else:
            raise CheckpointError(f"unexpected tensor in the HF checkpoint: {key}")
    for (fused, layer), parts in sorted(qkv.items(), key=lambda item: (item[0][1], item[0][0])):
        kind = fused.rsplit(".", 1)[1]
        if len(parts) != 3:
            raise CheckpointError(f"layer {layer} lacks one of its q/k/v projection {kind}s")
        q, k, v = (parts[i] for i in range(3))
        _check_qkv_shapes(config, layer, kind, q, k, v)
        lit[fused.format(layer)] = fuse_qkv(q, k, v, config)
    if config.tie_embeddings:
        lit[TIED[0]] = lit[TIED[1]]
    check_state_dict(lit, expected_shapes(config), "HF checkpoint")
    return lit


def copy_weights_llama(config: Config, lit_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """lit state dict -> HF Llama/Qwen2 state dict (the fused QKV weight and bias split back into q, k, v). A tied
    model's HF state dict has no `lm_head.weight`, as transformers' `save_pretrained` writes it.

    Raises:
        CheckpointError: one line for keys or shapes that do not match `config`, or a tied config whose
            checkpoint holds a `lm_head.weight` different from its `transformer.wte.weight`.
    """
    lit_state = {k.replace("_orig_mod.", ""): v for k, v in lit_state.items()}
    check_state_dict(lit_state, expected_shapes(config), "lit checkpoint")
    head, embedding = lit_state[TIED[0]], lit_state[TIED[1]]
    if config.tie_embeddings and not same_tensor(head, embedding) and not torch.equal(head, embedding):
        raise CheckpointError(f"lit checkpoint: the config ties the embeddings, but {TIED[0]} differs from "
                              f"{TIED[1]}: the weights were saved untied; use their own config")
    hf: Dict[str, torch.Tensor] = {}
    for key, tensor in lit_state.items():
        layer, template = _template(key)
        if template in QKV_MAP:
            for hf_key, part in zip(QKV_MAP[template], split_qkv(tensor, config)):
                hf[hf_key.format(layer)] = part
        elif not (config.tie_embeddings and key == TIED[0]):
            hf[WEIGHT_MAP[template].format(layer)] = tensor
    return hf


def expected_hf_keys(config: Config):
    """The HF state-dict keys of `config`'s model: those of `expected_shapes` mapped to HF names (q, k, v apart),
    without `lm_head.weight` when the embeddings are tied."""
    for key in expected_shapes(config):
        layer, template = _template(key)
        if template in QKV_MAP:
            yield from (part.format(layer) for part in QKV_MAP[template])
        elif not (config.tie_embeddings and key == TIED[0]):
            yield WEIGHT_MAP[template].format(layer)


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _template(key: str):
    match = re.search(r"\.(\d+)\.", key)
    if match is None:
        return None, key
    return int(match.group(1)), key[:match.start()] + ".{}." + key[match.end():]


def _check_qkv_shapes(config: Config, layer, kind: str, q, k, v) -> None:
    """Raises CheckpointError naming the first of q, k, v (`kind` "weight": (rows, n_embd); "bias": (rows,))
    whose shape does not fit the config's heads and head size."""
    hs = config.head_size
    want = {"q": config.n_head * hs, "k": config.n_query_groups * hs, "v": config.n_query_groups * hs}
    for name, t in zip("qkv", (q, k, v)):
        shape = (want[name], config.n_embd) if kind == "weight" else (want[name],)
        if tuple(t.shape) != shape:
            raise CheckpointError(f"layer {layer}: {name}_proj.{kind} has shape {tuple(t.shape)}, "
                                  f"the config needs {shape}")


def load_hf_state_dict(checkpoint_dir: Path) -> Dict[str, torch.Tensor]:
    """All tensors of an HF directory: `*.safetensors` preferred, else `pytorch_model*.bin` (weights only)."""
    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        loader = lambda f: load_file(str(f))  # noqa: E731
    else:
        files = sorted(checkpoint_dir.glob("pytorch_model*.bin"))
        loader = load_torch_file
    if not files:
        raise CheckpointError(f"no *.safetensors or pytorch_model*.bin in {checkpoint_dir}")
    from tqdm import tqdm

    state: Dict[str, torch.Tensor] = {}
    for f in tqdm(files, desc="reading shards", unit="file", disable=len(files) < 2):
        try:
            state.update(loader(f))
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - reported as one line
            raise CheckpointError(f"cannot read {f}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return state


def check_tokenizer_vocab(directory: Path, config: Config) -> None:
    """A tokenizer beside the weights must fit in the embedding rows."""
    if not has_tokenizer(directory):
        return
    size = Tokenizer(directory).vocab_size
    if size > config.padded_vocab_size:
        raise CheckpointError(f"vocab mismatch: the tokenizer in {directory} has {size} tokens, "
                              f"the model has {config.padded_vocab_size} embedding rows")


def save_safetensors(state: Dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file with the mode the umask asks for: safetensors 0.8 writes a 0600 temporary file
    and renames it, which group members of a shared cluster could not read."""
    from safetensors.torch import save_file

    with writing(path):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~umask())


def cast(state: Dict[str, torch.Tensor], dtype: Optional[torch.dtype]) -> Dict[str, torch.Tensor]:
    return state if dtype is None else {k: v.to(dtype) for k, v in state.items()}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
