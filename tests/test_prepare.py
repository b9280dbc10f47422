"""scripts/prepare_slimpajama.py on a small SlimPajama-layout fixture, and the sample-data text helpers."""

import contextlib
import importlib.util
import io
import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import zstandard
from conftest import ROOT

from lit_gpt import Tokenizer


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = load_script("prepare_slimpajama")
sample = load_script("prepare_sample_data")

DOCUMENTS = [
    "The river rose in the night and the village woke to water in every street.",
    "She kept a small notebook of the birds she saw, with the date and the weather beside each name.",
    "Bread rises because yeast turns sugar into gas, and the dough traps the bubbles.",
    "The committee met on Tuesday.\nIt agreed to repair the bridge before winter.",
    "A good map leaves things out: the art is in choosing what a traveller can ignore.",
    "Two trains left the station at noon, one heading north to the hills and one south to the sea.",
    "When the lights went out, the orchestra kept playing from memory until the final chord.",
]
GITHUB = "def main():\n    return 0\n"


def row(text, set_name="RedPajamaBook"):
    return json.dumps({"text": text, "meta": {"redpajama_set_name": set_name}}) + "\n"


def write_zst(path: Path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(lines).encode()))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """train: two .jsonl.zst files (one nested deeper) and a plain .jsonl; a GitHub row and two malformed lines."""
    root = tmp_path_factory.mktemp("slimpajama")
    write_zst(root / "train/chunk1/example_train_0.jsonl.zst",
              [row(DOCUMENTS[0]), row(GITHUB, "RedPajamaGithub"), row(DOCUMENTS[1]), '{"text": "unterminated\n'])
    write_zst(root / "train/chunk2/sub/example_train_1.jsonl.zst",
              [row(DOCUMENTS[2]), json.dumps({"meta": {"redpajama_set_name": "RedPajamaBook"}}) + "\n",
               row(DOCUMENTS[3])])
    (root / "train/chunk2/example_train_2.jsonl").write_text("".join(row(d) for d in DOCUMENTS[4:]) + "\n")
    write_zst(root / "validation/chunk1/example_validation_0.jsonl.zst", [row(DOCUMENTS[0])])
    return root


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(DOCUMENTS * 3), model_prefix=str(directory / "tokenizer"), model_type="bpe",
        vocab_size=400, hard_vocab_limit=False, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return directory


def run_main(*args):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = prep.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def tokens_of(path) -> np.ndarray:
    return np.fromfile(path, dtype="<u2", offset=24)


def test_prepare_one_process(source, tokenizer_dir, tmp_path):
    tokenizer = Tokenizer(tokenizer_dir)
    stats = prep.prepare(source, tokenizer_dir, tmp_path, "train", chunk_size=64, num_processes=1, block_size=16,
                         progress=False)
    assert (stats["documents"], stats["github_skipped"], stats["malformed"]) == (7, 1, 2)
    # file order: chunk1/example_train_0, chunk2/example_train_2.jsonl, chunk2/sub/example_train_1
    in_order = [DOCUMENTS[i] for i in (0, 1, 4, 5, 6, 2, 3)]
    stream = np.concatenate([tokenizer.encode(d, bos=False, eos=True).numpy() for d in in_order])
    assert stats["tokens_encoded"] == len(stream)
    assert stats["tokens_written"] == len(stream) // 16 * 16 and stats["tokens_dropped"] < 16

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"train_slimpajama_0_{i:010d}.bin" for i in range(stats["files_written"])]
    sizes = []
    for name in names:
        magic, version, dtype_code, chunk_size = struct.unpack("<7sQBQ", (tmp_path / name).read_bytes()[:24])
        assert (magic, version, dtype_code) == (b"LITPKDS", 1, 8)
        sizes.append(chunk_size)
    assert sizes[:-1] == [64] * (len(sizes) - 1) and 0 < sizes[-1] <= 64 and sizes[-1] % 16 == 0

    written = np.concatenate([tokens_of(tmp_path / name) for name in names])
    assert written.tolist() == stream[:len(written)].tolist()
    assert tokenizer.bos_id not in written
    *complete, partial = np.split(written, np.flatnonzero(written == tokenizer.eos_id) + 1)
    assert [tokenizer.processor.decode(d[:-1].tolist()) for d in complete] == in_order[:len(complete)]
    assert in_order[len(complete)].startswith(tokenizer.processor.decode(partial.tolist()))


def test_prepare_two_processes(source, tokenizer_dir, tmp_path):
    tokenizer = Tokenizer(tokenizer_dir)
    stats = prep.prepare(source, tokenizer_dir, tmp_path, "train", chunk_size=32, num_processes=2, block_size=8,
                         progress=False)
    assert (stats["processes"], stats["documents"], stats["github_skipped"], stats["malformed"]) == (2, 7, 1, 2)
    assert stats["tokens_dropped"] < 2 * 8
    shares = prep.split_by_size(prep.find_files(source, "train"), 2)
    for proc, share in enumerate(shares):
        texts = [text for path in share for text in prep.read_texts(path, Counter())]
        expected = np.concatenate([tokenizer.encode(t, bos=False, eos=True).numpy() for t in texts])
        written = np.concatenate([tokens_of(p) for p in sorted(tmp_path.glob(f"train_slimpajama_{proc}_*.bin"))])
        assert written.tolist() == expected[:len(expected) // 8 * 8].tolist()


def test_validation_split_and_summary(source, tokenizer_dir, tmp_path):
    code, out, err = run_main("--source_path", source, "--tokenizer_path", tokenizer_dir, "--destination_path",
                              tmp_path, "--split", "validation", "--chunk_size", 64, "--block_size", 4,
                              "--num_processes", 2)
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["validation_slimpajama_0_0000000000.bin"]
    assert "1 documents" in out and "skipped 0 RedPajamaGithub rows and 0 malformed lines" in out


@pytest.mark.parametrize("case", ["no_files", "no_tokenizer", "bad_split", "existing_output", "bad_chunk"])
def test_bad_input_is_one_error_line(source, tokenizer_dir, tmp_path, case):
    args = {"--source_path": source, "--tokenizer_path": tokenizer_dir, "--destination_path": tmp_path / "out",
            "--split": "train"}
    if case == "no_files":
        args["--source_path"] = tmp_path
    elif case == "no_tokenizer":
        args["--tokenizer_path"] = tmp_path
    elif case == "bad_split":
        args["--split"] = "dev"
    elif case == "existing_output":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "train_slimpajama_0_0000000000.bin").write_bytes(b"")
    else:
        args["--chunk_size"] = 100
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run_main(*[x for pair in args.items() for x in pair])
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert sorted(tmp_path.rglob("*")) == before


def test_help_explains_every_flag():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        prep.main(["--help"])
    for flag in ("--source_path", "--tokenizer_path", "--destination_path", "--split", "--chunk_size",
                 "--num_processes", "--block_size"):
        assert flag in out.getvalue()


def test_clean_gutenberg_keeps_only_the_work():
    raw = ("\ufeffThe Project Gutenberg EBook of Sonnets\r\nThis eBook is for the use of anyone\r\n"
           "*** START OF THIS PROJECT GUTENBERG EBOOK SONNETS ***\r\n\r\n\r\n\r\nSONNETS\r\n\r\n"
           "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\r\nSHAKESPEARE IS COPYRIGHT 1990-1993>>\r\n"
           "From fairest creatures we desire increase,   \r\nTranscriber's note: a facsimile follows\r\n"
           "That thereby beauty's rose might never die,\r\n\r\n"
           "End of the Project Gutenberg EBook of Sonnets\r\nlicence text\r\n")
    assert sample.clean_gutenberg(raw) == ("SONNETS\n\nFrom fairest creatures we desire increase,\n"
                                           "That thereby beauty's rose might never die,")
    assert sample.clean_gutenberg("Such pretext, license and text remain.") == "Such pretext, license and text remain."


def test_editions_of_a_work_share_a_split():
    def work(name, title, url=""):
        return {"name": name, "title": title, "url": url, "text": name}

    works = [work("hamlet_gut", "Hamlet", "x/2ws2610.txt"), work("hamlet_gut_f", "Hamlet", "x/0ws2610.txt"),
             work("lear_gut", "King Lear", "x/2ws3310.txt"), work("lear_gut_f", "Lear", "x/0ws3310.txt"),
             work("tale_gut", "The Winter's Tale", "x/1539.txt"), work("tale_gut_f", "The Winters Tale",
                                                                        "x/0ws4010.txt")]
    works += [work(f"poem_{i}", f"Poem {chr(65 + i)}") for i in range(20)]
    groups = sample.edition_groups(works)
    for a, b in (("hamlet_gut", "hamlet_gut_f"), ("lear_gut", "lear_gut_f"), ("tale_gut", "tale_gut_f")):
        assert groups[a] == groups[b]
    assert len(set(groups.values())) == 23
    train, validation = sample.split_works(works)
    assert sample.split_works(works) == (train, validation)
    assert len(validation) >= 2 and len(train) + len(validation) == len(works)
    names = {w["name"] for w in validation}
    for a, b in (("hamlet_gut", "hamlet_gut_f"), ("lear_gut", "lear_gut_f"), ("tale_gut", "tale_gut_f")):
        assert (a in names) == (b in names)
