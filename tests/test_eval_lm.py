"""eval/lm.py and eval/run.py: our lm-eval adapter gives lm-eval's `hf` numbers on the exported model.

The checkpoint is built here (random GPT weights, a SentencePiece tokenizer trained on the sample tasks'
own text, Llama's trainer settings as in scripts/prepare_sample_data.py), so the file runs on a fresh clone.
"""

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from lit_gpt import GPT, Config

EVAL_DIR = ROOT / "eval"
sys.path.insert(0, str(EVAL_DIR))

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import lm as lit_lm  # noqa: E402

_spec = importlib.util.spec_from_file_location("eval_run", EVAL_DIR / "run.py")
eval_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_run)

TASKS_DIR = EVAL_DIR / "tasks"
BLOCK_SIZE = 64  # short enough that sample passages need several rolling windows and some contexts are truncated


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """No hub access and a private datasets cache; datasets and huggingface_hub read their settings at import,
    which happened before this fixture, so their module constants are patched beside the environment."""
    import datasets.config
    import huggingface_hub.constants

    cache = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache),
                           "HF_DATASETS_CACHE": str(cache / "datasets")}.items():
            mp.setenv(key, value)
        mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


def corpus_lines():
    lines = []
    for f in sorted((TASKS_DIR / "data").glob("*.jsonl")):
        for row in map(json.loads, f.read_text().splitlines()):
            for value in row.values():
                values = value if isinstance(value, list) else [value]
                lines += [v for v in values if isinstance(v, str)]
    return [line for text in lines for line in text.split("\n") if line.strip()]


def train_tokenizer(directory: Path) -> None:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_prefix=str(directory / "tokenizer"), model_type="bpe",
        vocab_size=400, character_coverage=1.0, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    (directory / "tokenizer.vocab").unlink()


def make_checkpoint(directory: Path, tokenizer_dir: Path) -> Config:
    directory.mkdir(parents=True, exist_ok=True)
    config = Config(name="test-eval", block_size=BLOCK_SIZE, vocab_size=400, padding_multiple=64, n_layer=2,
                    n_head=4, n_query_groups=2, n_embd=64, intermediate_size=160)
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():  # peaked predictions: choices differ by far more than float noise
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
        model.lm_head.weight[config.vocab_size:] = 0  # padding rows, never predicted once trained
    torch.save(model.state_dict(), directory / "lit_model.pth")
    config.to_json(directory / "lit_config.json")
    for f in tokenizer_dir.iterdir():
        (directory / f.name).write_bytes(f.read_bytes())
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tok = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(tok)
    ckpt = tmp_path_factory.mktemp("ckpt") / "final"
    make_checkpoint(ckpt, tok)
    return ckpt


@pytest.fixture(scope="module")
def hf_dir(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "model"
    with contextlib.redirect_stderr(io.StringIO()):
        eval_run.export_hf(checkpoint, out)
    return out


@pytest.fixture(scope="module")
def ours(checkpoint):
    return lit_lm.LitGPTLM(checkpoint, batch_size=8)


@pytest.fixture(scope="module")
def hflm(hf_dir):
    from lm_eval.models.huggingface import HFLM

    # lm-eval's defaults: no add_bos_token, so this checks the adapter's default against the hf backend's
    return HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=8)


def evaluate(model, tasks):
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, bootstrap_iters=0,
                                   log_samples=True)


def test_sample_tasks_agree_with_hf_backend(ours, hflm):
    a, b = evaluate(ours, ["sample"]), evaluate(hflm, ["sample"])
    for task in ("sample_mc", "sample_cloze"):
        for metric in ("acc,none", "acc_norm,none") if task == "sample_mc" else ("acc,none",):
            assert a["results"][task][metric] == b["results"][task][metric], (task, metric)
        worst = 0.0
        for x, y in zip(a["samples"][task], b["samples"][task], strict=True):
            assert x["arguments"] == y["arguments"]
            for (ll_a, greedy_a), (ll_b, greedy_b) in zip([r[0] for r in x["resps"]], [r[0] for r in y["resps"]],
                                                           strict=True):
                worst = max(worst, abs(ll_a - ll_b))
                assert greedy_a == greedy_b
        assert worst <= 1e-4, (task, worst)
    cloze_a, cloze_b = a["results"]["sample_cloze"], b["results"]["sample_cloze"]
    assert math.isclose(cloze_a["perplexity,none"], cloze_b["perplexity,none"], rel_tol=1e-4)
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert math.isclose(a["results"]["sample_ppl"][metric], b["results"]["sample_ppl"][metric], rel_tol=1e-3)
    for x, y in zip(a["samples"]["sample_ppl"], b["samples"]["sample_ppl"], strict=True):
        assert math.isclose(x["resps"][0][0], y["resps"][0][0], rel_tol=1e-5)


def test_sample_texts_exercise_truncation_and_rolling(ours):
    """The comparison above covers left truncation and several rolling windows per passage."""
    cloze = [json.loads(x)["text"] for x in (TASKS_DIR / "data" / "sample_cloze.jsonl").read_text().splitlines()]
    assert max(len(ours.tok_encode(t)) for t in cloze) > BLOCK_SIZE + 1
    ppl = [json.loads(x)["page"] for x in (TASKS_DIR / "data" / "sample_ppl.jsonl").read_text().splitlines()]
    assert min(len(ours.tok_encode(t)) for t in ppl) > 2 * BLOCK_SIZE


@pytest.fixture(scope="module")
def plain_model(checkpoint):
    """The checkpoint in a plain GPT, head on every position: the reference for scores."""
    model = GPT(Config.from_json(checkpoint / "lit_config.json")).eval()
    model.load_state_dict(torch.load(checkpoint / "lit_model.pth", weights_only=True))
    return model


def reference_scores(model, context, continuation):
    """Log-likelihood and greedy match from one full forward pass of this request alone, truncated on the left."""
    whole = (context + continuation)[-(BLOCK_SIZE + 1):]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]]))[0, -len(continuation):]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(continuation)
    return logprobs.gather(1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


def test_is_greedy_on_a_constructed_continuation(ours, plain_model):
    context = ours.tok_encode("The king is come, and")
    tokens = list(context)
    with torch.no_grad():
        for _ in range(4):  # the model's own greedy continuation, token by token
            tokens.append(plain_model(torch.tensor([tokens]))[0, -1].argmax().item())
    greedy = tokens[len(context):]
    altered = greedy[:2] + [(greedy[2] + 1) % 400] + greedy[3:]
    requests = [(None, context, greedy), (None, context, altered), (None, context, greedy[:1])]
    (ll_g, is_g), (ll_a, is_a), (_, is_1) = ours._loglikelihood_tokens(requests, disable_tqdm=True)
    assert is_g and is_1 and not is_a
    ref_g, ref_a = reference_scores(plain_model, context, greedy), reference_scores(plain_model, context, altered)
    assert (ref_g[1], ref_a[1]) == (True, False)
    assert abs(ll_g - ref_g[0]) <= 1e-4 and abs(ll_a - ref_a[0]) <= 1e-4


def test_shared_prefixes_and_truncation_score_like_single_requests(ours, plain_model, monkeypatch):
    """Inputs that are prefixes of others share a forward pass; each request must still get its own score."""
    g = torch.Generator().manual_seed(3)
    ctx = torch.randint(3, 400, (20,), generator=g).tolist()
    long_ctx = torch.randint(3, 400, (3 * BLOCK_SIZE,), generator=g).tolist()
    x, y, z = 17, 42, 99
    conts = [[x], [y], [x, y], [x, y, z], [y, x], [z] * 5]
    requests = [(None, ctx, c) for c in conts] + [(None, ctx[:5], c) for c in conts[:3]]
    requests += [(None, long_ctx, c) for c in conts] + [(None, long_ctx[:BLOCK_SIZE + 3], [x])]
    rows = []
    score_batch = ours._score_batch
    monkeypatch.setattr(ours, "_score_batch", lambda batch, *a: rows.extend(batch) or score_batch(batch, *a))
    scores = ours._loglikelihood_tokens(requests, disable_tqdm=True)
    assert len(rows) < len(requests) - 5  # the shared inputs ran once
    for (_, context, continuation), (ll, greedy) in zip(requests, scores, strict=True):
        ref_ll, ref_greedy = reference_scores(plain_model, context, continuation)
        assert abs(ll - ref_ll) <= 1e-4 and greedy == ref_greedy


def test_bfloat16_runs_close_to_float32(checkpoint, ours):
    bf16 = lit_lm.LitGPTLM(checkpoint, dtype="bfloat16", batch_size=4)
    requests = [(None, ours.tok_encode(c), ours.tok_encode(t, add_special_tokens=False))
                for c, t in (("The king is come, and", " the queen"), ("Good morrow", " my lord"))]
    for (a, _), (b, _) in zip(ours._loglikelihood_tokens(requests), bf16._loglikelihood_tokens(requests), strict=True):
        assert math.isfinite(b) and abs(a - b) <= 0.05 * abs(a) + 0.5


def generate(model, context, **gen_kwargs):
    return model.generate_until([Instance("generate_until", {}, (context, gen_kwargs), 0)], disable_tqdm=True)[0]


def test_generate_until_stops_at_stop_sequences(ours, hflm):
    context = "My lord, the king is come, and"
    free = generate(ours, context, until=[], max_gen_toks=12)
    assert free == generate(hflm, context, until=[], max_gen_toks=12, do_sample=False)
    # a stop string past the first token, in plain letters (a random model also emits partial UTF-8 bytes)
    stop = next(free[i:i + 2] for i in range(2, len(free) - 1) if free[i:i + 2].isascii() and free[i:i + 2].isalpha())
    expected = free[:free.index(stop)]
    assert generate(ours, context, until=[stop], max_gen_toks=12) == expected
    assert generate(hflm, context, until=[stop], max_gen_toks=12, do_sample=False) == expected
    assert generate(ours, context, until=["never produced", stop], max_gen_toks=12) == expected


def test_rolling_windows_match_lm_eval():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    for n in (0, 1, 5, 8, 9, 16, 17, 30):
        tokens = list(range(100, 100 + n))
        expected = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 7, 8, 1)]
        windows = lit_lm.rolling_windows(tokens, 7, 8)
        assert [(list(c), list(t)) for c, t in expected] == windows
        assert [t for _, cont in windows for t in cont] == tokens


def tokenizer_variant(tmp_path: Path, checkpoint: Path, kind: str) -> Path:
    d = tmp_path / kind
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    if kind == "tokenizer_json_bos":
        from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(corpus_lines(), trainers.BpeTrainer(vocab_size=300,
                                                                     special_tokens=["<unk>", "<s>", "</s>"]))
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        tok.save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    else:
        (d / "tokenizer.model").write_bytes((checkpoint / "tokenizer.model").read_bytes())
        if kind == "config_add_bos":
            (d / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    return d


@pytest.mark.parametrize("kind", ["sentencepiece_only", "config_add_bos", "tokenizer_json_bos"])
def test_special_tokens_follow_the_hf_tokenizer(tmp_path, checkpoint, kind):
    import transformers

    d = tokenizer_variant(tmp_path, checkpoint, kind)
    ours = lit_lm.EvalTokenizer(d)
    hf = transformers.AutoTokenizer.from_pretrained(str(d))
    assert ours.add_bos == (kind != "sentencepiece_only")
    for text in ["The king is come", " the duke", "Nay,  my lord.\n\nEnter GHOST.", "café — ÿ"]:
        assert ours.encode(text, special=True) == hf.encode(text), text
        assert ours.encode(text, special=False) == hf.encode(text, add_special_tokens=False), text


def run_cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = eval_run.main([str(a) for a in args])
    return code, err.getvalue()


def test_run_writes_the_contract_json(checkpoint, tmp_path):
    (checkpoint / "training.json").write_text(json.dumps({"step": 10, "tokens": 1280, "flops": 1.5e9}))
    (checkpoint / "growth.json").write_text(json.dumps({"operator": "stack", "source": "base"}))
    try:
        outs = {}
        for backend in ("ours", "hf"):
            out = tmp_path / f"{backend}.json"
            code, err = run_cli("--checkpoint", checkpoint, "--tasks", "sample_mc,sample_ppl", "--limit", 6,
                                "--backend", backend, "--batch_size", 4, "--out", out)
            assert code == 0, err
            outs[backend] = json.loads(out.read_text())
    finally:
        (checkpoint / "training.json").unlink()
        (checkpoint / "growth.json").unlink()
    data = outs["ours"]
    assert list(data) == ["checkpoint", "name", "config", "backend", "dtype", "tasks", "num_fewshot", "limit",
                          "results", "growth", "training"]
    assert data["checkpoint"] == str(checkpoint.resolve()) and data["name"] == "final"
    assert (data["config"], data["backend"], data["tasks"]) == ("test-eval", "ours", ["sample_mc", "sample_ppl"])
    assert (data["num_fewshot"], data["limit"]) == (None, 6)
    assert data["growth"] == {"operator": "stack", "source": "base"}
    assert data["training"] == {"tokens": 1280, "flops": 1.5e9, "paper_flops": None, "step": 10, "total_tokens": None,
                                "scratch_tokens": {"exact": None, "paper": None}}
    assert outs["hf"]["backend"] == "hf"
    a, b = data["results"], outs["hf"]["results"]
    assert a["sample_mc"]["acc,none"] == b["sample_mc"]["acc,none"]
    assert math.isclose(a["sample_ppl"]["word_perplexity,none"], b["sample_ppl"]["word_perplexity,none"], rel_tol=1e-3)
    assert not list(tmp_path.glob(".*.tmp"))


def test_lit_gpt_is_a_registered_model_name(checkpoint):
    from lm_eval.api.registry import get_model

    assert get_model("lit_gpt") is lit_lm.LitGPTLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours first must not hide lm-eval's own models


@pytest.mark.parametrize("case", ["missing_checkpoint", "no_tokenizer", "unknown_task", "bad_tasks", "bad_limit"])
def test_bad_input_is_one_error_line(checkpoint, tmp_path, case):
    ckpt = checkpoint
    tasks = "sample_mc"
    extra = []
    if case == "missing_checkpoint":
        ckpt = tmp_path / "nope"
    elif case == "no_tokenizer":
        ckpt = tmp_path / "bare"
        ckpt.mkdir()
        for name in ("lit_model.pth", "lit_config.json"):
            (ckpt / name).write_bytes((checkpoint / name).read_bytes())
    elif case == "unknown_task":
        tasks = "sample_mc,no_such_task_anywhere"
    elif case == "bad_tasks":
        tasks = "sample_mc,,"
    elif case == "bad_limit":
        extra = ["--limit", "0"]
    out = tmp_path / "out.json"
    code, err = run_cli("--checkpoint", ckpt, "--tasks", tasks, *extra, "--out", out)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert {"missing_checkpoint": "not found", "no_tokenizer": "no tokenizer", "unknown_task": "no_such_task_anywhere",
            "bad_tasks": "--tasks", "bad_limit": "--limit"}[case] in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))


def test_help_explains_every_flag():
    text = eval_run.build_parser().format_help()
    for flag in ("--checkpoint", "--tasks", "--include_path", "--num_fewshot", "--limit", "--batch_size", "--backend",
                 "--device", "--dtype", "--name", "--out", "paper"):
        assert flag in text


def test_sample_task_data_is_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location("make_sample_tasks", TASKS_DIR / "make_sample_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.DATA = tmp_path
    with contextlib.redirect_stdout(io.StringIO()):
        module.main()
    for f in ("sample_mc.jsonl", "sample_cloze.jsonl", "sample_ppl.jsonl"):
        assert (tmp_path / f).read_text() == (TASKS_DIR / "data" / f).read_text()
    mc = [json.loads(x) for x in (tmp_path / "sample_mc.jsonl").read_text().splitlines()]
    assert len(mc) >= 24 and all(len(d["choices"]) == 4 and 0 <= d["label"] < 4 for d in mc)


# ---- a token spanning the join of context and continuation ----

@pytest.fixture(scope="module")
def sample_tokenizer_lm(sample_data, tmp_path_factory):
    """The adapter over a random model with the project's sample SentencePiece tokenizer (data/sample)."""
    directory = tmp_path_factory.mktemp("sample_tokenizer_ckpt")
    config = Config(name="test-eval-sample-tok", block_size=32, vocab_size=4096, padding_multiple=64, n_layer=1,
                    n_head=2, n_query_groups=2, n_embd=32, intermediate_size=64)
    torch.manual_seed(0)
    torch.save(GPT(config).state_dict(), directory / "lit_model.pth")
    config.to_json(directory / "lit_config.json")
    (directory / "tokenizer.model").write_bytes((sample_data / "tokenizer" / "tokenizer.model").read_bytes())
    return lit_lm.LitGPTLM(directory, batch_size=4)


def merging_pair(lm):
    """A context and continuation whose joint encoding cut at the context's length leaves the continuation no
    tokens: a whole word of the vocabulary split inside, its end merging into the context's last token."""
    from lm_eval.api.model import TemplateLM

    processor = lm.tok.processor
    for i in range(processor.get_piece_size()):
        word = processor.id_to_piece(i)[1:]
        if not (processor.id_to_piece(i).startswith("▁") and len(word) >= 4 and word.isalpha()):
            continue
        for k in range(1, len(word)):
            context, continuation = f"The {word[:k]}", word[k:]
            if not TemplateLM._encode_pair(lm, context, continuation)[1]:
                return context, continuation
    raise AssertionError("the sample tokenizer has no merging pair")


def test_continuation_merged_into_the_context_scores_its_own_tokens(sample_tokenizer_lm):
    lm = sample_tokenizer_lm
    context, continuation = merging_pair(lm)
    [(score, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)], disable_tqdm=True)
    context_enc, continuation_enc = lm.tok_encode(context), lm.tok_encode(continuation, add_special_tokens=False)
    assert continuation_enc
    model = GPT(lm.config).eval()
    model.load_state_dict(torch.load(lm.checkpoint_dir / "lit_model.pth", weights_only=True))
    with torch.no_grad():
        logits = model(torch.tensor([context_enc + continuation_enc[:-1]]))[0, -len(continuation_enc):]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(continuation_enc)[:, None]).sum().item()
    assert score != 0.0 and abs(score - expected) <= 1e-4, (context, continuation, score, expected)


def test_a_continuation_without_tokens_is_refused(ours):
    with pytest.raises(ValueError, match="encodes to no tokens"):
        ours._loglikelihood_tokens([(("The king", "r"), [5, 6], [])], disable_tqdm=True)
    assert ours._loglikelihood_tokens([(("The king", ""), [5, 6], [])], disable_tqdm=True) == [(0.0, True)]
