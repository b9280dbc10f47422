"""The accounting records a checkpoint carries, checked: growth.json, training.json, meta.json (training.json's
fields and more) and their copies in eval/run.py's result files (reference stacking-paper.md §5.4 for what the
counts mean, lit_gpt/flops.py for how they are computed).

Imports only the standard library: eval/table.py checks result files with these and must not load torch.
"""

import math
from typing import Any, Dict

CONVENTIONS = ("exact", "paper")  # lit_gpt/flops.py's compute conventions; training.json's scratch_tokens has both
# the numbers growth.json, training.json and meta.json carry: absent or null (unknown), else finite and >= 0
RECORD_NUMBERS = ("base_step", "base_tokens", "base_flops", "base_stream_tokens", "base_total_tokens",
                  "base_scratch_tokens_paper", "growth_factor", "fit_tokens", "fit_flops")
TRAINING_NUMBERS = ("step", "tokens", "flops", "stream_tokens", "skipped_tokens", "total_tokens", "paper_flops")


def _check_number(value: Any, where: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} is {value!r}; it must be a finite number >= 0 (or null when unknown)")


def _named(where: str, field: str) -> str:
    return f"{where}: {field}" if field else where


def _key(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def check_growth_record(record: Any, where: str, field: str = "") -> Dict[str, Any]:
    """`record` (a growth.json, or the `growth` of a training.json/meta.json/result file) if its accounting fields
    are numbers >= 0 or null; {} for null. Messages name a field "WHERE: KEY", or "WHERE: FIELD.KEY" with
    `field`, the record's key in a file that holds more than records (eval/run.py's result file).

    Raises:
        ValueError: one line naming `where` (a file, or a file and key) and the bad field."""
    if record is None:
        return {}
    if not isinstance(record, dict):
        raise ValueError(f"{_named(where, field)} is {type(record).__name__} {record!r:.60}, not a growth record "
                         "(a JSON object)")
    for key in RECORD_NUMBERS:
        _check_number(record.get(key), _named(where, _key(field, key)))
    return record


def check_training_record(training: Any, where: str, field: str = "") -> Dict[str, Any]:
    """`training` (a training.json or meta.json, or the `training` of a result file) if its step/tokens/FLOPs
    fields are numbers >= 0 or null, its `scratch_tokens` an object of such numbers and its `growth` a valid
    growth record or null. `where` and `field` as in `check_growth_record`.

    Raises:
        ValueError: one line naming `where` and the bad field."""
    if not isinstance(training, dict):
        raise ValueError(f"{_named(where, field)} holds {type(training).__name__} {training!r:.60}, not a JSON "
                         "object")
    for key in TRAINING_NUMBERS:
        _check_number(training.get(key), _named(where, _key(field, key)))
    scratch, scratch_field = training.get("scratch_tokens"), _key(field, "scratch_tokens")
    if scratch is not None:
        if not isinstance(scratch, dict):
            raise ValueError(f"{_named(where, scratch_field)} is {scratch!r:.60}; it must be an object "
                             "{exact, paper}")
        for key in CONVENTIONS:
            _check_number(scratch.get(key), _named(where, _key(scratch_field, key)))
    check_growth_record(training.get("growth"), _named(where, _key(field, "growth")))
    return training
