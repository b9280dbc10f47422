"""Evaluate a lit_gpt checkpoint, or the checkpoints of a training run, with lm-eval-harness.

    python eval/run.py --checkpoint_dir out/demo/base/final --tasks sample --out out/demo/eval/base.json
    python eval/run.py --run out/demo/stack --tasks sample                       # -> out/demo/stack/eval.jsonl
    python eval/run.py --run out/run --tasks paper --every 10B --device cuda --dtype bfloat16 --out run.jsonl
    python eval/run.py --checkpoint_dir out/run/final --tasks paper --device cuda --dtype bfloat16 --out run.json
    python eval/run.py --checkpoint_dir out/run/final --tasks sample --backend hf --out run-hf.json   # cross-check

--tasks takes lm-eval task, group or tag names separated by commas, and `paper` for the paper's suite
(lambada_openai, arc_challenge, arc_easy, logiqa, piqa, sciq, winogrande, wikitext). The offline sample
tasks in eval/tasks/ (sample_mc, sample_cloze, sample_ppl, group `sample`) are always available.
The paper's tasks download their datasets on first use: on an offline cluster run once where the hub is
reachable (the same HF_HOME), then set HF_DATASETS_OFFLINE=1.

--backend ours runs eval/lm.py's adapter on the lit_gpt weights; --backend hf exports the checkpoint to an
HF Llama directory (scripts/convert_lit_checkpoint.py) in a temporary folder and runs lm-eval's own `hf`
model on it, with the same tokenizer settings: both give the same numbers (tests/test_eval_lm.py).

The output (read by eval/table.py):
    {"checkpoint", "name", "config", "backend", "dtype", "tasks", "num_fewshot", "limit",
     "results": simple_evaluate(...)["results"], "growth": the growth record (growth.json) or null,
     "training": {"tokens", "flops", "paper_flops", "step", "total_tokens", "scratch_tokens": {"exact", "paper"}} from
     training.json (nulls when absent): tokens are the model's own, total_tokens include its base's (and
     their bases'), scratch_tokens are the target-model tokens of equal compute in both conventions}
written atomically (honouring the umask). An existing --out is replaced only with --force. A missing
checkpoint, a checkpoint without tokenizer (the line says how to add one: this command has no --tokenizer_dir,
scripts/export_checkpoint.py has) or with another tokenizer than its training.json records, a training.json or
growth.json with a field of the wrong type or a count that is not a finite number >= 0 (lit_gpt/records.py's
checks), an unknown task, an --out that cannot be written or a bad argument is reported as one `error:` line
with exit code 1, before the evaluation starts, and nothing is written.

--run scores a run along its training (eval/along.py): its complete step-NNNNNNNN checkpoints, each read into
memory (nothing is written beside the run), and its final/ export where no step checkpoint has that step; --every
or --steps choose among them. Each scored checkpoint appends one line to --out (default RUN/eval.jsonl) as soon as
it is scored: the object above for that checkpoint plus "run" and "checkpoint_id".
A rerun skips the checkpoints scored with the same settings (tasks, num_fewshot, limit, backend, dtype), so a
killed scoring resumes where it stopped and a run still training gets its new checkpoints scored; a checkpoint the
run prunes (--keep_last) before it is read is skipped with a warning. A step checkpoint of a random-* growth whose
masks still ramp is refused (the masks are not in its weights): score such runs during training (pretrain
--eval_tasks) or after the ramp. eval/plot.py and eval/speedup.py read the file (eval/series.py).
"""

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional

EVAL_DIR = Path(__file__).resolve().parent
ROOT = EVAL_DIR.parent
# eval/ first: its modules are imported by plain name (`lm`); "eval" itself is a builtin and no package
for path in (str(ROOT), str(EVAL_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

from lit_gpt.exits import error_line, exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from lit_gpt.cli import ArgumentParser, whole_count  # noqa: E402
from lit_gpt.data_record import check_checkpoint_tokenizer  # noqa: E402
from lit_gpt.files import check_writable_target, write_text  # noqa: E402
from lit_gpt.tokenizer import has_tokenizer  # noqa: E402
from lit_gpt.utils import CheckpointError  # noqa: E402

from scoring import PAPER_TASKS, Scorer, export_hf, json_safe, parse_tasks  # noqa: E402,F401 - this module's API

def check_output(path: Path, force: bool, checkpoint: Optional[Path] = None) -> None:
    """Fails now rather than after the evaluation: `path` exists (without `force`), is a directory, or its
    nearest existing folder is not a directory or cannot be written (tried with an unnamed temporary file).

    Raises:
        ValueError: naming --out and the fix.
    """
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory; give a file path")
    check_writable_target(path, force, "--force", {"--checkpoint_dir": checkpoint} if checkpoint else None,
                          f"--out {path}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"--out {path}: {folder} is a file, not a directory; choose another path")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"--out {path}: cannot write in {folder}: {e.strerror or e}; choose another path") from None


def write_json(path: Path, data: dict) -> None:
    """Writes `data` to `path` atomically (lit_gpt.files.write_text).

    Raises:
        OSError: the write failed (a full disk): names `path`; nothing is left behind.
    """
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def scorer(args: argparse.Namespace) -> Scorer:
    return Scorer(args.tasks, args.include_path or [], args.num_fewshot, args.limit, args.batch_size,
                  args.bootstrap_iters, args.device, args.dtype, args.backend)


def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    """eval/run.py's JSON for --checkpoint_dir (module docstring)."""
    parse_tasks(args.tasks)
    checkpoint = args.checkpoint_dir.resolve()
    if checkpoint.is_file():  # the weights file itself: its folder holds the rest
        checkpoint = checkpoint.parent
    from checkpoint_info import checkpoint_info

    info = checkpoint_info(checkpoint)  # missing checkpoint, config or tokenizer: one line, before any work
    check_checkpoint_tokenizer(checkpoint)
    tasks = scorer(args)
    results = tasks.score(checkpoint)
    return {"checkpoint": str(checkpoint), "name": args.name or checkpoint.name, "config": info["config"],
            **tasks.settings(), "results": results, "growth": info["growth"], "training": info["training"]}


def evaluate_run(args: argparse.Namespace) -> None:
    """--run: scores the chosen checkpoints of a run not scored yet with these settings, appending a record for
    each to --out as soon as it is scored (eval/along.py). A step checkpoint that is gone (pruned by the run) or
    cannot be scored (damaged, growth masks still ramping) is skipped with a warning, or replaced by final/ when
    that is the same step."""
    import along

    run_dir = args.run.resolve()
    candidates = along.choose(along.run_checkpoints(run_dir), args.every, args.steps)
    if args.tokenizer_dir is not None and not has_tokenizer(args.tokenizer_dir):
        raise ValueError(f"--tokenizer_dir {args.tokenizer_dir}: no tokenizer.model or tokenizer.json there; give "
                         "the folder of the tokenizer the run trained with")
    out = args.out or run_dir / "eval.jsonl"
    check_appendable(out, run_dir)
    warn = partial(print, file=sys.stderr, flush=True)
    tasks = scorer(args)
    with along.Output(out, warn) as output:
        scored = {along.settings_key(r) for r in output.records}
        todo = [c for c in candidates
                if along.settings_key({**tasks.settings(), "checkpoint_id": c.checkpoint_id}) not in scored]
        print(f"{run_dir}: {len(candidates)} checkpoint(s) chosen, {len(candidates) - len(todo)} scored already, "
              f"{len(todo)} to score into {out}", file=sys.stderr, flush=True)
        written = 0
        for i, c in enumerate(todo, 1):
            scored_one = score_candidate(c, run_dir, tasks, args.tokenizer_dir, warn)
            if scored_one is None:
                continue
            written += 1
            path, info, results = scored_one
            output.append(json_safe({"run": str(run_dir), "checkpoint": str(path), "checkpoint_id": c.checkpoint_id,
                                     "name": args.name or run_dir.name, "config": info["config"],
                                     **tasks.settings(), "results": results, "growth": info["growth"],
                                     "training": info["training"]}))
            summary = ", ".join(f"{t} {k.split(',')[0]} {v:.4g}" for t, m in results.items() for k, v in m.items()
                                if k.split(",")[0] in ("acc", "word_perplexity") and isinstance(v, float))
            print(f"[{i}/{len(todo)}] step {c.step} ({c.tokens:,} tokens): {summary}", file=sys.stderr, flush=True)
    if todo and not written:
        raise ValueError(f"none of the {len(todo)} checkpoint(s) to score could be scored (the warnings above say "
                         "why); choose others with --steps, or score final/ with --checkpoint_dir")
    print(f"wrote {out}", file=sys.stderr)


def score_candidate(c, run_dir: Path, tasks: Scorer, tokenizer_dir: Optional[Path], warn):
    """(the checkpoint scored, its info, lm-eval's results) of one candidate of eval/along.py, or None when a step
    checkpoint was skipped (the warning says why).

    Raises:
        CheckpointError: final/ cannot be scored; OSError: a read failed with the checkpoint still there."""
    from checkpoint_info import checkpoint_info
    import along

    if c.kind == "final":
        return c.path, checkpoint_info(c.path), tasks.score(c.path)
    try:
        state, config, tokenizer, info = along.load_candidate(c, tokenizer_dir)
        return c.path, info, tasks.score(state=state, config=config, tokenizer_dir=tokenizer)
    except (OSError, CheckpointError) as e:
        if not c.path.exists():  # pruned (--keep_last) by the training run before or while it was read
            warn(f"warning: {c.path} is gone (the run pruned it?): skipped; the checkpoints of a run that prunes "
                 "them are scored while it trains (rerun this now and then), or with --eval_tasks in training")
            return None
        if not isinstance(e, CheckpointError):
            raise
        final = run_dir / "final"
        if along.final_step(run_dir) == c.step:
            warn(f"warning: {c.path}: {error_line(e)}; scored final/ (the same step) instead")
            return final, checkpoint_info(final), tasks.score(final)
        warn(f"warning: {c.path} skipped: {error_line(e)}")
        return None


def check_appendable(out: Path, run_dir: Path) -> None:
    """--out of --run: a file that can be appended to, not inside a checkpoint of the run.

    Raises:
        ValueError: naming --out and the fix."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file path (default: RUN/eval.jsonl)")
    for part in [out.resolve(), *out.resolve().parents]:
        if part.parent == run_dir and (part.name == "final" or along_step(part.name)):
            raise ValueError(f"--out {out} lies in {part}, a checkpoint of the run; give a path outside it")
    if out.exists():
        return
    check_output(out, False)


def along_step(name: str) -> bool:
    from lit_gpt.checkpoint import STEP_DIR

    return bool(STEP_DIR.match(name))


def run(args: argparse.Namespace) -> None:
    if (args.checkpoint_dir is None) == (args.run is None):
        raise ValueError("give one of --checkpoint_dir (one checkpoint, --out FILE.json) and --run (a run's "
                         "checkpoints, --out FILE.jsonl)")
    if args.run is None and (args.every is not None or args.steps is not None):
        raise ValueError("--every and --steps choose checkpoints of --run RUN_DIR; with --checkpoint_dir drop them")
    if args.every is not None and args.steps is not None:
        raise ValueError("give at most one of --every and --steps")
    if args.run is not None:
        if args.force:
            raise ValueError("--force replaces a --checkpoint_dir result; --run appends to --out and skips what it "
                             "holds (delete the file to score everything again)")
        evaluate_run(args)
        return
    if args.out is None:
        raise ValueError("--checkpoint_dir needs --out FILE.json")
    check_output(args.out, args.force, args.checkpoint_dir)
    data = evaluate(args)
    write_json(args.out, data)
    print(f"wrote {args.out}", file=sys.stderr)


def positive_count(text: str) -> int:
    value = whole_count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1 token")
    return value


def step_list(text: str) -> List[int]:
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give steps as whole numbers separated by commas") from None
    if any(s < 0 for s in steps):
        raise argparse.ArgumentTypeError(f"{text!r}: steps cannot be negative")
    return steps


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint_dir", "--checkpoint", type=Path, default=None,
                   help="one checkpoint directory: lit_model.pth or lit_model.safetensors, lit_config.json and the "
                        "tokenizer files; growth.json and training.json are copied into the output when present")
    p.add_argument("--run", type=Path, default=None,
                   help="instead of --checkpoint_dir: a training run's --out_dir; each chosen step-NNNNNNNN checkpoint "
                        "(read into memory, no export written) and final/ is scored, one JSON line each appended to "
                        "--out; checkpoints scored already with the same settings are skipped")
    p.add_argument("--every", type=positive_count, default=None,
                   help="with --run: the first checkpoint at or past every multiple of this many tokens of the run's "
                        "own (e.g. 50M, 2e9), and the last one (default: every checkpoint)")
    p.add_argument("--steps", type=step_list, default=None,
                   help="with --run: exactly these steps, comma-separated (e.g. 1000,2000)")
    p.add_argument("--tokenizer_dir", type=Path, default=None,
                   help="with --run: the tokenizer the run trained with (default: where the run found it, from "
                        "its meta.json)")
    p.add_argument("--tasks", required=True,
                   help="comma-separated lm-eval task/group/tag names; 'paper' = " + ",".join(PAPER_TASKS) +
                        "; the offline sample tasks are sample_mc, sample_cloze, sample_ppl (group: sample)")
    p.add_argument("--include_path", type=Path, action="append", default=None,
                   help="a folder of extra task YAMLs in lm-eval's format (repeatable); eval/tasks is always included")
    p.add_argument("--num_fewshot", type=int, default=None,
                   help="few-shot examples per prompt (default: each task's own setting, 0 for the paper's tasks)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate only the first N examples of each task (smoke runs)")
    p.add_argument("--batch_size", type=int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--backend", choices=("ours", "hf"), default="ours",
                   help="ours: the lit_gpt adapter (eval/lm.py); hf: export to HF Llama and run lm-eval's hf model")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights and activations dtype (default float32; ours takes log-probabilities in float32 "
                        "either way)")
    p.add_argument("--name", default=None, help="label for tables and plots (default: the checkpoint folder's name)")
    p.add_argument("--bootstrap_iters", type=int, default=1000,
                   help="bootstrap resamples for the stderr of perplexity metrics (default 1000; lm-eval's CLI uses "
                        "100000; 0 skips stderrs)")
    p.add_argument("--out", type=Path, default=None,
                   help="--checkpoint_dir: the JSON file to write (required); --run: the JSON Lines file to append "
                        "to (default RUN/eval.jsonl)")
    p.add_argument("--force", action="store_true", help="--checkpoint_dir: replace --out if it exists")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
