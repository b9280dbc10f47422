"""Evaluate a lit_gpt checkpoint with lm-eval-harness and write one JSON file of results.

    python eval/run.py --checkpoint_dir out/demo/base/final --tasks sample --out out/demo/eval/base.json
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
    {"checkpoint", "name", "config", "backend", "tasks", "num_fewshot", "limit",
     "results": simple_evaluate(...)["results"], "growth": the growth record (growth.json) or null,
     "training": {"tokens", "flops", "step", "total_tokens", "scratch_tokens": {"exact", "paper"}} from
     training.json (nulls when absent): tokens are the model's own, total_tokens include its base's (and
     their bases'), scratch_tokens are the target-model tokens of equal compute in both conventions}
written atomically (honouring the umask). An existing --out is replaced only with --force. A missing
checkpoint, a checkpoint without tokenizer (the line says how to add one: this command has no --tokenizer_dir,
scripts/export_checkpoint.py has) or with another tokenizer than its training.json records, a training.json or
growth.json with a field of the wrong type or a count that is not a finite number >= 0 (lit_gpt/records.py's
checks), an unknown task, an --out that cannot be written or a bad argument is reported as one `error:` line
with exit code 1, before the evaluation starts, and nothing is written.
"""

import argparse
import importlib.util
import json
import logging
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

EVAL_DIR = Path(__file__).resolve().parent
ROOT = EVAL_DIR.parent
# eval/ first: its modules are imported by plain name (`lm`); "eval" itself is a builtin and no package
for path in (str(ROOT), str(EVAL_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.data_record import check_checkpoint_tokenizer  # noqa: E402
from lit_gpt.files import check_writable_target, write_text  # noqa: E402

PAPER_TASKS = ["lambada_openai", "arc_challenge", "arc_easy", "logiqa", "piqa", "sciq", "winogrande", "wikitext"]
SAMPLE_TASKS_DIR = EVAL_DIR / "tasks"
TASK_NAME = re.compile(r"^[A-Za-z0-9_.\-*]+$")


def parse_tasks(spec: str) -> List[str]:
    names = [t.strip() for t in spec.split(",")]
    if not spec.strip() or any(not t for t in names):
        raise ValueError(f"--tasks {spec!r}: give task names separated by commas, e.g. 'paper' or 'arc_easy,piqa'")
    bad = [t for t in names if not TASK_NAME.match(t)]
    if bad:
        raise ValueError(f"--tasks: {bad[0]!r} is not a task name")
    out: List[str] = []
    for name in names:
        for t in PAPER_TASKS if name == "paper" else [name]:
            if t not in out:
                out.append(t)
    return out


def _scan_task_files(root: Path, names: List[str]):
    """For each name: the folders under `root` holding a YAML file with the line `task: NAME`, and whether any
    YAML file mentions it at all (a name that appears nowhere is unknown). Reading the files takes a few
    seconds, where lm-eval's index of all ~14k built-in task files takes ~30 s."""
    task_line = {n: re.compile(rb"^\s*task:\s*['\"]?" + re.escape(n.encode()) + rb"['\"]?\s*$", re.MULTILINE)
                 for n in names}
    word = {n: re.compile(rb"(?<![\w\-.])" + re.escape(n.encode()) + rb"(?![\w\-.])") for n in names}
    dirs: Dict[str, set] = {n: set() for n in names}
    mentioned = {n: False for n in names}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            if f.endswith(".yaml"):
                text = Path(dirpath, f).read_bytes()
                for n in names:
                    if not mentioned[n] and word[n].search(text):
                        mentioned[n] = True
                    if task_line[n].search(text):
                        dirs[n].add(dirpath)
    return dirs, mentioned


def _outermost(dirs) -> List[str]:
    """The folders not inside another one of them (lm-eval indexes each include path recursively)."""
    paths = sorted({Path(d) for d in dirs})
    return [str(p) for p in paths if not any(q != p and q in p.parents for q in paths)]


def task_manager_for(names: List[str], include_paths: List[Path]):
    """A TaskManager that knows every name, indexing as little of lm-eval's task folder as it can."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    local_paths = [str(p) for p in include_paths]
    local = TaskManager(include_path=local_paths, include_defaults=False)
    missing = [n for n in names if n not in local.all_tasks]
    if not missing:
        return local
    dirs, mentioned = _scan_task_files(Path(lm_eval.tasks.__file__).parent, missing)
    unknown = [n for n in missing if not mentioned[n]]
    if unknown:
        raise _unknown(unknown, local)
    if all(dirs[n] for n in missing):
        # plain tasks: their YAML (and what it includes, by relative path) is all lm-eval needs
        restricted = TaskManager(include_path=_outermost(set().union(*dirs.values())) + local_paths,
                                 include_defaults=False)
        if all(n in restricted.all_subtasks for n in missing):
            return restricted
    full = TaskManager(include_path=local_paths)  # groups and tags can span the whole task folder
    unknown = [n for n in missing if n not in full.all_tasks]
    if unknown:
        raise _unknown(unknown, full)
    return full


def _unknown(names: List[str], manager) -> ValueError:
    local = sorted(n for n in manager.all_tasks if n.startswith("sample"))
    return ValueError(f"unknown task{'s' if len(names) > 1 else ''}: {', '.join(names)} "
                      f"(offline sample tasks: {', '.join(local)}; list lm-eval's with `lm-eval ls tasks`)")


def load_tasks(task_manager, names: List[str]) -> list:
    """Task and Group objects, built (datasets loaded) before any model is: data problems fail fast."""
    objects = []
    for name in names:
        try:
            loaded = task_manager.load([name])
        except Exception as e:  # noqa: BLE001 - datasets and lm-eval raise many kinds; reported as one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ValueError(f"cannot load task {name!r}: {type(e).__name__}: {first[:300]}") from None
        if name in loaded["groups"]:
            objects.append(loaded["groups"][name])
        elif name in loaded["tasks"]:
            objects.append(loaded["tasks"][name])
        else:  # a tag: its tasks
            objects.extend(loaded["tasks"].values())
    return objects


def export_hf(checkpoint: Path, out_dir: Path) -> None:
    """The checkpoint as an HF Llama directory, written by the converter users run themselves."""
    from checkpoint_info import find_weights

    script = ROOT / "scripts" / "convert_lit_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_lit_checkpoint", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.convert_lit_checkpoint(find_weights(checkpoint), out_dir)


def json_safe(value: Any) -> Any:
    """NaN and infinities become null (strict JSON); numpy scalars become numbers; anything else a string."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy / torch scalars
        return json_safe(value.item())
    return str(value)


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


class _DropNoise(logging.Filter):
    """lm-eval warns on every task with a custom_dataset loader, which all sample tasks use by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    tasks = parse_tasks(args.tasks)
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError(f"--num_fewshot must be >= 0, not {args.num_fewshot}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, not {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, not {args.batch_size}")
    if args.bootstrap_iters < 0:
        raise ValueError(f"--bootstrap_iters must be >= 0, not {args.bootstrap_iters}")
    include_paths = [SAMPLE_TASKS_DIR]
    for p in args.include_path or []:
        if not p.is_dir():
            raise FileNotFoundError(f"--include_path {p} is not a directory")
        include_paths.append(p.resolve())
    checkpoint = args.checkpoint_dir.resolve()
    if checkpoint.is_file():  # the weights file itself: its folder holds the rest
        checkpoint = checkpoint.parent
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA device")

    from checkpoint_info import checkpoint_info
    from lm import EvalTokenizer, LitGPTLM

    info = checkpoint_info(checkpoint)  # missing checkpoint, config or tokenizer: one line, before any work
    check_checkpoint_tokenizer(checkpoint)

    import lm_eval

    logging.getLogger("lm_eval.api.task").addFilter(_DropNoise())
    task_manager = task_manager_for(tasks, include_paths)
    task_objects = load_tasks(task_manager, tasks)

    with tempfile.TemporaryDirectory(prefix="lit-gpt-hf-") as tmp:
        if args.backend == "ours":
            model = LitGPTLM(checkpoint, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        else:
            from lm_eval.models.huggingface import HFLM

            hf_dir = Path(tmp) / "hf"
            export_hf(checkpoint, hf_dir)
            # the adapter's BOS decision, stated explicitly: transformers' default has changed across versions
            add_bos = EvalTokenizer(checkpoint).add_bos
            model = HFLM(pretrained=str(hf_dir), dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                         add_bos_token=add_bos)
        output = lm_eval.simple_evaluate(model=model, tasks=task_objects, task_manager=task_manager,
                                         num_fewshot=args.num_fewshot, limit=args.limit,
                                         bootstrap_iters=args.bootstrap_iters, log_samples=False)
    return {
        "checkpoint": str(checkpoint),
        "name": args.name or checkpoint.name,
        "config": info["config"],
        "backend": args.backend,
        "tasks": tasks,
        "num_fewshot": args.num_fewshot,
        "limit": args.limit,
        "results": json_safe(output["results"]),
        "growth": info["growth"],
        "training": info["training"],
    }


def run(args: argparse.Namespace) -> None:
    check_output(args.out, args.force, args.checkpoint_dir)
    data = evaluate(args)
    write_json(args.out, data)
    print(f"wrote {args.out}", file=sys.stderr)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint_dir", "--checkpoint", type=Path, required=True,
                   help="checkpoint directory: lit_model.pth or lit_model.safetensors, lit_config.json and the "
                        "tokenizer files; growth.json and training.json are copied into the output when present")
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
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
