"""eval/run.py's output file (never replaced without --force, the umask's mode, one line when it cannot be
written) and its check of the checkpoint's tokenizer against the one training.json records."""

import contextlib
import importlib.util
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from conftest import ROOT

from lit_gpt import GPT, Config
from lit_gpt.data_record import tokenizer_entry

_spec = importlib.util.spec_from_file_location("eval_run", ROOT / "eval" / "run.py")
eval_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_run)

TEXT = ["The king is come, my lord, and the duke with him.", "Nay, my lord, the night is cold and long.",
        "Enter GHOST, and then the guard; all exit at the end."]


def tokenizer(directory: Path, text) -> Path:
    directory.mkdir(parents=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text * 4), model_prefix=str(directory / "tokenizer"),
                                   model_type="bpe", vocab_size=350, hard_vocab_limit=False, byte_fallback=True,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    (directory / "tokenizer.vocab").unlink()
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random 1-layer model with a tokenizer beside it, and tokenizer B: another vocabulary of the same size."""
    root = tmp_path_factory.mktemp("eval_run")
    ckpt = root / "final"
    tokenizer(ckpt, TEXT)
    tokenizer(root / "tok_b", ["Quartz, jade and onyx glimmer; vexed zebras jump over fuzzy wharves."])
    config = Config(name="tiny-eval", block_size=64, vocab_size=384, padding_multiple=64, n_layer=1, n_head=2,
                    n_query_groups=1, n_embd=16, intermediate_size=32)
    torch.manual_seed(0)
    torch.save(GPT(config).state_dict(), ckpt / "lit_model.pth")
    config.to_json(ckpt / "lit_config.json")
    return ckpt


def run_cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = eval_run.main([str(a) for a in args])
    return code, err.getvalue()


def files_under(root: Path):
    return {p: (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def test_writes_with_the_umask_and_replaces_only_with_force(checkpoint, tmp_path):
    """Before: mkstemp's 0600 whatever the umask, and an existing file silently replaced."""
    out = tmp_path / "res.json"
    old = os.umask(0o027)
    try:
        code, err = run_cli("--checkpoint", checkpoint, "--tasks", "sample_mc", "--limit", 2, "--out", out)
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert json.loads(out.read_text())["results"]["sample_mc"]["acc,none"] is not None

    out.write_text("my notes")
    # an unknown task would fail later: the refusal comes first, before any evaluation
    code, err = run_cli("--checkpoint", checkpoint, "--tasks", "no_such_task_anywhere", "--out", out)
    assert (code, err) == (1, f"error: {out} exists; pass --force to replace it\n")
    assert out.read_text() == "my notes"
    code, err = run_cli("--checkpoint", checkpoint, "--tasks", "sample_mc", "--limit", 2, "--out", out, "--force")
    assert code == 0, err
    assert json.loads(out.read_text())["tasks"] == ["sample_mc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.json"]


@pytest.mark.parametrize("case", ["below_a_file", "a_directory", "unwritable"])
def test_an_output_that_cannot_be_written_is_one_line_before_evaluating(checkpoint, tmp_path, case):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "old.json").write_text("{}")
    out, expected = {
        "below_a_file": (tmp_path / "notes.txt" / "sub" / "res.json",
                         f"{tmp_path / 'notes.txt'} is a file, not a directory; choose another path"),
        "a_directory": (tmp_path / "results", "is a directory; give a file path"),
        "unwritable": (Path("/sys/res.json"), "cannot write in /sys: Permission denied; choose another path"),
    }[case]
    if case == "unwritable" and not Path("/sys").is_dir():
        pytest.skip("no /sys")
    before = files_under(tmp_path)
    code, err = run_cli("--checkpoint", checkpoint, "--tasks", "no_such_task_anywhere", "--out", out)
    assert code == 1 and err.count("\n") == 1 and err.startswith(f"error: --out {out}"), err
    assert expected in err
    assert files_under(tmp_path) == before


FSIZE_RUN = """
import importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("eval_run", {script!r})
eval_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_run)
eval_run.evaluate = lambda args: {{"results": "x" * 5000}}  # the writing is under test, not the evaluation
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
sys.exit(eval_run.main(sys.argv[1:]))
"""


def test_a_full_disk_leaves_nothing(checkpoint, tmp_path):
    """A file-size limit (as a full disk) while writing the JSON: one line naming it, no temporary file left."""
    out = tmp_path / "res.json"
    result = subprocess.run([sys.executable, "-c", FSIZE_RUN.format(script=str(ROOT / "eval" / "run.py")),
                             "--checkpoint", str(checkpoint), "--tasks", "sample_mc", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"error: {out}: write failed (File too large)\n"
    assert list(tmp_path.iterdir()) == []


def test_another_tokenizer_than_training_recorded_is_refused(checkpoint, tmp_path):
    """final/training.json records the data's tokenizer; eval refuses a checkpoint whose tokenizer files were
    replaced by another's (before: evaluated silently with the wrong one)."""
    recorded = tokenizer_entry(checkpoint.parent / "tok_b")
    (checkpoint / "training.json").write_text(json.dumps({"step": 1, "tokenizer": recorded}))
    try:
        out = tmp_path / "res.json"
        code, err = run_cli("--checkpoint", checkpoint, "--tasks", "sample_mc", "--limit", 1, "--out", out)
    finally:
        (checkpoint / "training.json").unlink()
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: the tokenizer in {checkpoint} (")
    assert f"{checkpoint / 'training.json'} records" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def weights_copy(checkpoint: Path, directory: Path, tokenizer: bool = True) -> Path:
    """The fixture's model in `directory` (with its tokenizer unless not `tokenizer`)."""
    directory.mkdir(parents=True)
    for f in checkpoint.iterdir():
        if f.is_file() and (tokenizer or f.name.startswith("lit_")):
            (directory / f.name).write_bytes(f.read_bytes())
    return directory


BAD_RECORDS = {  # file: content -> what the one line names after the file
    "scratch_string": ("training.json", {"tokens": 10, "scratch_tokens": "x"}, "scratch_tokens is 'x'"),
    "scratch_list": ("training.json", {"tokens": 10, "scratch_tokens": [1]}, "scratch_tokens is [1]"),
    "total_string": ("training.json", {"tokens": 10, "total_tokens": "abc"}, "total_tokens is 'abc'"),
    "total_negative": ("training.json", {"tokens": 10, "total_tokens": -3}, "total_tokens is -3"),
    "tokens_nan": ("training.json", {"tokens": float("nan")}, "tokens is nan"),
    "flops_inf": ("training.json", {"flops": float("inf")}, "flops is inf"),
    "step_bool": ("training.json", {"step": True}, "step is True"),
    "growth_list": ("training.json", {"tokens": 10, "growth": [1]}, "growth is list [1], not a growth record"),
    "growth_string": ("training.json", {"tokens": 10, "growth": "stack"}, "growth is str 'stack'"),
    "training_string": ("training.json", "x", "holds str 'x', not a JSON object"),
    "growth_json_string": ("growth.json", "stack", " is str 'stack', not a growth record"),
    "growth_json_nan": ("growth.json", {"operator": "stack", "base_total_tokens": float("nan")},
                        "base_total_tokens is nan"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_a_damaged_training_or_growth_record_is_one_line(checkpoint, tmp_path, case):
    """Before: an AttributeError traceback ('str' object has no attribute 'get'), or the bad value copied into
    the result file unchecked."""
    name, content, expected = BAD_RECORDS[case]
    ckpt = weights_copy(checkpoint, tmp_path / "ckpt")
    (ckpt / name).write_text(json.dumps(content))
    out = tmp_path / "res.json"
    code, err = run_cli("--checkpoint", ckpt, "--tasks", "sample_mc", "--limit", 1, "--out", out)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {ckpt / name}") and expected in err and "write the checkpoint again" in err, err
    assert not out.exists()


def test_an_export_without_tokenizer_says_how_to_export_it_with_one(checkpoint, tmp_path):
    """`eval/run.py --checkpoint_dir STEP/export` said only "no tokenizer in ..."; run.py has no --tokenizer_dir,
    the export command has."""
    step = tmp_path / "run" / "step-00000010"
    step.mkdir(parents=True)
    (step / "meta.json").write_text(json.dumps({"step": 10, "hparams": {"tokenizer_dir": str(checkpoint)}}))
    export = weights_copy(checkpoint, step / "export", tokenizer=False)
    out = tmp_path / "res.json"
    code, err = run_cli("--checkpoint", export, "--tasks", "sample_mc", "--limit", 1, "--out", out)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: no tokenizer in {export}: export it again with its tokenizer, `python "
                          f"scripts/export_checkpoint.py --checkpoint_dir {step} --out_dir {export} --tokenizer_dir "
                          f"{checkpoint} --force`, or copy tokenizer.model or tokenizer.json"), err
    (step / "meta.json").write_text(json.dumps({"step": 10, "hparams": {}}))  # nowhere to be found: DIR
    code, err = run_cli("--checkpoint", export, "--tasks", "sample_mc", "--limit", 1, "--out", out)
    assert code == 1 and "--tokenizer_dir DIR --force` (DIR: the tokenizer the run trained with)" in err, err
    elsewhere = weights_copy(checkpoint, tmp_path / "elsewhere", tokenizer=False)
    code, err = run_cli("--checkpoint", elsewhere, "--tasks", "sample_mc", "--limit", 1, "--out", out)
    assert code == 1 and err.count("\n") == 1, err
    assert "copy tokenizer.model or tokenizer.json" in err and "scripts/export_checkpoint.py --checkpoint_dir STEP " \
        "--tokenizer_dir DIR --force" in err, err
    assert not out.exists()
