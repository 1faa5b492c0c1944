"""`--dataset torch/cifar10` (timm's name, torchvision's layout) on a CIFAR folder written from real digits
(`cifar_folder.write_cifar_folder`): the same tensors, labels and order as torchvision's own CIFAR10 reader (the one
RobustBench's `load_cifar10` uses), `test[:N]` = the first N, one-line errors, and a pickle that would run code is
refused unopened."""
import os
import pickle

import pytest
import torch
from cifar_folder import write_cifar_folder
from conftest import run_main

from atcd.data import create_atcd_dataset
from atcd.errors import DataError


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_cifar_folder(str(tmp_path_factory.mktemp("cifar")), n_train=200, n_test=60)


def test_reads_what_torchvision_reads_in_its_order(cifar_dir, monkeypatch):
    import torchvision
    import torchvision.transforms as T
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)  # not the published md5
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    theirs = torchvision.datasets.CIFAR10(cifar_dir, train=False, transform=T.ToTensor())
    ours = create_atcd_dataset("torch/cifar10", "test", data_dir=cifar_dir, input_size=(3, 32, 32))
    assert len(ours) == len(theirs) == 60 and not ours.official
    for i in range(len(ours)):
        (x, y), (xt, yt) = ours[i], theirs[i]
        assert y == yt and torch.equal(x, xt), i
    first = create_atcd_dataset("torch/cifar10", "test[:7]", data_dir=cifar_dir, input_size=(3, 32, 32))
    assert len(first) == 7 and all(torch.equal(first[i][0], ours[i][0]) for i in range(7))
    train = create_atcd_dataset("torch/cifar10", "train", data_dir=cifar_dir, input_size=(3, 32, 32),
                                is_training=True, aug_seed=0)
    assert len(train) == 200 and train[0][0].shape == (3, 32, 32)
    labels = {int(train[i][1]) for i in range(len(train))}
    assert labels == set(range(10))  # real digits, every class


def test_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="--dataset-download"):
        create_atcd_dataset("torch/cifar10", "test", data_dir=str(tmp_path), input_size=(3, 32, 32))
    r = run_main("validate.py", "--model", "resnet18_cifar", "--no-pretrained", "--dataset", "torch/cifar10",
                 "--data-dir", str(tmp_path), "--attacks", "clean", "--sanity-samples", "0", "--no-progress")
    assert r.returncode == 2 and "--dataset-download" in r.stderr and "Traceback" not in r.stderr, r.stderr


class _Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_batch_file_that_would_run_code_is_refused(tmp_path):
    root = write_cifar_folder(str(tmp_path), n_train=20, n_test=10)
    canary = tmp_path / "pwned"
    with open(os.path.join(root, "cifar-10-batches-py", "test_batch"), "wb") as f:
        pickle.dump({"data": _Canary(str(canary)), "labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="not part of a CIFAR batch"):
        create_atcd_dataset("torch/cifar10", "test", data_dir=root, input_size=(3, 32, 32))
    assert not canary.exists()


@pytest.mark.slow
def test_train_and_validate_on_torch_cifar10(cifar_dir, tmp_path):
    """Both scripts take the flag: a short standard training of the CIFAR ResNet-18, then validate on its run."""
    r = run_main("train_atcd.py", "--model", "resnet18_cifar", "--method", "standard", "--dataset", "torch/cifar10",
                 "--data-dir", cifar_dir, "--epochs", "1", "--batch-size", "32", "--train-samples-per-epoch", "64",
                 "--eval-samples", "20", "--output", str(tmp_path), "--experiment", "c10", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    weights = str(tmp_path / "c10" / "model.safetensors")
    r = run_main("validate.py", "--model", "resnet18_cifar", "--checkpoint", weights, "--dataset", "torch/cifar10",
                 "--data-dir", cifar_dir, "--attacks", "clean", "--num-samples", "20", "--sanity-samples", "0",
                 "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"clean"' in r.stdout.splitlines()[-1]
