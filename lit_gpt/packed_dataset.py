"""Packed token files in upstream TinyLlama's binary format, and resumable readers over them.

A file is a 24-byte little-endian header (magic ``LITPKDS``, uint64 version 1, uint8 dtype code, uint64
chunk_size in tokens) followed by ``chunk_size`` tokens as raw C-order bytes.
"""

import hashlib
import os
import random
import struct
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

HDR_MAGIC = b"LITPKDS"
HDR_SIZE = 24  # bytes
VERSION = 1
_HEADER = struct.Struct("<7sQBQ")
dtypes = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64, 8: np.uint16}


def code(dtype) -> int:
    """The header's code for a numpy dtype."""
    for key, value in dtypes.items():
        if np.dtype(value) == np.dtype(dtype):
            return key
    raise ValueError(f"dtype {np.dtype(dtype)} has no packed-dataset code; use one of "
                     f"{[np.dtype(d).name for d in dtypes.values()]}")


def read_header(path: Union[str, Path]) -> Tuple[np.dtype, int]:
    """(dtype, chunk_size) from a packed file's header; ValueError if it is not one."""
    with open(path, "rb") as f:
        raw = f.read(HDR_SIZE)
    if len(raw) < HDR_SIZE:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for a {HDR_SIZE}-byte packed-dataset header")
    magic, version, dtype_code, chunk_size = _HEADER.unpack(raw)
    if magic != HDR_MAGIC:
        raise ValueError(f"{path}: not a packed dataset file (magic {magic!r}, expected {HDR_MAGIC!r})")
    if version != VERSION:
        raise ValueError(f"{path}: packed dataset version {version}, only {VERSION} is supported")
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown dtype code {dtype_code}")
    return np.dtype(dtypes[dtype_code]), chunk_size


class PackedDatasetBuilder:
    """Streams token arrays across chunk files ``{outdir}/{prefix}_{counter:010d}.bin`` of ``chunk_size`` tokens.

    Nothing is ever padded: upstream filled the last chunk with ``sep_token`` (BOS), which taught its models to
    emit BOS (upstream #83), so here ``sep_token`` is kept only for upstream's signature and ``write_reminder``
    writes the real tokens alone. Each file appears atomically under its final name. ``max_token_id`` is the
    largest token id written so far (-1 before any).
    """

    def __init__(self, outdir: Union[str, Path], prefix: str, chunk_size: int, sep_token: int,
                 dtype: Any = "auto", vocab_size: Optional[int] = None) -> None:
        if isinstance(dtype, str) and dtype == "auto":
            if vocab_size is None:
                raise ValueError("dtype='auto' needs vocab_size")
            dtype = np.uint16 if vocab_size < 65500 else np.int32
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.dtype = np.dtype(dtype)
        self._code = code(self.dtype)
        self.sep_token = sep_token
        self.tokens_written = 0
        self.max_token_id = -1
        self._outdir = Path(outdir)
        self._prefix = prefix
        self._chunk_size = chunk_size
        self._arr = np.empty(chunk_size, dtype=self.dtype)
        self._idx = 0
        self._counter = 0
        self._filenames: List[str] = []
        # token ids that do not fit the dtype would wrap around silently (e.g. a 100k vocabulary in uint16)
        self._limits = (np.iinfo(self.dtype).min, np.iinfo(self.dtype).max) if self.dtype.kind in "iu" else None

    @property
    def filenames(self) -> List[str]:
        return list(self._filenames)

    def add_array(self, arr: np.ndarray) -> None:
        arr = np.asarray(arr).reshape(-1)
        if self._limits is not None and arr.size and (arr.min() < self._limits[0] or arr.max() > self._limits[1]):
            raise ValueError(f"token ids in [{arr.min()}, {arr.max()}] do not fit {self.dtype.name}")
        while arr.size:
            n = min(arr.size, self._chunk_size - self._idx)
            self._arr[self._idx:self._idx + n] = arr[:n]
            self._idx += n
            arr = arr[n:]
            if self._idx == self._chunk_size:
                self._write_chunk(self._chunk_size)

    def write_reminder(self, block_size: Optional[int] = None) -> None:
        """Write the partial last chunk unpadded; with ``block_size``, only its whole blocks (the rest is lost)."""
        n = self._idx if block_size is None else self._idx // block_size * block_size
        if n:
            self._write_chunk(n)
        self._idx = 0

    def _write_chunk(self, n_tokens: int) -> None:
        path = self._outdir / f"{self._prefix}_{self._counter:010d}.bin"
        # a dot name: an interrupted write must not match the `{prefix}*` globs that training uses
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(_HEADER.pack(HDR_MAGIC, VERSION, self._code, n_tokens))
                f.write(self._arr[:n_tokens].tobytes(order="C"))
            os.replace(tmp, path)
        except OSError as e:  # a write error names no file: name it, and leave no partial file
            tmp.unlink(missing_ok=True)
            raise OSError(e.errno, f"writing failed: {e.strerror or e}", str(path)) from None
        self._filenames.append(str(path))
        self._counter += 1
        self._idx = 0
        self.tokens_written += n_tokens
        self.max_token_id = max(self.max_token_id, int(self._arr[:n_tokens].max()))


class PackedDataset(IterableDataset):
    """Infinite stream of ``block_size``-token int64 tensors from this rank's share of ``filenames``.

    Rank r reads ``filenames[r::num_processes]`` (every file goes to exactly one rank) in buffers of up to
    ``n_chunks`` files. With ``shuffle`` the blocks of a buffer come in a permutation seeded by (seed, epoch,
    buffer start); after the last buffer the stream wraps to the first with new permutations. Blocks never
    cross files; a file's trailing tokens that do not fill a block are not read.

    The position lives in this object and advances as blocks are yielded: ``state_dict()`` after k blocks
    describes exactly k consumed blocks, and every ``iter()`` continues from the current position (to read
    the same prefix again, e.g. for validation, ``load_state_dict`` a state saved before). Iterate it in the
    main process (``DataLoader(num_workers=0)``, as upstream does), one iterator at a time. ``wrap`` is
    accepted for upstream's signature; the stream always wraps, as upstream's does.

    With ``vocab_size`` (the model's embedding rows) each file's token ids are checked the first time it is
    loaded: one pass over data that is read anyway, where an id out of range would otherwise fail mid-training
    with an IndexError (a device-side assert on a GPU). Raises ValueError naming the file.
    """

    def __init__(self, filenames: Sequence[Union[str, Path]], n_chunks: int, block_size: int, seed: int = 12345,
                 shuffle: bool = True, wrap: bool = False, num_processes: int = 1, process_rank: int = 0,
                 vocab_size: Optional[int] = None) -> None:
        if not 0 <= process_rank < num_processes:
            raise ValueError(f"process_rank {process_rank} is outside 0..{num_processes - 1}")
        if len(filenames) < num_processes:
            raise ValueError(f"{len(filenames)} files for {num_processes} ranks: every rank needs at least one file")
        if n_chunks < 1 or block_size < 1:
            raise ValueError(f"n_chunks ({n_chunks}) and block_size ({block_size}) must be positive")
        if shuffle and seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self._all_names = [Path(f).name for f in filenames]
        self._files = [str(f) for f in filenames][process_rank::num_processes]
        self._n_chunks, self._block_size, self._seed, self._shuffle = n_chunks, block_size, seed, shuffle
        self._num_processes, self._process_rank = num_processes, process_rank
        self._epoch = self._start = self._pos = self._blocks = 0
        self._vocab_size = vocab_size
        self._checked: set = set()  # files whose token ids are known to fit the vocabulary

    def state_dict(self) -> Dict[str, Any]:
        """JSON-safe position: epoch, first file of the buffer, index into its permutation, blocks yielded."""
        return {"epoch": self._epoch, "buffer_start": self._start, "position": self._pos, "blocks": self._blocks,
                **self._identity()}

    @property
    def blocks(self) -> int:
        """Blocks yielded or skipped so far, over every epoch."""
        return self._blocks

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        mismatched = [f"{key}: saved {state.get(key)!r}, here {value!r}" for key, value in self._identity().items()
                      if state.get(key) != value]
        if mismatched:
            raise ValueError("data-loader state is from a different dataset or rank layout (" +
                             "; ".join(mismatched) + ")")
        self._epoch, self._start, self._pos = state["epoch"], state["buffer_start"], state["position"]
        self._blocks = state["blocks"]

    def _identity(self) -> Dict[str, Any]:
        files_sha = hashlib.sha256("\n".join(self._all_names).encode()).hexdigest()[:16]
        return {"seed": self._seed, "process_rank": self._process_rank, "num_processes": self._num_processes,
                "n_files": len(self._all_names), "files_sha": files_sha, "n_chunks": self._n_chunks,
                "block_size": self._block_size, "shuffle": self._shuffle}

    def __iter__(self) -> Iterator[torch.Tensor]:
        if get_worker_info() is not None:
            raise RuntimeError("PackedDataset keeps its position in the main process: use DataLoader(num_workers=0)")
        return self._stream()

    def _stream(self) -> Iterator[torch.Tensor]:
        # only a pass that starts at the very beginning can prove that the files hold no block at all
        empty_pass = self._start == 0 and self._pos == 0
        while True:
            maps, ends = self._load_buffer(self._start)
            n_blocks = int(ends[-1]) if maps else 0
            order = np.random.default_rng([self._seed, self._epoch, self._start]).permutation(n_blocks) \
                if self._shuffle else np.arange(n_blocks)
            while self._pos < n_blocks:
                index = int(order[self._pos])
                k = int(np.searchsorted(ends, index, side="right"))
                offset = (index - (int(ends[k - 1]) if k else 0)) * self._block_size
                block = torch.from_numpy(np.array(maps[k][offset:offset + self._block_size], dtype=np.int64))
                self._pos += 1
                self._blocks += 1
                empty_pass = False
                yield block
            self._start, self._pos = self._start + self._n_chunks, 0
            if self._start >= len(self._files):
                if empty_pass:
                    raise ValueError(f"rank {self._process_rank}'s {len(self._files)} files hold no complete "
                                     f"block of {self._block_size} tokens")
                self._start, self._epoch, empty_pass = 0, self._epoch + 1, True

    def skip(self, n: int) -> None:
        """Advance by `n` blocks without reading them: only the files' headers are consulted."""
        empty_epoch_guard = 0
        while n > 0:
            left = self._buffer_blocks(self._start) - self._pos
            if n < left:
                self._pos, self._blocks = self._pos + n, self._blocks + n
                return
            n, self._blocks = n - left, self._blocks + left
            empty_epoch_guard = 0 if left else empty_epoch_guard + 1
            self._start, self._pos = self._start + self._n_chunks, 0
            if self._start >= len(self._files):
                self._start, self._epoch = 0, self._epoch + 1
            if empty_epoch_guard > len(self._files):
                raise ValueError(f"rank {self._process_rank}'s files hold no complete block of {self._block_size}")

    def _buffer_blocks(self, start: int) -> int:
        return sum(read_header(path)[1] // self._block_size for path in self._files[start:start + self._n_chunks])

    def _load_buffer(self, start: int) -> Tuple[List[np.memmap], np.ndarray]:
        """Memory maps of the buffer's files that hold at least one block, and cumulative block counts."""
        maps, counts = [], []
        for path in self._files[start:start + self._n_chunks]:
            dtype, chunk_size = read_header(path)
            if os.path.getsize(path) < HDR_SIZE + chunk_size * dtype.itemsize:
                raise ValueError(f"{path}: truncated, its header promises {chunk_size} tokens")
            n_blocks = chunk_size // self._block_size
            if n_blocks:
                tokens = np.memmap(path, dtype=dtype, mode="r", offset=HDR_SIZE, shape=(n_blocks * self._block_size,))
                self._check_ids(path, tokens)
                maps.append(tokens)
                counts.append(n_blocks)
        return maps, np.cumsum(counts, dtype=np.int64)

    def _check_ids(self, path: str, tokens: np.memmap) -> None:
        if self._vocab_size is None or path in self._checked:
            return
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self._vocab_size:
            raise ValueError(f"{path}: token id {high if high >= self._vocab_size else low} is outside the model's "
                             f"vocabulary (0..{self._vocab_size - 1}): the data was made with another tokenizer; "
                             "use a model whose vocab_size covers it, or tokenize the data with the model's")
        self._checked.add(path)


class CombinedDataset(IterableDataset):
    """Weighted mixture: each sample comes from a source drawn by ``random.Random(seed).choices``, as upstream.

    Resumable like ``PackedDataset``: the mixing RNG and every source's position advance as samples are yielded,
    ``state_dict()`` holds them all, and ``iter()`` continues from the current position. The stream ends when
    a drawn source is exhausted (never, for packed datasets).
    """

    def __init__(self, datasets: Sequence[IterableDataset], seed: int, weights: Optional[Sequence[float]] = None):
        if not datasets:
            raise ValueError("CombinedDataset needs at least one dataset")
        if weights is not None and len(weights) != len(datasets):
            raise ValueError(f"{len(weights)} weights for {len(datasets)} datasets")
        self._datasets = list(datasets)
        # upstream's uniform weights, so that the same seed draws the same sources as upstream
        self._weights = list(weights) if weights is not None else [1 / len(datasets)] * len(datasets)
        self._seed = seed
        self._rng = random.Random(seed)
        self._samples = 0

    def state_dict(self) -> Dict[str, Any]:
        version, internal, gauss_next = self._rng.getstate()
        return {"seed": self._seed, "samples": self._samples, "rng": [version, list(internal), gauss_next],
                "datasets": [dataset.state_dict() for dataset in self._datasets]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("seed") != self._seed or len(state.get("datasets", ())) != len(self._datasets):
            raise ValueError(f"mixture state is for seed {state.get('seed')!r} and "
                             f"{len(state.get('datasets', ()))} datasets, here seed {self._seed!r} and "
                             f"{len(self._datasets)} datasets")
        for dataset, child in zip(self._datasets, state["datasets"], strict=True):
            dataset.load_state_dict(child)
        version, internal, gauss_next = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss_next))
        self._samples = state["samples"]

    def shares(self) -> List[float]:
        """Each source's share of the samples drawn so far (skipped ones included), in the order of the datasets;
        all zeros before the first. Sources without a `blocks` count (not a `PackedDataset`) count as 0."""
        counts = [getattr(dataset, "blocks", 0) for dataset in self._datasets]
        total = sum(counts)
        return [count / total if total else 0.0 for count in counts]

    def skip(self, n: int) -> None:
        """Advance by `n` samples: the same source draws as iterating, then each source skips its share."""
        counts = [0] * len(self._datasets)
        for source in self._rng.choices(range(len(self._datasets)), weights=self._weights, k=n) if n else ():
            counts[source] += 1
        for dataset, count in zip(self._datasets, counts):
            dataset.skip(count)
        self._samples += n

    def __iter__(self) -> Iterator[Any]:
        iterators = [iter(dataset) for dataset in self._datasets]
        sources = range(len(iterators))
        while True:
            (source,) = self._rng.choices(sources, weights=self._weights, k=1)
            try:
                sample = next(iterators[source])
            except StopIteration:
                return
            self._samples += 1
            yield sample
