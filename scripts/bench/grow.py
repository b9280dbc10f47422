"""Time and memory of `python -m growth grow` on a 6-layer, 1024-wide base grown to 24 layers (6L1024H ->
24L1024H, random weights), against copying a file the size of the output, and peak RSS against the source.

    python scripts/bench/grow.py [--op stack] [--base 6L1024H --target 24L1024H] [--safetensors]

Goals (issue 4): time <= 2x the copy; peak RSS <= source size + the largest target tensor + 20%.
The growth runs in a child process that first imports torch and the package; its time and memory are
measured from there on (the interpreter and torch's start-up, ~3 s and ~0.3 GiB here, are fixed costs that
do not grow with the checkpoint, so they are printed apart).
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt import GPT, Config  # noqa: E402


# ru_maxrss survives fork and exec (the child would report the parent's peak), so the child resets its
# peak through /proc/self/clear_refs and reads VmHWM (Linux >= 4.0)
CHILD = """
import json, sys, time
from pathlib import Path
from growth.grow import grow
def status(field):
    line = next(l for l in open('/proc/self/status') if l.startswith(field + ':'))
    return int(line.split()[1]) * 1024
open('/proc/self/clear_refs', 'w').write('5')
start_rss = status('VmRSS')
start = time.perf_counter()
grow(Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), safetensors=sys.argv[5] == 'True')
seconds = time.perf_counter() - start
print(json.dumps([seconds, start_rss, status('VmHWM')]))
"""


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--base", default="6L1024H")
    p.add_argument("--target", default="24L1024H")
    p.add_argument("--op", default="stack")
    p.add_argument("--safetensors", action="store_true", help="write lit_model.safetensors instead of .pth")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=ROOT / "out" if (ROOT / "out").is_dir() else None) as tmp:
        tmp = Path(tmp)
        base = Config.from_name(args.base)
        torch.save(GPT(base).state_dict(), tmp / "lit_model.pth")
        base.to_json(tmp / "lit_config.json")
        source_bytes = (tmp / "lit_model.pth").stat().st_size

        start = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", CHILD, str(tmp), args.target, args.op, str(tmp / "grown"),
                                str(args.safetensors)], check=True, cwd=ROOT, capture_output=True, text=True)
        total_seconds = time.perf_counter() - start
        grow_seconds, start_rss, peak_rss = json.loads(child.stdout.strip().splitlines()[-1])

        out_file = next((tmp / "grown").glob("lit_model.*"))
        out_bytes = out_file.stat().st_size
        start = time.perf_counter()
        shutil.copyfile(out_file, tmp / "copy.pth")
        copy_seconds = time.perf_counter() - start
        target = Config.load(args.target)
        with torch.device("meta"):
            largest = max(t.numel() * t.element_size() for t in GPT(target).state_dict().values())
    budget = source_bytes + largest
    gib = 1024 ** 3
    print(f"{args.base} -> {args.target} with {args.op}: output {out_bytes / gib:.2f} GiB ({out_file.name})")
    print(f"  grow {grow_seconds:6.2f} s   copy of the output {copy_seconds:5.2f} s   ratio {grow_seconds / copy_seconds:5.2f}x "
          f"(goal <= 2x)   [whole command with start-up: {total_seconds:.1f} s]")
    print(f"  peak RSS above start-up {(peak_rss - start_rss) / gib:.2f} GiB   source {source_bytes / gib:.2f} GiB + "
          f"largest target tensor {largest / gib:.2f} GiB = {budget / gib:.2f} GiB   "
          f"ratio {(peak_rss - start_rss) / budget:4.2f} (goal <= 1.2)   [start-up {start_rss / gib:.2f} GiB]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
