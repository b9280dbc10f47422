"""The global stream: the same blocks per optimizer step at any world size, exact resume and skip."""

import numpy as np
import torch

from lit_gpt.global_batches import GlobalBatchLoader
from lit_gpt.packed_dataset import PackedDataset, PackedDatasetBuilder

BLOCK = 5


def dataset(tmp_path):
    files = []
    for i in range(3):
        builder = PackedDatasetBuilder(tmp_path, f"train_{i}", chunk_size=BLOCK * 10, sep_token=1, vocab_size=1000)
        builder.add_array(np.arange(i * 50, i * 50 + 50))
        files += builder.filenames
    return PackedDataset(sorted(files), n_chunks=2, block_size=BLOCK, seed=3)


def step_blocks(tmp_path, world, steps, micro=2, accumulation=2, skip=0):
    """Every block each step feeds to any rank, as a set of first tokens per step."""
    loaders = [GlobalBatchLoader(dataset(tmp_path), micro, accumulation, rank, world) for rank in range(world)]
    for loader in loaders:
        loader.skip_blocks(skip)
    out = []
    for _ in range(steps):
        batches = [b for loader in loaders for b in loader.next_step()]
        assert all(b.shape == (micro, BLOCK) for b in batches)
        out.append(sorted(torch.cat(batches)[:, 0].tolist()))
    return out


def test_steps_do_not_depend_on_world_size(tmp_path):
    one = step_blocks(tmp_path, world=1, steps=6, micro=4)
    assert step_blocks(tmp_path, world=2, steps=6) == one
    assert step_blocks(tmp_path, world=4, steps=6, micro=1) == one
    assert len({x for step in one[:3] for x in step}) == 24  # 3 steps x 8 blocks, none twice within an epoch


def test_resume_and_skip(tmp_path):
    straight = GlobalBatchLoader(dataset(tmp_path), 2, 2, 0, 1)
    for _ in range(3):
        straight.next_step()
    state = straight.state_dict()
    rest = [straight.next_step() for _ in range(3)]
    resumed = GlobalBatchLoader(dataset(tmp_path), 2, 2, 0, 1)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for x, y in zip(rest, [resumed.next_step() for _ in range(3)]) for a, b in zip(x, y))
    skipped = GlobalBatchLoader(dataset(tmp_path), 2, 2, 0, 1)
    skipped.skip_blocks(12)
    assert all(torch.equal(a, b) for a, b in zip(rest[0], skipped.next_step()))
