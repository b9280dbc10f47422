"""Model configuration: upstream's `Config` fields plus the registry of named configs."""

import difflib
import json
import math
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional, Union

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

    def __post_init__(self) -> None:
        """Fills the derived defaults. Raises ValueError with one line listing every inconsistent value."""
        for name in ("condense_ratio", "rope_base"):
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
        if self.n_embd % self.n_head:
            problems.append(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_query_groups:
            problems.append(f"n_head={self.n_head} is not divisible by n_query_groups={self.n_query_groups}")
        if self._norm_class not in NORM_CLASSES:
            problems.append(f"_norm_class={self._norm_class!r} is not one of {NORM_CLASSES}")
        if self._mlp_class not in MLP_CLASSES:
            problems.append(f"_mlp_class={self._mlp_class!r} is not one of {MLP_CLASSES}")
        if self.padded_vocab_size < self.vocab_size:
            problems.append(f"padded_vocab_size={self.padded_vocab_size} < vocab_size={self.vocab_size}")
        if problems:
            raise ValueError(f"invalid config {self.name!r}: " + "; ".join(problems))

    def _range_problems(self) -> list:
        whole = ("block_size", "vocab_size", "padding_multiple", "n_layer", "n_head", "n_embd", "n_query_groups",
                 "intermediate_size", "padded_vocab_size")
        problems = [f"{name}={getattr(self, name)} must be at least 1" for name in whole
                    if getattr(self, name) is not None and getattr(self, name) < 1]
        # written as `not 0 < x < inf` so that NaN is refused too
        problems += [f"{name}={getattr(self, name)} must be a positive finite number"
                     for name in ("condense_ratio", "rope_base", "norm_eps") if not 0 < getattr(self, name) < math.inf]
        if not 0 < self.rotary_percentage <= 1:
            problems.append(f"rotary_percentage={self.rotary_percentage} must be in (0, 1]")
        return problems

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

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

    def to_json(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def differences(self, other: "Config", ignore: typing.Iterable[str] = ()) -> Dict[str, tuple]:
        """{field: (self's value, other's value)} for every field that differs, except those in `ignore`."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)}


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
    projection, SwiGLU's three matrices and two RMSNorms (plus biases if any), then wte, lm_head and ln_f."""
    c = config if isinstance(config, Config) else Config(**config)
    qkv = (c.n_head + 2 * c.n_query_groups) * c.head_size
    layer = c.n_embd * qkv + c.n_embd * c.n_embd + 3 * c.n_embd * c.intermediate_size + 2 * c.n_embd
    if c.bias:
        layer += qkv + c.n_embd + 2 * c.intermediate_size + c.n_embd
    return c.n_layer * layer + 2 * c.padded_vocab_size * c.n_embd + c.n_embd


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
    # small CPU configs for tests and the demo (vocab of the sample-data tokenizer)
    *[_llama(f"{n}L128H", n, 128, 4, 4, 352, block_size=256, vocab_size=4096) for n in (1, 2, 3, 4, 6, 8, 12, 16)],
    *[_llama(f"{n}L256H", n, 256, 8, 2, 704, block_size=256, vocab_size=4096) for n in (1, 2, 3, 4, 6, 8, 12, 16)],
]

name_to_config = {c["name"]: c for c in configs}
