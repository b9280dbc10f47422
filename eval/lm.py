"""lm-eval-harness adapter over a lit_gpt checkpoint directory (registered as model "lit_gpt").

    from lm import LitGPTLM                      # with eval/ on sys.path, as eval/run.py does
    lm = LitGPTLM("out/run/final", device="cpu", dtype="float32", batch_size=16)
    lm_eval.simple_evaluate(model=lm, tasks=["sample"])

The directory holds the weights, `lit_config.json` and the tokenizer files; eval/checkpoint_info.py checks them
(`check_checkpoint`) and reads the growth and training records beside them for eval/run.py's report.

The numbers equal those of lm-eval's `hf` backend on the same checkpoint exported by
scripts/convert_lit_checkpoint.py, because every choice that decides them is made the same way:
  - tokenization: context and continuation are encoded jointly and split by TemplateLM; special tokens are
    added exactly when the HF tokenizer of the exported directory adds them (see `EvalTokenizer`);
  - an empty context is conditioned on the BOS token (EOS when there is none), as HFLM's prefix token;
  - inputs longer than the block size keep their last block_size tokens (truncation from the left);
  - rolling log-likelihoods use disjoint windows of block_size predicted tokens, each with maximal context;
  - greedy generation stops at EOS or at the first stop sequence, which is cut from the text.
What differs is speed: inputs that are a prefix of another input are not run again, and the output head
and log-softmax are computed only at the positions that are scored. One request differs in result: when a
token spans the join of context and continuation ("The Ente" + "r" -> "▁Enter"), the joint split leaves the
continuation no tokens; we score its own tokens, encoded apart (`LitGPTLM._encode_pair`), where lm-eval
0.4's `hf` backend stops with `AssertionError: len(continuation_enc) > 0`.
"""

import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm import tqdm

import lm_eval.models  # noqa: F401 - lm-eval lists its own model names only into an empty registry
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry, register_model

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import check_tokenizer_vocab, expected_shapes  # noqa: E402
from lit_gpt.model import GPT  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402
from lit_gpt.utils import CheckpointError, check_state_dict, load_state_dict  # noqa: E402

if __package__:
    from .checkpoint_info import check_checkpoint, find_weights
else:  # imported by plain name: eval/ is on sys.path
    from checkpoint_info import check_checkpoint, find_weights

MODEL_NAME = "lit_gpt"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# rows of logits materialised at once: bounds memory for long rolling windows over a large vocabulary
LOGIT_ELEMENTS = 1 << 25

log = logging.getLogger(__name__)


class EvalTokenizer:
    """`lit_gpt.Tokenizer` with the special-token behaviour of the HF tokenizer the exported directory loads as.

    transformers (5.x) adds special tokens to `encode(text)` as follows, and so does this class by default:
      - tokenizer.json: whatever its post-processor adds (a Llama-2 `tokenizer.json` prepends `<s>`);
      - tokenizer.model alone: `add_bos_token` / `add_eos_token` of tokenizer_config.json, false when absent
        (our sample tokenizer and the TinyLlama export without a tokenizer_config.json add nothing).
    `add_bos_token` overrides the BOS part either way; eval/run.py passes the resolved value to the `hf`
    backend too, so both agree whatever the installed transformers version does by default.
    """

    def __init__(self, directory: Union[str, Path], add_bos_token: Optional[bool] = None) -> None:
        directory = Path(directory)
        self.tokenizer = Tokenizer(directory)
        self.processor = self.tokenizer.processor
        self.hf = self.tokenizer.backend == "huggingface"
        self.bos_id, self.eos_id = self.tokenizer.bos_id, self.tokenizer.eos_id
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if self.hf:
            probe = self.processor.encode("a", add_special_tokens=True).ids
            plain = self.processor.encode("a", add_special_tokens=False).ids
            self.default_bos = len(probe) > len(plain) and probe[0] == self.bos_id
            self.add_eos = False  # the post-processor adds whatever it adds
        else:
            self.default_bos = bool(config.get("add_bos_token", False))
            self.add_eos = bool(config.get("add_eos_token", False)) and self.eos_id is not None
        self.add_bos = self.default_bos if add_bos_token is None else bool(add_bos_token)
        if self.add_bos and self.bos_id is None:
            raise CheckpointError(f"add_bos_token is set but the tokenizer in {directory} has no BOS token")
        self.bos_piece = self._piece(self.bos_id)

    def _piece(self, token_id: Optional[int]) -> Optional[str]:
        if token_id is None:
            return None
        return self.processor.id_to_token(token_id) if self.hf else self.processor.id_to_piece(token_id)

    def encode(self, text: str, special: bool) -> List[int]:
        if self.hf:
            if special and self.add_bos == self.default_bos:
                return self.processor.encode(text, add_special_tokens=True).ids
            ids = self.processor.encode(text, add_special_tokens=False).ids
            return [self.bos_id] + ids if special and self.add_bos else ids
        ids = self.processor.encode(text)
        if special:
            ids = ([self.bos_id] if self.add_bos else []) + ids + ([self.eos_id] if self.add_eos else [])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        # ids past the vocabulary are the embedding's padding rows: nothing to print (SentencePiece would raise)
        ids = [i for i in ids if 0 <= i < self.tokenizer.vocab_size]
        if self.hf:
            return self.processor.decode(ids, skip_special_tokens=True)
        return self.processor.decode(ids)


def rolling_windows(tokens: List[int], prefix_token: int, max_length: int) -> List[Tuple[List[int], List[int]]]:
    """(context, continuation) pairs that score every token of `tokens` exactly once.

    The first window predicts up to max_length tokens after `prefix_token`; each later one predicts the next
    max_length tokens (fewer at the end) and takes as context the tokens just before them, so that context
    and continuation together fill max_length + 1 tokens (one window of input) when the text is long enough.
    The same windows as lm-eval's get_rolling_token_windows(context_len=1) + make_disjoint_window.
    """
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows = [([prefix_token], tokens[:first])]
    done = first
    while done < len(tokens):
        end = min(done + max_length, len(tokens))
        windows.append((tokens[max(0, end - max_length - 1):done], tokens[done:end]))
        done = end
    return windows


class LitGPTLM(TemplateLM):
    """lm-eval model over a lit_gpt checkpoint directory (see the module docstring)."""

    def __init__(self, checkpoint_dir: Union[str, Path, None] = None, device: str = "cpu",
                 dtype: Union[str, torch.dtype] = "float32", batch_size: Union[int, str] = 16,
                 max_length: Optional[int] = None, add_bos_token: Optional[bool] = None,
                 prefix_token_id: Optional[int] = None, max_gen_toks: int = 256,
                 state: Optional[Dict[str, torch.Tensor]] = None, config: Optional[Config] = None,
                 tokenizer_dir: Union[str, Path, None] = None, **_harness_args: Any) -> None:
        """The model of `checkpoint_dir`, or weights held in memory: `state` (a full state dict) with its
        `config` and the `tokenizer_dir` it was trained with (a step checkpoint scored without an export).

        Raises:
            CheckpointError: a missing or unfit checkpoint, tokenizer or weights (one line).
            ValueError: a bad dtype, batch size, device or max_length."""
        super().__init__()
        # **_harness_args: simple_evaluate also hands every model `max_batch_size` (unused here)
        if state is None:
            if checkpoint_dir is None:
                raise ValueError("LitGPTLM needs checkpoint_dir, or state with config and tokenizer_dir")
            self.checkpoint_dir = Path(checkpoint_dir).resolve()
            self.config = check_checkpoint(self.checkpoint_dir)
            tokenizer_dir = self.checkpoint_dir
        else:
            if config is None or tokenizer_dir is None:
                raise ValueError("LitGPTLM with state needs its config and tokenizer_dir")
            self.checkpoint_dir, self.config = None, config
            check_tokenizer_vocab(Path(tokenizer_dir), config)
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
            dtype = DTYPES[dtype]
        try:
            self.batch_size_per_gpu = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}") from None
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        self._device = torch.device(device or "cpu")
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device cuda was asked for, but torch sees no CUDA device")
        self.dtype = dtype
        self.tok = EvalTokenizer(tokenizer_dir, add_bos_token)
        if self.tok.eos_id is None:
            raise CheckpointError(f"the tokenizer in {tokenizer_dir} has no EOS token")
        self._max_length = int(max_length or self.config.block_size)
        if self._max_length > self.config.block_size:
            raise ValueError(f"max_length={self._max_length} exceeds the model's block_size={self.config.block_size}")
        self.custom_prefix_token_id = prefix_token_id
        self._max_gen_toks = int(max_gen_toks)
        self.model, self.head = self._load_model(state)
        self._warned_sampling = False

    def _load_model(self, state: Optional[Dict[str, torch.Tensor]]) -> Tuple[nn.Module, nn.Module]:
        where = "the weights in memory"
        if state is None:
            weights = find_weights(self.checkpoint_dir)
            state, where = load_state_dict(weights), str(weights)
        state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
        check_state_dict(state, expected_shapes(self.config), where)
        with torch.device(self._device):
            model = GPT(self.config)
        model.load_state_dict(state)
        model = model.to(dtype=self.dtype).eval().requires_grad_(False)
        # The forward pass stops at the final norm; the head is applied only to the positions that are scored
        # (a small model spends a large share of its time on full-vocabulary logits of context tokens).
        head = model.lm_head
        model.lm_head = nn.Identity()
        return model, head

    # ------------------------------------------------------------------ TemplateLM interface
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return int(self.custom_prefix_token_id)
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(self.checkpoint_dir).replace("/", "__")

    def get_model_info(self) -> Dict[str, Any]:
        return {"checkpoint": str(self.checkpoint_dir), "model_config": self.config.name,
                "model_num_parameters": sum(p.numel() for p in self.model.parameters())
                + (0 if self.config.tie_embeddings else self.head.weight.numel()),
                "model_dtype": str(self.dtype), "add_bos_token": self.tok.add_bos}

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> List[int]:
        if add_special_tokens is None:
            # as HFLM: a text that already starts with the BOS string gets no second one
            special = not (self.tok.bos_piece and string.startswith(self.tok.bos_piece))
        else:
            special = add_special_tokens
        ids = self.tok.encode(string, special)
        left_truncate_len = kwargs.get("left_truncate_len")
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tok.decode(tokens)

    def _encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """TemplateLM's split of the joint encoding, unless a token spans the join ("The Ente" + "r" encodes as
        "▁The ▁Enter"): cutting at the context's length then leaves the continuation no tokens, which would
        score log-likelihood 0 (probability 1) and win every multiple choice. Such a continuation is encoded
        apart from the context, the fix lm-eval PR #4055 proposes."""
        context_enc, continuation_enc = super()._encode_pair(context, continuation)
        if continuation_enc or not continuation:
            return context_enc, continuation_enc
        moved = context[len(context.rstrip()):] + continuation  # TemplateLM moves trailing whitespace over too
        return context_enc, self.tok_encode(moved, add_special_tokens=False)

    # ------------------------------------------------------------------ scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> List[Tuple[float, bool]]:
        """requests: ((context, continuation) or None, context tokens, continuation tokens) ->
        (sum of the continuation's log-probabilities, whether greedy decoding reproduces it).

        Raises:
            ValueError: a non-empty continuation without tokens (one the tokenizer encodes to nothing even on
                its own), which no log-likelihood describes; an empty one scores 0.0.
        """
        n = len(requests)
        results: List[Optional[Tuple[float, bool]]] = [None] * n
        inputs: List[Tuple[int, ...]] = []
        conts: List[List[int]] = []
        for i, (_, context_enc, continuation_enc) in enumerate(requests):
            if len(continuation_enc) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation_enc)} tokens does not fit the model's "
                                 f"{self.max_length}-token window")
            whole = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1):]
            inputs.append(tuple(whole[:-1]))
            conts.append(list(continuation_enc))
            if not continuation_enc:
                text = requests[i][0][1] if requests[i][0] is not None else ""
                if text:
                    raise ValueError(f"the continuation {text!r} encodes to no tokens of its own; it cannot be "
                                     "scored (fix the task's text or its tokenizer)")
                results[i] = (0.0, True)
        live = [i for i in range(n) if results[i] is None]

        # In lexicographic order an input that is a prefix of another sorts right before the inputs that extend
        # it, so comparing neighbours finds, for every input, one row whose forward pass already contains it.
        order = sorted(live, key=lambda i: inputs[i])
        row_of: Dict[int, int] = {}
        rows: List[Tuple[int, ...]] = []
        for k in range(len(order) - 1, -1, -1):
            i = order[k]
            if k + 1 < len(order):
                j = order[k + 1]
                a, b = inputs[i], inputs[j]
                if len(a) <= len(b) and b[:len(a)] == a:
                    row_of[i] = row_of[j]
                    continue
            row_of[i] = len(rows)
            rows.append(inputs[i])
        members: List[List[int]] = [[] for _ in rows]
        for i in live:
            members[row_of[i]].append(i)

        # longest first: the first batch shows the memory peak at once, and padding inside a batch stays small
        row_order = sorted(range(len(rows)), key=lambda r: (-len(rows[r]), rows[r]))
        with self._progress(len(live), "Running loglikelihood requests", disable_tqdm) as pbar:
            for start in range(0, len(row_order), self.batch_size):
                batch = row_order[start:start + self.batch_size]
                self._score_batch(batch, rows, members, inputs, conts, requests, results)
                pbar.update(sum(len(members[r]) for r in batch))
        return results  # type: ignore[return-value]

    def _progress(self, total: int, desc: str, disable: bool) -> tqdm:
        """A progress bar on rank 0 and a terminal only (in a log file it would run into the error line); used as a
        context manager, so an interrupted bar ends its line before the `error:` line."""
        return tqdm(total=total, desc=desc, disable=True if disable or self.rank != 0 else None)

    @torch.inference_mode()
    def _score_batch(self, batch, rows, members, inputs, conts, requests, results) -> None:
        width = len(rows[batch[0]])
        idx = torch.zeros(len(batch), width, dtype=torch.long)
        for b, r in enumerate(batch):
            idx[b, :len(rows[r])] = torch.tensor(rows[r], dtype=torch.long)  # right padding: causal, never seen
        hidden = self.model(idx.to(self._device))
        hidden = hidden.reshape(-1, hidden.shape[-1])

        positions: List[int] = []  # flat (row, position) indices into `hidden`
        targets: List[int] = []
        slot_of: List[int] = []  # which request of this batch each scored token belongs to
        owners: List[int] = []
        for b, r in enumerate(batch):
            for i in members[r]:
                end = len(inputs[i])
                begin = end - len(conts[i])
                positions.extend(range(b * width + begin, b * width + end))
                targets.extend(conts[i])
                slot_of.extend([len(owners)] * len(conts[i]))
                owners.append(i)
        positions_t = torch.tensor(positions, dtype=torch.long, device=self._device)
        targets_t = torch.tensor(targets, dtype=torch.long, device=self._device)
        logprob = torch.empty(len(positions), dtype=torch.float32, device=self._device)
        greedy_ok = torch.empty(len(positions), dtype=torch.bool, device=self._device)
        step = max(1, LOGIT_ELEMENTS // self.config.padded_vocab_size)
        for s in range(0, len(positions), step):
            sel = slice(s, s + step)
            logits = self.head(hidden[positions_t[sel]]).float()
            picked = logits.gather(1, targets_t[sel, None]).squeeze(1)
            logprob[sel] = picked - torch.logsumexp(logits, dim=-1)
            greedy_ok[sel] = logits.argmax(dim=-1) == targets_t[sel]
        slots = torch.tensor(slot_of, dtype=torch.long)
        totals = torch.zeros(len(owners), dtype=torch.float64).index_add_(0, slots, logprob.double().cpu())
        misses = torch.zeros(len(owners), dtype=torch.long).index_add_(0, slots, (~greedy_ok).long().cpu())
        for i, total, miss in zip(owners, totals.tolist(), misses.tolist(), strict=True):
            answer = (total, miss == 0)
            results[i] = answer
            if requests[i][0] is not None:
                self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        windows = []
        owner = []
        for i, req in enumerate(requests):
            (text,) = req.args
            for context_enc, continuation_enc in rolling_windows(self.tok_encode(text), self.prefix_token_id,
                                                                 self.max_length):
                windows.append((None, context_enc, continuation_enc))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, scores, strict=True):
            totals[i] += ll
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def _generation_settings(self, gen_kwargs: Optional[dict]) -> Tuple[List[str], int]:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, (list, tuple)):
            raise ValueError(f"generation kwarg 'until' must be a string or a list of strings, not {until!r}")
        max_gen = kwargs.get("max_gen_toks", kwargs.get("max_new_tokens", self.max_gen_toks))
        max_gen = int(max_gen)
        if max_gen >= self.max_length:
            raise ValueError(f"max_gen_toks={max_gen} leaves no room for a context in the model's "
                             f"{self.max_length}-token window")
        sampling = kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0
        if sampling and not self._warned_sampling:
            log.warning("lit_gpt decodes greedily; do_sample/temperature are ignored")
            self._warned_sampling = True
        return [s for s in until if s], max_gen

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        items = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            until, max_gen = self._generation_settings(gen_kwargs)
            context_enc = self.tok_encode(context)[-(self.max_length - max_gen):]
            if not context_enc:
                context_enc = [self.prefix_token_id]
            items.append((i, context_enc, tuple(until), max_gen))
        # one batch holds contexts of one length and one set of settings: the model takes no padding mask
        groups: Dict[Tuple, List] = {}
        for item in items:
            groups.setdefault((len(item[1]), item[2], item[3]), []).append(item)
        results: List[str] = [""] * len(requests)
        with self._progress(len(requests), "Running generate_until requests", disable_tqdm) as pbar:
            for key in sorted(groups, key=lambda k: -k[0]):
                group = groups[key]
                for start in range(0, len(group), self.batch_size):
                    chunk = group[start:start + self.batch_size]
                    texts = self._greedy([c[1] for c in chunk], list(key[1]), key[2])
                    for (i, _, _, _), text in zip(chunk, texts, strict=True):
                        results[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    pbar.update(len(chunk))
        return results

    @torch.inference_mode()
    def _greedy(self, contexts: List[List[int]], until: List[str], max_gen: int) -> List[str]:
        tokens = torch.tensor(contexts, dtype=torch.long, device=self._device)
        generated: List[List[int]] = [[] for _ in contexts]
        done = [False] * len(contexts)
        for _ in range(max_gen):
            hidden = self.model(tokens[:, -self.max_length:])
            next_tokens = self.head(hidden[:, -1]).float().argmax(dim=-1)
            tokens = torch.cat((tokens, next_tokens[:, None]), dim=1)
            for b, t in enumerate(next_tokens.tolist()):
                if done[b]:
                    continue
                if t == self.eot_token_id:
                    done[b] = True
                    continue
                generated[b].append(t)
                if until and any(s in self.tok.decode(generated[b]) for s in until):
                    done[b] = True
            if all(done):
                break
        texts = []
        for ids in generated:
            text = self.tok.decode(ids)
            for s in until:
                text = text.split(s)[0]
            texts.append(text)
        return texts


if MODEL_NAME not in model_registry:  # the same file imported under two module names registers once
    register_model(MODEL_NAME)(LitGPTLM)
