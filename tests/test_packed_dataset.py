import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from lit_gpt.packed_dataset import CombinedDataset, PackedDataset, PackedDatasetBuilder, read_header

BLOCK = 4


def write_blocks(directory: Path, prefix: str, blocks_per_file, first_token: int = 0):
    """One builder file per entry, holding that many blocks of consecutive token ids (so every block is unique)."""
    directory.mkdir(parents=True, exist_ok=True)
    names, token = [], first_token
    for i, n_blocks in enumerate(blocks_per_file):
        builder = PackedDatasetBuilder(directory, f"{prefix}{i:02d}", n_blocks * BLOCK, sep_token=1, vocab_size=65000)
        builder.add_array(np.arange(token, token + n_blocks * BLOCK))
        token += n_blocks * BLOCK
        names += builder.filenames
    return names


def take(dataset, n):
    iterator = iter(dataset)
    return [tuple(next(iterator).tolist()) for _ in range(n)]


def test_header_bytes_and_round_trip(tmp_path):
    builder = PackedDatasetBuilder(tmp_path, "train_slimpajama_0", chunk_size=8, sep_token=1, vocab_size=4096)
    tokens = np.arange(100, 120)
    builder.add_array(tokens[:5])
    builder.add_array(tokens[5:])
    builder.write_reminder()
    names = [Path(f).name for f in builder.filenames]
    assert names == [f"train_slimpajama_0_{i:010d}.bin" for i in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary files left behind
    raw = (tmp_path / names[0]).read_bytes()
    assert raw[:24] == b"LITPKDS" + struct.pack("<Q", 1) + bytes([8]) + struct.pack("<Q", 8)
    assert len(raw) == 24 + 8 * 2
    bodies = []
    for name, expected_size in zip(names, (8, 8, 4), strict=True):
        raw = (tmp_path / name).read_bytes()
        magic, version, dtype_code, chunk_size = struct.unpack("<7sQBQ", raw[:24])
        assert (magic, version, dtype_code, chunk_size) == (b"LITPKDS", 1, 8, expected_size)
        bodies.append(np.frombuffer(raw[24:], dtype="<u2"))
    assert np.concatenate(bodies).tolist() == tokens.tolist()  # the partial last chunk is not padded
    assert builder.tokens_written == 20


def test_dtype_choice(tmp_path):
    assert PackedDatasetBuilder(tmp_path, "a", 4, 1, vocab_size=32000).dtype == np.uint16
    assert PackedDatasetBuilder(tmp_path, "a", 4, 1, vocab_size=65500).dtype == np.int32
    builder = PackedDatasetBuilder(tmp_path, "big", 4, 1, vocab_size=100_000)
    builder.add_array(np.array([0, 70_000, 99_999, 5]))
    assert read_header(builder.filenames[0]) == (np.dtype(np.int32), 4)
    assert np.fromfile(builder.filenames[0], dtype="<i4", offset=24).tolist() == [0, 70_000, 99_999, 5]
    assert read_header(_single_file(tmp_path, np.int64))[0] == np.int64
    with pytest.raises(ValueError, match="vocab_size"):
        PackedDatasetBuilder(tmp_path, "a", 4, 1)
    with pytest.raises(ValueError, match="do not fit uint16"):
        PackedDatasetBuilder(tmp_path, "a", 4, 1, vocab_size=32000).add_array(np.array([70_000]))


def _single_file(directory, dtype):
    builder = PackedDatasetBuilder(directory, f"single_{np.dtype(dtype).name}", 2, 1, dtype=dtype)
    builder.add_array(np.array([3, 4]))
    return builder.filenames[0]


def test_reminder_keeps_whole_blocks_only(tmp_path):
    builder = PackedDatasetBuilder(tmp_path, "p", chunk_size=100, sep_token=9999, vocab_size=32000)
    builder.add_array(np.arange(257))
    builder.write_reminder(block_size=10)
    assert [read_header(f)[1] for f in builder.filenames] == [100, 100, 50]
    last = np.fromfile(builder.filenames[-1], dtype="<u2", offset=24)
    assert last.tolist() == list(range(200, 250))
    assert all(9999 not in np.fromfile(f, dtype="<u2", offset=24) for f in builder.filenames)
    builder.add_array(np.arange(7))
    builder.write_reminder(block_size=10)  # less than a block: nothing is written
    assert len(builder.filenames) == 3


def test_reads_upstream_layout(tmp_path):
    # what upstream's builder writes: full chunks, int32 here, the tail of the last chunk padded with BOS (1)
    tokens = np.arange(10, 10 + 3 * BLOCK + 2, dtype="<i4")
    body = np.concatenate([tokens, np.ones(2 * BLOCK - 2, dtype="<i4")])
    for i, part in enumerate((body[:8], body[8:])):
        (tmp_path / f"train_slimpajama_0_{i:010d}.bin").write_bytes(
            b"LITPKDS" + struct.pack("<QBQ", 1, 4, 8) + part.tobytes())
    files = sorted(str(p) for p in tmp_path.iterdir())
    blocks = take(PackedDataset(files, n_chunks=8, block_size=BLOCK, shuffle=False), 4)
    assert blocks == [tuple(body[i:i + BLOCK].tolist()) for i in range(0, 16, BLOCK)]


@pytest.fixture(scope="module")
def uneven_files(tmp_path_factory):
    """12 files of 1-3 blocks each, as after `write_reminder(block_size)`: chunk sizes differ between files."""
    return write_blocks(tmp_path_factory.mktemp("uneven"), "train", [i % 3 + 1 for i in range(12)])


@settings(max_examples=40, deadline=None)
@given(n_files=st.integers(1, 12), world=st.integers(1, 4), n_chunks=st.integers(1, 5), shuffle=st.booleans())
def test_ranks_split_every_block_exactly_once(uneven_files, n_files, world, n_chunks, shuffle):
    files = uneven_files[:n_files]
    if n_files < world:
        with pytest.raises(ValueError, match=f"{n_files} files for {world} ranks"):
            PackedDataset(files, n_chunks, BLOCK, num_processes=world, process_rank=world - 1)
        return
    blocks_per_file = [i % 3 + 1 for i in range(n_files)]
    seen = []
    for rank in range(world):
        dataset = PackedDataset(files, n_chunks, BLOCK, shuffle=shuffle, num_processes=world, process_rank=rank)
        epoch_length = sum(blocks_per_file[rank::world])
        first, second = take(dataset, epoch_length), take(dataset, epoch_length)
        assert sorted(first) == sorted(second)  # the stream wraps to the same blocks
        seen += first
    expected = [tuple(range(t, t + BLOCK)) for t in range(0, sum(blocks_per_file) * BLOCK, BLOCK)]
    assert sorted(seen) == expected


def test_fewer_files_than_n_chunks(tmp_path):
    files = write_blocks(tmp_path, "f", [5, 5, 2])
    dataset = PackedDataset(files, n_chunks=8, block_size=BLOCK, seed=3)
    first, second = take(dataset, 12), take(dataset, 12)
    assert sorted(first) == sorted(second) == [tuple(range(t, t + BLOCK)) for t in range(0, 48, BLOCK)]
    assert first != second  # a new permutation after the wrap
    block = next(iter(dataset))
    assert block.dtype == torch.int64 and block.shape == (BLOCK,)


def test_deterministic_for_seed_rank_world(uneven_files):
    def blocks(seed, rank):
        return take(PackedDataset(uneven_files, 2, BLOCK, seed=seed, num_processes=2, process_rank=rank), 30)

    assert blocks(7, 1) == blocks(7, 1)
    assert blocks(7, 1) != blocks(8, 1)
    assert set(blocks(7, 0)).isdisjoint(blocks(7, 1))


def test_rank_without_files_is_an_error(tmp_path):
    files = write_blocks(tmp_path, "f", [1, 1])
    with pytest.raises(ValueError, match="2 files for 3 ranks"):
        PackedDataset(files, 4, BLOCK, num_processes=3, process_rank=0)


@pytest.mark.parametrize("consumed", [0, 1, 7, 8, 23, 24, 25, 61])
def test_resume_continues_the_stream(uneven_files, consumed):
    # rank 0 of 2 holds 12 blocks in buffers of 3 files: 23-25 cross an epoch wrap, 61 is in the sixth epoch
    def fresh():
        return PackedDataset(uneven_files, 3, BLOCK, seed=11, num_processes=2, process_rank=0)

    uninterrupted = take(fresh(), consumed + 20)
    dataset = fresh()
    assert take(dataset, consumed) == uninterrupted[:consumed]
    state = json.loads(json.dumps(dataset.state_dict()))
    assert state["blocks"] == consumed
    resumed = fresh()
    resumed.load_state_dict(state)
    assert take(resumed, 20) == uninterrupted[consumed:]


def test_dataloader_batches_match_state(uneven_files):
    dataset = PackedDataset(uneven_files, 2, BLOCK, seed=5)
    loader = iter(DataLoader(dataset, batch_size=3, num_workers=0))
    for _ in range(5):
        next(loader)
    state = dataset.state_dict()
    assert state["blocks"] == 15
    continuation = next(loader)
    resumed = PackedDataset(uneven_files, 2, BLOCK, seed=5)
    resumed.load_state_dict(state)
    assert torch.equal(next(iter(DataLoader(resumed, batch_size=3, num_workers=0))), continuation)


def test_resume_skips_without_reading_consumed_files(tmp_path):
    files = write_blocks(tmp_path, "f", [2, 2, 2, 2])
    dataset = PackedDataset(files, n_chunks=1, block_size=BLOCK, seed=1)
    take(dataset, 5)
    state = dataset.state_dict()
    expected = take(dataset, 3)
    for path in files[:2]:  # a replay would have to read these
        Path(path).unlink()
    resumed = PackedDataset(files, n_chunks=1, block_size=BLOCK, seed=1)
    resumed.load_state_dict(state)
    assert take(resumed, 3) == expected


def test_foreign_state_is_rejected(uneven_files):
    state = PackedDataset(uneven_files, 2, BLOCK, seed=1).state_dict()
    for other in (PackedDataset(uneven_files, 2, BLOCK, seed=2),
                  PackedDataset(uneven_files, 2, BLOCK, seed=1, num_processes=2, process_rank=1),
                  PackedDataset(uneven_files[::-1], 2, BLOCK, seed=1),
                  PackedDataset(uneven_files[:-1], 2, BLOCK, seed=1)):
        with pytest.raises(ValueError, match="different dataset or rank layout"):
            other.load_state_dict(state)


def test_bad_files_are_reported(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"NOTPKDS" + bytes(40))
    with pytest.raises(ValueError, match="not a packed dataset file"):
        take(PackedDataset([tmp_path / "junk.bin"], 1, BLOCK), 1)
    (tmp_path / "short.bin").write_bytes(b"LITPKDS" + struct.pack("<QBQ", 1, 8, 100) + bytes(10))
    with pytest.raises(ValueError, match="truncated"):
        take(PackedDataset([tmp_path / "short.bin"], 1, BLOCK), 1)
    tiny = write_blocks(tmp_path, "tiny", [1])
    with pytest.raises(ValueError, match="no complete block"):
        take(PackedDataset(tiny, 1, block_size=BLOCK + 1), 1)


def test_combined_dataset_mixes_by_weight_and_resumes(tmp_path):
    slim = write_blocks(tmp_path / "slim", "slim", [4, 4])
    star = write_blocks(tmp_path / "star", "star", [4, 4], first_token=10_000)
    weights = [0.7, 0.3]

    def fresh():
        return CombinedDataset([PackedDataset(slim, 1, BLOCK, seed=1), PackedDataset(star, 1, BLOCK, seed=2)],
                               seed=42, weights=weights)

    uninterrupted = take(fresh(), 200)
    draws = random.Random(42)
    expected_sources = [draws.choices(range(2), weights=weights, k=1)[0] for _ in range(200)]
    assert [int(block[0] >= 10_000) for block in uninterrupted] == expected_sources
    mixture = fresh()
    take(mixture, 37)
    state = json.loads(json.dumps(mixture.state_dict()))
    resumed = fresh()
    resumed.load_state_dict(state)
    assert take(resumed, 163) == uninterrupted[37:]
    with pytest.raises(ValueError, match="seed"):
        CombinedDataset([PackedDataset(slim, 1, BLOCK)], seed=1).load_state_dict(state)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 23, 24, 25, 61])
def test_skip_equals_consuming(uneven_files, n):
    def fresh():
        return PackedDataset(uneven_files, 3, BLOCK, seed=11, num_processes=2, process_rank=0)

    uninterrupted = take(fresh(), n + 20)
    skipped = fresh()
    skipped.skip(n)
    assert skipped.state_dict()["blocks"] == n
    assert take(skipped, 20) == uninterrupted[n:]


def test_combined_skip_equals_consuming(tmp_path):
    slim = write_blocks(tmp_path / "slim", "slim", [4, 3])
    star = write_blocks(tmp_path / "star", "star", [2, 4], first_token=10_000)

    def fresh():
        return CombinedDataset([PackedDataset(slim, 1, BLOCK, seed=1), PackedDataset(star, 1, BLOCK, seed=2)],
                               seed=42, weights=[0.6, 0.4])

    uninterrupted = take(fresh(), 120)
    skipped = fresh()
    skipped.skip(77)
    assert take(skipped, 43) == uninterrupted[77:]


def test_token_ids_beyond_the_vocabulary_are_refused_when_loaded(tmp_path, monkeypatch):
    """Upstream data has no record of its tokenizer: with `vocab_size` each file is checked once, when first
    loaded, instead of an IndexError mid-training. Ids inside the vocabulary read exactly as without the check."""
    files = write_blocks(tmp_path / "ok", "train", [3, 2, 4])  # ids 0..35
    assert take(PackedDataset(files, 2, BLOCK, seed=4, vocab_size=36), 40) == take(
        PackedDataset(files, 2, BLOCK, seed=4), 40)
    with pytest.raises(ValueError) as info:
        take(PackedDataset(files, 2, BLOCK, seed=4, vocab_size=35), 40)
    assert str(info.value) == (f"{files[2]}: token id 35 is outside the model's vocabulary (0..34): the data was "
                               "made with another tokenizer; use a model whose vocab_size covers it, or tokenize the "
                               "data with the model's")
    negative = tmp_path / "neg.bin"  # int32 data (a vocabulary of 65500 or more) can hold negative ids
    negative.write_bytes(b"LITPKDS" + struct.pack("<QBQ", 1, 4, 4) + np.array([5, -3, 1, 2], "<i4").tobytes())
    with pytest.raises(ValueError, match="token id -3 is outside"):
        take(PackedDataset([negative], 1, BLOCK, vocab_size=100), 1)

    dataset = PackedDataset(files, 1, BLOCK, seed=4, vocab_size=36)
    checked = []
    original = PackedDataset._check_ids
    monkeypatch.setattr(PackedDataset, "_check_ids", lambda self, path, tokens: (
        checked.append(path) if path not in self._checked else None, original(self, path, tokens)))
    take(dataset, 9 * 3)  # three epochs
    assert sorted(checked) == sorted(files)  # each file's ids are scanned once, not once per epoch
