"""Dataclass-driven command lines: every field is a flag, a YAML recipe (`--config`) sets defaults."""

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, List, Optional, Type, TypeVar

import yaml

T = TypeVar("T")


def _flag_type(annotation: Any):
    """(argparse type, nargs) for a field annotation such as Optional[int] or List[float]."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Union and len(args) == 1:
        return _flag_type(args[0])
    if origin in (list, List):
        return args[0], "+"
    if annotation is bool:
        return _parse_bool, None
    return annotation, None


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse(cls: Type[T], argv: Optional[List[str]] = None, description: str = "") -> T:
    """Parses `argv` into `cls`: field help comes from `field(metadata={"help": ...})`.

    Precedence: command-line flag > `--config` YAML > the dataclass default. Unknown YAML keys are an
    error, so a typo in a recipe cannot silently fall back to a default.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML recipe whose keys are any of the flags below")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag_type, nargs = _flag_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        parser.add_argument(f"--{f.name}", type=flag_type, nargs=nargs, default=default, choices=choices,
                            metavar=None if choices else f.name.upper(),
                            help=f"{f.metadata.get('help', '')} (default: {default})")
    if known.config is not None:
        if not known.config.is_file():
            parser.error(f"--config {known.config}: file not found")
        recipe = yaml.safe_load(known.config.read_text()) or {}
        unknown = sorted(set(recipe) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            parser.error(f"--config {known.config}: unknown keys {', '.join(unknown)}")
        parser.set_defaults(**recipe)
    namespace = vars(parser.parse_args(argv))
    namespace.pop("config")
    return cls(**namespace)
