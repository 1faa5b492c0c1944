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
* Validation — exact once: the selected sample indices (all of them, or the evenly strided `num_samples` subset
  that `create_atcd_loader` also takes) are cut into `world_size` contiguous blocks whose sizes differ by at most
  one; rank r reads only the shards that hold its block (found from the per-shard counts in `_info.json`; without
  them every worker scans all shards). Ranks may therefore yield different numbers of batches (differing by at
  most one sample per rank, plus one partial batch per worker): gather with padding once at the end.

A member that fails to read or decode is skipped, counted (`loader.num_skipped`, across workers) and logged;
`strict=True` raises `DataError` on the first one, `max_skipped=N` once more than N were skipped.
"""
import io
import json
import logging
import math
import multiprocessing as mp
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count, islice

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from .factory import DataError
from .registry import get_dataset_spec, register_dataset
from .transforms import Reseeded, create_pixel_transform

__all__ = ["WdsLoader", "WdsSource", "create_wds_loader", "is_wds", "resolve_wds_source"]

_logger = logging.getLogger(__name__)

INFO_NAMES = ("_info.json", "info.json")
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
_SPLIT_ALIASES = {"val": ("val", "validation", "test"), "validation": ("validation", "val", "test"),
                  "test": ("test", "val", "validation")}


register_dataset("wds", "WebDataset shards streamed from --data-dir (a directory with _info.json from "
                 "scripts/make_shards.py, or a shard pattern/URL); timm-style wds/NAME too", needs_data_dir=True,
                 streamed=True, prefix=True)


def is_wds(name: str | None) -> bool:
    """True for the streamed (WebDataset) dataset names: `wds` and timm-style `wds/NAME`."""
    spec = get_dataset_spec(name)
    return spec is not None and spec.streamed


@dataclass(frozen=True)
class WdsSource:
    """Resolved shards of one split."""

    urls: tuple[str, ...]
    num_samples: int | None
    shard_lengths: tuple[int, ...] | None
    name: str = ""
    num_classes: int | None = None


def _load_info(root: str) -> dict | None:
    import webdataset as wds
    for n in INFO_NAMES:
        path = os.path.join(root, n) if "://" not in root else root.rstrip("/") + "/" + n
        if "://" not in path and not os.path.exists(path):
            continue
        try:
            with wds.gopen(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            _logger.debug("no %s at %s: %s", n, root, e)
    return None


def _split_entry(info: dict, split: str, where: str) -> dict:
    splits = info.get("splits", {})
    for cand in _SPLIT_ALIASES.get(split, (split,)):
        if cand in splits:
            return splits[cand]
    raise DataError(f"{where}: no split {split!r} in _info.json (has {sorted(splits)})")


def resolve_wds_source(data_dir_or_url: str, split: str, name: str = "wds") -> WdsSource:
    """Find the shard URLs and sample counts of `split`.

    Args:
        data_dir_or_url: a directory/URL with `_info.json`, or a shard pattern (brace ranges, `pipe:`, URLs;
            `{split}` is replaced by the split; a `|N` suffix gives the sample count).
        split: `train`, `val` (falls back to `validation`/`test` in `_info.json`), ...
        name: the dataset name; for `wds/NAME`, `DIR/NAME` is used when `DIR` itself holds no `_info.json`.

    Returns:
        the split's `WdsSource`.

    Raises:
        DataError: no `_info.json`, unknown split, or an empty pattern.
    """
    import webdataset as wds
    if not data_dir_or_url:
        raise DataError("--dataset wds needs --data-dir: a shard directory with _info.json, or a shard pattern")
    spec = data_dir_or_url
    is_pattern = spec.startswith("pipe:") or ".tar" in spec or "{" in spec
    if not is_pattern:
        root = spec
        info = _load_info(root)
        sub = name.split("/", 1)[1] if name.startswith("wds/") else ""
        if info is None and sub and "://" not in root:
            root = os.path.join(root, sub)
            info = _load_info(root)
        if info is None:
            raise DataError(f"no _info.json under {spec!r}: write shards with scripts/make_shards.py or give a shard "
                            f"pattern such as 'DIR/name-{{split}}-{{000000..000009}}.tar|NUM_SAMPLES'")
        e = _split_entry(info, split, spec)
        join = (lambda f: root.rstrip("/") + "/" + f) if "://" in root else (lambda f: os.path.join(root, f))
        lengths = tuple(int(n) for n in e.get("shard_lengths", ())) or None
        return WdsSource(tuple(join(f) for f in e["filenames"]), int(e["num_samples"]), lengths,
                         info.get("name", ""), info.get("num_classes"))
    pattern, _, n = spec.partition("|")
    pattern = pattern.replace("{split}", split)
    urls = tuple(wds.shardlists.expand_urls(pattern))
    if not urls:
        raise DataError(f"shard pattern {spec!r} expands to no shards")
    num_samples, lengths, info = (int(n) if n else None), None, None
    if not pattern.startswith("pipe:"):  # counts from an _info.json beside the shards, if there is one
        info = _load_info(os.path.dirname(urls[0]))
        if info is not None:
            try:
                e = _split_entry(info, split, spec)
                by_name = dict(zip(e["filenames"], e.get("shard_lengths", ())))
                if all(os.path.basename(u) in by_name for u in urls):
                    lengths = tuple(int(by_name[os.path.basename(u)]) for u in urls)
                    num_samples = num_samples or sum(lengths)
            except DataError:
                pass
    return WdsSource(urls, num_samples, lengths, (info or {}).get("name", ""), (info or {}).get("num_classes"))


class _SkipCounter:
    """webdataset error handler: count (shared across loader workers) and log a bad member, or raise DataError."""

    def __init__(self, strict: bool, max_skipped: int | None):
        self.strict = strict
        self.max_skipped = max_skipped
        self.count = mp.Value("q", 0)

    def __call__(self, exn: BaseException) -> bool:
        if isinstance(exn, DataError):
            raise exn
        if self.strict:
            raise DataError(f"unreadable or corrupt sample (strict): {exn!r}") from exn
        with self.count.get_lock():
            self.count.value += 1
            n = self.count.value
        if n <= 10 or n % 100 == 0:
            _logger.warning("skipped an unreadable sample (%d so far): %r", n, exn)
        if self.max_skipped is not None and n > self.max_skipped:
            raise DataError(f"more than {self.max_skipped} unreadable samples skipped; last: {exn!r}") from exn
        return True


class _Decode:
    """Raw tar sample -> (float [0,1] CHW tensor, label[, key]); decodes like timm's folder reader (RGB first).
    A `Reseeded` (training) transform draws from (seed, `epoch`, sample key)."""

    def __init__(self, transform: Callable, with_keys: bool, give_up_after: int):
        self.transform = transform
        self.epoch = 0
        self.with_keys = with_keys
        self.give_up_after = give_up_after
        self.failures_in_a_row = 0

    def __call__(self, sample: dict):
        from PIL import Image
        try:
            data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
            if data is None:
                raise ValueError(f"sample {sample.get('__key__')!r} has no image member ({'/'.join(IMAGE_KEYS)})")
            label = int(sample["cls"])
            with io.BytesIO(data) as b, Image.open(b) as im:
                img = im.convert("RGB")
            x = (self.transform(img, self.epoch, sample["__key__"]) if isinstance(self.transform, Reseeded)
                 else self.transform(img))
        except Exception as e:
            self.failures_in_a_row += 1
            if self.failures_in_a_row > self.give_up_after:  # an endless training stream would spin forever
                raise DataError(f"{self.failures_in_a_row} samples in a row failed to decode; last: {e!r}") from e
            raise ValueError(f"{sample.get('__url__')}: sample {sample.get('__key__')!r}: {e!r}") from e
        self.failures_in_a_row = 0
        return (x, label, sample["__key__"]) if self.with_keys else (x, label)


def _worker_coords(rank: int, world_size: int) -> tuple[int, int]:
    """(global worker id, global worker count) of the calling loader worker (or main process)."""
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world_size * nw


def _tar_samples(urls: Iterator[str], handler: _SkipCounter, give_up_after: int | None = None) -> Iterator[dict]:
    """Samples of the given shards in order; DataError after `give_up_after` shards in a row yielded nothing."""
    import webdataset as wds
    empty = 0
    for url in urls:
        got = 0
        for s in wds.tarfile_samples([{"url": url}], handler=handler):
            got += 1
            yield s
        empty = 0 if got else empty + 1
        if give_up_after is not None and empty >= give_up_after:
            raise DataError(f"{empty} shards in a row gave no samples (last: {url})")


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


class _EvalStream(IterableDataset):
    """Exact-once stream of this rank's block of sample indices, split over loader workers by shard."""

    def __init__(self, src: WdsSource, decode: _Decode, handler: _SkipCounter, batch_size: int, rank: int,
                 world_size: int, num_workers: int, num_samples: int | None):
        super().__init__()
        if src.num_samples is None:
            raise DataError("evaluation over shards needs the split's sample count: _info.json, or a '|N' suffix "
                            "on the shard pattern")
        total = src.num_samples
        if num_samples is not None and num_samples < total:
            step = total / num_samples
            selected = np.array([int(i * step) for i in range(num_samples)], dtype=np.int64)  # as create_atcd_loader
        else:
            selected = np.arange(total, dtype=np.int64)
        mine = np.array_split(selected, world_size)[rank]  # contiguous blocks, sizes differ by at most one
        self.decode, self.handler, self.batch_size = decode, handler, batch_size
        self.num_rank_samples = len(mine)
        nw = max(1, num_workers)
        # plan[w] = (shards to read: (url, index of its first sample or None = running count), wanted indices)
        if src.shard_lengths is not None and sum(src.shard_lengths) == total:
            starts = np.concatenate([[0], np.cumsum(src.shard_lengths)])
            shard_of = np.searchsorted(starts, mine, side="right") - 1
            used = sorted(set(shard_of.tolist()))
            self.plan = []
            for w in range(nw):
                shards = used[w::nw]
                self.plan.append(([(src.urls[s], int(starts[s])) for s in shards],
                                  frozenset(mine[np.isin(shard_of, shards)].tolist())))
        else:  # no per-shard counts: every worker scans all shards, keeping its slice of the block
            self.plan = [([(u, None) for u in src.urls], frozenset(mine[w::nw].tolist())) for w in range(nw)]
        self.num_batches = sum(math.ceil(len(wanted) / batch_size) for _, wanted in self.plan)

    def _samples(self, shards: list[tuple[str, int | None]], wanted: frozenset) -> Iterator[dict]:
        left = len(wanted)
        running = 0
        for url, first in shards:
            if left == 0:
                return  # everything this worker owes was read: skip the rest of the shards
            pos = running if first is None else first
            for s in _tar_samples(iter([url]), self.handler):
                if pos in wanted:
                    left -= 1
                    yield s
                pos += 1
            running = pos

    def __iter__(self):
        import webdataset as wds
        info = get_worker_info()
        shards, wanted = self.plan[info.id if info is not None else 0]
        decoded = wds.filters._map(self._samples(shards, wanted), self.decode, handler=self.handler)
        return wds.filters._batched(decoded, self.batch_size, default_collate, partial=True)


class WdsLoader:
    """The loader `create_wds_loader` returns: iterate for batches `(images, labels[, keys])`.

    Attributes:
        num_batches: batches this rank yields per epoch (`len(loader)`).
        num_samples: samples this rank yields per epoch (training: `num_batches * batch_size`).
        source: the resolved `WdsSource`.
    """

    def __init__(self, dataset: _TrainStream | _EvalStream, num_workers: int, is_training: bool, seed: int,
                 rank: int, source: WdsSource, handler: _SkipCounter):
        self.dataset = dataset
        self.is_training = is_training
        self.seed, self.rank = seed, rank
        self.source = source
        self.batch_size = dataset.batch_size
        self._handler = handler
        self._generator = torch.Generator()
        self.num_batches = dataset.num_batches
        self.num_samples = dataset.num_rank_samples
        # persistent_workers=False: each epoch's workers get a fresh copy of the dataset with the current epoch
        self.loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False,
                                 generator=self._generator)
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
        shuffle_buffer: int = 2048,
        strict: bool = False,
        max_skipped: int | None = None,
        with_keys: bool = False,
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
        num_samples: evaluation: an evenly strided class-mixed subset of this many samples.
        shuffle_buffer: per-worker sample shuffle buffer (raw bytes are buffered, not decoded images).
        strict: raise `DataError` on the first unreadable member instead of skipping it.
        max_skipped: raise `DataError` once more than this many members were skipped.
        with_keys: batches are `(images, labels, keys)` instead of `(images, labels)`.
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
        if num_samples is not None:
            raise DataError("num_samples selects an evaluation subset; for training use samples_per_epoch")
        n = samples_per_epoch or src.num_samples
        if not n:
            raise DataError(f"unknown number of training samples for {data_dir_or_url!r}: give samples_per_epoch, "
                            f"an _info.json, or a '|N' suffix on the shard pattern")
        ds = _TrainStream(src, decode, handler, batch_size, seed, rank, world_size, num_workers,
                          num_batches=math.ceil(n / (world_size * batch_size)), shuffle_buffer=shuffle_buffer)
    else:
        ds = _EvalStream(src, decode, handler, batch_size, rank, world_size, num_workers, num_samples)
    return WdsLoader(ds, num_workers, is_training, seed, rank, src, handler)
