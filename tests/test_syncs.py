"""The host-sync counter (tests/syncs.py): each kind of sync is counted once per call with the line that made it,
pure tensor code (a training step on the device included) counts 0, and cpu tensors count only when asked; and the
engine's training loop, every method, makes no host sync between --log-interval points."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from fakedevice import fake_device
from syncs import KINDS, count_host_syncs

from atcd.models import NormalizedModel


@pytest.fixture
def dev():
    with fake_device() as d:
        yield d


# kind -> a statement making exactly one sync of that kind on device tensor `t` (4 floats) / `s` (0-dim)
ONE_SYNC = {
    "item": lambda t, s: s.item(),
    "cpu": lambda t, s: t.cpu(),
    "to_cpu": lambda t, s: t.to("cpu"),
    "tolist": lambda t, s: t.tolist(),
    "numpy": lambda t, s: np.asarray(t),  # calls Tensor.numpy(), which refuses a device tensor (as on CUDA)
    "float": lambda t, s: float(s),
    "int": lambda t, s: int(s),
    "index": lambda t, s: range(s.long()),
    "bool": lambda t, s: bool(s > 0),
    "nonzero": lambda t, s: t[t > 0],
}


def test_every_kind_has_a_case():
    assert sorted(ONE_SYNC) == sorted(KINDS)


@pytest.mark.parametrize("kind", sorted(ONE_SYNC))
def test_each_kind_is_counted_once_with_its_line(dev, kind):
    t, s = torch.arange(4.0, device=dev), torch.tensor(3.0, device=dev)
    with count_host_syncs() as syncs:
        if kind == "numpy":  # counted before numpy() refuses
            with pytest.raises((TypeError, RuntimeError), match="numpy"):
                ONE_SYNC[kind](t, s)
        else:
            ONE_SYNC[kind](t, s)
    assert syncs.total == 1 and syncs[kind] == 1, syncs.report()
    (where,) = {c.where for c in syncs.calls}
    assert where.startswith("tests/test_syncs.py:") and "<lambda>" in where, where
    assert kind in syncs.report() and where in syncs.report()


def test_numpy_of_a_cpu_tensor_counts_with_include_cpu():
    with count_host_syncs(include_cpu=True) as syncs:
        a = torch.ones(2).numpy()
    assert a.tolist() == [1, 1] and syncs["numpy"] == 1 and syncs.total == 1, syncs.report()


def test_pure_tensor_code_counts_zero(dev):
    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # its cpu `step` tensor's item() is not a device sync
    x, y = torch.rand(8, 1, 28, 28).to(dev), torch.arange(8).to(dev)
    with count_host_syncs() as syncs:
        for _ in range(2):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct = (logits.argmax(1) == y).sum()
            kept = torch.where(logits.argmax(1) == y, x.sum((1, 2, 3)), torch.zeros(8, device=dev))
    assert syncs.total == 0, syncs.report()
    assert correct.device == dev and kept.shape == (8,)


def test_cpu_tensors_count_only_with_include_cpu():
    s = torch.tensor(2.0)
    with count_host_syncs() as on_device_only, count_host_syncs(include_cpu=True) as everything:
        s.item()
        float(s)
        if s > 1:
            s.tolist()
    assert on_device_only.total == 0
    assert dict(everything.counts) == {"item": 1, "float": 1, "bool": 1, "tolist": 1}, everything.report()


def test_calls_in_a_loop_are_grouped_by_line(dev):
    t = torch.arange(3.0, device=dev)
    with count_host_syncs() as syncs:
        total = 0.0
        for v in t:
            total += v.item()
    assert total == 3.0
    assert syncs["item"] == 3 and len(syncs.by_location()) == 1, syncs.report()
    assert syncs.by_location().most_common(1)[0][1] == 3


def test_patches_are_removed_on_exit(dev):
    before = {n: torch.Tensor.__dict__.get(n) for n in ("item", "to", "__float__", "__bool__")}
    with count_host_syncs() as outer:
        with count_host_syncs() as inner:
            torch.ones(1, device=dev).item()
        torch.ones(1, device=dev).item()
    assert (inner.total, outer.total) == (1, 2)
    assert {n: torch.Tensor.__dict__.get(n) for n in before} == before
    with count_host_syncs() as later:
        pass
    torch.ones(1, device=dev).item()  # after the block: not counted anywhere
    assert later.total == 0


# ---- the engine's training loop ---------------------------------------------------------------------------------


METHODS = ["standard", "atcd", "pgd", "trades", "free", "fast", "yopo"]


def _train_epoch(dev, batches: list, method: str, **kw) -> dict:
    """One `train_one_epoch` on the fake device, as the trainer runs it: batches already there (a prepared
    loader's), the optimizer behind the trainer's `FiniteGuard` (SGD with momentum)."""
    from fakedevice import FakeAccelerator

    from atcd.config import TrainConfig
    from atcd.device import to_device
    from atcd.engine import train_one_epoch
    from atcd.faults import FiniteGuard
    from atcd.methods import StepContext, create_method

    own = {"atcd_T": 2, "atcd_K": 1} if method == "atcd" else {}
    cfg = TrainConfig.of(method=method, eps=0.3, attack_step=0.1, **own)
    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")).to(dev)
    acc = FakeAccelerator(dev)
    guard = FiniteGuard(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), acc)
    ctx = StepContext(model=model, attack_model=model, optimizer=guard, backward=acc.backward,
                      after_update=lambda: None)
    batches = [to_device(b, dev) for b in batches]
    return train_one_epoch(create_method(method, cfg), ctx, batches, acc, 0, **kw)


def _batches(mnist_test_batch, n: int = 4, size: int = 8) -> list:
    x, y = mnist_test_batch
    return [(x[i:i + size], y[i:i + size]) for i in range(0, n * size, size)]


@pytest.mark.parametrize("method", METHODS)
def test_train_loop_host_syncs_do_not_grow_with_the_batches(dev, method, mnist_test_batch):
    """Between log points a training step makes no host sync: the running loss, accuracy and M-H counts stay on
    the device, and so does the non-finite-update guard. With --log-interval 3 and 4 batches the host reads once at
    batch 3 (the progress bar's loss) and at the epoch end (the reduced sums; ATCD's reduced M-H counts)."""
    after = []  # syncs so far, after each batch
    with count_host_syncs() as syncs:
        stats = _train_epoch(dev, _batches(mnist_test_batch), method, progress=True, log_interval=3,
                             after_batch=lambda b, snapshot: after.append(syncs.total))  # None: go on
    assert after == [0, 0, 1, 1], syncs.report()
    epoch_end = {("tolist", "train_one_epoch")} | ({("cpu", "epoch_metrics")} if method == "atcd" else set())
    assert {(c.kind, c.where.split(" in ")[1]) for c in syncs.calls[1:]} == epoch_end, syncs.report()
    assert syncs.total == 1 + len(epoch_end), syncs.report()
    log_read = syncs.calls[0]
    assert log_read.kind == "float" and log_read.where.startswith("atcd/engine.py:"), syncs.report()
    assert stats["completed"] and 0.0 < stats["train_loss"] < 10.0 and 0.0 <= stats["train_adv_top1"] <= 100.0


def test_a_snapshot_is_read_only_when_asked_and_holds_the_epochs_sums(dev, mnist_test_batch):
    """`after_batch` gets the running sums as a callable: not calling it costs nothing; calling it reads the device
    once and gives the figures the epoch ends with (the float64 sum a mid-epoch checkpoint stores)."""
    snaps, reads = {}, {}

    def after_batch(b, snapshot):
        if b in (2, 4):
            before = syncs.total
            snaps[b] = snapshot()
            reads[b] = syncs.total - before
        return False

    with count_host_syncs() as syncs:
        stats = _train_epoch(dev, _batches(mnist_test_batch), "standard", progress=False, log_interval=100,
                             after_batch=after_batch)
    assert reads == {2: 1, 4: 1} and syncs.total == 3, syncs.report()  # two snapshots and the epoch end
    s2, s4 = snaps[2], snaps[4]
    assert (s2["n_loss"], s2["count"], s4["n_loss"], s4["count"]) == (2, 16, 4, 32)
    assert s2["weight_passes"] == 2 and s4["weight_passes"] == 4
    assert isinstance(s4["loss_sum"], float) and isinstance(s4["correct"], int)
    assert 0.0 < s2["loss_sum"] < s4["loss_sum"] and 0 <= s2["correct"] <= s4["correct"] <= 32
    assert stats["train_loss"] == s4["loss_sum"] / 4
    assert stats["train_adv_top1"] == 100.0 * (s4["correct"] / 32)
