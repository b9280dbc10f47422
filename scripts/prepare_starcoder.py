"""Tokenise StarCoderData into upstream TinyLlama's packed binary files: the code part of upstream's mixture.

Reads SRC/*/*.parquet (StarCoderData's layout: one folder per language), the `content` column, with pyarrow,
a batch of rows at a time. Writes DST/train_starcoder_{proc}_{counter:010d}.bin (StarCoderData has only a
train split), one stream per process, each document its tokens and EOS; beside them
DST/train_starcoder.record.json and a copy of the tokenizer in DST/tokenizer/, so that the SlimPajama splits
made with the same tokenizer can share DST (upstream's data/slim_star_combined) and training checks all of
them. Rows whose content is null are counted and skipped; a file that is not readable parquet, or has no
`content` column, stops the run naming it (upstream skipped such files silently). A truncated or unreadable
input, a full disk or Ctrl-C leaves nothing of the run behind (lit_gpt/packing.py).

    python scripts/prepare_starcoder.py --source_path data/starcoderdata --tokenizer_path data/llama \\
        --destination_path data/slim_star_combined --split train --percentage 1.0

Train on the mixture with `--config pretrain/configs/tinyllama_1b.yaml` (upstream's weights).
"""

import sys
from collections import Counter
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from lit_gpt import packing  # noqa: E402
from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.packing import MALFORMED_IN, Corpus, PrepareError, summary  # noqa: E402

COLUMN = "content"
BATCH_ROWS = 1024  # rows decoded at a time: a StarCoderData file is ~0.2-1 GB, not read whole


def find_files(source_path: Path, split: str) -> List[Path]:
    return sorted(Path(source_path).glob("*/*.parquet"))


def read_texts(path: Path, stats: Counter) -> Iterator[str]:
    """The `content` of each row; null rows are counted as malformed in `stats` and skipped.

    Raises:
        PrepareError: the file is not readable parquet (truncated, another format) or has no `content` column
            (names the file).
    """
    import pyarrow
    import pyarrow.parquet

    def damaged(e: Exception) -> PrepareError:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        return PrepareError(f"{path}: not readable parquet ({reason}; an interrupted download or copy?); get a "
                            "complete copy")

    try:
        table = pyarrow.parquet.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise damaged(e) from None
    schema = table.schema_arrow
    if COLUMN not in schema.names:
        raise PrepareError(f"{path}: no {COLUMN!r} column (it has {', '.join(schema.names) or 'none'}); "
                           "StarCoderData's files keep the code there")
    kind = schema.field(COLUMN).type
    value_kind = kind.value_type if pyarrow.types.is_dictionary(kind) else kind
    if not (pyarrow.types.is_string(value_kind) or pyarrow.types.is_large_string(value_kind)):
        raise PrepareError(f"{path}: its {COLUMN!r} column holds {kind}, not text (string); StarCoderData's holds "
                           "the code as strings: convert the file, or leave it out with --filenames_subset")
    batches = table.iter_batches(batch_size=BATCH_ROWS, columns=[COLUMN])
    while True:
        try:
            batch = next(batches, None)
            texts = batch.column(0).to_pylist() if batch is not None else None
        except (pyarrow.ArrowException, OSError, UnicodeDecodeError) as e:
            raise damaged(e) from None
        if texts is None:
            return
        for text in texts:
            if isinstance(text, str):
                yield text
            else:
                stats["malformed"] += 1
                stats[MALFORMED_IN + str(path)] += 1


STARCODER = Corpus(name="starcoder", splits=("train",), find_files=find_files,
                   layout="*/*.parquet files under {root} (StarCoderData's layout: one folder per language)",
                   read_texts=read_texts, malformed="rows without content", split_folders=False)


def prepare(source_path: Path, tokenizer_path: Path, destination_path: Path, split: str = "train",
            chunk_size: int = 2049 * 1024, num_processes: Optional[int] = None, block_size: int = 2049,
            percentage: float = 1.0, filenames_subset: Optional[Sequence[str]] = None, progress: bool = True):
    """Tokenise StarCoderData (`lit_gpt.packing.prepare`); returns counts.

    Raises:
        PrepareError: bad input (before anything is written), an unreadable input file, no complete block.
        OSError: a file could not be written (a full disk): nothing of the run is left behind.
    """
    return packing.prepare(STARCODER, source_path, tokenizer_path, destination_path, split, chunk_size,
                           num_processes, block_size, percentage, filenames_subset, progress)


def subset_list(values: Optional[List[str]]) -> Optional[List[str]]:
    """Upstream's list forms (`[python,cpp]`, `["python", "cpp"]`, `python,cpp`, or several words) as names."""
    if not values:
        return None
    parts = [part.strip().strip("'\"") for value in values for part in value.strip().strip("[]").split(",")]
    names = [part for part in parts if part]
    if not names:
        raise PrepareError("--filenames_subset names nothing; give e.g. --filenames_subset python,cpp")
    return names


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    packing.add_arguments(parser, STARCODER, "StarCoderData root: the directory that holds one folder of "
                                             "*.parquet files per language")
    parser.add_argument("--filenames_subset", nargs="+", default=None,
                        help="read only files whose path below --source_path contains one of these (e.g. "
                             "python,cpp,go,java,javascript for upstream's code model); upstream's list form "
                             "[python,cpp] works too (default: every file)")
    args = parser.parse_args(argv)
    return exit_code(lambda: print(summary(prepare(
        args.source_path, args.tokenizer_path, args.destination_path, args.split, args.chunk_size,
        args.num_processes, args.block_size, args.percentage, subset_list(args.filenames_subset)))))


if __name__ == "__main__":
    sys.exit(main())
