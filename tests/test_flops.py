"""lit_gpt/flops.py: the exact count against torch's FLOP counter, the paper's convention against its numbers, and
eval/speedup.py under both conventions on synthetic curves whose answer is known (reference stacking-paper.md §5.4)."""

import csv

import pytest
import torch
from conftest import command_error
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from eval import speedup as sp
from lit_gpt.config import Config
from lit_gpt.flops import (base_accounting, flops_per_token, growth_factor, paper_flops_per_token,
                           run_accounting)
from lit_gpt.model import GPT

B = 1e9
BASE, TARGET = Config.from_name("6L2048H"), Config.from_name("24L2048H")


@pytest.mark.parametrize("groups", [4, 2, 1])
def test_exact_count_is_torch_flop_counter_with_causal_attention(groups):
    """torch counts every matmul (norm weights do none) and attention in full, 12 L T d; ours halves the
    attention for the causal mask and counts the norm weights as 6 FLOPs each."""
    c = Config(name="t", block_size=64, vocab_size=96, n_layer=3, n_head=4, n_query_groups=groups, n_embd=32,
               intermediate_size=88, _norm_class="RMSNorm")
    model, (batch, seq) = GPT(c), (2, 64)
    x = torch.randint(0, c.padded_vocab_size, (batch, seq))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # MATH: attention as bmm
        model(x).sum().backward()
    counted = counter.get_total_flops() / (batch * seq)
    norms = (2 * c.n_layer + 1) * c.n_embd
    attention_in_full = 12 * c.n_layer * seq * c.n_embd
    assert counted == flops_per_token(c, seq) - 6 * norms - attention_in_full / 2 + attention_in_full


def test_exact_count_against_torch_at_the_paper_target():
    """How close: at 24L2048H and 2048 tokens ours is 6.7% below torch's dense count, all of it the masked
    half of attention (documented in the README's Accounting paragraph)."""
    seq = 2048
    dense = flops_per_token(TARGET, seq) + 6 * TARGET.n_layer * seq * TARGET.n_embd - 6 * 49 * 2048
    assert flops_per_token(TARGET, seq) / dense == pytest.approx(0.9329, abs=1e-4)


def test_paper_convention_numbers():
    """§5.4: 6 N D at 1.364B x 100B is the paper's 8e20; 10B base tokens at g = 4 cost 2.5B target tokens (2.85B
    in exact FLOPs at 2048-token sequences); d = 10B + D = 97.5B is 100B scratch tokens."""
    assert paper_flops_per_token(TARGET) * 100 * B == pytest.approx(8.19e20, rel=1e-3)
    assert growth_factor(BASE, TARGET) == 4.0
    assert growth_factor(Config.from_name("24L1024H"), TARGET) == 4.0
    record = base_accounting(BASE, {"tokens": 10 * B, "flops": flops_per_token(BASE, 2048) * 10 * B}, TARGET)
    assert record == {"growth_factor": 4.0, "base_total_tokens": 10 * B, "base_scratch_tokens_paper": 2.5 * B}
    flops = flops_per_token(BASE, 2048) * 10 * B + flops_per_token(TARGET, 2048) * 97.5 * B
    spent = run_accounting(TARGET, 2048, 97.5 * B, flops, record)
    assert spent["scratch_tokens"]["paper"] == 100 * B
    assert spent["total_tokens"] == 107.5 * B
    assert spent["paper_flops"] == paper_flops_per_token(TARGET) * 100 * B
    assert spent["scratch_tokens"]["exact"] == pytest.approx(97.5 * B + 2.8512 * B, rel=1e-4)


def test_paper_convention_chains_through_grown_bases():
    """Two growth steps, 1L -> 6L (g = 6) -> 24L (g = 4): each stage's tokens count at its own g."""
    one = Config.from_name("1L2048H")
    first = base_accounting(one, {"tokens": 6 * B}, BASE)
    second = base_accounting(BASE, {"tokens": 3 * B, "growth": first}, TARGET)
    assert second["base_total_tokens"] == 9 * B
    assert second["base_scratch_tokens_paper"] == pytest.approx((3 * B + 6 * B / 6) / 4)
    assert base_accounting(BASE, {}, TARGET)["base_scratch_tokens_paper"] is None


def _write(path, base_tokens, hit_tokens, g=4):
    """A 24L2048H run whose val_loss falls linearly to 2.0 at `hit_tokens` of its own tokens and on to 1.9,
    grown from a 6L2048H base trained on `base_tokens` (g = 4), with both FLOPs columns as training logs them."""
    record = base_accounting(BASE, {"tokens": base_tokens}, TARGET) if base_tokens else None
    base_flops = flops_per_token(BASE, 2048) * base_tokens
    path.mkdir()
    with (path / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["step", "tokens", "flops", "paper_flops", "val_loss"])
        w.writeheader()
        for step in range(1, 101):
            tokens = hit_tokens * 1.05 * step / 100
            flops = base_flops + flops_per_token(TARGET, 2048) * tokens
            w.writerow({"step": step, "tokens": tokens, "flops": flops, "val_loss": 3.0 - tokens / hit_tokens,
                        "paper_flops": run_accounting(TARGET, 2048, tokens, flops, record)["paper_flops"]})
    return path


def test_paper_headline_speedup_from_synthetic_curves(tmp_path, capsys):
    """Abstract/Fig. 1: the grown 7B reaches the 300B-token scratch loss at 194B scratch-equivalent tokens, 54.6%.
    Here: a 10B-token base (2.5B at g = 4) and 191.5B grown tokens; exact FLOPs count the base as 2.85B."""
    scratch, grown = _write(tmp_path / "scratch", 0, 300 * B), _write(tmp_path / "grown", 10 * B, 191.5 * B)
    paper = sp.speedup(*(sp.in_convention(sp.read_metrics(p), "paper", p) for p in (scratch, grown)), loss=2.0,
                       convention="paper")
    assert paper["speedup"] == pytest.approx(300 / 194 - 1, abs=1e-9)
    assert round(paper["speedup"] * 100, 1) == 54.6
    exact = sp.speedup(sp.read_metrics(scratch), sp.read_metrics(grown), loss=2.0)
    assert exact["speedup"] == pytest.approx(300 / (191.5 + 2.8512) - 1, rel=1e-4)
    assert sp.main(["--scratch", str(scratch), "--grown", str(grown), "--at_loss", "2.0", "--convention",
                    "paper"]) == 0
    out = capsys.readouterr().out
    assert "speedup: 54.6%" in out and "paper's convention: 6 N D, the base at d/g target tokens" in out
    assert sp.main(["--scratch", str(scratch), "--grown", str(grown), "--at_loss", "2.0"]) == 0
    assert "speedup: 54.4%" in capsys.readouterr().out


def test_paper_convention_needs_the_column(tmp_path, capsys):
    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.csv").write_text("step,tokens,flops,val_loss\n1,10,60,3.0\n2,20,120,2.0\n")
    message = command_error(capsys, sp.main, ["--scratch", str(run), "--grown", str(run), "--convention", "paper"])
    assert "has no paper_flops values" in message and "--convention exact" in message


def test_tied_embeddings_and_head_dim_count_what_runs():
    """A tied LM head is still a matmul (the embedding lookup is not); attention spans n_head x head_dim."""
    from dataclasses import replace

    plain = Config.from_name("SmolLM2-135M")
    untied = replace(plain, name="untied", tie_embeddings=False)
    assert plain.tie_embeddings and flops_per_token(plain, 2048) == flops_per_token(untied, 2048)
    assert growth_factor(replace(plain, n_layer=15), plain) == 2.0
    wide_heads = replace(untied, head_dim=2 * untied.head_size)
    extra = 6 * untied.n_layer * 2048 * untied.n_head * untied.head_size  # attention twice as wide
    assert flops_per_token(wide_heads, 2048) - flops_per_token(untied, 2048) > extra
