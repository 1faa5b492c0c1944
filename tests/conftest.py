import logging
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
THREADS = os.environ.get("OMP_NUM_THREADS", "2")  # scripts/test.sh: 1 per pytest-xdist worker
torch.set_num_threads(int(THREADS))


def run_script(*args, env=None, timeout=1800):
    """Run a repo script as a user would; returns CompletedProcess (text)."""
    e = dict(os.environ, OMP_NUM_THREADS=THREADS, PYTHONPATH=ROOT)
    e.update(env or {})
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout,
                       check=False)
    return tolerate_teardown_abort(r)


def tolerate_teardown_abort(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`r` with exit 0 if it failed only by the upstream gloo teardown abort (`atcd.launch`), with a warning, so the
    tests judge the run by what it wrote and printed."""
    from atcd.launch import TEARDOWN_ABORT, teardown_abort
    if teardown_abort(r.returncode, r.stderr):
        import warnings
        warnings.warn(f"2-process run aborted in teardown ({TEARDOWN_ABORT!r}); its results are checked as usual")
        r.returncode = 0
    return r


class Recorder(torch.nn.Module):
    """The real model; records every call's input, train flag and logits (tests read what a method computed)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, x):
        z = self.inner(x)
        self.calls.append((x.detach().clone(), self.training, z.detach().float()))
        return z


def load_script(path: str):
    """A repo script (`train_atcd.py`, `scripts/publish.py`) as a module, imported once per test process."""
    import importlib.util
    path = path if path.endswith(".py") else path.replace(".", "/") + ".py"  # "scripts.publish" too
    name = "_script_" + path.removesuffix(".py").replace("/", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def run_main(script: str, *args, threads: int | None = None) -> subprocess.CompletedProcess:
    """Call a repo script's `main(argv)` in this process (`train_atcd.py`, `scripts/publish.py`): no interpreter
    start-up (5 s a run), for the runs whose point is what they write, print and return rather than the process
    itself (environment, signals, launchers: `run_script`). Same result shape as `run_script`. An exception escaping
    main (the traceback a user would see) propagates and fails the test. `threads`: torch's thread count for the
    call (1 for a result compared per example with launched ranks, which run one thread each: the reduction order of
    a convolution follows the thread count)."""
    import contextlib
    import io

    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)  # each run picks its own precision, as a new process does
    mod = load_script(script)
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []  # as in a new process: the script's logging.basicConfig installs its handler, on `err`
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = mod.main(list(args)) or 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            root.handlers = handlers
            root.setLevel(level)
            torch.set_num_threads(threads_before)
    return subprocess.CompletedProcess([script, *args], rc, out.getvalue(), err.getvalue())


def pytest_collection_modifyitems(items):
    """The `longest` tests first (longest-first scheduling): with pytest-xdist the other worker takes the rest."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)


@pytest.fixture(scope="session")
def mnist_test_batch():
    from atcd.data import MnistMini
    ds = MnistMini("test")
    idx = torch.arange(0, 1000, 10)  # 100 images, 10 per class
    return ds.images[idx], ds.targets[idx]


@pytest.fixture(scope="session")
def standard_model():
    """The small CNN trained normally on mnist-mini (2 epochs, in-process): accurate, not robust."""
    import timm

    from atcd.data import MnistMini
    from atcd.models import NormalizedModel
    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist"))
    ds = MnistMini("train")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(2):
        perm = torch.randperm(len(ds.targets), generator=g)
        for i in range(0, len(perm) - 63, 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(ds.images[idx]), ds.targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
