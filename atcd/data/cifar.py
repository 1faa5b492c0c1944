"""CIFAR-10 / CIFAR-100 as timm names them (`--dataset torch/cifar10`, `torch/cifar100`): torchvision's layout,
read safely.

The folder is torchvision's: `--data-dir ROOT` holds `cifar-10-batches-py/` (or `cifar-100-python/`), and
`--dataset-download` fetches it there with torchvision's own download (URL and md5 from `torchvision.datasets.CIFAR10`)
when it is missing. The batch files are Python pickles; torchvision reads them with a plain `pickle.load`, which runs
whatever a crafted file asks for, so they are read here with an unpickler that accepts only the numpy arrays, lists,
dicts and bytes a CIFAR batch holds (anything else is refused). Samples come in torchvision's order (the order
RobustBench's `load_cifar10` uses); a split may name its first N images, `test[:N]` (timm's split syntax).
Files whose md5 differs from the published ones (a copy written by a test, a modified set) are read all the same,
with a warning, and `dataset.official` says which it is.
"""
import hashlib
import logging
import os
import pickle
import re

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from .transforms import Reseeded

__all__ = ["TORCH_CIFAR", "TorchCifar", "parse_split"]

_logger = logging.getLogger(__name__)

TORCH_CIFAR = ("torch/cifar10", "torch/cifar100")
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of a CIFAR batch")


def _load_batch(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not a CIFAR batch file ({e})") from None
    if not isinstance(obj, dict) or "data" not in obj:
        raise DataError(f"{path}: not a CIFAR batch file (no 'data' array)")
    return obj


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_split(split: str) -> tuple[str, int | None]:
    """'test[:1000]' -> ('test', 1000); 'train' -> ('train', None)."""
    m = re.fullmatch(r"(\w+)(?:\[:(\d+)\])?", split.strip())
    if not m:
        raise DataError(f"split {split!r}: expected NAME or NAME[:N] (e.g. test[:1000])")
    return m[1], (int(m[2]) if m[2] else None)


def _torchvision_class(name: str):
    from torchvision.datasets import CIFAR10, CIFAR100
    return {"torch/cifar10": CIFAR10, "torch/cifar100": CIFAR100}[name]


class TorchCifar(Dataset):
    """(float [0,1] CHW tensor, int label) per image of a CIFAR split in torchvision's layout (module docstring).

    Args:
        name: `torch/cifar10` or `torch/cifar100`.
        root: the folder holding torchvision's batch folder.
        split: `train`, or `test` / `val` / `validation` (the test batch), optionally `[:N]`.
        transform: PIL image -> tensor (a `Reseeded` one is called with (img, epoch, index)).
        download: fetch the archive with torchvision's download into `root` when the batch folder is missing.

    Raises:
        DataError: no batch folder (and no --dataset-download), an unreadable or non-CIFAR file.
    """

    def __init__(self, name: str, root: str, split: str, transform, download: bool = False):
        cls = _torchvision_class(name)
        base, n = parse_split(split)
        files = cls.train_list if base == "train" else cls.test_list
        if base not in ("train", "test", "val", "validation"):
            raise DataError(f"--dataset {name}: no split {base!r} (train, or test / val for the test batch)")
        folder = os.path.join(root, cls.base_folder)
        if not os.path.isdir(folder):
            if not download:
                raise DataError(f"--dataset {name}: no {cls.base_folder}/ in --data-dir {root!r} (torchvision's "
                                f"layout); add --dataset-download to fetch it there")
            self._download(cls, root)
        data, labels, self.official = [], [], True
        for fname, md5 in files:
            path = os.path.join(folder, fname)
            if not os.path.isfile(path):
                raise DataError(f"--dataset {name}: {path} is missing")
            self.official &= _md5(path) == md5
            batch = _load_batch(path)
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in batch.get("labels", batch.get("fine_labels", [])))
        if not self.official:
            _logger.warning("%s: the batch files are not the published %s files (md5 differs): read as they are",
                            folder, name)
        self.data = np.concatenate(data).transpose(0, 2, 3, 1)  # HWC uint8, as torchvision holds it
        self.targets = labels
        if len(self.targets) != len(self.data):
            raise DataError(f"{folder}: {len(self.data)} images but {len(self.targets)} labels")
        if n is not None:
            self.data, self.targets = self.data[:n], self.targets[:n]
        meta = os.path.join(folder, cls.meta["filename"])
        self.classes = [str(c) for c in _load_batch_meta(meta, cls.meta["key"])] if os.path.isfile(meta) else None
        self.name, self.split, self.transform, self.epoch = name, split, transform, 0

    @staticmethod
    def _download(dataset_cls, root: str):
        from torchvision.datasets.utils import download_and_extract_archive
        rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        if rank != 0:  # one download per machine: the other processes wait for its folder
            import time
            for _ in range(1800):
                if os.path.isdir(os.path.join(root, dataset_cls.base_folder)):
                    time.sleep(2)
                    return
                time.sleep(1)
            raise DataError(f"waited 30 min for local rank 0 to download {dataset_cls.filename} into {root}")
        try:
            download_and_extract_archive(dataset_cls.url, root, filename=dataset_cls.filename, md5=dataset_cls.tgz_md5)
        except Exception as e:  # noqa: BLE001  (urllib, http and tar errors)
            raise DataError(f"--dataset-download: could not fetch {dataset_cls.url} into {root} ({e})") from None

    def __len__(self) -> int:
        return len(self.targets)

    def set_epoch(self, epoch: int):
        """The epoch of the augmentation draws (training transforms)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.data[index])
        x = self.transform(img, self.epoch, index) if isinstance(self.transform, Reseeded) else self.transform(img)
        return x, self.targets[index]


def _load_batch_meta(path: str, key: str) -> list:
    try:
        with open(path, "rb") as f:
            meta = _CifarUnpickler(f, encoding="latin1").load()
        return list(meta[key])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError):
        return []
