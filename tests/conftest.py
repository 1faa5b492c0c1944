import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(2)


def run_script(*args, env=None, timeout=1800):
    """Run a repo script as a user would; returns CompletedProcess (text)."""
    e = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=ROOT)
    e.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def mnist_test_batch():
    from atcd.data import MnistMini
    ds = MnistMini("test")
    idx = torch.arange(0, 1000, 10)  # 100 images, 10 per class
    return ds.images[idx], ds.targets[idx]
