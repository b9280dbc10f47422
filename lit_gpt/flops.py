"""Training compute, in the two conventions every tool offers (reference stacking-paper.md §5.4).

exact: each model at its own cost per token, `flops_per_token` = 6 (N - V d) + 6 L T d (every matmul weight,
    the LM head included, the embedding lookup not; causal attention scores). A grown run's compute is the base's
    exact FLOPs (its own ancestors included) plus its own; its scratch-equivalent tokens are that sum divided by
    the target's FLOPs per token. This is what the training loop logs in metrics.csv's `flops`.
paper: C = 6 N D with N the target's total parameters (6 x 1.364B x 100B = 8.2e20, the paper's "8e20" for
    1.1B), and a base trained on d tokens costs d / g target tokens, g = the ratio of the blocks' matrix
    parameters target / base (the layer ratio for depth growth: 4 for 6L2048H -> 24L2048H; 4 for
    24L1024H -> 24L2048H too, whose matrices all double in both dims). Its scratch-equivalent tokens are d / g + D; 10B base tokens and 97.5B after growth
    cost 100B scratch tokens. This ignores attention and the fact that embeddings do not shrink with the base.

The same run in both: 6L2048H trained on 10B tokens, grown to 24L2048H, 2048-token sequences. exact: the base
costs 2.85B target tokens; paper: 2.5B.
"""

from typing import Any, Dict, Mapping, Optional

from lit_gpt.config import Config, param_count
from lit_gpt.records import CONVENTIONS  # noqa: F401 - tools import it from here with CONVENTION_NOTE/HELP

PAPER_FLOPS_PER_PARAM = 6  # C = 6 N D: forward and backward of every parameter, once per token
CONVENTION_NOTE = {"exact": "exact FLOPs: each model's own per-token count, attention included",
                   "paper": "paper's convention: 6 N D, the base at d/g target tokens"}
CONVENTION_HELP = ("compute accounting: exact (each model's own FLOPs per token, attention included: what "
                   "training logs) or paper (6 N D with N the target's parameters; a base trained on d tokens "
                   "costs d/g target tokens, g the growth factor; paper §5.4) (default: exact)")


def block_matrix_params(config: Config) -> int:
    """Parameters of the blocks' weight matrices and biases of `GPT(config)`: no embedding, LM head or norm."""
    vocab_matrices = 1 if config.tie_embeddings else 2
    return (param_count(config) - vocab_matrices * config.padded_vocab_size * config.n_embd
            - (2 * config.n_layer + 1) * config.n_embd)


def flops_per_token(config: Config, seq_len: int) -> float:
    """Exact training FLOPs per token (forward + backward): 6 N' + 6 L T h.

    N' counts every parameter but the embedding lookup (the LM head is a matmul and counts, also when it is the
    tied embedding matrix); 6 L T h is the attention scores and their weighted sum (PaLM's 12 L T d, halved for
    the causal mask), T = `seq_len` tokens, h = n_head x head_size (n_embd unless head_dim says otherwise).
    `torch.utils.flop_counter` counts the same matmuls but attention in full (12 L T d): see
    tests/test_flops.py.
    """
    lookup = 0 if config.tie_embeddings else config.padded_vocab_size * config.n_embd  # tied: counted once
    return 6.0 * (param_count(config) - lookup) + 6.0 * config.n_layer * seq_len * config.n_head * config.head_size


def paper_flops_per_token(config: Config) -> float:
    """The paper's C = 6 N D per token: 6 x every parameter of the model, embedding included, no attention."""
    return float(PAPER_FLOPS_PER_PARAM * param_count(config))


def growth_factor(base: Config, target: Config) -> float:
    """The paper's g = N / n of a growth step (§5.1, §5.4): `block_matrix_params` target / base, so exactly
    L / l for depth growth (norm weights and embeddings would make 6L2048H -> 24L2048H 3.99998 or 3.1)."""
    return block_matrix_params(target) / block_matrix_params(base)


def base_accounting(base: Config, base_training: Mapping[str, Any], target: Config) -> Dict[str, Any]:
    """The cost of everything trained before a growth step, for the growth record (growth.json).

    `base_training` is the base checkpoint's {tokens, flops, growth} (growth: the base's own growth record when
    it was itself grown). Returns
        growth_factor: g (float);
        base_total_tokens: tokens of the base and all its ancestors;
        base_scratch_tokens_paper: their cost in target tokens under the paper's convention, d / g for one step,
            (d_2 + d_1 / g_1) / g_2 for two.
    Either is None (unknown) when the base's tokens, or an ancestor's (a record written before these fields),
    are unknown: an unknown cost is never counted as 0. The exact cost is `base_flops`, recorded beside these."""
    g = growth_factor(base, target)
    tokens = base_training.get("tokens")
    earlier = base_training.get("growth")
    total = paper = None
    if tokens is not None:
        total, paper = tokens, tokens
        if earlier:
            total = _plus(tokens, earlier.get("base_total_tokens"))
            paper = _plus(tokens, earlier.get("base_scratch_tokens_paper"))
    return {"growth_factor": g, "base_total_tokens": total,
            "base_scratch_tokens_paper": None if paper is None else paper / g}


def _plus(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a + b


def run_accounting(config: Config, seq_len: int, tokens: float, flops: float,
                   growth: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """What a run has spent after `tokens` of its own (exact `flops` include the base's), in both conventions.

    Returns total_tokens (base and ancestors included), paper_flops (6 N x paper scratch tokens) and
    scratch_tokens {exact: flops / flops_per_token(config, seq_len), paper: tokens + base's d / g}. For a grown
    run whose record does not know the base's tokens (null, or a growth.json from before these fields),
    total_tokens, paper_flops and the paper count are None: unknown, not free."""
    if growth:
        total = _plus(tokens, growth.get("base_total_tokens"))
        paper = _plus(tokens, growth.get("base_scratch_tokens_paper"))
    else:
        total = paper = tokens
    return {"total_tokens": total, "paper_flops": None if paper is None else paper_flops_per_token(config) * paper,
            "scratch_tokens": {"exact": flops / flops_per_token(config, seq_len), "paper": paper}}
