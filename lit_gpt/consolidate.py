"""A training checkpoint read in one process, whatever the number of ranks that saved it: its model weights as
a plain state dict (export, growth, eval), its AdamW moments keyed by parameter name, and those moments put into
a fresh optimizer of a grown model (--optimizer_state carry). The checkpoint layout is lit_gpt/checkpoint.py's.
"""

from pathlib import Path
from typing import Any, Dict

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict import StateDictOptions

from lit_gpt.checkpoint import check_intact, dcp_load, run_hparams
from lit_gpt.config import Config
from lit_gpt.utils import CheckpointError


def consolidate(path: Path) -> Dict[str, torch.Tensor]:
    """A training checkpoint's model weights as one plain state dict, read in this process (no ranks).

    Raises:
        CheckpointError: `path` is incomplete, damaged or unreadable (one line naming it).
    """
    check_intact(path)
    from lit_gpt.model import GPT

    config = Config.from_json(path / "lit_config.json")
    with torch.device("meta"):
        template = GPT(config).state_dict()
    state = {"model": {k: torch.empty(v.shape, dtype=v.dtype) for k, v in template.items()}}
    dcp_load(state, path, True, "as the model of its lit_config.json")
    return state["model"]


def consolidate_optimizer(path: Path) -> Dict[str, Any]:
    """A training checkpoint's AdamW moments as plain tensors keyed by parameter name, read in one process:
    {"step": float, "exp_avg": {name: tensor}, "exp_avg_sq": {name: tensor}}.

    A run that froze parameters (--trainable) saved no state for them: their moments are zeros, as a parameter
    that has not moved yet.

    Raises:
        CheckpointError: `path` is damaged, or holds no AdamW state for some parameter its run trained (e.g.
            saved before the first optimizer step).
    """
    weights = consolidate(path)
    # a tied embedding is one parameter: the optimizer state is saved once, under its first name, the LM head's
    tied = Config.from_json(path / "lit_config.json").tie_embeddings
    template = {name: {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(t, dtype=torch.float32),
                       "exp_avg_sq": torch.zeros_like(t, dtype=torch.float32)} for name, t in weights.items()
                if not (tied and name == "transformer.wte.weight")}
    saved = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    absent = [f"optimizer.state.{name}.{key}" for name, moments in template.items() for key in moments
              if f"optimizer.state.{name}.{key}" not in saved]
    froze = run_hparams(path).get("trainable", "all") != "all"
    if absent and not froze or len(absent) == 3 * len(template):
        raise CheckpointError(f"{path} holds no AdamW state for some parameter its run trained (no {absent[0]}); "
                              "a checkpoint saved before the first optimizer step has none")
    loaded = {name: moments for name, moments in template.items() if f"optimizer.state.{name}.step" in saved}
    dcp_load({"optimizer": {"state": loaded}}, path, True, "as AdamW moments")
    steps = {float(v["step"]) for v in loaded.values()}
    if tied:
        template["transformer.wte.weight"] = template["lm_head.weight"]
    return {"step": max(steps), "exp_avg": {k: v["exp_avg"] for k, v in template.items()},
            "exp_avg_sq": {k: v["exp_avg_sq"] for k, v in template.items()}}


def carry_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, moments: Dict[str, Any]) -> None:
    """Collective: installs full (unsharded) AdamW moments into a fresh optimizer, sharding them as the model.
    Only the optimizer's own parameters take them: frozen ones (--trainable) have no state to carry into."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    current = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    trained = {name for group in current["param_groups"] for name in group["params"]}
    state = {name: {"step": torch.tensor(float(moments["step"])), "exp_avg": moments["exp_avg"][name],
                    "exp_avg_sq": moments["exp_avg_sq"][name]} for name in moments["exp_avg"] if name in trained}
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": current["param_groups"]},
                             options=StateDictOptions(full_state_dict=True))
