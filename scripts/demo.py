"""`make demo` for the foundation stage: the model, its kernels and the HF round trip, end to end.

Builds the demo's base config (4L128H) from scratch, exports it to an HF directory, loads that in
transformers and compares logits, converts it back and checks the weights bit for bit, then times a
training step against transformers. Writes everything under out/demo/. The growth pipeline (data,
training, growing, evaluation) joins this demo as it lands.
"""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_gpt import GPT, Config  # noqa: E402
from lit_gpt.kernels import describe  # noqa: E402
from lit_gpt.utils import num_parameters  # noqa: E402


def run(*args: str) -> None:
    print("$ python " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT)


def main() -> int:
    out = ROOT / "out" / "demo"
    lit_dir, hf_dir, back_dir = out / "lit", out / "hf", out / "hf_back"
    lit_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3407)
    config = Config.from_name("4L128H")
    model = GPT(config).eval()
    print(f"{config.name}: {num_parameters(model):,} parameters; kernels on this machine: "
          f"{describe(torch.device('cpu'), torch.float32)}")
    torch.save(model.state_dict(), lit_dir / "lit_model.pth")
    config.to_json(lit_dir / "lit_config.json")

    run("scripts/convert_lit_checkpoint.py", "--checkpoint_path", str(lit_dir / "lit_model.pth"),
        "--out_dir", str(hf_dir))
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    with torch.no_grad():
        diff = (model(idx) - hf(idx).logits).abs().max().item()
    print(f"max |logits(lit) - logits(HF)| over {idx.numel()} positions: {diff:.2e}")

    back_dir.mkdir(exist_ok=True)
    for f in hf_dir.iterdir():
        (back_dir / f.name).write_bytes(f.read_bytes())
    run("scripts/convert_hf_checkpoint.py", "--checkpoint_dir", str(back_dir))
    back = torch.load(back_dir / "lit_model.pth", weights_only=True)
    exact = all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    print(f"lit -> HF -> lit weights bit-exact: {exact}")

    run("scripts/bench/model_step.py", "--model_name", "8L256H", "--steps", "5", "--warmup", "2")
    return 0 if exact and diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
