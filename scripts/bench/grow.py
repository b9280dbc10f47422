"""Time and memory of `python -m growth grow` on a 6-layer, 1024-wide base grown to 24 layers (6L1024H ->
24L1024H, random weights), against copying a file the size of the output, and peak RSS against the source.

    python scripts/bench/grow.py [--op stack] [--base 6L1024H --target 24L1024H]

Goals (issue 4): time <= 2x the copy; peak RSS <= source size + the largest target tensor + 20%.
"""

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lit_gpt import GPT, Config  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="6L1024H")
    p.add_argument("--target", default="24L1024H")
    p.add_argument("--op", default="stack")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=ROOT / "out" if (ROOT / "out").is_dir() else None) as tmp:
        tmp = Path(tmp)
        base = Config.from_name(args.base)
        torch.save(GPT(base).state_dict(), tmp / "lit_model.pth")
        base.to_json(tmp / "lit_config.json")
        source_bytes = (tmp / "lit_model.pth").stat().st_size

        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "growth", "grow", "--src", str(tmp), "--target", args.target,
                        "--op", args.op, "--out", str(tmp / "grown")], check=True, cwd=ROOT)
        grow_seconds = time.perf_counter() - start
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024

        out_file = tmp / "grown" / "lit_model.pth"
        out_bytes = out_file.stat().st_size
        start = time.perf_counter()
        shutil.copyfile(out_file, tmp / "copy.pth")
        copy_seconds = time.perf_counter() - start
        target = Config.load(args.target)
        with torch.device("meta"):
            largest = max(t.numel() * t.element_size() for t in GPT(target).state_dict().values())
    budget = source_bytes + largest
    gib = 1024 ** 3
    print(f"{args.base} -> {args.target} with {args.op}: output {out_bytes / gib:.2f} GiB")
    print(f"  grow {grow_seconds:6.1f} s   copy of the output {copy_seconds:5.1f} s   ratio {grow_seconds / copy_seconds:5.1f}x "
          f"(goal <= 2x; grow includes ~3 s of Python and torch start-up)")
    print(f"  peak RSS {peak_rss / gib:.2f} GiB   source {source_bytes / gib:.2f} GiB + largest target tensor "
          f"{largest / gib:.2f} GiB = {budget / gib:.2f} GiB   ratio {peak_rss / budget:4.2f} (goal <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
