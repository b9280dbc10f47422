"""lit_gpt/data_record.py: packed data records which tokenizer made it; training and eval check theirs against it.

The end-to-end tests prepare data with the README's commands (both splits into one directory, no tokenizer
beside it) and start pretrain/tinyllama.py once each (~8 s of start-up)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import zstandard
from conftest import ROOT

from lit_gpt import Config, Tokenizer
from lit_gpt.data_record import check_checkpoint_tokenizer, check_training_data, tokenizer_entry
from lit_gpt.packed_dataset import PackedDatasetBuilder

TEXT = ["The river rose in the night and the village woke to water in every street.",
        "She kept a small notebook of the birds she saw, with the date and the weather beside each name.",
        "Bread rises because yeast turns sugar into gas, and the dough traps the bubbles.",
        "A good map leaves things out: the art is in choosing what a traveller can ignore."]
OTHER_TEXT = ["Quartz, jade and onyx glimmer; vexed zebras jump quickly over fuzzy wharves.",
              "Pack my box with five dozen liquor jugs, judge the sphinx of black quartz."]
MODEL = dict(name="tiny-record", block_size=16, vocab_size=128, padding_multiple=64, n_layer=1, n_head=2,
             n_query_groups=1, n_embd=16, intermediate_size=32)


_spec = importlib.util.spec_from_file_location("prepare_slimpajama", ROOT / "scripts" / "prepare_slimpajama.py")
prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)


def sentencepiece(directory: Path, text, vocab_size: int) -> Path:
    directory.mkdir(parents=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text * 4), model_prefix=str(directory / "tokenizer"),
                                   model_type="bpe", vocab_size=vocab_size, hard_vocab_limit=False,
                                   byte_fallback=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
                                   minloglevel=2)
    (directory / "tokenizer.vocab").unlink()
    return directory


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """SRC in SlimPajama's layout, tokenizers A (the data's) and B (another, of a similar size), and slim/:
    both splits prepared with A, as the README's commands do."""
    root = tmp_path_factory.mktemp("records")
    rows = "".join(json.dumps({"text": t, "meta": {"redpajama_set_name": "RedPajamaBook"}}) + "\n"
                   for t in TEXT * 30)
    for split in ("train", "validation"):
        path = root / "src" / split / "chunk1" / f"{split}.jsonl.zst"
        path.parent.mkdir(parents=True)
        path.write_bytes(zstandard.ZstdCompressor().compress(rows.encode()))
    a = sentencepiece(root / "tok_a", TEXT, 120)
    sentencepiece(root / "tok_b", OTHER_TEXT, 100)
    for split in ("train", "validation"):
        prep.prepare(root / "src", a, root / "slim", split, chunk_size=17 * 8, num_processes=1, block_size=17,
                     progress=False)
    Config(**MODEL).to_json(root / "model.json")
    return root


def bins(directory: Path):
    return sorted(directory.glob("*.bin"))


def test_fingerprint_is_what_the_ids_mean(tmp_path):
    """Same vocabulary in other bytes: same fingerprint; another EOS or another vocabulary: a different one."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3, "river": 4, "rose": 5}
    hf = HFTokenizer(WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = Whitespace()
    dirs = {name: tmp_path / name for name in ("pretty", "compact", "eos", "bigger")}
    for d in dirs.values():
        d.mkdir()
    hf.save(str(dirs["pretty"] / "tokenizer.json"), pretty=True)
    hf.save(str(dirs["compact"] / "tokenizer.json"), pretty=False)
    hf.save(str(dirs["eos"] / "tokenizer.json"))
    (dirs["eos"] / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<s>"}))
    hf.add_tokens(["sea"])
    hf.save(str(dirs["bigger"] / "tokenizer.json"))
    assert (dirs["pretty"] / "tokenizer.json").read_bytes() != (dirs["compact"] / "tokenizer.json").read_bytes()
    prints = {name: Tokenizer(d).fingerprint() for name, d in dirs.items()}
    assert prints["pretty"] == prints["compact"]
    assert len({prints["pretty"], prints["eos"], prints["bigger"]}) == 3


def test_training_finds_the_copy_beside_the_data(world):
    """The README's layout (no tokenizer beside the data directory): the copy prepare wrote is used."""
    found = check_training_data(bins(world / "slim"), None, Config(**MODEL), world / "tokenizer")
    assert found.directory == world / "slim" / "tokenizer" and found.warning is None
    assert found.entry == {**tokenizer_entry(world / "tok_a"), "path": str((world / "slim" / "tokenizer").resolve())}


def test_training_refuses_another_tokenizer(world):
    with pytest.raises(ValueError) as info:
        check_training_data(bins(world / "slim"), world / "tok_b", Config(**MODEL))
    message = str(info.value)
    assert message.startswith(f"the tokenizer in {world / 'tok_b'} (--tokenizer_dir {world / 'tok_b'}: ")
    assert f"is not the one {world / 'slim' / 'train_slimpajama.record.json'} records" in message
    assert message.endswith("pass --tokenizer_dir with the tokenizer the data was made with")
    # the same tokenizer elsewhere (another copy, another path) is the same tokenizer
    copy = world / "elsewhere"
    shutil.copytree(world / "tok_a", copy)
    assert check_training_data(bins(world / "slim"), copy, Config(**MODEL)).directory == copy


def test_token_ids_beyond_the_model_are_refused_from_the_record(world):
    record = json.loads((world / "slim" / "train_slimpajama.record.json").read_text())
    small = Config(**{**MODEL, "vocab_size": 64})
    assert record["max_token_id"] >= 64
    with pytest.raises(ValueError) as info:
        check_training_data(bins(world / "slim"), None, small)
    assert str(info.value) == (f"{world / 'slim' / 'train_slimpajama.record.json'}: the data holds token ids up to "
                               f"{record['max_token_id']} but model tiny-record has only 64 embedding rows; pick a "
                               f"model whose vocab_size is above {record['max_token_id']}")


def test_data_of_two_tokenizers_is_refused(world, tmp_path):
    other = tmp_path / "other"
    prep.prepare(world / "src", world / "tok_b", other, "validation", chunk_size=17 * 8, num_processes=1,
                 block_size=17, progress=False)
    with pytest.raises(ValueError, match="record different tokenizers") as info:
        check_training_data(bins(world / "slim")[:1] + bins(other), None, Config(**MODEL))
    assert str(other / "validation_slimpajama.record.json") in str(info.value)


def test_no_tokenizer_is_a_warning(world, tmp_path):
    """Training needs no tokenizer (synthetic data, upstream data): it warns once that final/ will lack one."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    for f in bins(world / "slim"):
        shutil.copy(f, upstream / f.name)
    found = check_training_data(bins(upstream), None, Config(**MODEL), tmp_path / "tokenizer")
    assert (found.directory, found.entry) == (None, None)
    assert found.warning.startswith(f"no tokenizer for the data in {upstream}: no record says which tokenizer made it")
    assert found.warning.endswith("final/ will have no tokenizer, which eval needs: pass --tokenizer_dir")

    shutil.copytree(world / "tok_a", tmp_path / "tokenizer")  # upstream's place: beside the data directory
    found = check_training_data(bins(upstream), None, Config(**MODEL), tmp_path / "tokenizer")
    assert (found.directory, found.warning) == (tmp_path / "tokenizer", None)

    recorded = tmp_path / "recorded"  # a record whose tokenizer is gone: its entry still goes to training.json
    shutil.copytree(world / "slim", recorded, ignore=shutil.ignore_patterns("tokenizer"))
    data = json.loads((recorded / "train_slimpajama.record.json").read_text())
    data["tokenizer"]["path"] = str(tmp_path / "gone")
    (recorded / "train_slimpajama.record.json").write_text(json.dumps(data))
    found = check_training_data([f for f in bins(recorded) if f.name.startswith("train_")], None, Config(**MODEL))
    assert found.directory is None and found.entry == data["tokenizer"]
    assert f"the tokenizer its records name ({tmp_path / 'gone'}) is gone" in found.warning


def test_a_damaged_record_is_one_line(world, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(world / "slim", damaged)
    (damaged / "train_slimpajama.record.json").write_text('{"prefix": "train_slim')
    with pytest.raises(ValueError, match=f"^{damaged / 'train_slimpajama.record.json'}: not valid JSON"):
        check_training_data(bins(damaged), None, Config(**MODEL))


def test_eval_checks_the_tokenizer_against_training_json(world, tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    shutil.copy(world / "tok_a" / "tokenizer.model", final)
    check_checkpoint_tokenizer(final)  # no training.json: converted or grown checkpoints pass
    entry = tokenizer_entry(world / "tok_a")
    (final / "training.json").write_text(json.dumps({"step": 1, "tokenizer": entry}))
    check_checkpoint_tokenizer(final)
    shutil.copy(world / "tok_b" / "tokenizer.model", final)
    with pytest.raises(ValueError) as info:
        check_checkpoint_tokenizer(final)
    assert str(info.value).startswith(f"the tokenizer in {final} (")
    assert f"is not the one the model was trained with ({final / 'training.json'} records" in str(info.value)
    assert str(info.value).endswith("copy that tokenizer's files beside the weights")


def train(world, out, *extra):
    argv = [sys.executable, str(ROOT / "pretrain" / "tinyllama.py"), "--model_name", str(world / "model.json"),
            "--train_data_dir", str(world / "slim"), "--out_dir", str(out), "--global_batch_size", "2",
            "--micro_batch_size", "2", "--eval_iters", "1", "--eval_interval", "1", "--max_steps", "1",
            "--n_chunks", "1", *map(str, extra)]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_training_exports_the_datas_tokenizer_and_eval_checks_it(world, tmp_path):
    """Before: no tokenizer found, nothing said, final/ without a tokenizer. Now final/ carries the copy and
    training.json its entry, which eval checks (eval/run.py's refusal: tests/test_eval_run.py)."""
    run = train(world, tmp_path / "run")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "warning" not in run.stderr
    final = tmp_path / "run" / "final"
    assert (final / "tokenizer.model").read_bytes() == (world / "tok_a" / "tokenizer.model").read_bytes()
    recorded = json.loads((final / "training.json").read_text())["tokenizer"]
    assert recorded["fingerprint"] == Tokenizer(world / "tok_a").fingerprint()

    check_checkpoint_tokenizer(final)
    shutil.copy(world / "tok_b" / "tokenizer.model", final)
    with pytest.raises(ValueError, match="is not the one the model was trained with"):
        check_checkpoint_tokenizer(final)


def test_training_refuses_another_tokenizer_in_one_line(world, tmp_path):
    run = train(world, tmp_path / "run", "--tokenizer_dir", world / "tok_b")
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr[-3000:]
    assert run.stderr.startswith(f"error: the tokenizer in {world / 'tok_b'} (--tokenizer_dir")
    assert not (tmp_path / "run" / "final").exists()


def test_upstream_data_beyond_the_vocabulary_fails_in_one_line(world, tmp_path):
    """No record (upstream's data) and ids past the model's rows: before, an IndexError traceback mid-training
    (a device-side assert on a GPU); now one line naming the file, after the no-tokenizer warning."""
    data = tmp_path / "upstream"
    data.mkdir()
    for prefix, top in (("train_slimpajama_0", 200), ("validation_0", 100)):
        builder = PackedDatasetBuilder(data, prefix, chunk_size=17 * 4, sep_token=1, vocab_size=1000)
        builder.add_array(np.arange(17 * 4) + top - 17 * 4)  # ids up to top - 1
        builder.write_reminder()
    run = train(world, tmp_path / "run", "--train_data_dir", data)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 2, run.stderr[-3000:]
    assert lines[0].startswith(f"warning: no tokenizer for the data in {data}")
    assert lines[1].startswith(f"error: {data / 'train_slimpajama_0_0000000000.bin'}: token id 199 is outside")


@pytest.mark.parametrize("name,content", [("tokenizer.model", b"cut sho"), ("tokenizer.json", b'{"model": {')])
def test_a_damaged_tokenizer_is_one_line(world, tmp_path, name, content):
    """Before: sentencepiece's RuntimeError or the tokenizers library's bare Exception, as a traceback."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"^{tmp_path / name}: cannot be loaded .*; replace it with a complete copy$"):
        check_training_data(bins(world / "slim"), tmp_path, Config(**MODEL))
