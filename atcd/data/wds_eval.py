"""The exact-once evaluation stream over WebDataset shards: one batch per chunk of an `EvalPlan`.

Process r yields its chunks (r, r+N, ... of the global order, see `atcd.data.eval_plan`) in order, whatever the
shard sizes: loader worker w of W takes the process's chunks w, w+W, ... (the DataLoader's round-robin over workers
then yields them in order) and reads only the shards that hold them (from the per-shard counts of `_info.json`;
without them it scans every shard, counting samples). A chunk whose samples all failed to decode is still yielded,
empty, so batch i is always chunk `chunk_ids[i]`.
"""
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from .eval_plan import EvalPlan
from .wds_read import WdsSource, _Decode, _SkipCounter, _tar_samples

__all__ = ["EvalStream"]


class EvalStream(IterableDataset):
    """This process's chunks of `plan`, split over loader workers by chunk."""

    def __init__(self, src: WdsSource, plan: EvalPlan, decode: _Decode, handler: _SkipCounter, num_workers: int,
                 input_size: tuple[int, int, int]):
        super().__init__()
        self.decode, self.handler, self.plan = decode, handler, plan
        self.batch_size = plan.batch_size
        self.input_size = tuple(input_size)
        self.chunk_ids = plan.chunk_ids
        self.num_batches = len(self.chunk_ids)
        self.num_rank_samples = plan.num_rank_samples
        nw = max(1, num_workers)
        have_counts = src.shard_lengths is not None and sum(src.shard_lengths) == src.num_samples
        starts = np.concatenate([[0], np.cumsum(src.shard_lengths)]) if have_counts else None
        # plan[w] = (shards to read: (url, position of its first sample or None = running count), its chunks)
        self.worker_plan = []
        for w in range(nw):
            chunks = [(c, plan.chunk(c)) for c in self.chunk_ids[w::nw]]
            if starts is None:
                shards = [(u, None) for u in src.urls]
            else:
                wanted = np.array([p for _, ps in chunks for p in ps], dtype=np.int64)
                used = sorted(set((np.searchsorted(starts, wanted, side="right") - 1).tolist()))
                shards = [(src.urls[s], int(starts[s])) for s in used]
            self.worker_plan.append((shards, chunks))

    def _samples(self, shards: list[tuple[str, int | None]], wanted: frozenset) -> Iterator[tuple[int, dict]]:
        """(position, raw sample) of the wanted positions, in increasing position order."""
        left = len(wanted)
        running = 0
        for url, first in shards:
            if left == 0:
                return  # everything this worker owes was read: skip the rest of the shards
            pos = running if first is None else first
            for s in _tar_samples(iter([url]), self.handler):
                if pos in wanted:
                    left -= 1
                    yield pos, s
                pos += 1
            running = pos

    def _collate(self, items: list) -> tuple:
        if items:
            return default_collate(items)
        empty = (torch.zeros((0, *self.input_size)), torch.zeros(0, dtype=torch.long))
        return (*empty, []) if self.decode.with_keys else empty

    def __iter__(self):
        info = get_worker_info()
        shards, chunks = self.worker_plan[info.id if info is not None else 0]
        samples = self._samples(shards, frozenset(p for _, ps in chunks for p in ps))
        pending = next(samples, None)
        for _, positions in chunks:  # samples arrive in position order, chunks are increasing ranges of it
            items = []
            while pending is not None and pending[0] <= positions[-1]:
                try:
                    items.append(self.decode(pending[1]))
                except Exception as e:  # noqa: BLE001  (the handler raises, or counts and skips)
                    self.handler(e)
                pending = next(samples, None)
            yield self._collate(items)
