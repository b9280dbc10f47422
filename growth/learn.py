"""G_learn: LiGO-style learned linear growth operators and `python -m growth learn`.

Reference stacking-paper.md §3.3 (paper App. A.1.2 Eq. 3, App. A.6 Eqs. 37-42). A hypernetwork holds the trained
source tensors frozen and a few small learnable matrices; `materialize()` builds every target tensor as a linear
function of the source tensors, and `fit` trains only those matrices on the ordinary LM loss of the target model,
Theta = G_learn(theta), min E_x[L_LM(x; F_Theta)].

learn-depth (`LearnDepth`, width kept): one mixing matrix D_t in R^{L x l} per parameter type t of a block, target
layer j's tensor W'_j = sum_i D_t[j, i] W_i (Eqs. 41-42). Types: q, k, v (separated from the fused, group-interleaved
`attn.attn` by `split_qkv`, mixed, fused back), proj, norm_1, norm_2, w1, w2, w3; a module's bias mixes with its
weight's matrix. The embedding, final norm and LM head are copied. Init D_t[j, map[j]] = 1, else 0, so at init the
target is exactly `growth.operators.stack` with that index map (the official code's init is the cyclic map).

learn-width (`LearnWidth`, depth kept), the formulas of §3.3 with one set of matrices shared by all layers (as the
official code): E' = E B_embᵀ, W'_Q = B_Q W_Q B_embᵀ (K, V alike), W'_O = B_emb W_O B_Oᵀ, mu' = B_emb mu (both block
norms and ln_f), W'_up/gate = B_mlp W B_embᵀ, W'_down = B_emb W B_mlpᵀ, W'_head = W_head B_embᵀ, biases b' = B_out b.
The q/k/v matrices act on the SEPARATED q, k and v rows at head granularity, not on "three thirds" of the fused
weight (the official code's split, which assumes a [Q; K; V] layout and scrambles heads):

* B_Q in R^{H x h} mixes query heads, B_K, B_V in R^{G' x G} mix key/value heads (one per query group); the
  dim-level operator of the paper is B ⊗ I_hs. A target head is thus sum_s B[i, s] (source head s), its dim t
  drawn only from dim t of the source heads: heads stay whole, head_size is kept (so is the 1/sqrt(hs) softmax
  scale), and RoPE, which rotates dim t of every head by the same angle, commutes with the mixing
  (rope((B ⊗ I) q) = (B ⊗ I) rope(q)); a free hs x hs mix inside a head would not. Any other head_size is refused.
* GQA/MQA: keys and values exist once per group, so B_K and B_V are group-level and the target has its own
  n_query_groups G' (an MQA source, G = 1, grows into G' groups). Query heads mix over all source heads: the
  score of target head i uses its own group's k', whatever heads its q came from.
* O's fan-in: B_O = B_V ⊗ I_q ⊗ I_hs (q = q_per_kv). O reads one hs slice per query head, the attention-weighted v
  of the head's group, i.e. v repeated to the q heads of its group by R; R' (B_V ⊗ I_hs) = (B_V ⊗ I_q ⊗ I_hs) R,
  so B_O is the V mixing seen through that repeat (LiGO's W_O B_Vᵀ), and for MHA (q = 1) it is B_V itself. This
  needs the same q_per_kv in source and target, which `growth.width.check_width_growth` demands (with the same
  head_size, no shrinking, the same vocabulary and depth).
* Init [I; N(0, 1/n')] (§3.3): old units map to themselves, new rows are Gaussian with variance 1/n', n' the
  matrix's target size (D, H, G' or D_ffn). A new unit then has (n/n') the variance of a source unit, the same at
  head level as LiGO's dim-level N(0, 1/D). Hence at init the old-units block of every target tensor is the source
  tensor (W'[:o, :i] = W) and each new head is a Gaussian combination of whole source heads.

The hypernetworks' state_dict() holds only the learnable matrices (the source is referenced by growth.json's
sha256), which the command saves as hypernet.pth.
"""

import math
import random
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call

from lit_gpt.cli import ArgumentParser
from growth.operators import State, check_map, check_no_shrink, check_same_width, split_layers
from growth.width import check_source_state, tensor_spec, check_width_growth
from lit_gpt.config import Config
from lit_gpt.convert import model_family
from lit_gpt.files import check_writable_target
from lit_gpt.fused_cross_entropy import FusedCrossEntropyLoss
from lit_gpt.model import GPT, fuse_qkv, rope_cache, split_qkv
from lit_gpt.packed_dataset import PackedDataset

LEARN_OPERATORS = ("learn-depth", "learn-width")
# block module -> the mixing-matrix name(s) of learn-depth; the fused attn.attn splits into q, k, v
_DEPTH_TYPES = {"norm_1": ("norm_1",), "attn.attn": ("q", "k", "v"), "attn.proj": ("proj",), "norm_2": ("norm_2",),
                "mlp.swiglu.w1": ("w1",), "mlp.swiglu.w2": ("w2",), "mlp.swiglu.w3": ("w3",)}


class _Hypernet(nn.Module):
    """Frozen source tensors as non-persistent fp32 buffers; subclasses add the learnable matrices and
    `materialize()`, the differentiable target state that `export` and `fit` use."""

    def __init__(self, src: Config, state: State, tgt: Config) -> None:
        super().__init__()
        self.src, self.tgt = src, tgt
        dtypes = {t.dtype for t in state.values()}
        self.out_dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32

    def _keep(self, key: str, tensor: torch.Tensor) -> None:
        self.register_buffer(key.replace(".", "__"), tensor.detach().float().clone(), persistent=False)

    def _kept(self, key: str) -> torch.Tensor:
        return getattr(self, key.replace(".", "__"))

    def _tie(self, out: State) -> State:
        """A tied target's head is its embedding, one tensor (LiGO's W'_head = W_head B_embᵀ is E B_embᵀ = E'
        when W_head = E), as `functional_call` and the writers expect."""
        if self.tgt.tie_embeddings:
            out["lm_head.weight"] = out["transformer.wte.weight"]
        return out

    @torch.no_grad()
    def export(self) -> State:
        """The materialised target state on the CPU in the source's dtype, every tensor with its own storage
        (materialised layers are views of one (L, ...) tensor, which safetensors refuses to save)."""
        return {k: v.detach().to(device="cpu", dtype=self.out_dtype).clone(memory_format=torch.contiguous_format)
                for k, v in self.materialize().items()}


class LearnDepth(_Hypernet):
    """G↑learn (Eqs. 41-42): W'_j = sum_i D_t[j, i] W_i per parameter type t, D_t init one-hot at map[j] (= G_stack)."""

    def __init__(self, src: Config, state: State, tgt: Config, index_map: Sequence[int]) -> None:
        super().__init__(src, state, tgt)
        check_same_width(src, tgt)
        shared, layers = split_layers(state)
        check_map(index_map, src, tgt, layers)
        self.index_map = [int(s) for s in index_map]
        self.shared_keys = sorted(shared)
        for key in self.shared_keys:
            self._keep(key, shared[key])
        self.suffixes = sorted(layers[0])
        for suffix in self.suffixes:
            parts = self._split(suffix, [layers[i][suffix] for i in range(src.n_layer)])
            for name, stacked in zip(self._types(suffix), parts):
                self._keep(f"layers.{suffix}.{name}", stacked)
        one_hot = torch.zeros(tgt.n_layer, src.n_layer)
        one_hot[torch.arange(tgt.n_layer), torch.tensor(self.index_map, dtype=torch.long)] = 1.0
        names = sorted({n for s in self.suffixes for n in self._types(s)})
        self.mix = nn.ParameterDict({n: nn.Parameter(one_hot.clone()) for n in names})

    @staticmethod
    def _types(suffix: str) -> Tuple[str, ...]:
        module = suffix.rsplit(".", 1)[0]
        if module not in _DEPTH_TYPES:
            raise ValueError(f"learn-depth does not know the block tensor {suffix!r}")
        return _DEPTH_TYPES[module]

    def _split(self, suffix: str, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        """(l, ...) stacks of the source layers' tensor, one per mixing type (q, k, v apart for attn.attn)."""
        if len(self._types(suffix)) == 1:
            return [torch.stack(tensors)]
        return [torch.stack(part) for part in zip(*(split_qkv(t, self.src) for t in tensors))]

    def materialize(self) -> State:
        out = {k: self._kept(k) for k in self.shared_keys}
        for suffix in self.suffixes:
            mixed = [torch.einsum("ji,i...->j...", self.mix[n], self._kept(f"layers.{suffix}.{n}"))
                     for n in self._types(suffix)]
            for j in range(self.tgt.n_layer):
                parts = [m[j] for m in mixed]
                out[f"transformer.h.{j}.{suffix}"] = fuse_qkv(*parts, self.tgt) if len(parts) == 3 else parts[0]
        return self._tie(out)


def _ligo_init(n_tgt: int, n_src: int, generator: torch.Generator) -> torch.Tensor:
    """[I; N(0, 1/n_tgt)]: identity on the old units, Gaussian rows for the new ones (§3.3, the official init)."""
    new = torch.randn(n_tgt - n_src, n_src, generator=generator) / math.sqrt(n_tgt)
    return torch.cat((torch.eye(n_src), new))


def _mix(op: Optional[Tuple[torch.Tensor, int]], w: torch.Tensor, dim: int) -> torch.Tensor:
    """(B ⊗ I_unit) applied along `dim` of w: unit-sized slices (whole heads, or single dims) are mixed by B."""
    if op is None:
        return w
    b, unit = op
    moved = w.movedim(dim, 0)
    flat = moved.reshape(b.shape[1], -1)
    return (b @ flat).reshape(b.shape[0] * unit, *moved.shape[1:]).movedim(0, dim)


class LearnWidth(_Hypernet):
    """G→learn (Eqs. 37-40) at head granularity: B_emb, B_Q (heads), B_K/B_V (groups), B_mlp; see the module doc."""

    def __init__(self, src: Config, state: State, tgt: Config, generator: torch.Generator) -> None:
        super().__init__(src, state, tgt)
        check_width_growth(src, tgt)
        check_source_state(src, state)
        self.keys = list(state)
        for key in self.keys:
            self._keep(key, state[key])
        sizes = {"B_emb": (tgt.n_embd, src.n_embd), "B_Q": (tgt.n_head, src.n_head),
                 "B_K": (tgt.n_query_groups, src.n_query_groups), "B_V": (tgt.n_query_groups, src.n_query_groups),
                 "B_mlp": (tgt.intermediate_size, src.intermediate_size)}
        for name, (n_tgt, n_src) in sizes.items():
            setattr(self, name, nn.Parameter(_ligo_init(n_tgt, n_src, generator)))

    def _ops(self) -> Dict[str, Optional[Tuple[torch.Tensor, int]]]:
        hs, q = self.src.head_size, self.src.q_per_kv
        b_o = torch.kron(self.B_V, torch.eye(q, device=self.B_V.device))
        return {"vocab": None, "hidden": (self.B_emb, 1), "q": (self.B_Q, hs), "k": (self.B_K, hs),
                "v": (self.B_V, hs), "heads": (b_o, hs), "ffn": (self.B_mlp, 1)}

    def materialize(self) -> State:
        ops, out = self._ops(), {}
        for key in self.keys:
            _, axes, _ = tensor_spec(key)
            w = self._kept(key)
            if axes[0] == "qkv":
                q, k, v = split_qkv(w, self.src)
                w = fuse_qkv(_mix(ops["q"], q, 0), _mix(ops["k"], k, 0), _mix(ops["v"], v, 0), self.tgt)
                axes = (None, *axes[1:])
            for dim, axis in enumerate(axes):
                w = w if axis is None else _mix(ops[axis], w, dim)
            out[key] = w
        return self._tie(out)


def learn_depth(src: Config, state: State, tgt: Config, index_map: Sequence[int]) -> State:
    """The init of G↑learn, materialised: equal to `growth.operators.stack(src, state, tgt, index_map)`."""
    return LearnDepth(src, state, tgt, index_map).export()


def learn_width(src: Config, state: State, tgt: Config, generator: torch.Generator) -> State:
    """The init of G→learn, materialised: [I; N(0, 1/n')] operators applied per §3.3 (see the module doc)."""
    return LearnWidth(src, state, tgt, generator).export()


# ---- fitting the operator on the LM loss ----

def train_files(data_dir: Path) -> List[Path]:
    """The packed training files (train_*.bin, which covers train_slimpajama_*) of a data directory."""
    files = sorted(Path(data_dir).glob("train_*.bin"))
    if not files:
        raise ValueError(f"no training files (train_*.bin) in {data_dir}; prepare data with "
                         "scripts/prepare_slimpajama.py")
    return files


def _stream(files: Sequence[Path], block: int, batch: int, seed: int, shuffle: bool) -> Iterator[torch.Tensor]:
    """Batches of `block` tokens per row from packed files (files and blocks shuffled by seed, as in training)."""
    files = list(files)
    if shuffle:
        random.Random(seed).shuffle(files)
    blocks = iter(PackedDataset(files, n_chunks=min(4, len(files)), block_size=block, seed=seed, shuffle=shuffle))
    while True:
        yield torch.stack([next(blocks) for _ in range(batch)])


def _target_model(tgt: Config, device: torch.device) -> GPT:
    """GPT(tgt) with meta parameters (every one is supplied by the hypernetwork) and a real RoPE cache."""
    with torch.device("meta"):
        model = GPT(tgt)
    model.rope_cos, model.rope_sin = rope_cache(tgt, device)
    return model.requires_grad_(False)


def _checked(batch: torch.Tensor, tgt: Config, device: torch.device) -> torch.Tensor:
    if int(batch.max()) >= tgt.padded_vocab_size:
        raise ValueError(f"the data holds token id {int(batch.max())}, but the target {tgt.name} has "
                         f"{tgt.padded_vocab_size} vocabulary rows; was it tokenised for another model?")
    return batch.to(device)


def fit(hypernet: _Hypernet, tgt_config: Config, data_dir: Path, steps: int, lr: float = 1e-3,
        micro_batch_size: int = 4, seed: int = 3407, block_size: Optional[int] = None, device: str = "cpu",
        grad_clip: float = 1.0, progress: bool = True) -> Dict[str, float]:
    """Trains only the hypernetwork's matrices on the target's LM cross-entropy (paper App. A.1.2 Eq. 3).

    Each step materialises the target parameters and runs `GPT(tgt_config)` on them with
    `torch.func.functional_call`, on a micro-batch of block_size + 1 tokens per row from the packed train_*.bin files
    (shuffled by `seed`, as the training script reads them); AdamW without weight decay (it would pull the identity
    init towards 0), gradient norm clipped at `grad_clip`, fp32. The loss before and after is measured on one fixed
    batch that is not trained on: the first validation*.bin blocks when the directory has them, else the first
    training batch (then skipped by the training stream). Returns loss_before, loss_after, tokens (trained on).
    """
    dev = torch.device(device)
    block = block_size or tgt_config.block_size
    if not 1 <= block <= tgt_config.block_size:
        raise ValueError(f"block_size must be in 1..{tgt_config.block_size} (the target's), got {block}")
    files = train_files(data_dir)
    hypernet.to(dev)
    model, loss_fn = _target_model(tgt_config, dev), FusedCrossEntropyLoss()
    train = _stream(files, block + 1, micro_batch_size, seed, shuffle=True)
    val_files = sorted(Path(data_dir).glob("validation*.bin"))
    fixed_source = _stream(val_files, block + 1, micro_batch_size, seed, shuffle=False) if val_files else train
    fixed = _checked(next(fixed_source), tgt_config, dev)

    def loss_on(batch: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, hypernet.materialize(), (batch[:, :-1],))
        return loss_fn(logits, batch[:, 1:])

    with torch.no_grad():
        before = loss_on(fixed).item()
    optimizer = torch.optim.AdamW(hypernet.parameters(), lr=lr, weight_decay=0.0)
    _train(hypernet, optimizer, loss_on, train, steps, grad_clip, progress, lambda b: _checked(b, tgt_config, dev))
    with torch.no_grad():
        after = loss_on(fixed).item()
    return {"loss_before": before, "loss_after": after, "tokens": steps * micro_batch_size * block}


def _train(hypernet, optimizer, loss_on, batches, steps: int, grad_clip: float, progress: bool, prepare) -> None:
    from tqdm import tqdm

    bar = tqdm(range(steps), desc="fitting G_learn", unit="step", disable=True if not progress or steps == 0 else None)
    for _ in bar:
        loss = loss_on(prepare(next(batches)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(hypernet.parameters(), grad_clip)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")


# ---- the command ----

def build(op: str, src: Config, state: State, tgt: Config, index_map: Optional[Sequence[int]],
          seed: int) -> _Hypernet:
    if op == "learn-depth":
        return LearnDepth(src, state, tgt, index_map)
    return LearnWidth(src, state, tgt, torch.Generator().manual_seed(seed))


def _check_args(op: str, steps: int, lr: float, micro_batch_size: int, layers: Optional[str]) -> None:
    if op not in LEARN_OPERATORS:
        raise ValueError(f"unknown operator {op!r}; available: {', '.join(LEARN_OPERATORS)}")
    if steps < 0:
        raise ValueError(f"--steps must be 0 or more, got {steps}")
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {lr}")
    if micro_batch_size < 1:
        raise ValueError(f"--micro_batch_size must be at least 1, got {micro_batch_size}")
    if op == "learn-width" and layers is not None:
        raise ValueError("learn-width grows the width and keeps the depth; --layers does not apply")


def learn(src: Path, target: str, op: str, data: Path, out: Path, steps: int = 100, layers: Optional[str] = None,
          lr: float = 1e-3, micro_batch_size: int = 4, seed: int = 3407, force: bool = False,
          src_config: Optional[str] = None, safetensors: bool = False, block_size: Optional[int] = None,
          device: Optional[str] = None, progress: bool = True) -> dict:
    """Loads the source, builds the operator at its init, fits it for `steps`, writes the materialised target."""
    from growth.io import load_source, write_grown
    from growth.layers import connection_rate, resolve
    from lit_gpt.flops import base_accounting, flops_per_token

    _check_args(op, steps, lr, micro_batch_size, layers)
    tgt = Config.load(target)
    check_writable_target(out, force, inputs={"--src": src, "--train_data_dir": data},
                          what=f"--out_dir {out}")  # before the reading, which may take minutes
    train_files(data)
    source = load_source(src, src_config)
    check_no_shrink(source.config, tgt)
    if tgt.padded_vocab_size != source.config.padded_vocab_size:
        raise ValueError(f"the target {tgt.name} has {tgt.padded_vocab_size} vocabulary rows, the source "
                         f"{source.config.padded_vocab_size}: growth keeps the vocabulary")
    index_map = resolve(layers or "cyclic", source.config.n_layer, tgt.n_layer) if op == "learn-depth" else None
    hypernet = build(op, source.config, source.state, tgt, index_map, seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device torch knows; use e.g. cpu, cuda or cuda:1") from None
    backend = getattr(torch, kind, None)
    if kind != "cpu" and not (backend is not None and hasattr(backend, "is_available") and backend.is_available()):
        raise ValueError(f"--device {device}: torch sees no {kind} device here")
    torch.manual_seed(seed)
    losses = fit(hypernet, tgt, data, steps, lr, micro_batch_size, seed, block_size, device, progress=progress)
    block = block_size or tgt.block_size
    fit_flops = flops_per_token(tgt, block) * losses["tokens"]
    base_flops = source.training.get("flops")
    accounting = base_accounting(source.config, source.training, tgt)
    if accounting["base_scratch_tokens_paper"] is not None:  # the fit runs the target-sized model
        accounting["base_scratch_tokens_paper"] += losses["tokens"]
    record = {
        "operator": op, "options": {"layers": (layers or "cyclic") if index_map else None, "seed": seed,
                                    "steps": steps, "lr": lr, "micro_batch_size": micro_batch_size,
                                    "block_size": block, "data": str(Path(data).resolve())},
        "source": {"path": str(source.path.resolve()), "sha256": source.sha256, "config": source.config.name},
        "target": tgt.name, "family": model_family(tgt), "index_map": index_map,
        "connection_rate": connection_rate(index_map) if index_map else None, "masked_layers": [],
        "base_step": source.training.get("step"), "base_tokens": source.training.get("tokens"),
        # the operator's fit is compute spent before the continued run, so it counts as the base's
        "base_flops": fit_flops if base_flops is None else base_flops + fit_flops,
        "base_stream_tokens": source.training.get("stream_tokens", source.training.get("tokens")),
        **accounting,
        "loss_before": losses["loss_before"], "loss_after": losses["loss_after"], "fit_tokens": losses["tokens"],
        "fit_flops": fit_flops,
    }
    extra = {"hypernet.pth": {k: v.detach().cpu() for k, v in hypernet.state_dict().items()}}
    write_grown(out, hypernet.export(), tgt, record, source, force, safetensors, extra)
    return record


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m growth learn", description="Grow a checkpoint with a learned "
                                "(LiGO-style) operator, G_learn: fit the operator's matrices on the LM loss of the "
                                "target for --steps, then write the materialised target model and growth.json.")
    p.add_argument("--src", type=Path, required=True, help="base checkpoint: a directory with lit_model.pth and "
                   "lit_config.json, such a file, an upstream iter-*-ckpt.pth, or a training checkpoint step-*/")
    p.add_argument("--target", required=True, help="target config: a name (e.g. 8L128H) or a lit_config.json")
    p.add_argument("--op", required=True, help="learn-depth: mix the source layers into "
                   "more layers (width kept, init = G_stack); learn-width: widen every tensor (depth kept, "
                   "head_size and query heads per key/value group kept)")
    p.add_argument("--train_data_dir", "--data", type=Path, required=True, help="packed data directory with "
                   "train_*.bin files (and optionally validation*.bin, for the before/after loss)")
    p.add_argument("--out_dir", "--out", type=Path, required=True,
                   help="output directory (refused if not empty, see --force)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of the fit (default 100; 0 writes the "
                   "init, which for learn-depth is G_stack)")
    p.add_argument("--layers", default=None, help="learn-depth only: the init's layer map, cyclic (default), "
                   "interleave, solar:K, the paper's notation (12-3456*5-56) or ranges; see python -m growth layers")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the operator (default 1e-3)")
    p.add_argument("--micro_batch_size", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--block_size", type=int, default=None, help="tokens per sequence (default: the target's)")
    p.add_argument("--seed", type=int, default=3407, help="seed of the width init and of the data order "
                   "(default 3407)")
    p.add_argument("--device", default=None, help="where to fit, e.g. cpu or cuda (default: cuda if available)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out_dir")
    p.add_argument("--src_config", default=None, help="the source's config when no lit_config.json is beside it")
    p.add_argument("--safetensors", action="store_true", help="write lit_model.safetensors instead of .pth")
    return p


def main(argv=None) -> int:
    from lit_gpt.exits import exit_code

    args = _parser().parse_args(argv)

    def run() -> None:
        r = learn(args.src, args.target, args.op, args.train_data_dir, args.out_dir, args.steps, args.layers, args.lr,
                  args.micro_batch_size, args.seed, args.force, args.src_config, args.safetensors, args.block_size,
                  args.device)
        rate = r["connection_rate"]
        print(f"learned {r['source']['config']} -> {r['target']} with {r['operator']} in {args.steps} steps"
              + (f" (R_c = {rate:.1%} at init)" if rate is not None else "")
              + f": loss {r['loss_before']:.4f} -> {r['loss_after']:.4f} on a fixed batch; wrote {args.out_dir}")

    return exit_code(run)
