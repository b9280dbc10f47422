"""Tokenizer over a directory holding SentencePiece `tokenizer.model` or HF `tokenizer.json`."""

import hashlib
import json
from pathlib import Path
from typing import List, Optional, Union

import torch

# what travels with a model directory: the vocabulary files and HF's settings beside them
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def _unreadable(path: Path, e: Exception) -> ValueError:
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return ValueError(f"{path}: cannot be loaded ({reason}); replace it with a complete copy")


def has_tokenizer(directory: Union[str, Path]) -> bool:
    return any((Path(directory) / f).is_file() for f in ("tokenizer.model", "tokenizer.json"))


class Tokenizer:
    """Upstream's encode semantics: no BOS, EOS appended (the document separator in packed data)."""

    def __init__(self, checkpoint_dir: Union[str, Path]) -> None:
        """Raises FileNotFoundError (no tokenizer file) or ValueError (a file that does not load: damaged or
        cut short), naming the folder or file."""
        path = Path(checkpoint_dir)
        if path.is_file():  # upstream's default pointed at the file itself; accept both
            path = path.parent
        self.bos_id: Optional[int] = None
        self.eos_id: Optional[int] = None
        if (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer as HFTokenizer

            try:
                self.processor = HFTokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as e:  # noqa: BLE001 - the Rust library raises a bare Exception
                raise _unreadable(path / "tokenizer.json", e) from None
            self.backend = "huggingface"
            self.bos_id, self.eos_id = self._hf_special_ids(path)
        elif (path / "tokenizer.model").is_file():
            from sentencepiece import SentencePieceProcessor

            try:
                self.processor = SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
            except (RuntimeError, OSError) as e:
                raise _unreadable(path / "tokenizer.model", e) from None
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

    def fingerprint(self) -> str:
        """sha256 of what the token ids mean: every id's piece (SentencePiece: and its score) in id order, and
        the BOS and EOS ids. Not of the files: the same vocabulary can be saved in different bytes (the sample
        tokenizer's `tokenizer.model` records the trainer's thread count)."""
        if self.backend == "huggingface":
            vocab = self.processor.get_vocab(with_added_tokens=True)
            lines = [f"{i}\t{piece}" for piece, i in sorted(vocab.items(), key=lambda item: item[1])]
        else:
            lines = [f"{i}\t{self.processor.id_to_piece(i)}\t{self.processor.get_score(i)}"
                     for i in range(self.processor.vocab_size())]
        lines += [f"bos\t{self.bos_id}", f"eos\t{self.eos_id}"]
        return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()

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
