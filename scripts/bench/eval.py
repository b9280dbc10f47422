"""Requests per second of our lm-eval adapter (eval/lm.py) against lm-eval's `hf` backend, on the same
checkpoint exported to HF Llama, for the same task requests (default: the offline sample tasks).

    python scripts/bench/eval.py [--checkpoint out/demo/base/final] [--tasks sample] [--batch_size 16]
                                 [--repeats 7] [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N]

Without --checkpoint it uses out/demo/base/final (from `make demo`) when present, else random weights of
--config with the sample tokenizer (data/sample/tokenizer). Both backends get identical request lists
(loglikelihood, loglikelihood_rolling and generate_until, grouped by type as lm-eval's evaluator does);
they alternate, after one untimed warm-up each; the best and the median over --repeats are reported (the
best is the least disturbed by other processes on a shared machine). A request is one lm-eval Instance (a
rolling request is a whole passage).
Goal: ratio ours / hf >= 1.0 on CPU. The script also prints how far the two backends' scores differ.
"""

import contextlib
import importlib.util
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "eval"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt import GPT, Config  # noqa: E402


def random_checkpoint(config_name: str, out: Path) -> Path:
    tokenizer = ROOT / "data" / "sample" / "tokenizer" / "tokenizer.model"
    if not tokenizer.is_file():
        raise SystemExit(f"error: no checkpoint given and {tokenizer} is missing: run `make demo` "
                         "(or scripts/prepare_sample_data.py) first, or pass --checkpoint")
    config = Config.from_name(config_name)
    torch.manual_seed(0)
    torch.save(GPT(config).state_dict(), out / "lit_model.pth")
    config.to_json(out / "lit_config.json")
    (out / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    return out


def build_requests(tasks, limit):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(ROOT / "eval" / "tasks"), include_defaults=False)
    by_type = {}
    for task in manager.load(tasks)["tasks"].values():
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        for instance in task.instances:
            by_type.setdefault(instance.request_type, []).append(instance)
    return by_type


def run_all(model, by_type):
    outputs = {}
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # HFLM shows a bar for rolling windows even when asked not to
        for request_type, instances in by_type.items():
            outputs[request_type] = getattr(model, request_type)(instances, disable_tqdm=True)
    return time.perf_counter() - start, outputs


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint_dir", "--checkpoint", type=Path, default=None, help="lit_gpt checkpoint dir (default: see above)")
    p.add_argument("--config", default=None,
                   help="benchmark random weights of this config (default: the demo checkpoint, else 4L128H)")
    p.add_argument("--tasks", default="sample", help="comma-separated tasks from eval/tasks (default: sample)")
    p.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 gives steady timings on a busy machine")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import lm_eval.models.huggingface as hf_backend
    from lm import EvalTokenizer, LitGPTLM

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint_dir
        default = ROOT / "out" / "demo" / "base" / "final"
        if checkpoint is None and args.config is None and (default / "lit_config.json").is_file():
            checkpoint = default
        elif checkpoint is None:
            checkpoint = random_checkpoint(args.config or "4L128H", tmp)
        spec = importlib.util.spec_from_file_location("eval_run", ROOT / "eval" / "run.py")
        eval_run = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(eval_run)
        with contextlib.redirect_stderr(io.StringIO()):
            eval_run.export_hf(checkpoint, tmp / "hf")
            by_type = build_requests(args.tasks.split(","), args.limit)
            ours = LitGPTLM(checkpoint, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
            hf = hf_backend.HFLM(pretrained=str(tmp / "hf"), device=args.device, dtype=args.dtype,
                                 batch_size=args.batch_size, add_bos_token=EvalTokenizer(checkpoint).add_bos)
        n_requests = sum(len(v) for v in by_type.values())
        counts = ", ".join(f"{len(v)} {k}" for k, v in by_type.items())
        print(f"{checkpoint} ({ours.config.name}), tasks {args.tasks}: {n_requests} requests ({counts}), "
              f"batch {args.batch_size}, {args.device} {args.dtype}, {torch.get_num_threads()} threads")

        times = {"ours": [], "hf": []}
        models = {"ours": ours, "hf": hf}
        outputs = {}
        for name, model in models.items():  # warm-up: allocator, kernels, tokenizer caches
            _, outputs[name] = run_all(model, by_type)
        for _ in range(args.repeats):
            for name, model in models.items():
                seconds, _ = run_all(model, by_type)
                times[name].append(seconds)

    worst_ll = worst_rolling = 0.0  # absolute per request; relative per passage (sums of thousands of tokens)
    for request_type, values in outputs["ours"].items():
        for a, b in zip(values, outputs["hf"][request_type], strict=True):
            if request_type == "loglikelihood":
                worst_ll = max(worst_ll, abs(a[0] - b[0]))
            elif request_type == "loglikelihood_rolling":
                worst_rolling = max(worst_rolling, abs(a - b) / max(abs(b), 1e-9))
    best = {name: n_requests / min(t) for name, t in times.items()}
    median = {name: n_requests / statistics.median(t) for name, t in times.items()}
    for name in models:
        runs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"  {name:4s}  best {best[name]:8.1f} requests/s   median {median[name]:8.1f}   (runs {runs} s)")
    print(f"  ratio ours / hf: {best['ours'] / best['hf']:.2f}x best-of-{args.repeats}, "
          f"{median['ours'] / median['hf']:.2f}x median (goal >= 1.0x)")
    print(f"  agreement: max |loglikelihood difference| {worst_ll:.1e}, "
          f"max relative rolling log-likelihood difference {worst_rolling:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
