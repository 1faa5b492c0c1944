"""The evaluation's sample plan: which samples (an evenly strided subset, an explicit `--sample-ids` list, or all),
cut into fixed chunks of the global order, and which chunks each process evaluates.

A chunk is `batch_size` consecutive samples of the global order (sorted dataset positions); process r of N
evaluates chunks r, r+N, r+2N, ... and every attack seeds its randomness from (seed, chunk index). A chunk's
result therefore depends neither on the number of processes nor on the rank that ran it: 1 and N processes give
the same per-example results by construction (`atcd.engine.evaluate_attacks` puts them back in global order).
"""
import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from ..signals import worker_ignores_stop_signals

__all__ = ["ChunkLoader", "EvalPlan", "chunk_seed", "create_eval_loader", "match_sample_ids", "read_sample_ids",
           "strided_positions"]


def strided_positions(total: int, num_samples: int | None) -> list[int]:
    """The fixed class-mixed subset `--num-samples` selects: evenly strided positions (all of them without it)."""
    if num_samples is None or num_samples >= total:
        return list(range(total))
    step = total / num_samples
    return [int(i * step) for i in range(num_samples)]


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of the attacks' randomness on chunk `chunk` (a function of the run's seed and the chunk only)."""
    import numpy as np
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


@dataclass(frozen=True)
class EvalPlan:
    """Fixed chunks of the global evaluation order and this process's share of them.

    Attributes:
        positions: dataset positions (folder index, or sample number in the shards) in global order (increasing).
        batch_size: samples per chunk (the last one may be shorter).
        rank: this process.
        world_size: number of processes.
        ids: the sample ids of `positions` when known (file names, shard keys), for the results file.
        split_size: samples in the split the positions index.
    """

    positions: tuple[int, ...]
    batch_size: int
    rank: int = 0
    world_size: int = 1
    ids: tuple[str, ...] | None = None
    split_size: int = 0

    def __post_init__(self):
        if self.batch_size < 1:
            raise DataError(f"batch size must be >= 1 (got {self.batch_size})")
        if not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {self.rank} outside world size {self.world_size}")
        if list(self.positions) != sorted(set(self.positions)):
            raise DataError("evaluation positions must be increasing and distinct")

    @property
    def num_chunks(self) -> int:
        return math.ceil(len(self.positions) / self.batch_size)

    @property
    def chunk_ids(self) -> list[int]:
        """The chunks this process evaluates, in the order its loader yields them."""
        return list(range(self.rank, self.num_chunks, self.world_size))

    def chunk(self, c: int) -> list[int]:
        """Dataset positions of chunk `c`."""
        return list(self.positions[c * self.batch_size:(c + 1) * self.batch_size])

    @property
    def num_rank_samples(self) -> int:
        return sum(len(self.chunk(c)) for c in self.chunk_ids)


def read_sample_ids(path: str) -> list[str]:
    """Sample ids, one a line (blank lines and `#` comments ignored), as RobustBench's ImageNet list."""
    try:
        with open(path) as f:
            ids = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as e:
        raise DataError(f"--sample-ids {path!r}: {e.strerror or e}") from None
    if not ids:
        raise DataError(f"--sample-ids {path!r} lists no sample ids")
    dup = next((i for n, i in enumerate(ids) if i in ids[:n]), None) if len(set(ids)) < len(ids) else None
    if dup is not None:
        raise DataError(f"--sample-ids {path!r} lists {dup!r} twice")
    return ids


def _stem(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.split(".", 1)[0]  # webdataset's key rule: up to the first dot


def match_sample_ids(ids: Sequence[str], names: Sequence[str], where: str) -> list[int]:
    """Dataset positions of `ids` in increasing order. An id matches a sample by its name (an image folder's path
    relative to the split, `n01440764/ILSVRC2012_val_00000293.JPEG`; a shard's key) or else by its file stem
    (`ILSVRC2012_val_00000293`, a `--key filename` shard key), so RobustBench's list works on both.

    Raises:
        DataError: an id matches no sample, or its stem is ambiguous.
    """
    by_name = {n: i for i, n in enumerate(names)}
    by_stem: dict[str, int] = {}
    ambiguous = set()
    for i, n in enumerate(names):
        s = _stem(n)
        if s in by_stem:
            ambiguous.add(s)
        by_stem[s] = i
    out, missing = [], []
    for sid in ids:
        if sid in by_name:
            out.append(by_name[sid])
        elif _stem(sid) in ambiguous:
            raise DataError(f"--sample-ids: {sid!r} is ambiguous in {where} (several samples have the stem "
                            f"{_stem(sid)!r}); give the path relative to the split")
        elif _stem(sid) in by_stem:
            out.append(by_stem[_stem(sid)])
        else:
            missing.append(sid)
    if missing:
        raise DataError(f"--sample-ids: {len(missing)} of {len(ids)} ids are not in {where} (first: {missing[0]!r}; "
                        f"ids are file names relative to the split, their stems, or shard keys)")
    if len(set(out)) < len(out):
        raise DataError(f"--sample-ids: two ids name the same sample of {where}")
    return sorted(out)


class ChunkLoader:
    """A map-style evaluation loader over an `EvalPlan`: one batch per chunk of this process, in `chunk_ids` order.

    Never passed to `accelerator.prepare` (it already holds this process's share, and prepare would pad it).
    """

    def __init__(self, dataset: Dataset, plan: EvalPlan, num_workers: int = 0, **loader_kw):
        self.dataset = dataset
        self.plan = plan
        self.chunk_ids = plan.chunk_ids
        self.num_samples = plan.num_rank_samples
        self.loader = DataLoader(dataset, batch_sampler=[plan.chunk(c) for c in self.chunk_ids],
                                 num_workers=num_workers, worker_init_fn=worker_ignores_stop_signals, **loader_kw)

    @property
    def num_skipped(self) -> int:
        return int(getattr(self.dataset, "num_skipped", 0) or 0)

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def __iter__(self):
        return iter(self.loader)


def dataset_names(dataset: Dataset) -> list[str]:
    """Sample ids of a map-style dataset: an image folder's paths relative to its split, else the index."""
    reader = getattr(dataset, "reader", None)
    if reader is not None:
        return [p.replace("\\", "/") for p in reader.filenames()]
    return [str(i) for i in range(len(dataset))]


def create_eval_loader(dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1,
                       num_samples: int | None = None, sample_ids: Sequence[str] | None = None,
                       num_workers: int = 0, **loader_kw) -> ChunkLoader:
    """This process's chunks of a map-style dataset (`--num-samples`, `--sample-ids` or all; see `EvalPlan`).

    With `sample_ids`, `num_samples` keeps the first N ids of the list (RobustBench's `n_examples`)."""
    names = dataset_names(dataset)
    if sample_ids is not None:
        positions = match_sample_ids(list(sample_ids)[:num_samples], names, "the evaluated split")
    else:
        positions = strided_positions(len(dataset), num_samples)
    plan = EvalPlan(tuple(positions), batch_size, rank, world_size, tuple(names[p] for p in positions),
                    len(dataset))
    return ChunkLoader(dataset, plan, num_workers, **loader_kw)
