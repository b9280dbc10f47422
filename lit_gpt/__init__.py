"""lit_gpt: the TinyLlama model and training library; imports nothing optional.

The top-level names load on first use, so that small tools (eval/plot.py, lit_gpt.files) need not import torch."""

import importlib

_EXPORTS = {"Config": "lit_gpt.config", "GPT": "lit_gpt.model", "Tokenizer": "lit_gpt.tokenizer",
            "FusedCrossEntropyLoss": "lit_gpt.fused_cross_entropy"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lit_gpt' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
