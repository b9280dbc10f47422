"""eval/table.py: the paper's Fig. 3 numbers fed back as result files reproduce the paper's table."""

import csv
import io
import json
import subprocess
import sys

import pytest
from conftest import ROOT, command_error

from eval import table

PAPER = json.loads((ROOT / "eval" / "paper_numbers.json").read_text())
FIG3 = PAPER["fig3"]["columns"]
LM_EVAL_TASK = {"lambada": "lambada_openai", "arc_c": "arc_challenge", "arc_e": "arc_easy", "logiqa": "logiqa",
                "piqa": "piqa", "sciq": "sciq", "winogrande": "winogrande", "boolq": "boolq",
                "hellaswag": "hellaswag", "openbookqa": "openbookqa"}


def result(name, numbers, skip=(), extra=None, training=None):
    """An eval/run.py result file's content with the given percentages as lm-eval fractions."""
    res = {LM_EVAL_TASK[k]: {"acc,none": v / 100, "acc_stderr,none": 0.01, "acc_norm,none": 0.0}
           for k, v in numbers.items() if k in LM_EVAL_TASK and k not in skip}
    if "wikitext_ppl" in numbers:
        res["wikitext"] = {"word_perplexity,none": numbers["wikitext_ppl"], "bits_per_byte,none": 0.8}
    res.update(extra or {})
    return {"checkpoint": f"/runs/{name}/final", "name": name, "config": "tiny_LLaMA_1b", "backend": "ours",
            "tasks": sorted(res), "num_fewshot": None, "limit": None, "results": res, "growth": None,
            "training": training or {"tokens": None, "flops": None, "step": None}}


def by_key(rows):
    return {r.key: r for r in rows}


def test_fig3_numbers_reproduce_fig3():
    results = [result(name, nums) for name, nums in FIG3.items()]
    rows = by_key(table.build_table(results))
    assert rows["model"].values == list(FIG3)
    for key in PAPER["fig3"]["tasks"] + ["wikitext_ppl"]:
        assert rows[key].values == pytest.approx([FIG3[c][key] for c in FIG3], abs=1e-9), key
    assert rows["avg"].label == "Avg"
    assert rows["avg"].values == pytest.approx([FIG3[c]["avg"] for c in FIG3], abs=0.006)  # the paper rounds
    md = table.format_table(table.build_table(results[:1]), "markdown").splitlines()
    assert md[0] == "| Metric | G_stack |"
    assert md[2:] == ["| Lambada | 48.20 |", "| ARC-c | 29.18 |", "| ARC-e | 54.25 |", "| LogiQA | 28.87 |",
                      "| PIQA | 71.98 |", "| SciQ | 81.10 |", "| Winogrande | 56.03 |", "| Avg | 52.80 |",
                      "| Wikitext PPL | 16.73 |"]


def test_paper_columns_beside_ours_match():
    rows = table.build_table([result("ours", FIG3["G_stack"])], "fig3", ["G_stack", "scratch"])
    assert rows[0].values == ["ours", "paper: G_stack", "paper: scratch"]
    for row in rows[1:]:
        if row.key in ("train_loss", "speedup_pct"):
            assert row.values[0] is None and row.values[2] is not None
        else:
            assert row.cells()[0] == row.cells()[1], row.label
    text = table.format_table(rows, "csv")
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == ["Metric", "ours", "paper: G_stack", "paper: scratch"]
    assert parsed[8] == ["Avg", "52.80", "52.80", "50.12"]
    assert parsed[-1] == ["Speedup", "-", "49.1%", "0.0%"]
    assert [r[0] for r in parsed[1:8]] == ["Lambada", "ARC-c", "ARC-e", "LogiQA", "PIQA", "SciQ", "Winogrande"]


def test_missing_tasks_and_extra_tasks():
    part = result("part", FIG3["scratch"], skip=("logiqa", "sciq"),
                  extra={"sample_qa": {"acc,none": 0.25, "acc_norm,none": 0.5}, "sample_text": {
                      "word_perplexity,none": 40.0, "byte_perplexity,none": 2.0}})
    rows = by_key(table.build_table([part]))
    assert rows["avg"].label == "Avg (5/7)"
    kept = [FIG3["scratch"][k] for k in ("lambada", "arc_c", "arc_e", "piqa", "winogrande")]
    assert rows["avg"].values[0] == pytest.approx(sum(kept) / 5)
    assert rows["logiqa"].cells() == ["-"]
    assert rows["sample_qa"].label == "sample_qa (acc)" and rows["sample_qa"].values == [25.0]
    assert rows["sample_text"].label == "sample_text (word_perplexity)" and rows["sample_text"].values == [40.0]
    keys = [r.key for r in table.build_table([part])]
    assert keys.index("sample_qa") > keys.index("wikitext_ppl") > keys.index("avg")
    mixed = table.build_table([part, result("full", FIG3["G_stack"])])
    assert by_key(mixed)["avg"].label == "Avg (5/7, 7/7)"


def test_tab6_averages_ten_tasks_and_training_rows():
    g7 = PAPER["tab6"]["columns"]["G_stack-7B"]
    ours = result("g7", g7, training={"tokens": 130e9, "flops": 8.2e21, "step": 31000})
    rows = by_key(table.build_table([ours], "tab6"))
    assert rows["avg"].label == "Avg" and rows["avg"].values[0] == pytest.approx(57.79, abs=0.005)
    assert rows["hellaswag"].values[:2] == pytest.approx([65.85, 65.85])
    assert rows["flops"].cells()[0] == "8.2e+21"
    assert rows["avg"].values[1:] == [57.79, 56.56, 50.43, 54.16]


def test_grown_columns_show_base_plus_grown_and_scratch_equivalent_tokens():
    grown = result("G_stack", FIG3["G_stack"], training={
        "tokens": 97.5e9, "flops": 8.5e20, "step": 23245, "total_tokens": 107.5e9,
        "scratch_tokens": {"exact": 102.85e9, "paper": 100e9}})
    grown["growth"] = {"operator": "stack", "base_total_tokens": 10e9, "base_scratch_tokens_paper": 2.5e9}
    older = result("older", FIG3["G_stack"], training={"tokens": 7.5e6, "flops": 1e15, "step": 10})
    older["growth"] = {"operator": "stack", "base_tokens": 2.5e6}  # a record and result from before the totals
    fresh = result("fresh", FIG3["G_stack"])  # a grown model evaluated before any training
    fresh["growth"] = {"operator": "stack", "base_total_tokens": 999_600}
    scratch = result("scratch", FIG3["scratch"], training={"tokens": 100e9, "flops": 8.2e20, "step": 23842})
    rows = by_key(table.build_table([grown, older, fresh, scratch]))
    assert rows["tokens"].label == "Train tokens (base + grown)"
    assert rows["tokens"].cells() == ["10B + 97.5B", "2.5M + 7.5M", "1M + ?", "100B"]
    assert rows["scratch_tokens_exact"].label == "Scratch-equivalent tokens (exact)"
    assert rows["scratch_tokens_exact"].cells() == ["103B", "-", "-", "100B"]
    assert rows["scratch_tokens_paper"].label == "Scratch-equivalent tokens (paper)"
    assert rows["scratch_tokens_paper"].cells() == ["100B", "-", "-", "100B"]
    assert rows["flops"].cells() == ["8.5e+20", "1e+15", "-", "8.2e+20"]
    only_scratch = by_key(table.build_table([scratch]))
    assert only_scratch["tokens"].label == "Train tokens" and only_scratch["tokens"].cells() == ["100B"]
    assert [table.format_tokens(n) for n in (768, 2560, 1.364e9, 3e12)] == ["768", "2.56K", "1.36B", "3T"]


def error_line(capsys, argv, code=1):  # 2: bad flags, as argparse
    return command_error(capsys, table.main, argv, code)


def test_a_metric_that_is_not_a_number_is_named_not_hidden():
    overflow = result("overflow", FIG3["scratch"], extra={"wikitext": {"word_perplexity,none": float("inf")}})
    assert by_key(table.build_table([overflow]))["wikitext_ppl"].cells() == ["inf"]  # shown, not "-" (missing)
    damaged = result("damaged", FIG3["scratch"], extra={"piqa": {"acc,none": "N/A"}})
    with pytest.raises(table.UsageError, match=r"^damaged: results.piqa.acc,none is 'N/A', not a number$"):
        table.build_table([damaged])


def test_cli(tmp_path, capsys):
    files = []
    for name in ("G_stack", "scratch"):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(result(name, FIG3[name])))
    out = tmp_path / "t" / "fig3.md"
    table.main([str(f) for f in files] + ["--paper", "fig3", "--paper-columns", "G_stack", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("Fig. 3") and "| Avg | 52.80 | 50.12 | 52.80 |" in text
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text("[1, 2]")
    assert "unknown --paper 'fig9'" in error_line(capsys, [str(files[0]), "--paper", "fig9"])
    assert "no such file" in error_line(capsys, [str(tmp_path / "missing.json")])
    assert "not readable JSON" in error_line(capsys, [str(tmp_path / "bad.json")])
    assert "no 'results' object" in error_line(capsys, [str(tmp_path / "other.json")])
    assert "unknown --format" in error_line(capsys, [str(files[0]), "--format", "html"])
    assert "not in fig3" in error_line(capsys, ["--paper", "fig3", "--paper-columns", "nope"])
    assert "give result files" in error_line(capsys, [])


def test_script_help_and_run(tmp_path):
    script = str(ROOT / "eval" / "table.py")
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--paper", "--paper_columns", "--format", "--out", "--force"):
        assert flag in help_text
    assert "scratch-equivalent tokens (exact and paper" in " ".join(help_text.split())  # however argparse wraps
    out = subprocess.run([sys.executable, script, "--paper", "tab3", "--format", "csv"], capture_output=True,
                         text=True, check=True).stdout
    assert out.splitlines()[0].startswith("Metric,paper: Pythia-1B,paper: TinyLlama-1.1B (acc_norm)")
    assert "Avg,50.53,-,52.80,50.09" in out


def test_the_record_checks_and_the_table_load_no_torch():
    """table.py checks result files with lit_gpt.records, which must stay free of torch (lit_gpt.flops loads it
    through lit_gpt.config): the table runs where torch is not installed."""
    program = ("import sys; sys.path.insert(0, 'eval'); import lit_gpt.records, table; "
               "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_unknown_base_is_a_question_mark_never_0():
    """A grown run whose growth record does not know the base's total tokens (null) has total_tokens null
    (lit_gpt.flops.run_accounting), or its own tokens where older versions counted the unknown base as 0: the
    cell showed "1K + 512" (base_tokens, the ancestors left out) or "0 + 512"."""
    cells = []
    for total in (None, 512):
        grown = result("grown", FIG3["G_stack"], training={
            "tokens": 512, "flops": 1e9, "step": 4, "total_tokens": total, "scratch_tokens": {"exact": 900,
                                                                                               "paper": None}})
        grown["growth"] = {"operator": "stack", "base_tokens": 1000, "base_total_tokens": None,
                           "base_scratch_tokens_paper": None}
        cells.append(by_key(table.build_table([grown])))
    for rows in cells:
        assert rows["tokens"].cells() == ["? + 512"]
        assert rows["scratch_tokens_exact"].cells() == ["900"] and rows["scratch_tokens_paper"].cells() == ["-"]


BAD_RESULTS = {  # field: value -> the field the error names
    "training_string": (("training",), "x", "training is 'x'; it must be an object"),
    "growth_string": (("growth",), "stack", "growth is 'stack'; it must be an object"),
    "growth_list": (("growth",), [1], "growth is [1]; it must be an object"),
    "total_negative": (("training", "total_tokens"), -4, "training.total_tokens is -4; it must be a finite number"),
    "total_nan": (("training", "total_tokens"), float("nan"), "training.total_tokens is nan; it must be a finite"),
    "total_inf": (("training", "total_tokens"), float("inf"), "training.total_tokens is inf; it must be a finite"),
    "total_bool": (("training", "total_tokens"), True, "training.total_tokens is True; it must be a finite"),
    "total_string": (("training", "total_tokens"), "abc", "training.total_tokens is 'abc'; it must be a finite"),
    "tokens_negative": (("training", "tokens"), -1, "training.tokens is -1; it must be a finite number"),
    "flops_nan": (("training", "flops"), float("nan"), "training.flops is nan"),
    "scratch_string": (("training", "scratch_tokens"), "x", "training.scratch_tokens is 'x'; it must be an object"),
    "scratch_nan": (("training", "scratch_tokens"), {"exact": float("nan")}, "training.scratch_tokens.exact is nan"),
    "base_total_nan": (("growth", "base_total_tokens"), float("nan"), "growth.base_total_tokens is nan"),
    "results_entry": (("results", "piqa"), [0.5], "results.piqa is [0.5]; it must be an object of metrics"),
    "name_number": (("name",), 5, "name is 5; it must be a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_a_result_file_with_nonsense_accounting_is_refused(tmp_path, capsys, case):
    """Before: a traceback at train_tokens(r), or cells such as "nan + 2.05K", "infT", "-4 + -1", "1 + 0"."""
    keys, value, expected = BAD_RESULTS[case]
    data = result("grown", FIG3["G_stack"], training={"tokens": 2048, "flops": 1e12, "step": 1, "total_tokens": 2560})
    data["growth"] = {"operator": "stack", "base_total_tokens": 512}
    target = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    path = tmp_path / "res.json"
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    out = tmp_path / "table.md"
    err = error_line(capsys, [str(path), "--out", str(out)])
    assert err.startswith(f"error: {path}: {expected}") and "eval/run.py" in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["res.json"]
