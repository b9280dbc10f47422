"""Tokenizer over a directory holding SentencePiece `tokenizer.model` or HF `tokenizer.json`."""

import json
from pathlib import Path
from typing import List, Optional, Union

import torch

# what travels with a model directory: the vocabulary files and HF's settings beside them
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def has_tokenizer(directory: Union[str, Path]) -> bool:
    return any((Path(directory) / f).is_file() for f in ("tokenizer.model", "tokenizer.json"))


class Tokenizer:
    """Upstream's encode semantics: no BOS, EOS appended (the document separator in packed data)."""

    def __init__(self, checkpoint_dir: Union[str, Path]) -> None:
        path = Path(checkpoint_dir)
        if path.is_file():  # upstream's default pointed at the file itself; accept both
            path = path.parent
        self.bos_id: Optional[int] = None
        self.eos_id: Optional[int] = None
        if (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer as HFTokenizer

            self.processor = HFTokenizer.from_file(str(path / "tokenizer.json"))
            self.backend = "huggingface"
            self.bos_id, self.eos_id = self._hf_special_ids(path)
        elif (path / "tokenizer.model").is_file():
            from sentencepiece import SentencePieceProcessor

            self.processor = SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
            self.backend = "sentencepiece"
            self.bos_id = self.processor.bos_id() if self.processor.bos_id() >= 0 else None
            self.eos_id = self.processor.eos_id() if self.processor.eos_id() >= 0 else None
        else:
            raise FileNotFoundError(f"no tokenizer.model or tokenizer.json in {path}")

    def _hf_special_ids(self, path: Path):
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}

        def token_id(key: str, fallback: str) -> Optional[int]:
            token = config.get(key, fallback)
            if isinstance(token, dict):  # {"content": "</s>", ...} in older tokenizer_config files
                token = token.get("content")
            return self.processor.token_to_id(token) if token else None

        return token_id("bos_token", "<s>"), token_id("eos_token", "</s>")

    @property
    def vocab_size(self) -> int:
        if self.backend == "huggingface":
            return self.processor.get_vocab_size(with_added_tokens=True)
        return self.processor.vocab_size()

    def encode(self, string: str, device: Optional[torch.device] = None, bos: bool = False, eos: bool = True,
               max_length: int = -1) -> torch.Tensor:
        if self.backend == "huggingface":
            tokens: List[int] = self.processor.encode(string, add_special_tokens=False).ids
        else:
            tokens = self.processor.encode(string)
        if bos:
            if self.bos_id is None:
                raise ValueError("this tokenizer has no BOS token")
            tokens = [self.bos_id] + tokens
        if eos:
            if self.eos_id is None:
                raise ValueError("this tokenizer has no EOS token")
            tokens = tokens + [self.eos_id]
        if max_length > 0:
            tokens = tokens[:max_length]
        return torch.tensor(tokens, dtype=torch.int, device=device)

    def decode(self, tensor: torch.Tensor) -> str:
        tokens = [tensor.item()] if tensor.ndim == 0 else tensor.tolist()
        return self.processor.decode(tokens)
