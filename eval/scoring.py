"""lm-eval's side of scoring: task names, a TaskManager that finds them quickly, and `Scorer`, which loads the
tasks once and scores one model after another with the same settings (eval/run.py for one checkpoint or the
checkpoints of a run, pretrain/tinyllama.py --eval_tasks during training).

A model is a checkpoint directory (weights, lit_config.json, tokenizer) or weights held in memory (a state dict,
its Config and the tokenizer's directory): a step checkpoint of a run is scored without writing an export.
"""

import contextlib
import importlib.util
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

EVAL_DIR = Path(__file__).resolve().parent
ROOT = EVAL_DIR.parent
for path in (str(ROOT), str(EVAL_DIR)):  # eval/'s modules import each other by plain name ("eval" is a builtin)
    if path not in sys.path:
        sys.path.insert(0, path)

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


class _DropNoise(logging.Filter):
    """lm-eval warns on every task with a custom_dataset loader, which all sample tasks use by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


@contextlib.contextmanager
def _terminable_workers(forks: bool):
    """lm-eval bootstraps stderrs in a forked multiprocessing pool and ends it with SIGTERM; a worker inherits
    this process's SIGTERM handling, and a process that ignores SIGTERM or turns it into a flag (training's
    stop handling, a finished run's ignore_signals) leaves the pool waiting for ever. The default action is put
    back while the pool can exist."""
    if not forks or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Scorer:
    """The tasks of `tasks` (eval/run.py --tasks syntax) loaded once, with the settings every score uses.

    Raises (at construction, before any model is built): ValueError for a bad setting, an unknown task or a
    task whose data cannot be loaded (one line); FileNotFoundError for an --include_path that is not a folder."""

    def __init__(self, tasks: str, include_paths: Sequence[Path] = (), num_fewshot: Optional[int] = None,
                 limit: Optional[int] = None, batch_size: int = 16, bootstrap_iters: int = 1000,
                 device: str = "cpu", dtype: str = "float32", backend: str = "ours") -> None:
        self.tasks = parse_tasks(tasks)
        for name, value, least in (("num_fewshot", num_fewshot, 0), ("limit", limit, 1),
                                   ("batch_size", batch_size, 1), ("bootstrap_iters", bootstrap_iters, 0)):
            if value is not None and value < least:
                raise ValueError(f"--{name} must be >= {least}, not {value}")
        paths = [SAMPLE_TASKS_DIR]
        for p in include_paths:
            if not Path(p).is_dir():
                raise FileNotFoundError(f"--include_path {p} is not a directory")
            paths.append(Path(p).resolve())
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda: torch sees no CUDA device")
        self.num_fewshot, self.limit, self.batch_size = num_fewshot, limit, batch_size
        self.bootstrap_iters, self.device, self.dtype, self.backend = bootstrap_iters, device, dtype, backend
        logging.getLogger("lm_eval.api.task").addFilter(_DropNoise())
        self.task_manager = task_manager_for(self.tasks, paths)
        self.task_objects = load_tasks(self.task_manager, self.tasks)

    def settings(self) -> Dict[str, Any]:
        """What decides the numbers besides the model, as written into every result."""
        return {"backend": self.backend, "dtype": self.dtype, "tasks": self.tasks, "num_fewshot": self.num_fewshot,
                "limit": self.limit}

    def score(self, checkpoint: Optional[Path] = None, state: Optional[Dict[str, Any]] = None, config=None,
              tokenizer_dir: Optional[Path] = None) -> Dict[str, Any]:
        """lm-eval's `results` ({task: {"acc,none": float, ...}}, strict JSON) of the model in `checkpoint`, or
        of `state` (a full state dict, CPU or device tensors) with its `config` and `tokenizer_dir`.

        Raises:
            CheckpointError: the checkpoint or the weights do not fit (eval/checkpoint_info.py, lit_gpt.utils)."""
        import lm_eval

        from lm import EvalTokenizer, LitGPTLM

        with tempfile.TemporaryDirectory(prefix="lit-gpt-eval-") as tmp:
            if self.backend == "ours":
                model = LitGPTLM(checkpoint, device=self.device, dtype=self.dtype, batch_size=self.batch_size,
                                 state=state, config=config, tokenizer_dir=tokenizer_dir)
            else:
                from lm_eval.models.huggingface import HFLM

                if state is not None:  # the hf backend reads files: a temporary export, deleted below
                    from lit_gpt.checkpoint import write_weights

                    checkpoint = Path(tmp) / "lit"
                    write_weights(state, config, checkpoint, tokenizer_dir)
                hf_dir = Path(tmp) / "hf"
                export_hf(checkpoint, hf_dir)
                # the adapter's BOS decision, stated explicitly: transformers' default has changed across versions
                add_bos = EvalTokenizer(checkpoint).add_bos
                model = HFLM(pretrained=str(hf_dir), dtype=self.dtype, device=self.device,
                             batch_size=self.batch_size, add_bos_token=add_bos)
            with _terminable_workers(self.bootstrap_iters > 0):
                output = lm_eval.simple_evaluate(model=model, tasks=self.task_objects,
                                                 task_manager=self.task_manager, num_fewshot=self.num_fewshot,
                                                 limit=self.limit, bootstrap_iters=self.bootstrap_iters,
                                                 log_samples=False)
        return json_safe(output["results"])
