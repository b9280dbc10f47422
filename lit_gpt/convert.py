"""HF Llama <-> lit_gpt: configs and state dicts, exact in both directions (reference upstream §5.1-5.2)."""

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from lit_gpt.config import Config
from lit_gpt.files import umask, writing
from lit_gpt.model import GPT, fuse_qkv, split_qkv
from lit_gpt.tokenizer import TOKENIZER_FILES, Tokenizer, has_tokenizer  # noqa: F401 - TOKENIZER_FILES re-exported
from lit_gpt.utils import CheckpointError, check_state_dict, load_torch_file

# lit key template -> HF key template; "{}" is the layer index. QKV is handled separately.
WEIGHT_MAP = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.h.{}.norm_1.weight": "model.layers.{}.input_layernorm.weight",
    "transformer.h.{}.attn.proj.weight": "model.layers.{}.self_attn.o_proj.weight",
    "transformer.h.{}.norm_2.weight": "model.layers.{}.post_attention_layernorm.weight",
    "transformer.h.{}.mlp.swiglu.w1.weight": "model.layers.{}.mlp.gate_proj.weight",
    "transformer.h.{}.mlp.swiglu.w2.weight": "model.layers.{}.mlp.up_proj.weight",
    "transformer.h.{}.mlp.swiglu.w3.weight": "model.layers.{}.mlp.down_proj.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
QKV_KEY = "transformer.h.{}.attn.attn.weight"
HF_QKV_KEYS = tuple(f"model.layers.{{}}.self_attn.{p}_proj.weight" for p in "qkv")
Number = Union[int, float]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def expected_shapes(config: Config) -> Dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in GPT(config).state_dict().items()}


def hf_config_to_lit(hf: dict, name: str, source: str = "config.json") -> Config:
    """A `Config` equal to an HF LlamaConfig read from `source`.

    Raises:
        CheckpointError: one line naming `source` and the setting, for features our model does not implement.
    """
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "llama" and "LlamaForCausalLM" not in arch:
        raise CheckpointError(f"{source} describes model_type={hf.get('model_type')!r}, not a Llama model")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise CheckpointError(f"{source} sets {flag}=true; lit_gpt Llama blocks have no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source} sets hidden_act={hf['hidden_act']!r}; only silu (SwiGLU) is supported")
    _check_sizes(hf, source)
    n_head = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // n_head):
        raise CheckpointError(f"{source} sets head_dim={hf['head_dim']}; lit_gpt needs hidden_size / heads")
    rope_base, condense_ratio = hf_rope_settings(hf, source)
    return Config(
        name=name, block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
        padded_vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=n_head,
        n_embd=hf["hidden_size"], n_query_groups=hf.get("num_key_value_heads") or n_head,
        intermediate_size=hf["intermediate_size"], rotary_percentage=1.0,
        norm_eps=_positive_number(hf.get("rms_norm_eps", 1e-6), "rms_norm_eps", source),  # LlamaConfig's default
        parallel_residual=False, bias=False, _norm_class="FusedRMSNorm", _mlp_class="LLaMAMLP",
        condense_ratio=condense_ratio, rope_base=rope_base)


# the sizes every Llama config.json states; a missing one would otherwise surface as a KeyError
HF_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings")


def _check_sizes(hf: dict, source: str) -> None:
    """Raises CheckpointError when one of HF_SIZES is missing, or it or num_key_value_heads is not a positive
    integer."""
    for key in (*HF_SIZES, "num_key_value_heads"):
        value = hf.get(key)
        if key == "num_key_value_heads" and value is None:
            continue  # LlamaConfig's default: one key/value head per query head
        if key not in hf:
            raise CheckpointError(f"{source} has no {key}; is it a Llama config.json?")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"{source} sets {key}={value!r}; it must be a positive integer")


def hf_rope_settings(hf: dict, source: str = "config.json") -> Tuple[Number, Number]:
    """(rope_base, condense_ratio) of an HF Llama config in either style: transformers 5 keeps the RoPE settings
    in `rope_parameters`, older versions in `rope_scaling` (`type` or `rope_type`, `factor`) beside a top-level
    `rope_theta`. Values are kept exactly: ints when integral (upstream's lit_config.json), floats otherwise.

    Raises:
        CheckpointError: one line naming `source` and the setting, for anything lit_gpt's RoPE does not compute
            as transformers does: a rope type other than default and linear (llama3, yarn, dynamic, longrope,
            ...), partial_rotary_factor != 1, a theta or factor that is not a positive number, a linear type
            without a factor, or one setting given two different values.
    """
    found = _rope_settings(hf, source)
    rope_type, where = found.get("rope_type", ("default", "rope_type"))
    if rope_type not in ("default", "linear"):
        raise CheckpointError(f"{source} sets {where}={rope_type!r}; lit_gpt implements only the default and "
                              "linear RoPE types, so this model cannot be converted exactly")
    partial, partial_where = found.get("partial_rotary_factor", (1, ""))
    if partial != 1:
        raise CheckpointError(f"{source} sets {partial_where}={partial!r}; lit_gpt converts only RoPE over the "
                              "whole head (partial_rotary_factor 1)")
    base = _positive_number(*found.get("rope_theta", (10000, "rope_theta")), source)
    if rope_type == "default":
        return base, 1
    if "factor" not in found:
        raise CheckpointError(f"{source} sets {where}='linear' without a factor; add the scaling factor beside it")
    return base, _positive_number(*found["factor"], source)


def _rope_settings(hf: dict, source: str) -> Dict[str, Tuple[Any, str]]:
    """RoPE setting -> (value, where it was found) over the top level, `rope_parameters` and `rope_scaling`;
    `type` is the old spelling of `rope_type`, and null means absent.

    Raises:
        CheckpointError: a block that is not an object, or one setting with two different values (transformers
            versions disagree on which wins).
    """
    places = [("", {k: hf.get(k) for k in ("rope_theta", "partial_rotary_factor")})]
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


def lit_config_to_hf(config: Config, dtype: torch.dtype, bos_id: Optional[int] = 1,
                     eos_id: Optional[int] = 2) -> dict:
    unsupported = {"rotary_percentage": config.rotary_percentage != 1.0, "bias": config.bias,
                   "parallel_residual": config.parallel_residual, "shared_attention_norm": config.shared_attention_norm}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise CheckpointError(f"config {config.name!r} sets {', '.join(bad)}, which HF Llama cannot express")
    hf = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": config.n_embd, "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.n_head, "num_hidden_layers": config.n_layer,
        "num_key_value_heads": config.n_query_groups, "head_dim": config.head_size,
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
        # the padded size: lm_head and wte have that many rows (upstream wrote vocab_size, #5.2 caveat)
        "vocab_size": config.padded_vocab_size, "rope_theta": float(config.rope_base),
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": str(dtype).replace("torch.", ""),
    }
    # transformers 5 reads rope_parameters, older versions the top-level rope_theta and rope_scaling
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": float(config.rope_base)}
    if config.condense_ratio != 1:
        scaling = {"rope_type": "linear", "factor": float(config.condense_ratio)}
        hf["rope_parameters"].update(scaling)
        hf["rope_scaling"] = scaling
    return hf


def copy_weights_hf_llama(config: Config, hf_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF Llama state dict -> lit state dict (q, k, v fused per query group)."""
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in hf_state and "model.embed_tokens.weight" in hf_state:
        hf_state["lm_head.weight"] = hf_state["model.embed_tokens.weight"]  # tied checkpoints
    missing = sorted(set(expected_hf_keys(config)) - set(hf_state), key=_natural)
    if missing:
        raise CheckpointError(f"HF checkpoint: {len(missing)} tensors the config needs are missing "
                              f"(first: {missing[0]})")
    inverse = {hf: lit for lit, hf in WEIGHT_MAP.items()}
    lit: Dict[str, torch.Tensor] = {}
    qkv: Dict[str, Dict[int, torch.Tensor]] = {}
    for key, tensor in hf_state.items():
        layer, template = _template(key)
        if template in HF_QKV_KEYS:
            qkv.setdefault(layer, {})[HF_QKV_KEYS.index(template)] = tensor
        elif template in inverse:
            lit[inverse[template].format(layer)] = tensor
        else:
            raise CheckpointError(f"unexpected tensor in the HF checkpoint: {key}")
    for layer, parts in qkv.items():
        if len(parts) != 3:
            raise CheckpointError(f"layer {layer} lacks one of its q/k/v projections")
        q, k, v = (parts[i] for i in range(3))
        _check_qkv_shapes(config, layer, q, k, v)
        lit[QKV_KEY.format(layer)] = fuse_qkv(q, k, v, config)
    check_state_dict(lit, expected_shapes(config), "HF checkpoint")
    return lit


def copy_weights_llama(config: Config, lit_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """lit state dict -> HF Llama state dict (the fused QKV split back into q, k, v)."""
    lit_state = {k.replace("_orig_mod.", ""): v for k, v in lit_state.items()}
    check_state_dict(lit_state, expected_shapes(config), "lit checkpoint")
    hf: Dict[str, torch.Tensor] = {}
    for key, tensor in lit_state.items():
        layer, template = _template(key)
        if template == QKV_KEY:
            for hf_key, part in zip(HF_QKV_KEYS, split_qkv(tensor, config)):
                hf[hf_key.format(layer)] = part
        else:
            hf[WEIGHT_MAP[template].format(layer)] = tensor
    return hf


def expected_hf_keys(config: Config):
    for template in (*WEIGHT_MAP.values(), *HF_QKV_KEYS):
        layers = range(config.n_layer) if "{}" in template else (None,)
        yield from (template.format(i) for i in layers)


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _template(key: str):
    match = re.search(r"\.(\d+)\.", key)
    if match is None:
        return None, key
    return int(match.group(1)), key[:match.start()] + ".{}." + key[match.end():]


def _check_qkv_shapes(config: Config, layer, q, k, v) -> None:
    hs = config.head_size
    want = {"q": config.n_head * hs, "k": config.n_query_groups * hs, "v": config.n_query_groups * hs}
    for name, t in zip("qkv", (q, k, v)):
        if t.shape != (want[name], config.n_embd):
            raise CheckpointError(f"layer {layer}: {name}_proj has shape {tuple(t.shape)}, "
                                  f"the config needs {(want[name], config.n_embd)}")


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
