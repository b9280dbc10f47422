"""scripts/prepare_starcoder.py on a StarCoderData-layout sample made here, upstream's --percentage, and a run on
upstream's SlimPajama + StarCoder mixture (pretrain/configs/tinyllama_1b.yaml) that logs both sources' shares."""

import contextlib
import csv
import importlib.util
import io
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
from conftest import ROOT, command_error

from lit_gpt import Tokenizer

_spec = importlib.util.spec_from_file_location("prepare_starcoder", ROOT / "scripts" / "prepare_starcoder.py")
star = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(star)

# real code as content: modules of the standard library, read where this Python keeps them
CODE_FILES = ["json/__init__.py", "textwrap.py", "shlex.py", "bisect.py", "colorsys.py", "glob.py"]
LAYOUT = {"python/train-00000-of-00002.parquet": CODE_FILES[:2], "python/train-00001-of-00002.parquet": CODE_FILES[2:3],
          "go/train-00000-of-00001.parquet": CODE_FILES[3:4], "cpp/train-00000-of-00001.parquet": CODE_FILES[4:]}
BLOCK = 257  # the sample's: model block 256


def code(name: str) -> str:
    return (Path(shutil.__file__).parent / name).read_text()


@pytest.fixture(scope="module")
def starcoder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("starcoderdata")
    for relative, names in LAYOUT.items():
        (root / relative).parent.mkdir(exist_ok=True)
        contents = [code(name) for name in names]
        if relative.startswith("go/"):
            contents.append(None)  # a row without content
        table = pyarrow.table({"max_stars_repo_path": [f"repo/{i}.x" for i in range(len(contents))],
                               "content": pyarrow.array(contents, pyarrow.large_string())})
        pyarrow.parquet.write_table(table, root / relative, row_group_size=1)
    return root


def run_main(*args):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = star.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def tokens_of(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<u2", offset=24)


def upstream_command(source: Path, tokenizer: Path, destination: Path, *extra):
    """PRETRAIN.md's command, with a chunk of 4 sample blocks so that the tiny input fills files."""
    return run_main("--source_path", source, "--tokenizer_path", tokenizer, "--destination_path", destination,
                    "--split", "train", "--percentage", "1.0", "--chunk_size", 4 * BLOCK, "--block_size", BLOCK,
                    *extra)


def test_upstream_command_packs_the_content_column(starcoder, sample_data, tmp_path):
    tokenizer_dir = sample_data / "tokenizer"
    code_, out, err = upstream_command(starcoder, tokenizer_dir, tmp_path, "--num_processes", 1)
    assert code_ == 0, err
    names = sorted(p.name for p in tmp_path.glob("*.bin"))
    assert names and all(name.startswith("train_starcoder_0_") for name in names)
    assert {"tokenizer", "train_starcoder.record.json"} <= {p.name for p in tmp_path.iterdir()}
    assert "6 documents from 4 input files" in out and "skipped 1 rows without content" in out
    tokenizer = Tokenizer(tokenizer_dir)
    in_order = [name for relative in sorted(LAYOUT) for name in LAYOUT[relative]]  # cpp, go, python (sorted paths)
    stream = np.concatenate([tokenizer.encode(code(name), bos=False, eos=True).numpy() for name in in_order])
    written = np.concatenate([tokens_of(tmp_path / name) for name in names])
    assert len(written) == len(stream) // BLOCK * BLOCK
    assert written.tolist() == stream[:len(written)].tolist()


def test_two_processes_write_one_stream_each(starcoder, sample_data, tmp_path):
    code_, out, err = upstream_command(starcoder, sample_data / "tokenizer", tmp_path, "--num_processes", 2)
    assert code_ == 0, err
    assert {p.name.split("_")[2] for p in tmp_path.glob("*.bin")} == {"0", "1"}
    assert "tokenised by 2 processes" in out


def test_percentage_reads_an_even_deterministic_share(starcoder):
    files = star.find_files(starcoder, "train")
    assert [f.relative_to(starcoder).as_posix() for f in files] == sorted(LAYOUT)
    half = star.packing.select_files(files, 0.5, starcoder)
    assert half == [files[1], files[3]] == star.packing.select_files(files, 0.5, starcoder)
    assert star.packing.select_files(files, 1.0, starcoder) == files
    assert star.packing.select_files(files, 0.25, starcoder) == [files[3]]
    many = [Path(f"{i:03d}.parquet") for i in range(100)]
    assert [len(star.packing.select_files(many, p, Path("."))) for p in (0.29, 0.57, 0.01, 1.0)] == [29, 57, 1, 100]
    python = star.packing.select_files(files, 1.0, starcoder, star.subset_list(["[python,go]"]))
    assert [f.parent.name for f in python] == ["go", "python", "python"]
    assert star.subset_list(['["python",', '"cpp"]']) == ["python", "cpp"]


def test_percentage_and_subset_from_the_command_line(starcoder, sample_data, tmp_path):
    code_, out, err = upstream_command(starcoder, sample_data / "tokenizer", tmp_path / "half", "--percentage", 0.5)
    assert code_ == 0, err
    assert "from 2 input files (2 of 4 found)" in out
    code_, out, err = upstream_command(starcoder, sample_data / "tokenizer", tmp_path / "py", "--filenames_subset",
                                       "python")
    assert code_ == 0, err
    assert "3 documents from 2 input files (2 of 4 found)" in out


def damaged_source(root: Path, case: str) -> Path:
    source = root / "src"
    (source / "python").mkdir(parents=True)
    target = source / "python" / "train-00000-of-00001.parquet"
    if case == "truncated":
        buffer = io.BytesIO()
        pyarrow.parquet.write_table(pyarrow.table({"content": [code("glob.py")]}), buffer)
        target.write_bytes(buffer.getvalue()[:-100])
    elif case == "no_content_column":
        pyarrow.parquet.write_table(pyarrow.table({"text": [code("glob.py")]}), target)
    else:
        target.write_text("not parquet at all\n")
    return source


@pytest.mark.parametrize("case,words", [
    ("truncated", ["train-00000-of-00001.parquet", "not readable parquet", "complete copy"]),
    ("not_parquet", ["train-00000-of-00001.parquet", "not readable parquet"]),
    ("no_content_column", ["train-00000-of-00001.parquet", "no 'content' column", "text"])])
def test_damaged_input_is_one_line_and_writes_nothing(sample_data, tmp_path, case, words):
    source = damaged_source(tmp_path, case)
    code_, out, err = upstream_command(source, sample_data / "tokenizer", tmp_path / "out")
    assert code_ == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert all(word in err for word in words), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,words", [
    (["--split", "validation"], ["validation", "train"]),
    (["--percentage", "0"], ["--percentage", "above 0"]),
    (["--percentage", "1.5"], ["--percentage", "at most 1"]),
    (["--percentage", "0.1"], ["selects none", "0.25"]),
    (["--filenames_subset", "rust"], ["--filenames_subset rust", "none of the 4"])])
def test_bad_flags_are_one_line(starcoder, sample_data, tmp_path, extra, words):
    code_, out, err = upstream_command(starcoder, sample_data / "tokenizer", tmp_path / "out", *extra)
    assert code_ == 1 and len(err.strip().splitlines()) == 1, err
    assert all(word in err for word in words), err
    assert not (tmp_path / "out").exists()


def test_no_parquet_files_names_the_layout(sample_data, tmp_path):
    code_, out, err = upstream_command(tmp_path, sample_data / "tokenizer", tmp_path / "out")
    assert code_ == 1 and "*/*.parquet" in err and "one folder per language" in err


def test_help_explains_every_flag():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        star.main(["--help"])
    for flag in ("--source_path", "--tokenizer_path", "--destination_path", "--split", "--percentage",
                 "--chunk_size", "--num_processes", "--block_size", "--filenames_subset"):
        assert flag in out.getvalue()


@pytest.fixture(scope="module")
def slim_star(starcoder, sample_data, tmp_path_factory) -> Path:
    """Upstream's data directory: SlimPajama and StarCoder side by side, one tokenizer."""
    data = tmp_path_factory.mktemp("data") / "slim_star_combined"
    shutil.copytree(sample_data / "packed", data)
    code_, _, err = upstream_command(starcoder, sample_data / "tokenizer", data)
    assert code_ == 0, err
    return data


def test_a_source_left_out_is_named(slim_star):
    from pretrain.preflight import left_out_sources
    from pretrain.train_args import TrainArgs

    (warning,) = left_out_sources(TrainArgs(train_data_dir=str(slim_star)))
    assert "train_starcoder_*.bin" in warning and "tinyllama_1b.yaml" in warning and "UPSTREAM.md" in warning
    both = TrainArgs(train_data_dir=str(slim_star), data_prefixes=["train_slimpajama", "train_starcoder"])
    assert left_out_sources(both) == []


def test_mixture_run_logs_both_sources_shares(slim_star, tmp_path, capsys):
    """Upstream's recipe (pretrain/configs/tinyllama_1b.yaml), shrunk to a 2-layer model and 3 steps."""
    data = slim_star
    steps, batch = 3, 8
    out = tmp_path / "run"
    flags = ["--config", str(ROOT / "pretrain/configs/tinyllama_1b.yaml"), "--model_name", "2L128H",
             "--train_data_dir", str(data), "--val_data_dir", str(data), "--out_dir", str(out), "--devices", "1",
             "--num_nodes", "1", "--precision", "32-true", "--global_batch_size", str(batch), "--micro_batch_size", "4",
             "--max_steps", str(steps), "--warmup_steps", "1", "--eval_interval", "3", "--eval_iters", "1",
             "--save_interval", "0", "--log_interval", "1", "--n_chunks", "2"]
    result = subprocess.run([sys.executable, str(ROOT / "pretrain" / "tinyllama.py"), *flags], capture_output=True,
                            text=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "mixture: train_slimpajama 69.4%, train_starcoder 30.6% of the sequences" in result.stdout
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    draws = random.Random(3407).choices(range(2), weights=[0.693584, 0.306416], k=steps * batch)
    for row in rows:
        n = int(row["step"]) * batch
        slim, code_share = float(row["share_train_slimpajama"]), float(row["share_train_starcoder"])
        assert slim == pytest.approx(draws[:n].count(0) / n) and slim + code_share == pytest.approx(1)
    assert 0 < code_share < 1
    assert f"drawn: train_slimpajama {draws.count(0) / len(draws):.1%}" in result.stdout

    # its checkpoint keeps each source's position: a resume on other sources is refused before any work
    spec = importlib.util.spec_from_file_location("mixture_tinyllama", ROOT / "pretrain" / "tinyllama.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    line = command_error(capsys, module.run, [*flags, "--max_steps", "4", "--resume", "auto", "--data_prefixes",
                                              "train_slimpajama", "--data_weights", "1"])
    assert "--data_prefixes train_slimpajama train_starcoder" in line and "same order" in line


SLOW_PREPARE = """
import sys, time
from collections import Counter
from pathlib import Path
sys.path.insert(0, {root!r})
from lit_gpt import packing
from lit_gpt.exits import exit_code

def read_texts(path, stats):
    yield path.read_text()
    time.sleep(60)  # a file that takes long to tokenise

def find_files(root, split):
    return sorted(Path(root).glob("*.txt"))

corpus = packing.Corpus(name="slow", splits=("train",), find_files=find_files, layout="*.txt in {{root}}",
                        read_texts=read_texts, split_folders=False)
sys.exit(exit_code(lambda: packing.prepare(corpus, sys.argv[1], sys.argv[2], sys.argv[3], chunk_size=8,
                                           block_size=4, num_processes=2, progress=False)))
"""


def workers_of(pid: int) -> list:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in children.read_text().split()] if children.exists() else []


@pytest.mark.parametrize("signum", [15, 9])
def test_a_stopped_prepare_leaves_no_files_and_no_workers(sample_data, tmp_path, signum):
    """SIGTERM (kill, timeout, a slurm time limit) ends the command with one line and 143 after its cleanup; after
    SIGKILL, which no cleanup survives, its tokenizer workers at least die with it instead of running on."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(2):
        (source / f"{i}.txt").write_text("some text to tokenise " * 20)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE.format(root=str(ROOT)), str(source),
                             str(sample_data / "tokenizer"), str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(workers_of(proc.pid)) < 2 or not any(out.glob(".train_slow.tmp-*")):
        assert time.monotonic() < deadline and proc.poll() is None, "the workers never started"
        time.sleep(0.1)
    workers = workers_of(proc.pid)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    if signum == 15:
        assert proc.returncode == 143 and err == "error: terminated by SIGTERM\n"
        assert not out.exists()  # created by the run: removed with its temporary folder
    for pid in workers:
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            assert time.monotonic() < deadline, f"worker {pid} outlived its parent"
            time.sleep(0.1)


@pytest.mark.parametrize("column", [pyarrow.array([b"print(1)\n"] * 3, pyarrow.binary()), pyarrow.array([1, 2, 3])])
def test_a_content_column_that_is_not_text_is_refused(sample_data, tmp_path, column):
    """Dropping its rows as 'without content' would lose a whole file, or a language, without an error."""
    (tmp_path / "src" / "cpp").mkdir(parents=True)
    pyarrow.parquet.write_table(pyarrow.table({"content": column}), tmp_path / "src" / "cpp" / "a.parquet")
    code_, out, err = upstream_command(tmp_path / "src", sample_data / "tokenizer", tmp_path / "out")
    assert code_ == 1 and len(err.strip().splitlines()) == 1, err
    assert "a.parquet" in err and "not text" in err and str(column.type) in err
    assert not (tmp_path / "out").exists()


def test_text_that_is_not_utf8_names_the_file(sample_data, tmp_path):
    """An uncompressed page whose string bytes were damaged: pyarrow reads it, Python cannot decode it."""
    (tmp_path / "src" / "go").mkdir(parents=True)
    path = tmp_path / "src" / "go" / "a.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"content": ["x = 'aaaaaaaaaaaaaaaaaaaaaaaa'\n"] * 4}), path,
                                compression="none")
    data = path.read_bytes()
    path.write_bytes(data.replace(b"aaaaaaaaaaaaaaaaaaaaaaaa", b"a\xdf" * 12, 1))
    code_, out, err = upstream_command(tmp_path / "src", sample_data / "tokenizer", tmp_path / "out")
    assert code_ == 1 and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and "not readable parquet" in err
