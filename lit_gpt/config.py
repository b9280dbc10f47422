"""Model configuration: upstream's `Config` fields plus the registry of named configs."""

import difflib
import json
import math
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from lit_gpt.utils import find_multiple

NORM_CLASSES = ("RMSNorm", "FusedRMSNorm")
MLP_CLASSES = ("LLaMAMLP",)


@dataclass
class Config:
    """Architecture hyperparameters, field for field as upstream TinyLlama's `lit_gpt/config.py`.

    Defaults describe a LLaMA-style model (the only family this fork builds); `rope_base` is ours,
    kept at upstream's fixed 10000 unless a converted checkpoint says otherwise. `condense_ratio` (RoPE linear
    scaling: positions divided by it) and `rope_base` take any positive number; whole values are kept as ints,
    so a lit_config.json we write for them reads as before (upstream wrote `"condense_ratio": 1`).

    Llama-family fields (ours; reference families-and-schedules.md §1-2); at their defaults the model is
    upstream's, and `to_json` leaves them out of lit_config.json:
      tie_embeddings: the LM head is the embedding matrix (`lm_head.weight is transformer.wte.weight`; HF's
        `tie_word_embeddings`: SmolLM2, Llama-3.2, Qwen2.5). Its state dict holds both keys, one tensor.
      qkv_bias: a bias on the fused q, k, v projection `attn.attn` only (Qwen2; litgpt's `attn_bias`).
      proj_bias: a bias on the attention output `attn.proj` (with qkv_bias: HF Llama's `attention_bias`).
        `bias` (upstream's) puts biases on every Linear but lm_head, so it refuses either of these beside it.
      head_dim: the width of one head when it is not n_embd / n_head (HF's `head_dim`): q, k, v then have
        (n_head + 2 n_query_groups) head_dim rows and `attn.proj` n_head head_dim columns. Kept None when it
        equals n_embd // n_head, so equal models compare equal.
      rope_low_freq_factor, rope_high_freq_factor, rope_original_max_seq_len: Llama 3 RoPE scaling (HF's
        `rope_type: llama3` with `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`,
        its `factor` being `condense_ratio`): frequencies whose wavelength exceeds original / low_freq_factor are
        divided by condense_ratio, those below original / high_freq_factor are kept, the ones between blended.
        All three or none.
    """

    org: str = "Lightning-AI"
    name: str = "lit-GPT"
    block_size: int = 2048
    vocab_size: int = 32000
    padding_multiple: int = 64
    padded_vocab_size: Optional[int] = None
    n_layer: int = 22
    n_head: int = 32
    n_embd: int = 2048
    rotary_percentage: float = 1.0
    parallel_residual: bool = False
    bias: bool = False
    n_query_groups: Optional[int] = None
    shared_attention_norm: bool = False
    _norm_class: str = "FusedRMSNorm"
    norm_eps: float = 1e-5
    _mlp_class: str = "LLaMAMLP"
    intermediate_size: Optional[int] = None
    condense_ratio: float = 1
    rope_base: float = 10000
    tie_embeddings: bool = False
    qkv_bias: bool = False
    proj_bias: bool = False
    head_dim: Optional[int] = None
    rope_low_freq_factor: Optional[float] = None
    rope_high_freq_factor: Optional[float] = None
    rope_original_max_seq_len: Optional[int] = None

    def __post_init__(self) -> None:
        """Fills the derived defaults. Raises ValueError with one line listing every inconsistent value."""
        for name in ("condense_ratio", "rope_base", "rope_low_freq_factor", "rope_high_freq_factor"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, int(value))
        if self.padded_vocab_size is None and self.padding_multiple > 0:
            self.padded_vocab_size = find_multiple(self.vocab_size, self.padding_multiple)
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        problems = self._range_problems()
        if problems:  # the divisibility checks below would divide by zero
            raise ValueError(f"invalid config {self.name!r}: " + "; ".join(problems))
        if self.head_dim is not None and self.head_dim * self.n_head == self.n_embd:
            self.head_dim = None
        if self.head_dim is None and self.n_embd % self.n_head:
            problems.append(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head} (set head_dim for "
                            "heads of another width)")
        if self.n_head % self.n_query_groups:
            problems.append(f"n_head={self.n_head} is not divisible by n_query_groups={self.n_query_groups}")
        if self._norm_class not in NORM_CLASSES:
            problems.append(f"_norm_class={self._norm_class!r} is not one of {NORM_CLASSES}")
        if self._mlp_class not in MLP_CLASSES:
            problems.append(f"_mlp_class={self._mlp_class!r} is not one of {MLP_CLASSES}")
        if self.padded_vocab_size < self.vocab_size:
            problems.append(f"padded_vocab_size={self.padded_vocab_size} < vocab_size={self.vocab_size}")
        if self.bias and (self.qkv_bias or self.proj_bias):
            problems.append("bias=true already puts a bias on every Linear; qkv_bias and proj_bias are for models "
                            "with biases on some of them only: set one or the other")
        llama3 = [self.rope_low_freq_factor, self.rope_high_freq_factor, self.rope_original_max_seq_len]
        if any(v is not None for v in llama3) and any(v is None for v in llama3):
            problems.append("rope_low_freq_factor, rope_high_freq_factor and rope_original_max_seq_len (Llama 3 "
                            f"RoPE) go together, got {llama3}")
        elif llama3[0] is not None and not self.rope_low_freq_factor < self.rope_high_freq_factor:
            # transformers blends over original / high .. original / low and divides by high - low
            problems.append(f"rope_low_freq_factor={self.rope_low_freq_factor} must be below "
                            f"rope_high_freq_factor={self.rope_high_freq_factor}")
        if problems:
            raise ValueError(f"invalid config {self.name!r}: " + "; ".join(problems))

    def _range_problems(self) -> list:
        whole = ("block_size", "vocab_size", "padding_multiple", "n_layer", "n_head", "n_embd", "n_query_groups",
                 "intermediate_size", "padded_vocab_size", "head_dim", "rope_original_max_seq_len")
        problems = [f"{name}={getattr(self, name)} must be at least 1" for name in whole
                    if getattr(self, name) is not None and getattr(self, name) < 1]
        # written as `not 0 < x < inf` so that NaN is refused too
        problems += [f"{name}={getattr(self, name)} must be a positive finite number"
                     for name in ("condense_ratio", "rope_base", "norm_eps", "rope_low_freq_factor",
                                  "rope_high_freq_factor")
                     if getattr(self, name) is not None and not 0 < getattr(self, name) < math.inf]
        if not 0 < self.rotary_percentage <= 1:
            problems.append(f"rotary_percentage={self.rotary_percentage} must be in (0, 1]")
        return problems

    @property
    def head_size(self) -> int:
        """The width of one attention head: `head_dim`, or n_embd // n_head when that is None."""
        return self.n_embd // self.n_head if self.head_dim is None else self.head_dim

    @property
    def rope_llama3(self) -> Optional[Tuple[float, float, int]]:
        """(low_freq_factor, high_freq_factor, original_max_seq_len) of Llama 3 RoPE scaling, or None."""
        if self.rope_original_max_seq_len is None:
            return None
        return self.rope_low_freq_factor, self.rope_high_freq_factor, self.rope_original_max_seq_len

    @property
    def q_per_kv(self) -> int:
        return self.n_head // self.n_query_groups

    @property
    def rope_n_elem(self) -> int:
        return int(self.rotary_percentage * self.head_size)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "Config":
        if name not in name_to_config:
            raise ValueError(f"unknown model name {name!r}; known names: {', '.join(sorted(name_to_config))}")
        return cls(**{**name_to_config[name], **overrides})

    @classmethod
    def from_json(cls, path: Union[str, Path], **overrides: Any) -> "Config":
        """Reads a `lit_config.json` (ours or upstream TinyLlama's: the same keys) strictly: a misspelt key
        would otherwise leave its field at the default, and a model of the default shape would train under
        the file's name.

        Raises:
            ValueError: one line naming `path` and the fault: not JSON (with the line), not an object, an
                unknown key (with the closest known one), a value of the wrong type (with the expected type),
                or inconsistent values.
            OSError: the file cannot be read.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file; expected a lit_config.json") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of config fields, found {type(data).__name__}")
        data = {**data, **overrides}
        check_fields(data, str(path))
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def load(cls, name_or_path: Union[str, Path]) -> "Config":
        """A registry name, a `lit_config.json` file, or a directory holding one.

        Raises:
            ValueError: one line: an unknown name, a path that does not exist or holds no lit_config.json, or a
                faulty file (`from_json`).
        """
        path = Path(name_or_path)
        if path.is_dir():
            if not (path / "lit_config.json").is_file():
                raise ValueError(f"{path}: no lit_config.json in this directory; give a config name or the file")
            path = path / "lit_config.json"
        if path.is_file():
            return cls.from_json(path)
        if str(name_or_path) in name_to_config:
            return cls.from_name(str(name_or_path))
        if path.suffix == ".json":
            raise ValueError(f"{path}: file not found")
        close = difflib.get_close_matches(str(name_or_path), name_to_config, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown model name {str(name_or_path)!r}: not a registered config nor a lit_config.json "
                         f"path; {hint}known names: {', '.join(sorted(name_to_config))}")

    def json_fields(self) -> Dict[str, Any]:
        """The fields lit_config.json holds: every field, but the Llama-family ones (OPTIONAL_FIELDS) only where
        they differ from their defaults, so a model without them gets the file that earlier versions of this fork
        read (they refuse unknown keys); `from_json` fills the defaults back in."""
        return {k: v for k, v in asdict(self).items() if k not in OPTIONAL_FIELDS or v != OPTIONAL_FIELDS[k]}

    def to_json(self, path: Union[str, Path]) -> None:
        """Writes `json_fields` as lit_config.json."""
        Path(path).write_text(json.dumps(self.json_fields(), indent=2) + "\n")

    def differences(self, other: "Config", ignore: typing.Iterable[str] = ()) -> Dict[str, tuple]:
        """{field: (self's value, other's value)} for every field that differs, except those in `ignore`."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)}


# the fields added for the Llama family and their defaults (the values that build upstream's model)
OPTIONAL_FIELDS = {f.name: f.default for f in fields(Config)
                   if f.name in ("tie_embeddings", "qkv_bias", "proj_bias", "head_dim", "rope_low_freq_factor",
                                 "rope_high_freq_factor", "rope_original_max_seq_len")}


def check_fields(data: Dict[str, Any], where: str) -> None:
    """Every key of `data` is a Config field and every value has the field's type (an int is a float too).

    Raises:
        ValueError: one line naming `where`, the key and the closest known key or the expected type.
    """
    hints = typing.get_type_hints(Config)
    for key, value in data.items():
        if key not in hints:
            close = difflib.get_close_matches(key, hints, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}{hint}; a lit_config.json holds only the fields of "
                             f"lit_gpt.config.Config: fix or remove it")
        if not _has_type(value, hints[key]):
            raise ValueError(f"{where}: {key} must be {_describe(hints[key])}, got {json.dumps(value)}")


def _has_type(value: Any, annotation: Any) -> bool:
    if typing.get_origin(annotation) is Union:
        return any(_has_type(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if isinstance(value, bool):  # a bool is an int to isinstance, never a number here
        return annotation is bool
    if annotation is float:
        return isinstance(value, (int, float))
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
             type(None): "null"}
    if typing.get_origin(annotation) is Union:
        return " or ".join(names[a] for a in typing.get_args(annotation))
    return names[annotation]


def param_count(config: Union[Config, dict]) -> int:
    """Parameters of `GPT(config)`, arithmetically (no model is built): per layer the fused qkv, the output
    projection, SwiGLU's three matrices and two RMSNorms (plus biases if any), then wte, lm_head and ln_f; a tied
    embedding and LM head is one matrix and counts once (as `sum(p.numel() for p in model.parameters())`)."""
    c = config if isinstance(config, Config) else Config(**config)
    qkv = (c.n_head + 2 * c.n_query_groups) * c.head_size
    layer = c.n_embd * qkv + c.n_head * c.head_size * c.n_embd + 3 * c.n_embd * c.intermediate_size + 2 * c.n_embd
    if c.bias or c.qkv_bias:
        layer += qkv
    if c.bias or c.proj_bias:
        layer += c.n_embd
    if c.bias:
        layer += 2 * c.intermediate_size + c.n_embd
    embeddings = 1 if c.tie_embeddings else 2
    return c.n_layer * layer + embeddings * c.padded_vocab_size * c.n_embd + c.n_embd


def _llama(name: str, n_layer: int, n_embd: int, n_head: int, n_query_groups: int, intermediate_size: int,
           **extra: Any) -> dict:
    base = dict(name=name, block_size=2048, vocab_size=32000, padding_multiple=64, n_layer=n_layer,
                n_head=n_head, n_embd=n_embd, n_query_groups=n_query_groups,
                intermediate_size=intermediate_size, rotary_percentage=1.0, parallel_residual=False,
                bias=False, _norm_class="FusedRMSNorm", norm_eps=1e-5, _mlp_class="LLaMAMLP")
    return {**base, **extra}


configs = [
    # upstream TinyLlama
    _llama("tiny_LLaMA_1b", 22, 2048, 32, 4, 5632),
    _llama("tiny_LLaMA_120M", 12, 768, 12, 1, 2048),
    _llama("code_tiny_LLaMA_1b", 22, 2048, 32, 4, 5632, block_size=8192, condense_ratio=4),
    # paper, 1.1B family (reference stacking-paper.md §5.1): MHA, 2048 wide; depth bases for g = 2, 4, 8, 24
    *[_llama(f"{n}L2048H", n, 2048, 32, 32, 5632) for n in (24, 12, 6, 3, 1)],
    # paper, 410M target and the 1.1B width base: 1024 wide, head size 64 kept
    *[_llama(f"{n}L1024H", n, 1024, 16, 16, 2816) for n in (24, 6)],
    _llama("tiny_LLaMA_410M", 24, 1024, 16, 1, 4096),
    # paper, 3B family (GQA, 4 groups) and its growth-factor bases
    _llama("tiny_LLaMA_3B", 32, 2560, 20, 4, 7040),
    _llama("tiny_LLaMA_750M_like3B", 8, 2560, 20, 4, 7040),
    _llama("tiny_LLaMA_375M_like3B", 4, 2560, 20, 4, 7040),
    _llama("tiny_LLaMA_190M_like3B", 2, 2560, 20, 4, 7040),
    _llama("tiny_LLaMA_80M_like3B", 1, 2560, 20, 4, 7040),
    # paper, 7B family (GQA, 8 groups) and the MHA variants of the partial-stacking runs
    _llama("tiny_LLaMA_7B", 32, 4096, 32, 8, 11008),
    _llama("tiny_LLaMA_1.7B_like7B", 8, 4096, 32, 8, 11008),
    *[_llama(f"{n}L4096H", n, 4096, 32, 32, 11008) for n in (32, 23, 8)],
    # paper, 8 -> 24 layer noise ablation (App. I.2)
    _llama("tiny_LLaMA_1.1B", 24, 2048, 16, 4, 5632),
    _llama("tiny_LLaMA_400M_like1.1B", 8, 2048, 16, 4, 5632),
    # public Llama-family models, shapes only (reference families-and-schedules.md §1; block_size is their
    # max_position_embeddings): tied embeddings, GQA, Llama 3 RoPE (Llama-3.2), q/k/v biases (Qwen2.5)
    _llama("SmolLM2-135M", 30, 576, 9, 3, 1536, block_size=8192, vocab_size=49152, rope_base=100000,
           tie_embeddings=True),
    _llama("SmolLM2-360M", 32, 960, 15, 5, 2560, block_size=8192, vocab_size=49152, rope_base=100000,
           tie_embeddings=True),
    _llama("Llama-3.2-1B", 16, 2048, 32, 8, 8192, block_size=131072, vocab_size=128256, rope_base=500000,
           tie_embeddings=True, condense_ratio=32, rope_low_freq_factor=1, rope_high_freq_factor=4,
           rope_original_max_seq_len=8192),
    _llama("Qwen2.5-0.5B", 24, 896, 14, 2, 4864, block_size=32768, vocab_size=151936, rope_base=1000000,
           norm_eps=1e-6, tie_embeddings=True, qkv_bias=True),
    # small CPU configs for tests and the demo (vocab of the sample-data tokenizer)
    *[_llama(f"{n}L128H", n, 128, 4, 4, 352, block_size=256, vocab_size=4096) for n in (1, 2, 3, 4, 6, 8, 12, 16)],
    *[_llama(f"{n}L256H", n, 256, 8, 2, 704, block_size=256, vocab_size=4096) for n in (1, 2, 3, 4, 6, 8, 12, 16)],
]

name_to_config = {c["name"]: c for c in configs}
