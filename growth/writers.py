"""Streaming writers: a grown state dict goes to disk one tensor at a time.

A grown model is g times its source, and most of its tensors are views of the (memory-mapped) source or
broadcast zeros, so materialising the whole target first would cost g times the model in memory. Both
writers lay out the file from shapes alone, then fill it tensor by tensor: peak memory is the source plus
the largest target tensor (see scripts/bench/grow.py).
"""

import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

State = Dict[str, torch.Tensor]
Transform = Callable[[str, torch.Tensor], torch.Tensor]
CHUNK = 1 << 26  # bytes per write: bounds the temporary copy of a non-contiguous tensor's slice

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}


def tensor_bytes(tensor: torch.Tensor) -> Iterator[memoryview]:
    """The tensor's bytes in row-major order, in slices of at most CHUNK bytes; views of the tensor's own memory
    when it is contiguous, else one slice's copy at a time (a broadcast zero never becomes a whole tensor)."""
    if tensor.numel() == 0:
        return
    flat = tensor.reshape(-1) if tensor.is_contiguous() else None
    rows = tensor.reshape(tensor.shape[0], -1) if tensor.ndim > 1 else tensor.reshape(-1, 1)
    per_row = rows.shape[1] * tensor.element_size()
    step = max(1, CHUNK // max(per_row, 1))
    for start in range(0, rows.shape[0], step):
        if flat is not None:
            piece = flat[start * rows.shape[1]:(start + step) * rows.shape[1]]
        else:
            piece = rows[start:start + step].contiguous().reshape(-1)
        yield memoryview(piece.view(torch.uint8).numpy()).cast("B")


def _produce(state: State, transform: Optional[Transform]) -> Iterator[Tuple[str, torch.Tensor]]:
    for key, tensor in state.items():
        yield key, tensor if transform is None else transform(key, tensor)


def write_pth(path: Path, state: State, transform: Optional[Transform] = None,
              progress: Optional[Callable[[int], None]] = None, aliases: Optional[Dict[str, str]] = None) -> None:
    """A file `torch.load` reads like one `torch.save(state)` wrote, with valid CRCs: a storage per key, except
    each key of `aliases` (key -> an earlier key), which shares that key's storage: tied embeddings are written
    once and load as one tensor. (Keys are not merged by identity: stacked layers are views of one source tensor.)

    torch lays out the zip from an unfilled skeleton (`torch.serialization.skip_data`), we write each tensor
    into its record's offset and then patch the CRC-32 fields, which the skeleton leaves at 0.
    """
    aliases = {k: v for k, v in (aliases or {}).items() if k in state}
    # an alias after the key it shares, so that storages are numbered in the order `distinct` writes them
    state = {**{k: v for k, v in state.items() if k not in aliases}, **{k: state[k] for k in aliases}}
    skeleton = {}
    for k, v in state.items():  # pages never touched
        skeleton[k] = skeleton[aliases[k]] if k in aliases else torch.empty(v.shape, dtype=v.dtype)
    with torch.serialization.skip_data():
        torch.save(skeleton, path)
    del skeleton
    distinct = {k: v for k, v in state.items() if k not in aliases}
    reader = torch._C.PyTorchFileReader(str(path))
    records = [f"data/{i}" for i in range(len(distinct))]  # the pickler numbers storages in dict order
    offsets = [reader.get_record_offset(name) for name in records]
    del reader
    crcs = {}
    with open(path, "r+b") as f:
        for (key, tensor), name, offset in zip(_produce(distinct, transform), records, offsets):
            f.seek(offset)
            crc = 0
            for chunk in tensor_bytes(tensor):
                f.write(chunk)
                crc = zlib.crc32(chunk, crc)
            crcs[name] = crc
            if progress:
                progress(tensor.numel() * tensor.element_size())
    _patch_zip_crcs(path, crcs)


def _patch_zip_crcs(path: Path, crcs: Dict[str, int]) -> None:
    """Writes each record's CRC-32 into its local header (offset 14), its data descriptor when it has one (the
    16 bytes after the data, flag bit 3) and its central-directory entry (offset 16)."""
    with zipfile.ZipFile(path) as z:
        infos = {info.filename.split("/", 1)[1]: info for info in z.infolist()}
        central = z.start_dir
    with open(path, "r+b") as f:
        f.seek(central)
        entries = {}
        for _ in infos:
            header = f.read(46)
            name_len, extra_len, comment_len = struct.unpack("<HHH", header[28:34])
            name = f.read(name_len).decode().split("/", 1)[1]
            entries[name] = f.tell() - name_len - 46
            f.seek(extra_len + comment_len, 1)
        for name, crc in crcs.items():
            info = infos[name]
            places = [info.header_offset + 14, entries[name] + 16]
            if info.flag_bits & 0x08:
                f.seek(info.header_offset + 26)
                name_len, extra_len = struct.unpack("<HH", f.read(4))
                descriptor = info.header_offset + 30 + name_len + extra_len + info.compress_size
                f.seek(descriptor)
                places.append(descriptor + (4 if f.read(4) == b"PK\x07\x08" else 0))
            for where in places:
                f.seek(where)
                f.write(struct.pack("<I", crc))


def write_safetensors(path: Path, state: State, transform: Optional[Transform] = None,
                      progress: Optional[Callable[[int], None]] = None) -> None:
    """The safetensors layout (8-byte header length, JSON header, raw little-endian data), written streaming."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, tensor in state.items():
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{key}: dtype {tensor.dtype} has no safetensors name")
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, tensor in _produce(state, transform):
            for chunk in tensor_bytes(tensor):
                f.write(chunk)
            if progress:
                progress(tensor.numel() * tensor.element_size())
