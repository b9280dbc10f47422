"""One global stream of training blocks, sliced per rank, so that the data order is the same at any world size."""

from typing import Any, Dict, List

import torch


class GlobalBatchLoader:
    """Yields each optimizer step's micro-batches for one rank.

    Every rank reads the same world-size-independent stream (a `PackedDataset` or `CombinedDataset` built
    for one process). A step consumes `accumulation * world * micro` blocks; micro-batch i of rank r is
    the r-th slice of the i-th group of `world * micro` blocks. The blocks of a step, and hence its loss,
    do not depend on the world size, which is what lets a 2-process run resume on 1 process (or 8) and
    continue exactly. Blocks of other ranks are only stepped over: the reader memory-maps its files.
    """

    def __init__(self, dataset, micro_batch_size: int, accumulation: int, rank: int, world_size: int) -> None:
        self.dataset = dataset
        self.micro, self.accumulation = micro_batch_size, accumulation
        self.rank, self.world = rank, world_size
        self._iterator = None

    def next_step(self) -> List[torch.Tensor]:
        if self._iterator is None:
            self._iterator = iter(self.dataset)
        batches = []
        for _ in range(self.accumulation):
            group = [next(self._iterator) for _ in range(self.world * self.micro)]
            batches.append(torch.stack(group[self.rank * self.micro:(self.rank + 1) * self.micro]))
        return batches

    def skip_blocks(self, n: int) -> None:
        """Skips `n` blocks of the global stream without reading them (e.g. the base model's tokens)."""
        self.dataset.skip(n)
        self._iterator = None

    def state_dict(self) -> Dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self._iterator = None
