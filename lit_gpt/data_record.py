"""Which tokenizer made a packed data directory, and the checks that keep data, tokenizer and model together.

`scripts/prepare_slimpajama.py` writes, beside the `.bin` files of the split it prepares:
  DIR/{prefix}.record.json  {"prefix", "files", "tokens", "max_token_id", "source", "tokenizer": ENTRY}
  DIR/tokenizer/            a copy of the tokenizer files
  ENTRY = {"fingerprint", "vocab_size", "bos_id", "eos_id", "backend", "path", "files": {name: sha256}}
The record covers the files named `{prefix}_*.bin`. The `.bin` files keep upstream's format: upstream's reader
ignores the extra files, and data without a record (upstream's) is still read, its token ids checked file by
file as they are loaded (`PackedDataset(vocab_size=...)`).

Tokenizers are compared by `Tokenizer.fingerprint()` (what the ids mean), not by the bytes of their files,
which `files` records for reference: the same vocabulary can be saved in different bytes.

Training (`check_training_data`) refuses a tokenizer other than the data's, data of several tokenizers
mixed, and token ids or a vocabulary beyond the model's embedding rows, and returns the ENTRY that the run's
`final/training.json` records as "tokenizer"; eval (`check_checkpoint_tokenizer`) compares the tokenizer
beside the weights with it.
"""

import json
import shutil
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from lit_gpt.config import Config
from lit_gpt.files import atomic_dir, sha256_file, write_text
from lit_gpt.tokenizer import TOKENIZER_FILES, Tokenizer, has_tokenizer

RECORD_SUFFIX = ".record.json"
TOKENIZER_COPY = "tokenizer"
_KEYS = ("prefix", "files", "tokens", "max_token_id", "tokenizer")

PathLike = Union[str, Path]
Record = Tuple[Path, Dict]  # (the record file, its content)


class DataTokenizer(NamedTuple):
    """What training found: the tokenizer directory to use and copy into exports (None: none found), the ENTRY
    that final/training.json records (None: nothing known), and a warning to print once (None: all is well)."""
    directory: Optional[Path]
    entry: Optional[Dict]
    warning: Optional[str]


def tokenizer_directory(path: PathLike) -> Path:
    """The folder of a tokenizer given as its folder or as one of its files (upstream pointed at the file)."""
    path = Path(path)
    return path.parent if path.is_file() else path


def tokenizer_entry(path: PathLike) -> Dict:
    """The ENTRY (module docstring) of the tokenizer in `path`.

    Raises:
        FileNotFoundError: no tokenizer.model or tokenizer.json in `path`.
    """
    directory = tokenizer_directory(path)
    tokenizer = Tokenizer(directory)
    return {"fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id, "backend": tokenizer.backend, "path": str(directory.resolve()),
            "files": {name: sha256_file(directory / name) for name in TOKENIZER_FILES
                      if (directory / name).is_file()}}


def describe(entry: Dict) -> str:
    """An ENTRY in a few words, for messages."""
    return f"{entry['vocab_size']} tokens, fingerprint {entry['fingerprint'][:12]}, from {entry['path']}"


def record_path(directory: PathLike, prefix: str) -> Path:
    return Path(directory) / f"{prefix}{RECORD_SUFFIX}"


def read_records(directory: PathLike) -> List[Record]:
    """Every record in a data directory, in name order.

    Raises:
        ValueError: a record that is not valid JSON or lacks a field (names the file).
    """
    records = []
    for path in sorted(Path(directory).glob(f"*{RECORD_SUFFIX}")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e}); prepare the data again or delete the record") from None
        missing = [key for key in _KEYS if not isinstance(record, dict) or key not in record]
        if missing or not isinstance(record["tokenizer"], dict) or "fingerprint" not in record["tokenizer"]:
            raise ValueError(f"{path}: not a packed-data record (missing {', '.join(missing) or 'tokenizer'}); "
                             "prepare the data again or delete the record")
        records.append((path, record))
    return records


def check_destination(destination: PathLike, entry: Dict) -> None:
    """Refuses to add data of tokenizer `entry` to a directory that holds a record or a tokenizer copy of
    another: training reads one directory with one tokenizer.

    Raises:
        ValueError: naming the record or copy, both tokenizers and the fix.
    """
    destination = Path(destination)
    copy = destination / TOKENIZER_COPY
    others = [(path, record["tokenizer"]) for path, record in read_records(destination)]
    if has_tokenizer(copy):
        others.append((copy, tokenizer_entry(copy)))
    for path, other in others:
        if other["fingerprint"] != entry["fingerprint"]:
            raise ValueError(f"{path} is for another tokenizer ({describe(other)}) than --tokenizer_path "
                             f"({describe(entry)}); data in one directory must share one tokenizer: choose another "
                             "--destination_path")


def copy_tokenizer(source: PathLike, destination: PathLike) -> Optional[Path]:
    """Copies the tokenizer files of `source` into DESTINATION/tokenizer unless a copy is there already
    (`check_destination` made sure it is the same tokenizer); returns the new copy, or None.

    Raises:
        OSError: the copy could not be written (nothing is left behind).
    """
    source, copy = tokenizer_directory(source), Path(destination) / TOKENIZER_COPY
    if has_tokenizer(copy):
        return None
    with atomic_dir(copy) as tmp:
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
    return copy


def write_record(destination: PathLike, prefix: str, files: int, tokens: int, max_token_id: int, source: PathLike,
                 entry: Dict) -> Path:
    """Writes DESTINATION/{prefix}.record.json atomically; returns its path."""
    path = record_path(destination, prefix)
    record = {"prefix": prefix, "files": files, "tokens": tokens, "max_token_id": max_token_id,
              "source": str(Path(source).resolve()), "tokenizer": entry}
    write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def covering_records(files: Sequence[PathLike]) -> List[Record]:
    """The records, in their files' directories, of the prefixes that cover any of `files`."""
    covering: Dict[Path, Dict] = {}
    by_directory: Dict[Path, List[str]] = {}
    for f in files:
        by_directory.setdefault(Path(f).parent, []).append(Path(f).name)
    for directory, names in by_directory.items():
        for path, record in read_records(directory):
            if any(name.startswith(f"{record['prefix']}_") for name in names):
                covering[path] = record
    return list(covering.items())


def _candidates(records: List[Record], fallback: Optional[PathLike]) -> List[Tuple[Path, str]]:
    """Where a tokenizer may be when none is given, most trusted first, with how it was found."""
    found: List[Tuple[Path, str]] = []
    for path, record in records:
        found.append((path.parent / TOKENIZER_COPY, f"the copy beside {path.name}"))
        found.append((Path(record["tokenizer"]["path"]), f"the tokenizer path {path.name} records"))
    if fallback is not None:
        found.append((Path(fallback), "the tokenizer beside the data directory"))
    return found


def check_training_data(files: Sequence[PathLike], tokenizer_dir: Optional[PathLike], config: Config,
                        fallback: Optional[PathLike] = None) -> DataTokenizer:
    """Finds and checks the tokenizer of a run's data files.

    The tokenizer used is `tokenizer_dir` (--tokenizer_dir) when given, else the first that exists of: the
    copy in the data directory, the path its record names, `fallback` (upstream's <train_data_dir>/../tokenizer).

    Raises:
        ValueError: the data's records name different tokenizers; a record's largest token id or the
            tokenizer's vocabulary exceeds the model's embedding rows; the tokenizer is not the one the records
            name; `tokenizer_dir` holds no tokenizer.
    """
    records = covering_records(files)
    rows = config.padded_vocab_size
    data_entry = records[0][1]["tokenizer"] if records else None
    for path, record in records:
        if record["tokenizer"]["fingerprint"] != data_entry["fingerprint"]:
            raise ValueError(f"{records[0][0]} and {path} record different tokenizers ({describe(data_entry)}; "
                             f"{describe(record['tokenizer'])}): train on data of one tokenizer")
        if record["max_token_id"] >= rows:
            raise ValueError(f"{path}: the data holds token ids up to {record['max_token_id']} but model "
                             f"{config.name} has only {rows} embedding rows; pick a model whose vocab_size is above "
                             f"{record['max_token_id']}")
    if tokenizer_dir is not None:
        if not has_tokenizer(tokenizer_directory(tokenizer_dir)):
            raise ValueError(f"--tokenizer_dir {tokenizer_dir}: no tokenizer.model or tokenizer.json there")
        directory, how = tokenizer_directory(tokenizer_dir), f"--tokenizer_dir {tokenizer_dir}"
    else:
        candidates = [(d, how) for d, how in _candidates(records, fallback) if has_tokenizer(d)]
        if not candidates:
            return DataTokenizer(None, data_entry, _no_tokenizer(files, records, fallback))
        directory, how = candidates[0]
    entry = tokenizer_entry(directory)
    if data_entry is not None and entry["fingerprint"] != data_entry["fingerprint"]:
        raise ValueError(f"the tokenizer in {directory} ({how}: {describe(entry)}) is not the one {records[0][0]} "
                         f"records for the data ({describe(data_entry)}); pass --tokenizer_dir with the tokenizer "
                         "the data was made with")
    if entry["vocab_size"] > rows:
        raise ValueError(f"the tokenizer in {directory} has {entry['vocab_size']} tokens but model {config.name} has "
                         f"only {rows} embedding rows; pick a model with a larger vocab_size")
    return DataTokenizer(directory, entry, None)


def _no_tokenizer(files: Sequence[PathLike], records: List[Record], fallback: Optional[PathLike]) -> str:
    where = sorted({str(Path(f).parent) for f in files})
    if records:
        missing = f"the tokenizer its records name ({records[0][1]['tokenizer']['path']}) is gone"
    else:
        missing = ("no record says which tokenizer made it (not prepared by scripts/prepare_slimpajama.py)"
                   + (f" and {fallback} holds none" if fallback is not None else ""))
    return (f"no tokenizer for the data in {', '.join(where)}: {missing}; final/ will have no tokenizer, "
            "which eval needs: pass --tokenizer_dir")


def check_checkpoint_tokenizer(directory: PathLike) -> None:
    """Refuses a checkpoint whose tokenizer is not the one its training.json records (a run's final/ records
    its data's tokenizer); checkpoints without that record (converted, grown, older runs) pass.

    Raises:
        ValueError: training.json is not valid JSON, or the tokenizer differs (names both and the fix).
    """
    directory = Path(directory)
    training = directory / "training.json"
    if not training.is_file() or not has_tokenizer(directory):
        return
    try:
        recorded = json.loads(training.read_text(encoding="utf-8")).get("tokenizer")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{training}: not a valid training record ({e})") from None
    if not isinstance(recorded, dict) or "fingerprint" not in recorded:
        return
    entry = tokenizer_entry(directory)
    if entry["fingerprint"] != recorded["fingerprint"]:
        raise ValueError(f"the tokenizer in {directory} ({entry['vocab_size']} tokens, fingerprint "
                         f"{entry['fingerprint'][:12]}) is not the one the model was trained with ({training} "
                         f"records {describe(recorded)}); copy that tokenizer's files beside the weights")
