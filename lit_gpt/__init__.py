"""lit_gpt: the TinyLlama model and training library; imports nothing optional."""

from lit_gpt.config import Config
from lit_gpt.fused_cross_entropy import FusedCrossEntropyLoss
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer

__all__ = ["GPT", "Config", "Tokenizer", "FusedCrossEntropyLoss"]
