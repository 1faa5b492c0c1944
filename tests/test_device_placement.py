"""`atcd.device`: batches reach the accelerator's device (checked on the fake device, where a forgotten cpu tensor
raises as on CUDA), channels-last only for image batches, pinned loader memory only for CUDA; and the engine's loops
with a loader that is not prepared by Accelerate (WebDataset), which today leave the batch on cpu."""
import collections
import warnings

import pytest
import timm
import torch
from fakedevice import FakeAccelerator, fake_device, is_fake
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from atcd.attacks import AttackConfig
from atcd.config import TrainConfig
from atcd.device import loader_kwargs_for, to_device
from atcd.engine import evaluate_attacks, train_one_epoch
from atcd.methods import StepContext, create_method
from atcd.models import NormalizedModel


@pytest.fixture
def dev():
    with fake_device() as d:
        yield d


def _model() -> NormalizedModel:
    torch.manual_seed(0)
    return NormalizedModel.from_timm(timm.create_model("smallcnn_mnist"))


def test_tensors_move_and_everything_else_passes_through(dev):
    x, y, keys = torch.rand(4, 1, 28, 28), torch.arange(4), ["a/0", "a/1", "b/0", "b/1"]
    xd, yd, kd = to_device((x, y, keys), dev)
    assert xd.device == dev and yd.device == dev and is_fake(xd)
    assert kd is keys  # sample keys are not touched
    assert torch.equal(xd.cpu(), x) and torch.equal(yd.cpu(), y) and yd.dtype == torch.int64
    as_list = to_device([x, y], dev)
    assert isinstance(as_list, list) and all(t.device == dev for t in as_list)
    assert to_device(x, dev).device == dev
    Batch = collections.namedtuple("Batch", "x y name")
    nt = to_device(Batch(x, y, "shard-0"), dev)
    assert isinstance(nt, Batch) and nt.x.device == dev and nt.name == "shard-0"
    with pytest.raises(TypeError, match="tuple or list"):
        to_device({"x": x}, dev)


def test_a_moved_batch_runs_through_a_device_model_and_a_forgotten_one_does_not(dev, mnist_test_batch):
    x, y = mnist_test_batch[0][:16], mnist_test_batch[1][:16]
    model = _model()
    want = model(x)
    model.to(dev)
    with pytest.raises(RuntimeError, match="same device"):
        model(x)  # the engine's bug: a WebDataset batch reaches a device model on cpu
    xd, yd = to_device((x, y), dev)
    got = model(xd)
    assert got.device == dev
    torch.testing.assert_close(got.detach().cpu(), want.detach(), rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == yd).sum().item() == (want.argmax(1) == y).sum().item()


def test_channels_last_only_for_4d_float_tensors(dev):
    x, y, masks = torch.rand(2, 3, 8, 8), torch.arange(2), torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    xd, yd, md = to_device((x, y, masks), dev, channels_last=True)
    assert xd.is_contiguous(memory_format=torch.channels_last) and not xd.is_contiguous()
    assert torch.equal(xd.cpu(), x)  # same values, other layout
    assert md.is_contiguous() and not md.is_contiguous(memory_format=torch.channels_last)  # not float: kept
    assert yd.is_contiguous()
    x3 = to_device(torch.rand(3, 8, 8), dev, channels_last=True)  # a single image (3-D): kept
    assert x3.is_contiguous()
    plain = to_device((x,), dev)[0]
    assert plain.is_contiguous() and not plain.is_contiguous(memory_format=torch.channels_last)


class _RecordCopies(TorchDispatchMode):
    """Records the keyword arguments of every device copy (`aten._to_copy`)."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.copies.append(dict(kwargs or {}))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("non_blocking", [True, False])
def test_non_blocking_is_passed_and_one_copy_per_tensor(dev, non_blocking):
    with _RecordCopies() as rec:
        to_device((torch.rand(2, 3, 4, 4), torch.arange(2), ["k0", "k1"]), dev, channels_last=True,
                  non_blocking=non_blocking)
    assert len(rec.copies) == 2, rec.copies  # the layout change rides on the move: no second copy
    assert all(c.get("non_blocking", False) is non_blocking and c["device"].type == dev.type for c in rec.copies)
    assert rec.copies[0].get("memory_format") == torch.channels_last


def test_tensors_already_on_the_device_are_not_copied(dev):
    x = torch.rand(2, 1, 4, 4)
    xd = x.to(dev)
    with _RecordCopies() as rec:
        out = to_device((x, xd), "cpu") + to_device((xd,), dev)
    assert out[0] is x and out[2] is xd and not is_fake(out[1]) and torch.equal(out[1], x)
    assert len(rec.copies) == 1  # only the device tensor sent back to cpu


def test_loader_kwargs_pin_memory_only_for_cuda():
    assert loader_kwargs_for("cuda") == {"pin_memory": True}
    assert loader_kwargs_for(torch.device("cuda", 1)) == {"pin_memory": True}
    assert loader_kwargs_for("cpu") == {} and loader_kwargs_for("meta") == {}
    with fake_device() as d:
        assert loader_kwargs_for(d) == {}
    ds = TensorDataset(torch.rand(4, 1, 2, 2), torch.arange(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no accelerator here: DataLoader warns and does not pin
        (x, y), = list(DataLoader(ds, batch_size=4, **loader_kwargs_for("cuda")))
    assert x.shape == (4, 1, 2, 2) and y.tolist() == [0, 1, 2, 3]


# ---- the engine's loops on the fake device --------------------------------------------------------------------


def _cpu_batches(mnist_test_batch, n: int = 2, size: int = 16, keys: bool = False) -> list:
    """What a WebDataset loader yields: cpu batches (it is never passed to accelerator.prepare)."""
    x, y = mnist_test_batch
    out = []
    for i in range(n):
        b = (x[i * size:(i + 1) * size], y[i * size:(i + 1) * size])
        out.append(b + ([f"k{i}-{j}" for j in range(size)],) if keys else b)
    return out


def _train(dev, batches: list, method: str = "atcd", model_out: list | None = None) -> dict:
    own = {"atcd_T": 2, "atcd_K": 2} if method == "atcd" else {}
    cfg = TrainConfig.of(method=method, eps=0.3, attack_step=0.1, eps_warmup_epochs=0.0, **own)
    model = _model().to(dev)
    acc = FakeAccelerator(dev)
    ctx = StepContext(model=model, attack_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                      backward=acc.backward, after_update=lambda: None)
    stats = train_one_epoch(create_method(method, cfg), ctx, batches, acc, 0, progress=False)
    if model_out is not None:
        model_out.append(model)
    return stats


def _assert_same_weights(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.detach().cpu(), q.detach().cpu(), rtol=1e-5, atol=1e-6, msg=name)


def test_harness_runs_the_train_loop_on_device_batches(dev, mnist_test_batch):
    """What a prepared loader yields (device batches) trains: the harness itself is sound, and (the fake device
    computing on the cpu) it trains exactly what the same loop on the cpu trains."""
    on_dev, on_cpu = [], []
    stats = _train(dev, [to_device(b, dev) for b in _cpu_batches(mnist_test_batch)], model_out=on_dev)
    ref = _train(torch.device("cpu"), _cpu_batches(mnist_test_batch), model_out=on_cpu)
    assert stats["completed"] and stats["weight_passes"] == 4 and 2.0 < stats["train_loss"] < 2.5
    assert stats["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-6)
    assert stats["train_adv_top1"] == ref["train_adv_top1"]
    _assert_same_weights(on_dev[0], on_cpu[0])


@pytest.mark.parametrize("keys", [False, True])
def test_train_loop_moves_cpu_batches_to_the_device(dev, mnist_test_batch, keys):
    on_dev, on_cpu = [], []
    stats = _train(dev, _cpu_batches(mnist_test_batch, keys=keys), model_out=on_dev)
    ref = _train(torch.device("cpu"), _cpu_batches(mnist_test_batch), model_out=on_cpu)
    assert stats["completed"] and stats["weight_passes"] == 4
    assert stats["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-6)
    _assert_same_weights(on_dev[0], on_cpu[0])


def test_eval_loop_moves_cpu_batches_to_the_device(dev, mnist_test_batch):
    """Per example, the fake device's clean and PGD verdicts are the cpu's (same seeds, same arithmetic)."""
    cfg = AttackConfig(eps=0.3, step_size=0.1, steps=2)
    res = evaluate_attacks(_model().to(dev), _cpu_batches(mnist_test_batch), ["clean", "pgd"], cfg,
                           FakeAccelerator(dev))
    ref = evaluate_attacks(_model(), _cpu_batches(mnist_test_batch), ["clean", "pgd"], cfg,
                           FakeAccelerator(torch.device("cpu")))
    assert res["clean"]["n"] == 32 and 0.0 <= res["pgd"]["top1"] <= res["clean"]["top1"]
    for name in ("clean", "pgd"):
        assert torch.equal(res[name]["_ok"].cpu(), ref[name]["_ok"].cpu()), name
        assert res[name]["top1"] == ref[name]["top1"]
