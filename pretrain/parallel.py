"""How a run's processes get their Fabric, model and optimizer: the strategy, FSDP2 sharding on the meta device,
and weights written by each rank into its own shards (`lit_gpt.materialize`)."""

import json
import logging
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from lit_gpt import GPT, Config
from lit_gpt import checkpoint as ckpt
from lit_gpt.distributed import launch_rank
from lit_gpt.materialize import init_parameters, load_parameters, open_weights
from lit_gpt.model import _plain_name
from lit_gpt.records import check_growth_record
from lit_gpt.utils import return_freed_memory
from pretrain.train_args import DEFAULT_MODEL, TrainArgs, UsageError
from pretrain.trainable import freeze, trainable_names

# fields a --model_name may change against the config beside --initial_checkpoint: labels, the RoPE cache length
# (a longer context) and the RMSNorm kernel; every other field fixes the weights' shapes or the function
_FREE_FIELDS = ("org", "name", "block_size", "_norm_class")


def initial_weights_path(args: TrainArgs) -> Path:
    path = Path(args.initial_checkpoint)
    if path.is_dir():
        for name in ("lit_model.pth", "lit_model.safetensors"):
            if (path / name).is_file():
                return path / name
        raise UsageError(f"--initial_checkpoint {path}: no lit_model.pth or lit_model.safetensors in it")
    return path


def model_config(args: TrainArgs) -> Config:
    """The run's model: --model_name; else the lit_config.json beside --initial_checkpoint; else the config of the
    checkpoint a resume reads (--resume DIR, or the newest step-* in out_dir for auto); else DEFAULT_MODEL.
    Sets args.model_name to the one used, so the checkpoints' hparams say which it was.

    Raises:
        UsageError: --model_name disagrees with the config beside --initial_checkpoint, or --initial_checkpoint
            is missing, or has no config beside it and no --model_name is given.
        ValueError: a faulty config file (`Config.from_json`), or an unknown name.
    """
    beside = _config_beside_initial(args)
    if args.model_name is not None:
        config = Config.load(args.model_name)
        if beside is not None:
            _check_agrees(args.model_name, config, beside)
        return config
    if args.initial_checkpoint:
        if beside is None:
            raise UsageError(f"--initial_checkpoint {args.initial_checkpoint}: no lit_config.json beside its weights; "
                             "pass --model_name NAME_OR_JSON")
        source = beside
    else:
        resumed = resumed_checkpoint(args)
        source = resumed / "lit_config.json" if resumed is not None else None
    if source is None or not source.is_file():  # a resume without a config is reported by its own check
        args.model_name = DEFAULT_MODEL
        return Config.from_name(DEFAULT_MODEL)
    args.model_name = str(source)
    return Config.from_json(source)


def resumed_checkpoint(args: TrainArgs) -> Optional[Path]:
    """The checkpoint a resume reads, as the start-up checks see it: --resume's path, or for `auto` the newest
    undamaged one in out_dir (found quietly: `tinyllama.resume_point` warns once, on rank 0); None without one."""
    if args.resume == "auto":
        return ckpt.find_resumable(Path(args.out_dir), lambda line: None)
    return Path(args.resume) if args.resume else None


def _config_beside_initial(args: TrainArgs) -> Optional[Path]:
    """The lit_config.json beside --initial_checkpoint's weights, or None (no --initial_checkpoint, or no file)."""
    if not args.initial_checkpoint:
        return None
    weights = initial_weights_path(args)
    if not weights.is_file():
        raise UsageError(f"--initial_checkpoint {args.initial_checkpoint}: not found")
    beside = weights.parent / "lit_config.json"
    return beside if beside.is_file() else None


def _check_agrees(model_name: str, config: Config, beside: Path) -> None:
    diff = config.differences(Config.from_json(beside), ignore=_FREE_FIELDS)
    if diff:
        shown = ", ".join(f"{k} {a} vs {b}" for k, a, b in ((k, *v) for k, v in diff.items()))
        raise UsageError(f"--model_name {model_name} disagrees with {beside} beside --initial_checkpoint ({shown}); "
                         "drop --model_name to train the checkpoint's own model")


def growth_record(args: TrainArgs) -> dict:
    """growth.json beside --initial_checkpoint: the base model's tokens and FLOPs (the paper counts
    C = C_base + C_grown, §5.4), or {} when starting from weights that were not grown, or from a grown run's
    export (a training.json beside it that records a growth): there growth.json is the provenance of weights
    trained after growth, whose masks are baked in, so it starts no base FLOPs, stream skip or masks."""
    if not args.initial_checkpoint:
        return {}
    return ckpt.growth_beside(initial_weights_path(args).parent)


def trainable_growth(args: TrainArgs) -> dict:
    """The growth record that names the layers growth created, for --trainable new: the growth.json beside
    --initial_checkpoint (also a grown run's export, whose record still says which layers are new), else that
    of the checkpoint a resume reads; {} when there is none."""
    if args.initial_checkpoint:
        growth = initial_weights_path(args).parent / "growth.json"
        return ckpt.read_record(growth, check_growth_record) if growth.is_file() else {}
    resumed = resumed_checkpoint(args)
    if resumed is None or not (resumed / "meta.json").is_file():
        return {}
    return ckpt.run_growth(json.loads((resumed / "meta.json").read_text()), resumed / "meta.json") or {}


def fsdp2(model: torch.nn.Module, device_mesh, args: TrainArgs):
    """Lightning's parallelize_fn: shards every Block and the rest of the model on the meta device, then
    allocates this rank's shards and fills them (`prepare_weights`), so no rank ever holds the whole model."""
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh["data_parallel"]
    for i, block in enumerate(model.transformer.h):
        model.transformer.h[i] = fully_shard(_wrap_block(block, args.activation_checkpointing, args.compile),
                                             mesh=mesh)
    # the embedding and the LM head (a third of a 271M model at a 32000 vocabulary) get units of their own, so
    # that each is gathered only while it computes, not for the whole step as part of the root
    if model.lm_head.weight is not model.transformer.wte.weight:
        fully_shard(model.transformer.wte, mesh=mesh)
        fully_shard(model.lm_head, mesh=mesh)
    model = fully_shard(model, mesh=mesh)
    cuda = mesh.device_type == "cuda"
    prepare_weights(model, torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu"), args)
    return model


def _wrap_block(block: torch.nn.Module, activation_checkpointing: bool, compile: bool) -> torch.nn.Module:
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        block = checkpoint_wrapper(block)
    return torch.compile(block) if compile else block


def build_model(args: TrainArgs, config: Config) -> torch.nn.Module:
    """The model on the meta device (no memory), with the growth masks of a random-* grown model attached."""
    with torch.device("meta"):
        model = GPT(config)
    growth = growth_record(args)
    if growth.get("masked_layers"):
        model.set_growth_mask(growth["masked_layers"], 0.0)
    if growth.get("width_masks"):
        model.set_width_masks(width_masks(args, growth))
    return model


def width_masks(args: TrainArgs, growth: dict) -> dict:
    return torch.load(initial_weights_path(args).parent / growth["width_masks"], weights_only=True)


def prepare_weights(model: torch.nn.Module, device: torch.device, args: TrainArgs) -> None:
    """Allocates the (possibly sharded) meta model on `device` and fills it: the --initial_checkpoint's weights,
    else upstream's init from --seed, identical for any number of processes (`lit_gpt.materialize`). Buffers
    are recomputed: the RoPE cache, growth masks (0: the training loop ramps them), random-width keep masks."""
    model.to_empty(device=device)
    if args.initial_checkpoint:
        load_parameters(model, open_weights(initial_weights_path(args)))
    else:
        init_parameters(model, args.seed)
    model.reset_rope_cache()
    growth = growth_record(args)
    keep = width_masks(args, growth) if growth.get("width_masks") else {}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("growth_mask"):
                buffer.fill_(0.0)
            elif name.endswith("growth_keep"):
                buffer.copy_(keep[_plain_name(name).removesuffix("growth_keep") + "weight"])
            elif name.endswith("growth_ramp"):
                buffer.fill_(0.0)


def setup_model(fabric, args: TrainArgs, config: Config, strategy_name: str):
    """(model, optimizer, trainable parameter count or None for all) ready to train: sharded or replicated, on the device, with
    fresh AdamW over the parameters --trainable selects (the others frozen before DDP/FSDP see the model)."""
    return_freed_memory()
    model = build_model(args, config)
    trainable = None  # with "all", nothing to freeze and no names to build (100k layers: minutes)
    if args.trainable != "all":
        names = (_plain_name(n) for n, _ in model.named_parameters(remove_duplicate=False))
        trainable = freeze(model, trainable_names(args.trainable, names, trainable_growth(args)), _plain_name)
    if strategy_name != "fsdp":
        model.transformer.h = torch.nn.ModuleList(
            _wrap_block(b, args.activation_checkpointing, args.compile) for b in model.transformer.h)
        prepare_weights(model, fabric.device, args)
    model = fabric.setup(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate,
                                  weight_decay=args.weight_decay, betas=(args.beta1, args.beta2),
                                  fused=fabric.device.type == "cuda")
    return model, fabric.setup_optimizers(optimizer), trainable


def make_fabric(args: TrainArgs):
    import lightning_fabric as L
    from lightning_fabric.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

    if launch_rank() != 0:  # lightning's start-up lines once per job (its import set the level to INFO)
        logging.getLogger("lightning_fabric").setLevel(logging.WARNING)

    cuda = torch.cuda.is_available()
    world = args.devices * args.num_nodes
    name = args.strategy if args.strategy != "auto" else ("fsdp" if world > 1 else "single")
    backend = "nccl" if cuda else "gloo"
    # the process group's own timeout is a backstop a minute behind the Watchdog, which names the phase
    timeout = timedelta(minutes=args.collective_timeout + 1)
    if name == "single":
        if world > 1:
            raise UsageError("--strategy single runs one process; use ddp or fsdp for several")
        strategy = SingleDeviceStrategy(device=torch.device("cuda:0" if cuda else "cpu"))
    elif name == "ddp":
        strategy = DDPStrategy(process_group_backend=backend, timeout=timeout)
    else:
        strategy = ModelParallelStrategy(parallelize_fn=partial(fsdp2, args=args), data_parallel_size=world,
                                         tensor_parallel_size=1, process_group_backend=backend, timeout=timeout)
    args.precision = args.precision or ("bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true")
    fabric = L.Fabric(accelerator="cuda" if cuda else "cpu", devices=args.devices, num_nodes=args.num_nodes,
                      strategy=strategy, precision=args.precision)
    return fabric, name
