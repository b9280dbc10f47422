"""`import lit_gpt` and a short training run with every optional kernel package made unimportable."""

import subprocess
import sys

from conftest import ROOT

PROGRAM = r"""
import importlib.abc, sys

BLOCKED = ("flash_attn", "xformers", "liger_kernel", "triton", "rotary_emb", "dropout_layer_norm", "xentropy_cuda_lib")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} blocked for this test")

sys.meta_path.insert(0, Block())

import torch
import lit_gpt
from lit_gpt import GPT, Config, FusedCrossEntropyLoss, kernels

torch.manual_seed(0)
model = GPT(Config(name="t", block_size=32, vocab_size=64, n_layer=2, n_head=4, n_query_groups=2, n_embd=32,
                   intermediate_size=64))
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
batch = torch.randint(0, 64, (4, 33))
losses = []
for _ in range(30):
    loss = FusedCrossEntropyLoss()(model(batch[:, :-1]), batch[:, 1:])
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
assert kernels._flash_attn() is None and kernels._rms_norm() is None and kernels._cross_entropy() is None
assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), [m for m in sys.modules if "flash" in m]
print(f"{losses[0]:.4f} {losses[-1]:.4f}")
"""


def test_training_without_optional_packages():
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    first, last = map(float, result.stdout.split())
    assert 4.0 < first < 4.4  # ~ln(64) at initialisation
    assert last < first - 1.0  # memorising one batch: the loss must fall
