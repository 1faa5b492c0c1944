"""`create_atcd_dataset` / `create_atcd_loader`: one entry point for built-in sets and image folders."""
import os
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from .mnist_mini import MnistMini
from .transforms import create_pixel_transform

__all__ = ["DataError", "create_atcd_dataset", "create_atcd_loader", "list_builtin_datasets", "split_holdout"]


class DataError(ValueError):
    """Bad dataset specification (unknown name, missing folder, no classes)."""


_BUILTIN: dict[str, Callable[[str], Dataset]] = {"mnist-mini": MnistMini}


def list_builtin_datasets():
    return sorted(_BUILTIN)


def create_atcd_dataset(
        name: str,
        split: str,
        data_dir: str | None = None,
        input_size: tuple[int, int, int] = (1, 28, 28),
        is_training: bool = False,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
) -> Dataset:
    """Dataset yielding (float [0,1] CHW tensor, int label).

    Args:
        name: a built-in name (`mnist-mini`) or '' / 'folder' for an image folder at `data_dir/split`.
        split: 'train' or 'val'/'test'.
        data_dir: root with `train/` and `val/` class sub-folders (image folders only).
    """
    if name in _BUILTIN:
        return _BUILTIN[name](split)
    if name not in ("", "folder", "imagefolder"):
        raise DataError(f"unknown dataset {name!r}; built-in: {list_builtin_datasets()}, or give --data-dir "
                        f"with train/ and val/ class folders (--dataset folder)")
    if not data_dir:
        raise DataError("an image-folder dataset needs --data-dir")
    root = data_dir
    for cand in ([split] if split == "train" else [split, "val", "validation", "test"]):
        if os.path.isdir(os.path.join(data_dir, cand)):
            root = os.path.join(data_dir, cand)
            break
    else:
        raise DataError(f"no '{split}' folder under {data_dir!r} (expected {data_dir}/{split}/<class>/<images>)")
    from timm.data import create_dataset
    transform = create_pixel_transform(input_size, is_training, interpolation, crop_pct)
    try:
        ds = create_dataset("", root=root, split=split, is_training=is_training, transform=transform)
    except Exception as e:  # timm raises deep inside the folder reader on empty/odd trees
        raise DataError(f"could not read image folder {root!r}: {e}") from None
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
        persistent_workers=False,
    )


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
