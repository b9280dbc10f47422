"""An exported checkpoint directory, read for evaluation: the weights file, the config, a tokenizer that fits
(or how to give it one) and the growth and training records, checked before any model is built.

The directory holds `lit_model.safetensors` (or `lit_model.pth`), `lit_config.json` and the tokenizer files
(`tokenizer.model` or `tokenizer.json`, optionally `tokenizer_config.json`); `growth.json` and `training.json`
are read by `checkpoint_info` for eval/run.py's report. eval/lm.py's adapter loads what `check_checkpoint` and
`find_weights` accept.
"""

import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lit_gpt.checkpoint import check_masks_baked  # noqa: E402
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import check_tokenizer_vocab  # noqa: E402
from lit_gpt.records import check_growth_record, check_training_record  # noqa: E402
from lit_gpt.tokenizer import has_tokenizer  # noqa: E402
from lit_gpt.utils import CheckpointError  # noqa: E402

WEIGHT_FILES = ("lit_model.safetensors", "lit_model.pth")


def find_weights(directory: Union[str, Path]) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    hint = ""
    if (directory / "meta.json").is_file():
        hint = " (a training checkpoint: write its weights with scripts/export_checkpoint.py first)"
    raise CheckpointError(f"no {' or '.join(WEIGHT_FILES)} in {directory}{hint}")


def check_checkpoint(directory: Union[str, Path]) -> Config:
    """Everything a run needs is there (weights, config, a tokenizer that fits); returns the config."""
    directory = Path(directory)
    find_weights(directory)
    if not (directory / "lit_config.json").is_file():
        raise CheckpointError(f"no lit_config.json in {directory}")
    if not has_tokenizer(directory):
        raise CheckpointError(f"no tokenizer in {directory}: {_tokenizer_fix(directory)}")
    try:
        config = Config.from_json(directory / "lit_config.json")
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{directory / 'lit_config.json'} is not a valid config: {e}") from None
    check_tokenizer_vocab(directory, config)
    return config


def _tokenizer_fix(directory: Path) -> str:
    """How to give the weights in `directory` their tokenizer: for an export of a training checkpoint (the
    step-* directory above it holds meta.json) the export command again with --tokenizer_dir, naming the
    tokenizer the run used when it can be found; else a copy of the files, or an export with --tokenizer_dir."""
    copy = "copy tokenizer.model or tokenizer.json (and tokenizer_config.json if there is one) beside the weights"
    step = directory.parent
    if not (step / "meta.json").is_file():
        return (f"{copy}, or, for an export of a training checkpoint, export it again with "
                "`python scripts/export_checkpoint.py --checkpoint_dir STEP --tokenizer_dir DIR --force` "
                "(DIR: the tokenizer the run trained with)")
    found = None
    try:  # where the run found its tokenizer (growth reads a step's the same way); a damaged meta.json: no guess
        from growth.io import run_tokenizer

        hparams = json.loads((step / "meta.json").read_text()).get("hparams")
        found = run_tokenizer(step, hparams) if isinstance(hparams, dict) else None
    except (ImportError, OSError, ValueError, TypeError, AttributeError):
        pass
    where = "" if found else " (DIR: the tokenizer the run trained with)"
    return (f"export it again with its tokenizer, `python scripts/export_checkpoint.py --checkpoint_dir {step} "
            f"--out_dir {directory} --tokenizer_dir {found or 'DIR'} --force`{where}, or {copy}")


def checkpoint_info(directory: Union[str, Path]) -> Dict[str, Any]:
    """The config name, the growth record and the training of a checkpoint directory, for eval/run.py's JSON:
    {"config", "growth": growth.json (else training.json's `growth`; None for a model trained from scratch),
    "training": {tokens, flops, paper_flops, step, total_tokens, scratch_tokens: {exact, paper}} from
    training.json}, with
    None for what it does not record (tokens: this model's own; total_tokens: its base's and ancestors' too;
    scratch_tokens: the target-model tokens of equal compute, lit_gpt/flops.py).

    Raises:
        CheckpointError: the checkpoint is incomplete (`check_checkpoint`), or a JSON file is not valid JSON or
            holds a field of the wrong type or a count that is not a finite number >= 0
            (`lit_gpt.records.check_training_record`, `check_growth_record`): one line naming the file and field."""
    directory = Path(directory)
    config = check_checkpoint(directory)

    def read(name: str, check) -> Optional[dict]:
        path = directory / name
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not valid JSON: {e}") from None
        try:
            return check(data, str(path))
        except ValueError as e:
            raise CheckpointError(f"{e}; correct the file, or write the checkpoint again (scripts/export_checkpoint.py, "
                                  "python -m growth grow)") from None

    training = read("training.json", check_training_record) or {}
    growth = read("growth.json", check_growth_record)
    check_masks_baked(directory)  # the records are sound now: what remains is whether the weights are the model
    scratch = training.get("scratch_tokens") or {}
    return {"config": config.name, "growth": growth or training.get("growth"),
            "training": {"tokens": training.get("tokens"), "flops": training.get("flops"),
                         "paper_flops": training.get("paper_flops"), "step": training.get("step"),
                         "total_tokens": training.get("total_tokens"),
                         "scratch_tokens": {"exact": scratch.get("exact"), "paper": scratch.get("paper")}}}
