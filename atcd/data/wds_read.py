"""Reading WebDataset shards: resolving a source (`_info.json` or a shard pattern) into shard URLs and counts,
decoding members into [0,1] tensors with counted skips, and listing a split's sample keys.

The loaders built on it are in `atcd.data.wds` (training stream, `create_wds_loader`) and `atcd.data.wds_eval`
(the exact-once evaluation stream of an `EvalPlan`).
"""
import io
import json
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .factory import DataError
from .transforms import Reseeded

__all__ = ["IMAGE_KEYS", "WdsSource", "resolve_wds_source", "shard_keys"]

_logger = logging.getLogger(__name__)

INFO_NAMES = ("_info.json", "info.json")
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
_SPLIT_ALIASES = {"val": ("val", "validation", "test"), "validation": ("validation", "val", "test"),
                  "test": ("test", "val", "validation")}


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



def shard_keys(src: WdsSource) -> list[str]:
    """The `__key__` of every sample of the split, in stream order, from the tar headers alone (local shards are
    seeked through, no image is read; a remote or `pipe:` source is streamed once). Members are grouped into
    samples by webdataset's own rule (key = the path up to the first dot of the file name)."""
    import tarfile

    import webdataset as wds
    keys: list[str] = []
    for url in src.urls:
        last = None
        local = os.path.isfile(url)  # random access: headers only; else one streamed read
        try:
            with tarfile.open(url, "r:") if local else tarfile.open(fileobj=wds.gopen(url), mode="r|*") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    prefix, suffix = wds.tariterators.base_plus_ext(m.name)
                    if prefix is None or prefix.startswith("__") or suffix is None:
                        continue
                    if prefix != last:
                        keys.append(prefix)
                        last = prefix
        except (OSError, tarfile.TarError) as e:  # a truncated shard keeps the keys read before the damage
            _logger.warning("listing %s stopped early: %r", url, e)
    return keys
