"""Write WebDataset tar shards (`{key}.png|jpg` + `{key}.cls`) and the `_info.json` timm's `wds/` reader reads.

Layout written under `out_dir`::

    {name}-{split}-000000.tar ...   members `{key}.png` (or .jpg/.webp) and `{key}.cls` (the label as text)
    _info.json                      {"name", "num_classes", "classes", "splits": {split: {"name", "num_samples",
                                     "filenames", "shard_lengths", "shuffle_seed"}}}

`key` is the sample's index in the source (mnist-mini order, or timm's image-folder order: class folders in
natural order, files sorted), zero-padded; so a shard sample can always be traced back to its source image.
With `key="filename"` (image folders) it is the file's stem instead (`n01440764_10026`) and a `{key}.json` member
records `{"filename", "label", "class_name"}`; with `shard_digits="auto"` the shard index has as many digits as
the last index needs. Together (name `imagenet1k`, splits `train,validation`) that is the layout of the published
`timm/imagenet-1k-wds` shards: `imagenet1k-train-{0000..1023}.tar`, `imagenet1k-validation-{00..63}.tar`.
Evaluation splits are written in source order (sample i of the shards is sample i of the folder, so the
evenly strided `num_samples` subset is the same set of images on both paths); training splits are shuffled
once with `seed` so every shard mixes the classes.

Shards are written to `*.tmp` and renamed when complete; `_info.json` is written last, so a reader never sees
an info file that names a missing or half-written shard.
"""
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .factory import _DECODE_ERRORS, DataError

__all__ = [
    "INFO_NAME",
    "ShardSource",
    "folder_source",
    "mnist_mini_source",
    "shard_index_digits",
    "torchvision_source",
    "write_dataset_shards",
    "write_shards",
]

_logger = logging.getLogger(__name__)

INFO_NAME = "_info.json"
EVAL_SPLITS = ("val", "validation", "test")
_RAW_EXT = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


@dataclass
class ShardSource:
    """One split of a source: `n` samples, `get(i)` -> (image bytes, extension, label), plus class names.

    `names` (image folders) are the samples' file names, for `key="filename"`.
    """

    n: int
    get: Callable[[int], tuple[bytes, str, int]]
    classes: list[str]
    names: Sequence[str] | None = None


def _encode(img: Image.Image, fmt: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(buf, format="JPEG", quality=95)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue(), fmt


def mnist_mini_source(split: str, image_format: str = "png") -> ShardSource:
    """The built-in `mnist-mini` (`train`: 4,000, `val`/`test`: 1,000), encoded losslessly as PNG by default."""
    from .mnist_mini import CLASS_NAMES, load_mnist_mini
    images, labels = load_mnist_mini(split)
    fmt = "png" if image_format == "keep" else image_format

    def get(i: int) -> tuple[bytes, str, int]:
        data, ext = _encode(Image.fromarray(images[i], mode="L"), fmt)
        return data, ext, int(labels[i])

    return ShardSource(len(labels), get, list(CLASS_NAMES))


def folder_source(data_dir: str, split: str, image_format: str = "keep") -> ShardSource:
    """An image folder `data_dir/split/<class>/<img>`, listed exactly like timm's (and `create_atcd_dataset`'s) reader.

    With `image_format='keep'` PNG/JPEG/WebP files are copied byte for byte (no re-encoding loss).
    """
    from timm.data.readers.reader_image_folder import ReaderImageFolder
    root = os.path.join(data_dir, split)
    if not os.path.isdir(root) and split in EVAL_SPLITS:
        root = next((os.path.join(data_dir, s) for s in EVAL_SPLITS if os.path.isdir(os.path.join(data_dir, s))), root)
    if not os.path.isdir(root):
        raise DataError(f"no '{split}' folder under {data_dir!r} (expected {data_dir}/{split}/<class>/<images>)")
    reader = ReaderImageFolder(root)
    if len(reader.samples) == 0:
        raise DataError(f"image folder {root!r} holds no images in class sub-folders")
    classes = [c for c, _ in sorted(reader.class_to_idx.items(), key=lambda kv: kv[1])]

    def get(i: int) -> tuple[bytes, str, int]:
        path, label = reader.samples[i]
        ext = _RAW_EXT.get(os.path.splitext(path)[1].lower())
        if image_format == "keep" and ext is not None:
            with open(path, "rb") as f:
                return f.read(), ext, int(label)
        with Image.open(path) as im:
            im.load()
            data, ext = _encode(im, "png" if image_format == "keep" else image_format)
        return data, ext, int(label)

    return ShardSource(len(reader.samples), get, classes, [os.path.basename(p) for p, _ in reader.samples])


def torchvision_source(name: str, root: str, split: str, image_format: str = "png") -> ShardSource:
    """A torchvision dataset already on disk under `root` (e.g. `CIFAR10`; nothing is downloaded)."""
    import torchvision
    cls = getattr(torchvision.datasets, name, None)
    if cls is None:
        raise DataError(f"torchvision has no dataset {name!r}")
    is_train = split == "train"
    try:
        ds = cls(root, train=is_train, download=False)
    except TypeError:  # datasets with a `split=` argument (SVHN, ...)
        ds = cls(root, split="train" if is_train else "test", download=False)
    except RuntimeError as e:
        raise DataError(f"torchvision {name} not found under {root!r}: {e}") from None
    fmt = "png" if image_format == "keep" else image_format

    def get(i: int) -> tuple[bytes, str, int]:
        img, label = ds[i]
        data, ext = _encode(img, fmt)
        return data, ext, int(label)

    classes = [str(c) for c in getattr(ds, "classes", [])]
    return ShardSource(len(ds), get, classes)


def _select(n: int, max_count: int | None, shuffle_seed: int | None) -> list[int]:
    """Source indices to write, in write order: an evenly strided class-mixed subset, then an optional shuffle."""
    if max_count is not None and max_count < n:
        step = n / max_count
        idx = [int(i * step) for i in range(max_count)]  # same rule as create_atcd_loader(num_samples=...)
    else:
        idx = list(range(n))
    if shuffle_seed is not None:
        idx = [idx[j] for j in np.random.RandomState(shuffle_seed).permutation(len(idx))]
    return idx


def write_shards(
        source: ShardSource,
        out_dir: str,
        name: str,
        split: str,
        shard_size: int = 10000,
        max_count: int | None = None,
        shuffle_seed: int | None = None,
        progress: bool = False,
        key: str = "index",
        shard_digits: int | str = 6,
        strict: bool = False,
) -> dict:
    """Write one split as tar shards of at most `shard_size` samples; return its `_info.json` split entry.

    Args:
        source: what to write (see `mnist_mini_source`, `folder_source`, `torchvision_source`).
        out_dir: output directory (created).
        name: dataset name, the shard file prefix.
        split: split name, as it will appear in `_info.json`.
        shard_size: max samples per shard.
        max_count: write only an evenly strided subset of this many samples.
        shuffle_seed: shuffle the sample order with this seed before writing (None: source order).
        progress: show a tqdm bar.
        key: `index` (the zero-padded source index) or `filename` (the file's stem, plus a `json` member with
            filename, label and class name; needs a source with file names, i.e. an image folder).
        shard_digits: digits of the shard index in the file name, or `auto`: as many as the last index needs.
        strict: a source image that cannot be read (only re-encoding reads pixels) raises `DataError` instead of
            being skipped, counted (`num_skipped`) and logged.

    Returns:
        `{"name", "num_samples", "filenames", "shard_lengths", "shuffle_seed", "num_skipped"}` (filenames relative
        to out_dir).
    """
    import webdataset as wds
    from tqdm import tqdm
    if shard_size < 1:
        raise DataError(f"--shard-size must be >= 1 (got {shard_size})")
    order = _select(source.n, max_count, shuffle_seed)
    if not order:
        raise DataError(f"split {split!r} of {name!r} has no samples to write")
    keys = _sample_keys(source, order, key, split)
    digits = shard_index_digits(math.ceil(len(order) / shard_size), shard_digits)
    os.makedirs(out_dir, exist_ok=True)
    filenames: list[str] = []
    lengths: list[int] = []
    failed = False
    skipped = 0

    def finalize(tmp_path: str):  # ShardWriter calls this after closing each shard
        if failed:  # an interrupted write leaves no complete-looking shard behind
            os.remove(tmp_path)
            return
        final = tmp_path[: -len(".tmp")]
        os.replace(tmp_path, final)
        filenames.append(os.path.basename(final))
        lengths.append(writer.count)

    pattern = os.path.join(out_dir, f"{name}-{split}-%0{digits}d.tar.tmp")
    # mtime fixed: the same inputs give byte-identical shards
    writer = wds.ShardWriter(pattern, maxcount=shard_size, maxsize=float("inf"), post=finalize, verbose=0, mtime=0)
    try:
        for i, k in tqdm(zip(order, keys), total=len(order), desc=f"{name}/{split}", disable=not progress,
                         unit="img"):
            try:
                data, ext, label = source.get(i)
            except _DECODE_ERRORS as e:  # as CheckedImageFolder: skip, count and name it, or fail under strict
                where = source.names[i] if source.names else f"sample {i}"
                if strict:
                    raise DataError(f"corrupt image {where} in split {split!r}: {e} (--strict-data)") from None
                skipped += 1
                _logger.warning("skipped corrupt image %s: %s (%d skipped so far)", where, e, skipped)
                continue
            sample = {"__key__": k, ext: data, "cls": str(label).encode()}
            if key == "filename":
                sample["json"] = json.dumps({"filename": source.names[i], "label": int(label),
                                             "class_name": source.classes[label]}).encode()
            writer.write(sample)
    except BaseException:
        failed = True
        raise
    finally:
        writer.close()
    if not filenames:
        raise DataError(f"split {split!r} of {name!r}: none of its {len(order)} images could be read")
    return {"name": split, "num_samples": sum(lengths), "filenames": filenames, "shard_lengths": lengths,
            "shuffle_seed": shuffle_seed, "num_skipped": skipped}


def shard_index_digits(num_shards: int, shard_digits: int | str = 6) -> int:
    """Digits of the shard index in shard file names: `shard_digits`, or for `auto` as many as the last index needs
    (1024 shards -> 4, `0000..1023`; 64 -> 2, `00..63`: the published timm/imagenet-1k-wds names)."""
    if shard_digits == "auto":
        return len(str(max(num_shards - 1, 0)))
    try:
        digits = int(shard_digits)
    except (TypeError, ValueError):
        digits = 0
    if digits < 1:
        raise DataError(f"--shard-digits must be a positive number or 'auto' (got {shard_digits!r})")
    return digits


def _sample_keys(source: ShardSource, order: list[int], key: str, split: str) -> list[str]:
    """`__key__` of each sample to write: the zero-padded source index, or the file stem (unique, dot-free)."""
    if key == "index":
        width = max(6, len(str(source.n - 1)))
        return [f"{i:0{width}d}" for i in order]
    if key != "filename":
        raise DataError(f"--key must be index or filename (got {key!r})")
    if source.names is None:
        raise DataError("--key filename needs a source with file names (--source folder)")
    keys = [os.path.splitext(source.names[i])[0] for i in order]
    # webdataset groups tar members by the name up to the first dot: a dotted or repeated stem would merge samples
    dotted = next((k for k in keys if "." in k or not k), None)
    if dotted is not None:
        raise DataError(f"--key filename: file stem {dotted!r} in split {split!r} is empty or has a dot; "
                        f"use --key index")
    dup = next((k for k, n in Counter(keys).items() if n > 1), None)
    if dup is not None:
        raise DataError(f"--key filename: two files of split {split!r} share the stem {dup!r}; use --key index")
    return keys


def write_info(out_dir: str, name: str, splits: dict[str, dict], classes: Sequence[str]) -> str:
    """Write (merge into) `_info.json` atomically; splits not given keep their existing entries."""
    path = os.path.join(out_dir, INFO_NAME)
    info = {}
    if os.path.exists(path):
        with open(path) as f:
            info = json.load(f)
    info.update(name=name, num_classes=len(classes), classes=list(classes))
    info.setdefault("splits", {}).update(splits)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, path)
    return path


def _remove_stale(out_dir: str, name: str, split: str, keep: Sequence[str]):
    """Shards of an earlier, larger write of the same split would be picked up by a brace pattern: remove them."""
    prefix = f"{name}-{split}-"
    for f in os.listdir(out_dir):
        if f.startswith(prefix) and f.endswith(".tar") and f not in keep:
            os.remove(os.path.join(out_dir, f))


def write_dataset_shards(
        source: str,
        out_dir: str,
        splits: Sequence[str] = ("train", "val"),
        data_dir: str | None = None,
        name: str | None = None,
        seed: int | None = 0,
        image_format: str = "keep",
        **write_kw,
) -> dict:
    """Write several splits of a source and then `_info.json`.

    Args:
        source: `mnist-mini`, `folder` (needs `data_dir`) or `torchvision:NAME` (needs `data_dir`).
        out_dir: output directory.
        splits: split names; eval splits (val/validation/test) are never shuffled.
        data_dir: image-folder root or torchvision root.
        name: dataset name (shard prefix); default derived from the source.
        seed: shuffle seed for training splits (None: source order).
        image_format: `keep` (copy files as they are / PNG for arrays), `png` or `jpg` (re-encode).
        **write_kw: `write_shards`'s options, the same for every split: shard_size, max_count (per split, an
            evenly strided subset), progress, key (`index` or `filename`), shard_digits (or `auto`), strict.

    Returns:
        the `_info.json` content written.
    """
    if image_format not in ("keep", "png", "jpg"):
        raise DataError(f"image format must be keep, png or jpg (got {image_format!r})")
    shard_index_digits(1, write_kw.get("shard_digits", 6))  # bad options fail before any source is loaded
    if write_kw.get("key") == "filename" and source not in ("folder", "imagefolder"):
        raise DataError("--key filename needs a source with file names (--source folder)")
    if source == "mnist-mini":
        make: Callable[[str], ShardSource] = lambda s: mnist_mini_source(s, image_format)
    elif source in ("folder", "imagefolder"):
        if not data_dir:
            raise DataError("--source folder needs --data-dir (root with train/ and val/ class folders)")
        make = lambda s: folder_source(data_dir, s, image_format)
    elif source.startswith("torchvision:"):
        if not data_dir:
            raise DataError("--source torchvision:NAME needs --data-dir (the torchvision root)")
        make = lambda s: torchvision_source(source.split(":", 1)[1], data_dir, s, image_format)
    else:
        raise DataError(f"unknown source {source!r}: mnist-mini, folder or torchvision:NAME")
    name = name or (source.split(":", 1)[-1].lower() if source != "folder" else
                    os.path.basename(os.path.normpath(data_dir or "folder")))
    entries, classes = {}, []
    for split in splits:
        src = make(split)
        classes = classes or src.classes
        entries[split] = write_shards(src, out_dir, name, split, shuffle_seed=None if split in EVAL_SPLITS else seed,
                                      **write_kw)
    write_info(out_dir, name, entries, classes)
    for split, e in entries.items():
        _remove_stale(out_dir, name, split, e["filenames"])
    with open(os.path.join(out_dir, INFO_NAME)) as f:
        return json.load(f)
