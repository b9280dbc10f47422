import pytest
import torch

from lit_gpt import Tokenizer

TEXT = """It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of
foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was
the season of Darkness, it was the spring of hope, it was the winter of despair.""".split("\n") * 20


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("sp")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT), model_prefix=str(d / "tokenizer"), vocab_size=80,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, minloglevel=2)
    return d


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    d = tmp_path_factory.mktemp("hf")
    tok = HFTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=90, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text('{"bos_token": {"content": "<s>"}, "eos_token": "</s>"}')
    return d


@pytest.mark.parametrize("fixture", ["sentencepiece_dir", "hf_dir"])
def test_upstream_encode_semantics(fixture, request):
    tok = Tokenizer(request.getfixturevalue(fixture))
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("it was the age of wisdom")
    assert ids.dtype == torch.int and ids[-1].item() == 2 and 1 not in ids.tolist()
    with_bos = tok.encode("it was the age of wisdom", bos=True, eos=False)
    assert with_bos[0].item() == 1 and torch.equal(with_bos[1:], ids[:-1])
    assert tok.decode(ids[:-1]).replace(" ", "") == "itwastheageofwisdom"
    assert len(tok.encode("it was the age of wisdom", max_length=3)) == 3


def test_vocab_sizes(sentencepiece_dir, hf_dir):
    assert Tokenizer(sentencepiece_dir).vocab_size == 80
    assert Tokenizer(hf_dir).vocab_size == 90


def test_file_path_is_accepted(sentencepiece_dir):
    assert Tokenizer(sentencepiece_dir / "tokenizer.model").backend == "sentencepiece"


def test_missing_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.model or tokenizer.json"):
        Tokenizer(tmp_path)
