"""`--trainable`: which parameters a run trains. LLaMA-Pro's block expansion (Wu et al. 2024, reference
families-and-schedules.md §3) grows by identity blocks (`growth grow --op zero-depth --layers pro:K`) and then
trains only those, every other tensor frozen: frozen parameters get no gradients and no optimizer state."""

import re
from typing import Dict, Iterable, List, Optional, Set

import torch

from pretrain.train_args import UsageError

CHOICES_HELP = "all, new (the layers the growth record says were created) or a regular expression"


def new_layers(growth: Optional[Dict]) -> List[int]:
    """The target layers a depth growth created, from its record's `index_map` (target layer -> source layer, None
    for a freshly initialised one): the None entries (random-depth) and every later occurrence of a source layer
    (the copies `growth.operators.zero_depth` turns into identity blocks; for stack, the copies after the first).

    Raises:
        UsageError: no growth record, or one without new layers (width growth keeps the depth).
    """
    if not growth:
        raise UsageError("--trainable new needs a grown --initial_checkpoint (its growth.json lists the layers growth "
                         "created); give all or a regular expression over parameter names instead")
    index_map = growth.get("index_map")
    seen, new = set(), []
    for j, source in enumerate(index_map or []):
        if source is None or source in seen:
            new.append(j)
        seen.add(source)
    if not new:
        raise UsageError(f"--trainable new: the {growth.get('operator', 'growth')} record of --initial_checkpoint "
                         "created no layers (width growth keeps the depth); give all or a regular expression such "
                         "as 'attn|mlp'")
    return new


def trainable_names(spec: str, names: Iterable[str], growth: Optional[Dict]) -> Set[str]:
    """The parameter names (state-dict keys) `spec` selects: every one for "all"; those of `new_layers` for
    "new"; else those a regular expression finds anywhere in (`re.search`).

    Raises:
        UsageError: a pattern that does not compile or selects nothing, or "new" without new layers.
    """
    names = list(names)
    if spec == "all":
        return set(names)
    if spec == "new":
        prefixes = tuple(f"transformer.h.{j}." for j in new_layers(growth))
        return {n for n in names if n.startswith(prefixes)}
    try:
        pattern = re.compile(spec)
    except re.error as e:
        raise UsageError(f"--trainable {spec!r} is not a regular expression ({e}); give {CHOICES_HELP}") from None
    chosen = {n for n in names if pattern.search(n)}
    if not chosen:
        raise UsageError(f"--trainable {spec!r} matches none of the model's {len(names)} parameter names (such as "
                         f"{names[0]!r}); give {CHOICES_HELP}")
    return chosen


def freeze(model: torch.nn.Module, chosen: Set[str], plain_name) -> int:
    """Turns off requires_grad for every parameter none of whose names is in `chosen` (a tied tensor has two
    names, and trains if either is chosen); `plain_name` strips wrapper prefixes. Returns the number of
    trainable parameter elements. Must run before DDP/FSDP wrap the model (they read requires_grad there)."""
    names: Dict[int, List[str]] = {}
    params = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(plain_name(name))
        params[id(param)] = param
    trained = 0
    for key, param in params.items():
        keep = any(n in chosen for n in names[key])
        param.requires_grad_(keep)
        trained += param.numel() if keep else 0
    return trained
