"""Dataclass-driven command lines: every field is a flag, a YAML recipe (`--config`) sets defaults.

A recipe's values go through the same conversion and checks as the flags (type, choices, number of values), so
`strategy: fdsp` in a recipe is refused as `--strategy fdsp` is; every fault is one `error:` line.
"""

import argparse
import dataclasses
import difflib
import math
import re
import sys
import typing
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Type, TypeVar

import yaml

from lit_gpt.exits import imports_done
from lit_gpt.files import missing

T = TypeVar("T")

_SUFFIXES = {"": 0, "K": 3, "M": 6, "B": 9, "T": 12}
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([kKmMbBtT]?)$")
_COUNT_EXAMPLES = "write e.g. 400000, 2e4, 1.5M, 5B or 2T"


def _decimal_count(text: str) -> Decimal:
    match = _NUMBER.match(str(text).strip())
    if not match:
        raise ValueError(f"cannot read {text!r} as a number; {_COUNT_EXAMPLES}")
    mantissa, suffix = match.groups()
    try:  # Decimal keeps '1.1B' at exactly 1100000000 (1.1 * 1e9 would not be)
        value = Decimal(mantissa).scaleb(_SUFFIXES[suffix.upper()])
    except (ArithmeticError, ValueError):  # decimal's Overflow/InvalidOperation on absurd exponents
        raise ValueError(f"{text!r} is out of range") from None
    if not value.is_finite() or not math.isfinite(float(value)):
        raise ValueError(f"{text!r} is too large")
    return value


def parse_count(text: str) -> float:
    """'7e9', '7B', '1.1B', '300B', '2T', '410M', '8e20', '1.5k' -> float. Suffixes (any case) are K = 1e3,
    M = 1e6, B = 1e9 (billion, not bytes), T = 1e12. The sign is kept (callers check it).

    Raises:
        ValueError: not such a number, or not finite.
    """
    return float(_decimal_count(text))


def whole_count(text: str) -> int:
    """A flag's whole count in `parse_count`'s notation: '5B', '2e4', '1.5M', '400000' -> int, exactly.

    Raises:
        argparse.ArgumentTypeError: not a number, or not a whole one (argparse prints its message).
    """
    try:
        value = _decimal_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; {_COUNT_EXAMPLES}")
    return int(value)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


@dataclasses.dataclass(frozen=True)
class _Flag:
    """How one dataclass field is read, from the command line or from a recipe."""

    name: str
    convert: Callable[[str], Any]
    nargs: Optional[str]  # "+" for lists, "?" for bools (a bare --compile is true), None for one value
    choices: Optional[Sequence[Any]]
    optional: bool  # null (YAML) is allowed: the field is Optional[...]
    default: Any
    help: str


def _flags(cls: type) -> List[_Flag]:
    """One `_Flag` per field of `cls`: the type from its annotation (or `metadata["parse"]`), choices from
    `metadata["choices"]`."""
    hints = typing.get_type_hints(cls)
    flags = []
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = typing.get_origin(annotation) is typing.Union and len(args) == 1
        if optional:
            annotation = args[0]
        nargs = None
        if typing.get_origin(annotation) in (list, List):
            annotation, nargs = typing.get_args(annotation)[0], "+"
        elif annotation is bool:
            annotation, nargs = parse_bool, "?"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flags.append(_Flag(f.name, f.metadata.get("parse", annotation), nargs, f.metadata.get("choices"), optional,
                           default, f.metadata.get("help", "")))
    return flags


# flags and values of upstream TinyLlama's commands that no command here takes; UPSTREAM.md says why and what to use
UPSTREAM_ONLY = ("--tpu", "16-mixed")


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every command, for one convention across all of them (README "Command lines").

    Flags are spelled with underscores; the dashed spelling of any flag (`--at-loss` for `--at_loss`) is accepted
    too, so scripts written against older spellings keep working. A usage error is one line,
    `error: MESSAGE (see PROG --help)`, with argparse's exit code 2.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        imports_done()  # from here on Ctrl-C lets the command clean up (lit_gpt.exits)
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._underscored(str(a)) for a in args], namespace)

    def _underscored(self, arg: str) -> str:
        if not arg.startswith("--") or "-" not in arg[2:] or arg in self._option_string_actions:
            return arg
        name, eq, value = arg.partition("=")
        spelled = "--" + name[2:].replace("-", "_")
        return spelled + eq + value if spelled in self._option_string_actions else arg

    def error(self, message: str) -> typing.NoReturn:
        upstream = [word for word in UPSTREAM_ONLY if re.search(rf"(^|[\s'=]){re.escape(word)}($|[\s'=])", message)]
        hint = f"; {', '.join(upstream)}: upstream TinyLlama's, not taken here (see UPSTREAM.md)" if upstream else ""
        self.exit(2, f"error: {message}{hint} (see {self.prog} --help)\n")


def parse(cls: Type[T], argv: Optional[List[str]] = None, description: str = "") -> T:
    """Parses `argv` into `cls`: field help comes from `field(metadata={"help": ...})`.

    Precedence: command-line flag > `--config` YAML > the dataclass default. A flag also replaces the recipe's
    value of its alternatives (`cls.ALTERNATIVES`, e.g. `--max_tokens` a recipe's `max_steps`). A bool flag alone means true
    (`--compile`); `--compile false` still works. Bad flags and recipe faults (unknown keys, wrong types, values
    outside the choices) print one `error:` line and exit with status 2, as argparse does.
    """
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    parser = ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, help="YAML recipe whose keys are any of the flags below")
    for flag in _flags(cls):
        metavar = None if flag.choices else ("BOOL" if flag.nargs == "?" else flag.name.upper())
        parser.add_argument(f"--{flag.name}", type=flag.convert, nargs=flag.nargs, default=flag.default,
                            const=True if flag.nargs == "?" else None, choices=flag.choices, metavar=metavar,
                            help=f"{flag.help} (default: {flag.default})")
    if known.config is not None:
        try:
            recipe = convert_values(cls, read_recipe(known.config), f"--config {known.config}")
        except ValueError as e:
            parser.exit(2, f"error: {e}\n")
        given = {parser._underscored(str(a)).partition("=")[0] for a in (sys.argv[1:] if argv is None else argv)}
        for group in getattr(cls, "ALTERNATIVES", ()):
            if any(f"--{name}" in given for name in group):
                for name in group:
                    if f"--{name}" not in given:
                        recipe.pop(name, None)
        parser.set_defaults(**recipe)
    namespace = vars(parser.parse_args(argv))
    namespace.pop("config")
    return cls(**namespace)


class _UniqueKeys(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: explicit keys override merged ones
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_recipe(path: Path, label: Optional[str] = None,
                expected: str = "a mapping of flag names to values") -> Dict[str, Any]:
    """A YAML recipe's mapping (empty file: {}); `label` (default "--config PATH") starts every error line.

    Raises:
        ValueError: one line naming `path`: missing, unreadable, not YAML (with the line), a key given twice in
            one mapping, or not a mapping.
    """
    label = label or f"--config {path}"
    if why := missing(path):
        raise ValueError(f"{label}: {why}; expected a YAML recipe")
    try:
        recipe = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeys)
    except UnicodeDecodeError:
        raise ValueError(f"{label}: not a text file; expected a YAML recipe") from None
    except OSError as e:
        raise ValueError(f"{label}: cannot be read: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{label}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{label}: expected {expected}, found {type(recipe).__name__}")
    return recipe


def convert_values(cls: type, values: Mapping[Any, Any], where: str) -> Dict[str, Any]:
    """`values` (from a recipe) converted and checked exactly as the same flags on the command line would be.

    Raises:
        ValueError: one line naming `where` and the key: unknown (with the closest flag), null for a field that
            needs a value, the wrong number of values, a value the flag's type refuses, or one outside its choices.
    """
    flags = {flag.name: flag for flag in _flags(cls)}
    out = {}
    for key, value in values.items():
        if key not in flags:
            close = difflib.get_close_matches(str(key), flags, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}{hint}; the keys are the flags of --help")
        out[key] = _convert(flags[key], value, f"{where}: {key}")
    return out


def from_values(cls: Type[T], values: Mapping[Any, Any], where: str) -> T:
    """`cls` built from recipe-style `values` (`convert_values`), the dataclass defaults for the rest."""
    return cls(**convert_values(cls, values, where))


def _convert(flag: _Flag, value: Any, where: str) -> Any:
    if value is None:
        if flag.optional:
            return None
        raise ValueError(f"{where}: needs a value (null is not one); remove the key to use the default "
                         f"{flag.default}")
    if flag.nargs == "+":
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not items:
            raise ValueError(f"{where}: needs at least one value")
        return [_convert_one(flag, item, where) for item in items]
    if isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: takes one value, got a list of {len(value)}")
    return _convert_one(flag, value, where)


def _convert_one(flag: _Flag, value: Any, where: str) -> Any:
    if isinstance(value, (dict, list, tuple)):
        raise ValueError(f"{where}: expected a single value, got {type(value).__name__} {value!r}")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        result = flag.convert(text)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"{where}: {e}") from None
    except (TypeError, ValueError, InvalidOperation):
        expected = {int: "a whole number", float: "a number"}.get(flag.convert, "a valid value")
        raise ValueError(f"{where}: expected {expected}, got {value!r}") from None
    if flag.choices is not None and result not in flag.choices:
        close = difflib.get_close_matches(str(result), [str(c) for c in flag.choices], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{where}: invalid choice {value!r} ({hint}choose from "
                         f"{', '.join(map(str, flag.choices))})")
    return result

