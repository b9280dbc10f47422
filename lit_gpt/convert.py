"""HF Llama <-> lit_gpt: configs and state dicts, exact in both directions (reference upstream §5.1-5.2)."""

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

import torch

from lit_gpt.config import Config
from lit_gpt.model import GPT, fuse_qkv, split_qkv
from lit_gpt.tokenizer import TOKENIZER_FILES, Tokenizer, has_tokenizer  # noqa: F401 - TOKENIZER_FILES re-exported
from lit_gpt.utils import CheckpointError, check_state_dict

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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def expected_shapes(config: Config) -> Dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in GPT(config).state_dict().items()}


def hf_config_to_lit(hf: dict, name: str) -> Config:
    """A `Config` equal to an HF LlamaConfig; refuses features our model does not implement."""
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "llama" and "LlamaForCausalLM" not in arch:
        raise CheckpointError(f"config.json describes model_type={hf.get('model_type')!r}, not a Llama model")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise CheckpointError(f"config.json sets {flag}=true; lit_gpt Llama blocks have no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json sets hidden_act={hf['hidden_act']!r}; only silu (SwiGLU) is supported")
    n_head = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // n_head):
        raise CheckpointError(f"config.json sets head_dim={hf['head_dim']}; lit_gpt needs hidden_size / heads")
    rope_theta = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000))
    scaling = hf.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise CheckpointError(f"config.json uses rope_scaling type {rope_type!r}; only linear is supported")
    return Config(
        name=name, block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
        padded_vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=n_head,
        n_embd=hf["hidden_size"], n_query_groups=hf.get("num_key_value_heads") or n_head,
        intermediate_size=hf["intermediate_size"], norm_eps=hf["rms_norm_eps"], rotary_percentage=1.0,
        parallel_residual=False, bias=False, _norm_class="FusedRMSNorm", _mlp_class="LLaMAMLP",
        condense_ratio=int(scaling.get("factor", 1)) if rope_type == "linear" else 1, rope_base=int(rope_theta))


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
    if config.condense_ratio != 1:
        hf["rope_scaling"] = {"rope_type": "linear", "factor": float(config.condense_ratio)}
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
        loader = lambda f: torch.load(f, map_location="cpu", weights_only=True, mmap=True)  # noqa: E731
    if not files:
        raise CheckpointError(f"no *.safetensors or pytorch_model*.bin in {checkpoint_dir}")
    from tqdm import tqdm

    state: Dict[str, torch.Tensor] = {}
    for f in tqdm(files, desc="reading shards", unit="file", disable=len(files) < 2):
        try:
            state.update(loader(f))
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


@contextmanager
def atomic_output_dir(out_dir: Path) -> Iterator[Path]:
    """Yields a scratch directory; on success its files replace those of `out_dir`, on error nothing is left."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        out_dir.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cast(state: Dict[str, torch.Tensor], dtype: Optional[torch.dtype]) -> Dict[str, torch.Tensor]:
    return state if dtype is None else {k: v.to(dtype) for k, v in state.items()}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
