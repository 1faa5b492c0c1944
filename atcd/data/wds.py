"""WebDataset streaming: `create_wds_loader` for `--dataset wds` (or `wds/NAME`) with `--data-dir DIR_OR_URL`.

Sources: a directory or URL holding `_info.json` (written by `scripts/make_shards.py`; timm's `wds/` format), or
a shard pattern (`shards-{000000..000002}.tar`, `pipe:cmd`, `https://...`, optionally `{split}` in it and a
`|N` sample-count suffix as in timm).

Distributed contract (the loader is NOT to be passed to `accelerator.prepare`: it already shards by rank):

* Training — every rank yields exactly `ceil(samples_per_epoch / (world_size * batch_size))` full batches per
  epoch, whatever the shard sizes or counts. The shard order is an endless stream of permutations drawn from
  `(seed, epoch)` — identical on all ranks, shuffled before it is split — and global worker `g` of `G` takes items
  `g, g+G, ...` of it, so no worker ever runs dry (even with fewer shards than workers) and one pass of that
  stream is one pass over the data. Samples then go through a per-worker shuffle buffer seeded from
  `(seed, epoch, g)`. The batch count is enforced on the loader (per-worker counts are only an upper bound).
* Validation — exact once, in fixed chunks: the selected samples (all of them, the evenly strided `num_samples`
  subset that `create_eval_loader` also takes, or `sample_ids`) are cut into chunks of `batch_size` consecutive
  samples; rank r yields chunks r, r+N, ... (`atcd.data.eval_plan`, `atcd.data.wds_eval`), so every chunk is the
  same batch whatever the number of ranks. Ranks may yield one batch more or less: gather once at the end.

A member that fails to read or decode is skipped, counted (`loader.num_skipped`, across workers) and logged;
`strict=True` raises `DataError` on the first one, `max_skipped=N` once more than N were skipped.
"""
import logging
import math
import random
from collections.abc import Iterator, Sequence
from itertools import count, islice

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from ..signals import worker_ignores_stop_signals
from .eval_plan import EvalPlan, match_sample_ids, strided_positions
from .factory import DataError
from .registry import get_dataset_spec, register_dataset
from .transforms import create_pixel_transform
from .wds_eval import EvalStream
from .wds_read import WdsSource, _Decode, _SkipCounter, _tar_samples, resolve_wds_source, shard_keys

__all__ = ["WdsLoader", "WdsSource", "create_wds_loader", "is_wds", "resolve_wds_source", "wds_eval_plan"]

_logger = logging.getLogger(__name__)


register_dataset("wds", "WebDataset shards streamed from --data-dir (a directory with _info.json from "
                 "scripts/make_shards.py, or a shard pattern/URL); timm-style wds/NAME too", needs_data_dir=True,
                 streamed=True, prefix=True)


def is_wds(name: str | None) -> bool:
    """True for the streamed (WebDataset) dataset names: `wds` and timm-style `wds/NAME`."""
    spec = get_dataset_spec(name)
    return spec is not None and spec.streamed


def _worker_coords(rank: int, world_size: int) -> tuple[int, int]:
    """(global worker id, global worker count) of the calling loader worker (or main process)."""
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world_size * nw


class _TrainStream(IterableDataset):
    """Endless, epoch-seeded sample stream of one loader worker, batched, capped at `batches_per_worker`."""

    def __init__(self, src: WdsSource, decode: _Decode, handler: _SkipCounter, batch_size: int, seed: int,
                 rank: int, world_size: int, num_workers: int, num_batches: int, shuffle_buffer: int):
        super().__init__()
        self.urls = src.urls
        self.decode, self.handler = decode, handler
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_batches = num_batches  # per rank; the loader cuts the workers' output to exactly this
        self.batches_per_worker = math.ceil(num_batches / max(1, num_workers))
        self.num_rank_samples = num_batches * batch_size
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0  # set by the loader before each epoch; workers are not persistent, so they see it

    def shard_stream(self, gid: int, num_global: int) -> Iterator[str]:
        """This worker's share of the endless stream of (seed, epoch, pass)-permutations of the shard list."""
        import webdataset as wds

        def passes():
            for p in count():
                order = list(self.urls)
                random.Random(wds.utils.make_seed(self.seed, self.epoch, p)).shuffle(order)
                yield from order

        return islice(passes(), gid, None, num_global)

    def __iter__(self):
        import webdataset as wds
        gid, num_global = _worker_coords(self.rank, self.world_size)
        self.decode.epoch = self.epoch
        samples = _tar_samples(self.shard_stream(gid, num_global), self.handler, give_up_after=len(self.urls) + 1)
        rng = random.Random(wds.utils.make_seed(self.seed, self.epoch, gid, 1))
        samples = wds.filters._shuffle(samples, self.shuffle_buffer, max(1, self.shuffle_buffer // 4), rng)
        decoded = wds.filters._map(samples, self.decode, handler=self.handler)
        batches = wds.filters._batched(decoded, self.batch_size, default_collate, partial=False)
        return islice(batches, self.batches_per_worker)


class WdsLoader:
    """The loader `create_wds_loader` returns: iterate for batches `(images, labels[, keys])`.

    Attributes:
        num_batches: batches this rank yields per epoch (`len(loader)`).
        num_samples: samples this rank yields per epoch (training: `num_batches * batch_size`).
        source: the resolved `WdsSource`.
        plan, chunk_ids: evaluation only: the `EvalPlan`, and the chunk of each batch this rank yields.
    """

    def __init__(self, dataset: _TrainStream | EvalStream, num_workers: int, is_training: bool, seed: int,
                 rank: int, source: WdsSource, handler: _SkipCounter, pin_memory: bool = False):
        self.dataset = dataset
        self.is_training = is_training
        self.seed, self.rank = seed, rank
        self.source = source
        self.batch_size = dataset.batch_size
        self._handler = handler
        self._generator = torch.Generator()
        self.num_batches = dataset.num_batches
        self.num_samples = dataset.num_rank_samples
        self.plan: EvalPlan | None = getattr(dataset, "plan", None)  # evaluation: the chunks and their order
        self.chunk_ids: list[int] | None = getattr(dataset, "chunk_ids", None)
        # persistent_workers=False: each epoch's workers get a fresh copy of the dataset with the current epoch
        self.loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False,
                                 generator=self._generator, pin_memory=pin_memory,
                                 worker_init_fn=worker_ignores_stop_signals)
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        """Select the epoch: it seeds the shard order, the shuffle buffers and the workers' torch RNG."""
        import webdataset as wds
        self.epoch = epoch
        if isinstance(self.dataset, _TrainStream):
            self.dataset.epoch = epoch
        self._generator.manual_seed(wds.utils.make_seed(self.seed, epoch, self.rank))

    @property
    def num_skipped(self) -> int:
        """Members skipped as unreadable so far (all epochs, all workers of this process)."""
        return int(self._handler.count.value)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        if self.is_training:  # with_epoch on the loader, not per worker: exactly num_batches on every rank
            return islice(iter(self.loader), self.num_batches)
        return iter(self.loader)


def create_wds_loader(
        data_dir_or_url: str,
        split: str,
        batch_size: int,
        is_training: bool,
        *,
        name: str = "wds",
        seed: int = 0,
        num_workers: int = 0,
        input_size: tuple[int, int, int] = (3, 224, 224),
        rank: int = 0,
        world_size: int = 1,
        samples_per_epoch: int | None = None,
        num_samples: int | None = None,
        sample_ids: Sequence[str] | None = None,
        shuffle_buffer: int = 2048,
        strict: bool = False,
        max_skipped: int | None = None,
        with_keys: bool = False,
        pin_memory: bool = False,
        **transform_kw,
) -> WdsLoader:
    """A rank-sharded streaming loader over WebDataset shards, yielding float [0,1] batches.

    Do not pass the result to `accelerator.prepare` (it already shards by rank); take `rank` and `world_size`
    from `accelerator.process_index` and `accelerator.num_processes`.

    Args:
        data_dir_or_url: shard directory/URL with `_info.json`, or a shard pattern (see `resolve_wds_source`).
        split: `train`, `val`, ...
        batch_size: per-rank batch size.
        is_training: endless epoch-seeded shuffled stream cut to a fixed batch count (True), or exact-once (False).
        name: `wds` or `wds/NAME` (see `resolve_wds_source`).
        seed: one seed shared by all ranks; with the epoch it fixes the shard order, shuffle and augmentation.
        num_workers: loader worker processes per rank.
        input_size: (C, H, W) for `create_pixel_transform`.
        rank: this process's rank.
        world_size: number of processes.
        samples_per_epoch: training: samples per epoch over all ranks (default: the split's size).
        num_samples: evaluation: an evenly strided class-mixed subset of this many samples (with `sample_ids`:
            the first N ids of the list).
        sample_ids: evaluation: only these samples (shard keys or file names/stems, see `match_sample_ids`).
        shuffle_buffer: per-worker sample shuffle buffer (raw bytes are buffered, not decoded images).
        strict: raise `DataError` on the first unreadable member instead of skipping it.
        max_skipped: raise `DataError` once more than this many members were skipped.
        with_keys: batches are `(images, labels, keys)` instead of `(images, labels)`.
        pin_memory: page-locked batches (timm's --pin-mem), for asynchronous copies to a GPU.
        **transform_kw: `create_pixel_transform`'s options (interpolation, crop_pct, no_aug, hflip, scale, ratio).

    Returns:
        a `WdsLoader`: `len()` is the number of batches this rank yields per epoch; call `set_epoch(e)`
        before each training epoch.

    Raises:
        DataError: bad source, split or arguments.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} outside world size {world_size}")
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1 (got {batch_size})")
    src = resolve_wds_source(data_dir_or_url, split, name)
    transform = create_pixel_transform(tuple(input_size), is_training, seed=seed, **transform_kw)
    handler = _SkipCounter(strict, max_skipped)
    decode = _Decode(transform, with_keys, give_up_after=max(1000, src.num_samples or 0))
    if is_training:
        if num_samples is not None or sample_ids is not None:
            raise DataError("num_samples/sample_ids select an evaluation subset; for training use samples_per_epoch")
        n = samples_per_epoch or src.num_samples
        if not n:
            raise DataError(f"unknown number of training samples for {data_dir_or_url!r}: give "
                            f"--train-samples-per-epoch N, an _info.json (scripts/make_shards.py writes one), or a "
                            f"'|N' suffix on the shard pattern")
        ds = _TrainStream(src, decode, handler, batch_size, seed, rank, world_size, num_workers,
                          num_batches=math.ceil(n / (world_size * batch_size)), shuffle_buffer=shuffle_buffer)
    else:
        plan = wds_eval_plan(src, batch_size, rank, world_size, num_samples, sample_ids)
        ds = EvalStream(src, plan, decode, handler, num_workers, input_size)
    return WdsLoader(ds, num_workers, is_training, seed, rank, src, handler, pin_memory=pin_memory)


def wds_eval_plan(src: WdsSource, batch_size: int, rank: int = 0, world_size: int = 1,
                  num_samples: int | None = None, sample_ids: Sequence[str] | None = None) -> EvalPlan:
    """The evaluation chunks over a split's shards: all samples, the strided `num_samples` subset, or the listed
    `sample_ids` (matched against the shards' keys, read from the tar headers; with `num_samples` the first N)."""
    if src.num_samples is None:
        raise DataError("evaluation over shards needs the split's sample count: _info.json, or a '|N' suffix on the "
                        "shard pattern")
    if sample_ids is None:
        return EvalPlan(tuple(strided_positions(src.num_samples, num_samples)), batch_size, rank, world_size,
                        split_size=src.num_samples)
    keys = shard_keys(src)
    if len(keys) != src.num_samples:
        raise DataError(f"the shards hold {len(keys)} samples, their sample count says {src.num_samples}: "
                        f"cannot place --sample-ids in them")
    positions = match_sample_ids(list(sample_ids)[:num_samples], keys, "the shards")
    return EvalPlan(tuple(positions), batch_size, rank, world_size, tuple(keys[p] for p in positions),
                    src.num_samples)
