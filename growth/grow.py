"""`python -m growth grow`: read a base checkpoint, apply an operator, write the grown model and growth.json."""

from pathlib import Path
from typing import Optional

import torch

from growth.io import load_source, write_grown
from growth.layers import connection_rate, resolve
from growth.operators import (DEPTH_OPERATORS, check_no_shrink, check_noise, map_moments, noise_tensor,
                              random_depth, random_depth_masked_layers)
from growth.width import WIDTH_OPERATORS, random_width_masks
from lit_gpt.consolidate import consolidate_optimizer
from lit_gpt.cli import ArgumentParser
from lit_gpt.config import Config
from lit_gpt.convert import model_family
from lit_gpt.files import check_writable_target
from lit_gpt.flops import base_accounting


OPERATORS = sorted([*DEPTH_OPERATORS, "random-depth", *WIDTH_OPERATORS])
RANDOM_INIT_OPERATORS = ("random-depth", "random-width", "zero-width")  # the ones that draw new random parameters
WIDTH_MASKS = "growth_masks.pth"  # random-width's output masks, read by pretrain/tinyllama.py


def grow(src: Path, target: str, op: str, out: Path, layers: str = "cyclic", noise: float = 0.0, seed: int = 3407,
         force: bool = False, src_config: Optional[str] = None, safetensors: bool = False,
         carry_optimizer: bool = False, split: Optional[str] = None, init: Optional[str] = None,
         clone_noise: Optional[float] = None) -> dict:
    """Grows `src` into `target` with `op` and writes it to `out`; returns the growth.json record. `split` (None:
    "lemon") is only for direct-width, `init` (None: "upstream") for RANDOM_INIT_OPERATORS, `clone_noise` (None: 0)
    for hyperclone.

    Raises:
        ValueError: one line, before anything is written: an unknown operator, an option the operator does not
            take or a bad value (`check_options`), a target it cannot grow to.
    """
    check_options(op, layers, noise, split, init, clone_noise, carry_optimizer)
    tgt = Config.load(target)
    check_writable_target(out, force, inputs={"--src": src}, what=f"--out_dir {out}")  # before the reading
    source = load_source(src, src_config)
    check_no_shrink(source.config, tgt)
    moments = None
    if carry_optimizer:
        if not (source.path / "meta.json").is_file():
            raise ValueError("--carry_optimizer needs a training checkpoint (out_dir/step-NNNNNNNN/) as --src: "
                             "weights-only exports hold no optimizer state")
        moments = consolidate_optimizer(source.path)
    if tgt.padded_vocab_size != source.config.padded_vocab_size:
        raise ValueError(f"the target {tgt.name} has {tgt.padded_vocab_size} vocabulary rows, the source "
                         f"{source.config.padded_vocab_size}: growth keeps the vocabulary")
    generator = torch.Generator().manual_seed(seed)
    masked_layers, extra = [], {}
    # the operator's own options, under the names growth.json records
    options = ({"split": split or "lemon"} if op == "direct-width" else {"clone_noise": clone_noise or 0.0}
               if op == "hyperclone" else {"init": init or "upstream"} if op in RANDOM_INIT_OPERATORS else {})
    if op in WIDTH_OPERATORS:
        if tgt.norm_eps != source.config.norm_eps:  # the exact forms hold for the source's eps only
            raise ValueError(f"width growth keeps norm_eps, but the target has {tgt.norm_eps}, the source "
                             f"{source.config.norm_eps}; set the target's norm_eps to the source's")
        state = WIDTH_OPERATORS[op](source.config, source.state, tgt, generator, **options)
        index_map, rate = None, None
        if op == "random-width":
            extra[WIDTH_MASKS] = random_width_masks(source.config, tgt)
    elif op == "random-depth":
        state = random_depth(source.config, source.state, tgt, generator, copy=False, **options)
        masked_layers = random_depth_masked_layers(source.config, tgt)
        index_map = [j if j < source.config.n_layer else None for j in range(tgt.n_layer)]
        rate = None
    else:
        index_map = resolve(layers, source.config.n_layer, tgt.n_layer)
        state = DEPTH_OPERATORS[op](source.config, source.state, tgt, index_map, copy=False)
        rate = connection_rate(index_map)
    if moments is not None:
        extra["optimizer_moments.pth"] = {"step": moments["step"],
                                          **{k: map_moments(moments[k], index_map) for k in ("exp_avg", "exp_avg_sq")}}
    record = {
        "operator": op, "options": {"layers": layers, "noise": noise, "seed": seed, **options},
        "source": {"path": str(source.path.resolve()), "sha256": source.sha256, "config": source.config.name},
        "target": tgt.name, "family": model_family(tgt), "index_map": index_map, "connection_rate": rate, "masked_layers": masked_layers,
        "width_masks": WIDTH_MASKS if WIDTH_MASKS in extra else None,
        "base_step": source.training.get("step"), "base_tokens": source.training.get("tokens"),
        "base_flops": source.training.get("flops"),
        **base_accounting(source.config, source.training, tgt),
        "base_stream_tokens": source.training.get("stream_tokens", source.training.get("tokens")),
    }
    transform = (lambda key, tensor: noise_tensor(key, tensor, tgt, noise, generator)) if noise else None
    write_grown(out, state, tgt, record, source, force, safetensors, extra, transform)
    return record


def check_options(op: str, layers: str = "cyclic", noise: float = 0.0, split: Optional[str] = None,
                  init: Optional[str] = None, clone_noise: Optional[float] = None,
                  carry_optimizer: bool = False) -> None:
    """Refuses an unknown operator, an option given to an operator that does not take it, and bad values
    (`growth stages` checks every stage's grow options with it before running anything).

    Raises:
        ValueError: one line naming the option and what to do."""
    if op not in OPERATORS:
        learned = f"; {op} is fitted on data: python -m growth learn --op {op}" if op.startswith("learn-") else ""
        raise ValueError(f"unknown operator {op!r}{learned}; available: {', '.join(OPERATORS)}")
    if op == "random-depth" and layers != "cyclic":
        raise ValueError("random-depth keeps the source layers in place and adds new ones on top; drop --layers")
    if op in WIDTH_OPERATORS and (layers != "cyclic" or carry_optimizer):
        raise ValueError(f"{op} grows the width and keeps the depth; --layers and --carry_optimizer do not apply")
    if split is not None and op != "direct-width":
        raise ValueError(f"--split is direct-width's fan-in split; {op} does not take it")
    if split not in (None, "even", "lemon"):
        raise ValueError(f"--split must be even or lemon, got {split!r}")
    if init is not None and op not in RANDOM_INIT_OPERATORS:
        raise ValueError(f"--init sets the init of new random parameters, which only {', '.join(RANDOM_INIT_OPERATORS)}"
                         f" create; {op} creates none, drop --init")
    if init not in (None, "upstream", "official"):
        raise ValueError(f"--init must be upstream or official, got {init!r}")
    if clone_noise is not None and op != "hyperclone":
        raise ValueError(f"--clone_noise is hyperclone's noisy variant; {op} does not take it")
    if clone_noise is not None and not 0.0 <= clone_noise <= 1.0:  # NaN and inf fail this too
        raise ValueError(f"--clone_noise must be from 0 to 1 (a fraction of each weight's std), got {clone_noise}")
    check_noise(noise)


def main(argv=None) -> int:
    from lit_gpt.exits import exit_code

    p = ArgumentParser(prog="python -m growth grow", description=__doc__)
    p.add_argument("--src", type=Path, required=True, help="base checkpoint: a directory with lit_model.pth and "
                   "lit_config.json, such a file, an upstream iter-*-ckpt.pth, or a training checkpoint step-*/")
    p.add_argument("--target", required=True, help="target config: a name (e.g. 24L2048H) or a lit_config.json")
    p.add_argument("--op", required=True, help=f"operator: {', '.join(OPERATORS)}")
    p.add_argument("--layers", default="cyclic", help="layer map for depth growth: cyclic (default), interleave, "
                   "solar:K, top, middle, pro:K (LLaMA-Pro: a copy after every K layers; with --op zero-depth, "
                   "identity blocks), the paper's notation (12-3456*5-56) or ranges ((1-12)*2); see python -m "
                   "growth layers")
    p.add_argument("--split", choices=["even", "lemon"], default=None,
                   help="direct-width: fan-in split of duplicated units: lemon (default; LEMON's uneven split, the "
                   "paper's) or even (1/(c+1) each, the released code; copies then stay equal to their originals "
                   "through training)")
    p.add_argument("--init", choices=["upstream", "official"], default=None,
                   help=f"{', '.join(RANDOM_INIT_OPERATORS)}: init of the new random parameters: upstream (default, "
                   "TinyLlama's: N(0, 2/(5 n_embd)), attn.proj and w3 1/(sqrt(n_embd) n_layer)) or official (the "
                   "paper's released code: N(0, 2/(5 fan_in)), w3 1/(sqrt(fan_in) n_layer), attn.proj not down-scaled)")
    p.add_argument("--clone_noise", type=float, default=None, metavar="STD",
                   help="hyperclone: noisy function-preserving variant: block (i, j) of each Linear is W/k + N_ij "
                   "with sum_j N_ij = 0 and N's std STD x the std of W/k, so copies can diverge (default 0: the "
                   "symmetric variant, whose copies stay equal; at most 1)")
    p.add_argument("--noise", type=float, default=0.0, help="alpha of W <- (1-alpha) W + alpha eps (default 0)")
    p.add_argument("--seed", type=int, default=3407, help="seed of the noise (default 3407)")
    p.add_argument("--out_dir", "--out", type=Path, required=True,
                   help="output directory (refused if not empty, see --force)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out_dir")
    p.add_argument("--src_config", default=None, help="the source's config when no lit_config.json is beside it")
    p.add_argument("--safetensors", action="store_true", help="write lit_model.safetensors instead of .pth")
    p.add_argument("--carry_optimizer", action="store_true", help="also map the source's AdamW moments through the "
                   "layer map into optimizer_moments.pth, for pretrain/tinyllama.py --optimizer_state carry "
                   "(needs a training checkpoint step-*/ as --src)")
    args = p.parse_args(argv)

    def run() -> None:
        record = grow(args.src, args.target, args.op, args.out_dir, args.layers, args.noise, args.seed, args.force,
                      args.src_config, args.safetensors, args.carry_optimizer, args.split, args.init, args.clone_noise)
        rate = record["connection_rate"]
        print(f"grew {record['source']['config']} -> {record['target']} with {record['operator']}"
              + (f": R_c = {rate:.1%}" if rate is not None else "") + f"; wrote {args.out_dir}")

    return exit_code(run)
