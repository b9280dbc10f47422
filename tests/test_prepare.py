"""scripts/prepare_slimpajama.py on a small SlimPajama-layout fixture, and the sample-data text helpers."""

import contextlib
import hashlib
import importlib.util
import io
import json
import shutil
import struct
import subprocess
import sys
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

    names = sorted(p.name for p in tmp_path.glob("*.bin"))
    assert names == [f"train_slimpajama_0_{i:010d}.bin" for i in range(stats["files_written"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer", "train_slimpajama.record.json", *names]
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
    # each malformed line's file is named, whichever process read it
    assert stats["malformed_files"] == {str(source / "train/chunk1/example_train_0.jsonl.zst"): 1,
                                        str(source / "train/chunk2/sub/example_train_1.jsonl.zst"): 1}
    assert "2 malformed lines (1 in " in prep.summary(stats)
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
                              "--num_processes", 2, "--percentage", 1.0)  # upstream PRETRAIN.md's flags
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer", "validation_slimpajama.record.json",
                                                          "validation_slimpajama_0_0000000000.bin"]
    assert "1 documents" in out and "skipped 0 RedPajamaGithub rows and 0 malformed lines" in out


def test_percentage_reads_the_same_spread_of_files(source, tokenizer_dir, tmp_path):
    files = prep.find_files(source, "train")  # chunk1/example_train_0, chunk2/example_train_2, chunk2/sub/example_train_1
    stats = prep.prepare(source, tokenizer_dir, tmp_path, "train", chunk_size=16, num_processes=1, block_size=4,
                         progress=False, percentage=0.5)
    assert (stats["input_files"], stats["found_files"]) == (1, 3)
    assert "from 1 input files (1 of 3 found)" in prep.summary(stats)
    texts = [text for text in prep.read_texts(files[1], Counter())]
    assert stats["documents"] == len(texts) == 3


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
                 "--num_processes", "--block_size", "--percentage"):
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


def shown(stderr: str):
    """The lines a terminal shows: tqdm redraws (and finally clears) its bar with carriage returns."""
    return [line.rsplit("\r", 1)[-1] for line in stderr.split("\n") if line.rsplit("\r", 1)[-1].strip()]


def read_json(path: Path):
    return json.loads(path.read_text())


def snapshot(root: Path):
    """Every path under `root` with its bytes (None for folders): what a failed run must leave unchanged."""
    return {p: (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def test_both_splits_record_their_tokenizer(source, tokenizer_dir, tmp_path):
    """The README's commands: both splits into one directory. Each split gets a record (tokenizer fingerprint,
    vocabulary, path, file hashes, largest token id written) and the directory one copy of the tokenizer."""
    out = tmp_path / "slim"
    for split in ("train", "validation"):
        code, _, err = run_main("--source_path", source, "--tokenizer_path", tokenizer_dir, "--destination_path", out,
                                "--split", split, "--chunk_size", 64, "--block_size", 4, "--num_processes", 2)
        assert code == 0, err
    tokenizer = Tokenizer(tokenizer_dir)
    for split in ("train", "validation"):
        record = read_json(out / f"{split}_slimpajama.record.json")
        written = np.concatenate([tokens_of(p) for p in sorted(out.glob(f"{split}_slimpajama_*.bin"))])
        assert record["prefix"] == f"{split}_slimpajama" and record["tokens"] == len(written) > 0
        assert record["files"] == len(list(out.glob(f"{split}_slimpajama_*.bin")))
        assert record["max_token_id"] == int(written.max())
        assert record["source"] == str((source / split).resolve())
        entry = record["tokenizer"]
        assert entry["fingerprint"] == tokenizer.fingerprint() and len(entry["fingerprint"]) == 64
        assert (entry["vocab_size"], entry["bos_id"], entry["eos_id"]) == (tokenizer.vocab_size, 1, 2)
        assert entry["path"] == str(tokenizer_dir.resolve())
        model = (tokenizer_dir / "tokenizer.model").read_bytes()
        assert entry["files"] == {"tokenizer.model": hashlib.sha256(model).hexdigest()}
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["tokenizer.model"]
    assert (out / "tokenizer" / "tokenizer.model").read_bytes() == (tokenizer_dir / "tokenizer.model").read_bytes()
    assert not list(out.glob(".*"))  # no temporary folder left


def test_a_second_tokenizer_in_one_directory_is_refused(source, tokenizer_dir, tmp_path):
    out = tmp_path / "slim"
    assert prep.prepare(source, tokenizer_dir, out, "train", 64, 1, 4, progress=False)["tokens_written"]
    other = tmp_path / "other"
    other.mkdir()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(DOCUMENTS * 3), model_prefix=str(other / "tokenizer"),
                                   model_type="bpe", vocab_size=300, hard_vocab_limit=False, num_threads=1,
                                   minloglevel=2)
    before = snapshot(tmp_path)
    code, out_text, err = run_main("--source_path", source, "--tokenizer_path", other, "--destination_path", out,
                                   "--split", "validation", "--chunk_size", 64, "--block_size", 4)
    assert (code, out_text) == (1, "")
    assert err.count("\n") == 1 and err.startswith(f"error: {out / 'train_slimpajama.record.json'} is for another "
                                                   "tokenizer"), err
    assert "--destination_path" in err and snapshot(tmp_path) == before


def truncated_source(root: Path, case: str) -> Path:
    """Two train files, the second damaged as `case`: a download cut short, empty, or not zstd at all."""
    write_zst(root / "train/chunk1/a.jsonl.zst", [row(d) for d in DOCUMENTS[:4]])
    whole = zstandard.ZstdCompressor().compress("".join(row(d) for d in DOCUMENTS * 20).encode())
    damaged = {"cut_mid_frame": whole[:len(whole) // 2], "cut_before_the_end": whole[:-3], "empty": b"",
               "not_zstd": b"<html>404 Not Found</html>"}
    if case == "cut_jsonl":
        (root / "train/chunk1/b.jsonl").write_text("".join(row(d) for d in DOCUMENTS) + row(DOCUMENTS[0])[:30])
        return root / "train/chunk1/b.jsonl"
    (root / "train/chunk1/b.jsonl.zst").write_bytes(damaged[case])
    return root / "train/chunk1/b.jsonl.zst"


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("case", ["cut_mid_frame", "cut_before_the_end", "empty", "not_zstd", "cut_jsonl"])
def test_truncated_input_fails_naming_the_file(tokenizer_dir, tmp_path, case, processes):
    """Before: rc 0 with a partial split ("1 malformed line") or "0 tokens written". Now: one line naming the
    file, rc 1, and nothing of the run left (the other process's finished files are removed too)."""
    bad = truncated_source(tmp_path / "src", case)
    (tmp_path / "slim").mkdir()
    (tmp_path / "slim" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for out in (tmp_path / "slim", tmp_path / "new" / "slim"):
        code, out_text, err = run_main("--source_path", tmp_path / "src", "--tokenizer_path", tokenizer_dir,
                                       "--destination_path", out, "--chunk_size", 16, "--block_size", 4,
                                       "--num_processes", processes)
        assert (code, out_text) == (1, "")
        assert len(shown(err)) == 1 and shown(err)[0].startswith(f"error: {bad}: "), err
        assert ("truncated" in err or "not valid zstd" in err) and "complete copy" in err
        assert snapshot(tmp_path) == before  # no .bin, record, tokenizer copy, temporary or created folder


def test_less_than_a_block_is_an_error(source, tokenizer_dir, tmp_path):
    code, _, err = run_main("--source_path", source, "--tokenizer_path", tokenizer_dir, "--destination_path",
                            tmp_path / "out", "--split", "validation", "--chunk_size", 4096, "--block_size", 4096)
    assert code == 1 and len(shown(err)) == 1 and "less than one block of 4096" in shown(err)[0], err
    assert not (tmp_path / "out").exists()


FSIZE_RUN = """
import resource, sys
sys.argv[0] = {script!r}
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.path.insert(0, {scripts!r})
import prepare_slimpajama
sys.exit(prepare_slimpajama.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("limit,failed_file", [(300, ".bin"), (2000, "tokenizer.model")])
def test_full_disk_leaves_nothing(source, tokenizer_dir, tmp_path, limit, failed_file):
    """A file-size limit (a full disk, as root cannot be stopped by permissions) while writing the .bin files
    (chunks of 400 bytes) or the tokenizer copy (larger than 2000 bytes): one line naming the file, nothing
    left behind. The limit is set in the child only, after Python has started."""
    assert (tokenizer_dir / "tokenizer.model").stat().st_size > 2000
    out = tmp_path / "slim"
    code = FSIZE_RUN.format(script=str(ROOT / "scripts" / "prepare_slimpajama.py"), limit=limit,
                            scripts=str(ROOT / "scripts"))
    result = subprocess.run([sys.executable, "-c", code, "--source_path", str(source), "--tokenizer_path",
                             str(tokenizer_dir), "--destination_path", str(out), "--chunk_size", "200",
                             "--block_size", "4", "--num_processes", "2"], capture_output=True, timeout=60)
    lines = shown(result.stderr.decode())  # not text=True: it would turn tqdm's carriage returns into newlines
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "File too large" in lines[0], lines
    assert f"{out}/" in lines[0] and f"{failed_file}:" in lines[0], lines  # the file that could not be written
    assert not out.exists(), lines


def run_sample(*args):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = sample.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_sample_data_refuses_a_truncated_download(sample_data, tmp_path):
    """Before: an archive cut short was "exists, skipped" and reading it gave a tarfile traceback."""
    archive = tmp_path / "_download" / sample.ARCHIVE
    archive.parent.mkdir()
    whole = (sample_data / "_download" / sample.ARCHIVE).read_bytes()
    archive.write_bytes(whole[:len(whole) // 3])
    before = snapshot(tmp_path)
    code, _, err = run_sample("--out", tmp_path)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: {archive} has sha256 ") and err.endswith("delete it and run again to download it "
                                                                          "afresh\n")
    assert snapshot(tmp_path) == before


def test_sample_data_refuses_a_truncated_raw_file(sample_data, tmp_path):
    """raw/ damaged after it was written (a copy cut short): one line naming the file and how to rebuild raw/;
    no tokenizer/, packed/ or temporary folder is left."""
    (tmp_path / "_download").mkdir()
    (tmp_path / "_download" / sample.ARCHIVE).write_bytes((sample_data / "_download" / sample.ARCHIVE).read_bytes())
    shutil.copytree(sample_data / "raw", tmp_path / "raw")
    bad = sorted((tmp_path / "raw" / "train" / "chunk1").glob("*.jsonl.zst"))[1]
    bad.write_bytes(bad.read_bytes()[:-100])
    before = snapshot(tmp_path)
    code, _, err = run_sample("--out", tmp_path)
    assert code == 1 and len(shown(err)) == 1, err
    assert shown(err)[0].startswith(f"error: {bad}: truncated: the file ends inside a zstd frame")
    assert shown(err)[0].endswith(f"or delete {tmp_path / 'raw'} and run again to rebuild it")
    assert snapshot(tmp_path) == before
