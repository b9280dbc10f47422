"""The paper's evaluation tables from eval/run.py result files, with the paper's own numbers beside ours.

    python eval/table.py out/eval/*.json --paper fig3 --format markdown

Rows follow the paper (reference stacking-paper.md §6): every accuracy is lm-eval's plain `acc` in percent (the
paper's plots say "Acc"; acc vs acc_norm is not stated), "Avg" is the mean of the table's accuracy tasks (seven
for Fig. 3 and Tab. 3, ten for Tab. 6) and reads "Avg (k/n)" when a column lacks some, and Wikitext is lm-eval's
word perplexity. Tasks outside the table's set (e.g. the offline sample tasks) follow as extra rows, not averaged.
Paper columns show the paper's printed values, its Avg included, so its rounding and typos stay visible.

When result files record training (eval/run.py's "training", "growth"), rows follow for each of our columns:
"Train tokens" (a model trained from scratch) or "Train tokens (base + grown)" (when a column was grown: its
base's tokens, ancestors included, + its own, e.g. "2.5M + 7.5M", "?" for an unknown part), the
scratch-equivalent tokens in both conventions of lit_gpt/flops.py, "(exact)" (exact FLOPs / the model's FLOPs
per token) and "(paper)" (own tokens + the base's d / g), both the own tokens for a scratch model, and
"Train FLOPs" (exact, the base's included). Token counts are shown to 3 digits with K, M, B, T suffixes.
"""

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: lit_gpt is imported from the repository root
    sys.path.insert(0, str(ROOT))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.files import check_keeps_inputs, check_writable_target, write_text  # noqa: E402
from lit_gpt.records import CONVENTIONS, check_growth_record, check_training_record  # noqa: E402

PAPER_FILE = Path(__file__).resolve().parent / "paper_numbers.json"

# paper key -> (row label, lm-eval task names tried in order, metric); lambada's variant is not stated
TASKS = {
    "lambada": ("Lambada", ("lambada_openai", "lambada_standard", "lambada"), "acc"),
    "arc_c": ("ARC-c", ("arc_challenge",), "acc"),
    "arc_e": ("ARC-e", ("arc_easy",), "acc"),
    "logiqa": ("LogiQA", ("logiqa",), "acc"),
    "piqa": ("PIQA", ("piqa",), "acc"),
    "sciq": ("SciQ", ("sciq",), "acc"),
    "winogrande": ("Winogrande", ("winogrande",), "acc"),
    "boolq": ("BoolQ", ("boolq",), "acc"),
    "hellaswag": ("HellaSwag", ("hellaswag",), "acc"),
    "openbookqa": ("OpenBookQA", ("openbookqa",), "acc"),
}
SEVEN = ["lambada", "arc_c", "arc_e", "logiqa", "piqa", "sciq", "winogrande"]
WIKITEXT = ("wikitext", "word_perplexity")
EXTRA_METRICS = ("acc", "acc_norm", "exact_match", "word_perplexity", "perplexity")
PAPER_ROWS = {"train_loss": ("Train loss", "{:.3f}"), "speedup_pct": ("Speedup", "{:.1f}%")}


class UsageError(ValueError):
    pass


@dataclass
class Row:
    key: str
    label: str
    values: List[Optional[float]]
    fmt: str = "{:.2f}"

    def cells(self) -> List[str]:
        return [("-" if v is None else self.fmt.format(v)) for v in self.values]


def load_paper(name: str) -> dict:
    tables = json.loads(PAPER_FILE.read_text())
    if name not in tables or name.startswith("_"):
        known = ", ".join(k for k in tables if not k.startswith("_"))
        raise UsageError(f"unknown --paper {name!r}; known: {known}")
    return tables[name]


def metric(result: dict, tasks, name: str) -> Optional[float]:
    """lm-eval 0.4 keys metrics as "<metric>,<filter>"; older result files use the bare metric name. A value
    that is not finite (an overflowing perplexity) is shown as nan or inf, not as missing.

    Raises:
        UsageError: the metric is present but not a number (a damaged or hand-edited result file)."""
    for task in tasks:
        entry = result["results"].get(task) or {}
        for key in (f"{name},none", name):
            value = entry.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{column_name(result)}: results.{task}.{key} is {value!r}, not a number")
            return float(value)
    return None


def column_name(result: dict) -> str:
    return result.get("name") or Path(result.get("checkpoint") or "model").name


def format_tokens(n: float) -> str:
    """A token count to 3 significant digits with a K/M/B/T suffix (1e3, 1e6, 1e9, 1e12): 768, 2.56K, 130B."""
    n = float(f"{n:.3g}")  # rounded first, so 999,600 is 1M, not 1e+03K
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def train_tokens(result: dict) -> Optional[str]:
    """The tokens cell: "BASE + OWN" for a grown model, OWN for a scratch model, None when unknown. BASE is the
    growth record's base_total_tokens (the base's and its ancestors' tokens; null: unknown), or base_tokens in a
    record written before base_total_tokens existed; "?" for an unknown part. Not training's total_tokens less
    its own: versions before lit_gpt.flops.run_accounting returned None for an unknown base counted it as 0."""
    training, growth = result.get("training") or {}, result.get("growth")
    own = training.get("tokens")
    if not growth:
        return None if own is None else format_tokens(own)
    base = growth.get("base_total_tokens") if "base_total_tokens" in growth else growth.get("base_tokens")
    return " + ".join("?" if v is None else format_tokens(v) for v in (base, own))


def scratch_tokens(result: dict, convention: str) -> Optional[str]:
    """The scratch-equivalent tokens cell in `convention` (exact, paper): what training recorded, else a scratch
    model's own tokens (its compute is its own), else None."""
    training = result.get("training") or {}
    value = (training.get("scratch_tokens") or {}).get(convention)
    if value is None and not result.get("growth"):
        value = training.get("tokens")
    return None if value is None else format_tokens(value)


def build_table(results: List[dict], paper: Optional[str] = None,
                paper_columns: Optional[List[str]] = None) -> List[Row]:
    """Rows of the table; rows[0] (key "model") holds the column names, paper columns labelled "paper: NAME"."""
    spec = load_paper(paper) if paper else {"tasks": SEVEN, "extra_rows": [], "columns": {}}
    columns = spec["columns"]
    if paper_columns:
        missing = [c for c in paper_columns if c not in columns]
        if missing:
            raise UsageError(f"--paper_columns: {', '.join(missing)} not in {paper}; known: {', '.join(columns)}")
        columns = {c: columns[c] for c in paper_columns}
    ours, keys = len(results), spec["tasks"]
    rows = [Row("model", "Metric", [column_name(r) for r in results] + [f"paper: {c}" for c in columns], "{}")]
    for key in keys:
        label, tasks, name = TASKS[key]
        values = [metric(r, tasks, name) for r in results]
        rows.append(Row(key, label, [None if v is None else 100 * v for v in values]
                        + [c.get(key) for c in columns.values()]))
    counts = [sum(v is not None for v in (row.values[i] for row in rows[1:])) for i in range(ours)]
    avgs = [sum(row.values[i] for row in rows[1:] if row.values[i] is not None) / k if k else None
            for i, k in enumerate(counts)]
    partial = [f"{k}/{len(keys)}" for k in counts]
    if len(set(partial)) == 1:  # one count when every column shares it, else one per column in column order
        partial = partial[:1]
    label = "Avg" if all(k == len(keys) for k in counts) else f"Avg ({', '.join(partial)})"
    rows.append(Row("avg", label, avgs + [c.get("avg") for c in columns.values()]))
    rows.append(Row("wikitext_ppl", "Wikitext PPL", [metric(r, (WIKITEXT[0],), WIKITEXT[1]) for r in results]
                    + [c.get("wikitext_ppl") for c in columns.values()]))
    used = {t for k in keys for t in TASKS[k][1]} | {WIKITEXT[0]}
    extras = dict.fromkeys(t for r in results for t in r["results"] if t not in used)
    for task in extras:
        name = next((m for m in EXTRA_METRICS if any(metric(r, (task,), m) is not None for r in results)), None)
        if name is None:
            continue
        scale = 1 if "perplexity" in name else 100
        values = [metric(r, (task,), name) for r in results]
        rows.append(Row(task, f"{task} ({name})", [None if v is None else scale * v for v in values]
                        + [None] * len(columns)))
    for key in spec["extra_rows"]:
        label, fmt = PAPER_ROWS[key]
        rows.append(Row(key, label, [None] * ours + [c.get(key) for c in columns.values()], fmt))
    training = [r.get("training") or {} for r in results]
    if any(t.get("flops") is not None or t.get("tokens") is not None for t in training):
        grown = any(r.get("growth") for r in results)
        rows.append(Row("tokens", "Train tokens (base + grown)" if grown else "Train tokens",
                        [train_tokens(r) for r in results] + [None] * len(columns), "{}"))
        for convention in CONVENTIONS:
            rows.append(Row(f"scratch_tokens_{convention}", f"Scratch-equivalent tokens ({convention})",
                            [scratch_tokens(r, convention) for r in results] + [None] * len(columns), "{}"))
        rows.append(Row("flops", "Train FLOPs", [t.get("flops") for t in training] + [None] * len(columns),
                        "{:.3g}"))
    return rows


def format_table(rows: List[Row], fmt: str = "markdown") -> str:
    table = [[rows[0].label] + [str(v) for v in rows[0].values]] + [[r.label] + r.cells() for r in rows[1:]]
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(table)
        return buf.getvalue()
    if fmt != "markdown":
        raise UsageError(f"unknown --format {fmt!r}; known: markdown, csv")
    lines = ["| " + " | ".join(table[0]) + " |", "|---" + "|---:" * (len(table[0]) - 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in table[1:]]) + "\n"


def load_result(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UsageError(f"{path}: not an eval/run.py result file (no 'results' object)")
    check_result(data, path)
    if not data.get("name") and not data.get("checkpoint"):
        data["name"] = Path(path).stem
    return data


def check_result(data: dict, path: str) -> None:
    """Refuses a result file whose fields the table reads have the wrong type or a nonsense count: `name` and
    `checkpoint` strings, each `results` entry an object, `training` and `growth` objects (or null) that pass
    `lit_gpt.records.check_training_record` and `check_growth_record` (counts finite numbers >= 0 or null).

    Raises:
        UsageError: one line naming `path`, the field and the fix."""
    fix = "correct it, or evaluate the checkpoint again with eval/run.py"
    for field in ("name", "checkpoint"):
        if data.get(field) is not None and not isinstance(data[field], str):
            raise UsageError(f"{path}: {field} is {data[field]!r:.60}; it must be a string ({fix})")
    for task, entry in data["results"].items():
        if not isinstance(entry, dict):
            raise UsageError(f"{path}: results.{task} is {entry!r:.60}; it must be an object of metrics ({fix})")
    for field in ("training", "growth"):
        if data.get(field) is not None and not isinstance(data[field], dict):
            raise UsageError(f"{path}: {field} is {data[field]!r:.60}; it must be an object, or null ({fix})")
    try:
        if data.get("training") is not None:
            check_training_record(data["training"], path, "training")
        check_growth_record(data.get("growth"), path, "growth")
    except ValueError as e:
        raise UsageError(f"{e}; {fix}") from None


def main(argv=None) -> int:
    p = ArgumentParser(description="Print the paper's evaluation table (rows: metrics, columns: models) for "
                       "eval/run.py result files, optionally with the paper's reported numbers beside them. "
                       "Result files that record training add rows of train tokens (base + grown for a grown "
                       "model), scratch-equivalent tokens (exact and paper conventions) and train FLOPs.")
    p.add_argument("results", nargs="*", help="result JSON files written by eval/run.py, one column each")
    p.add_argument("--paper", help="add the paper's numbers of this table as 'paper: NAME' columns and use its "
                                   "task set: fig3 (operator grid, 1.1B), tab3 (1B open models), tab6 (7B, ten tasks)")
    p.add_argument("--paper_columns", help="comma-separated subset of the paper's columns, e.g. G_stack,scratch")
    p.add_argument("--format", default="markdown", help="markdown (default) or csv")
    p.add_argument("--out", help="write the table to this file (atomically) instead of stdout")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)

    def run() -> None:
        if not args.results and not args.paper:
            raise UsageError("give result files, --paper, or both")
        if args.paper_columns and not args.paper:
            raise UsageError("--paper_columns needs --paper")
        results = [load_result(f) for f in args.results]
        cols = [c.strip() for c in args.paper_columns.split(",")] if args.paper_columns else None
        text = format_table(build_table(results, args.paper, cols), args.format)
        if args.paper and args.format == "markdown":
            text = f"{load_paper(args.paper)['title']}\n\n{text}"
        if args.out:
            for result in args.results:
                check_keeps_inputs(args.out, {"the result file": result}, f"--out {args.out}")
            check_writable_target(args.out, args.force)
            write_text(args.out, text)
        else:
            sys.stdout.write(text)

    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
