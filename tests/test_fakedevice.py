"""The fake accelerator device (tests/fakedevice.py): tensors on it are not on cpu, compute real values, and any op
that mixes them with a cpu tensor raises as it would on CUDA (except what CUDA accepts too)."""
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import ROOT
from fakedevice import BACKEND, DeviceMismatchError, FakeDeviceTensor, fake_device, is_fake
from timm.optim import create_optimizer_v2
from torch import nn

from atcd.models import NormalizedModel


@pytest.fixture
def dev():
    with fake_device() as d:
        yield d


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return NormalizedModel.from_timm(timm.create_model("smallcnn_mnist"))


def test_moves_and_factories_land_on_the_device_with_real_values(dev):
    x = torch.randn(4, 3)
    xd = x.to(dev)
    assert dev.type == BACKEND and xd.device == dev and xd.device.type != "cpu" and is_fake(xd)
    back = xd.cpu()
    assert type(back) is torch.Tensor and back.device.type == "cpu" and torch.equal(back, x)
    assert torch.equal(xd.to("cpu"), x) and torch.equal(x.to(dev, non_blocking=True).cpu(), x)
    made = {"zeros": torch.zeros(2, 3, device=dev), "full": torch.full((2,), 7.0, device=dev),
            "arange": torch.arange(5, device=dev), "tensor": torch.tensor([1.5, 2.5], device=dev),
            "randn": torch.randn(3, device=dev), "zeros_like": torch.zeros_like(x, device=dev),
            "new_ones": xd.new_ones(2), "rand_like": torch.rand_like(xd)}
    for name, t in made.items():
        assert t.device == dev, name
    assert made["arange"].cpu().tolist() == [0, 1, 2, 3, 4]
    assert made["tensor"].cpu().tolist() == [1.5, 2.5]
    assert float((xd * 2).sum()) == pytest.approx(float(x.sum() * 2), rel=1e-6)
    assert f"{xd.sum():.4f}" == f"{x.sum():.4f}"  # formatting a 0-dim tensor goes through item(), as on CUDA


# each case mixes a device tensor with a cpu tensor CUDA would refuse
MIXES = {
    "add": lambda d, c: torch.randn(3) + d,
    "add_inplace": lambda d, c: d.add_(c),
    "mul_cpu_first": lambda d, c: c * d,
    "matmul": lambda d, c: d @ c,
    "cat": lambda d, c: torch.cat([d, c]),
    "where": lambda d, c: torch.where(d > 0, d, c),
    "linear": lambda d, c: F.linear(d, c),
    "cross_entropy_cpu_target": lambda d, c: F.cross_entropy(d[None], torch.tensor([1])),
    "index_select": lambda d, c: d.index_select(0, torch.tensor([0])),
    "stack": lambda d, c: torch.stack([c, d]),
}


@pytest.mark.parametrize("case", sorted(MIXES))
def test_mixing_a_cpu_tensor_with_a_device_tensor_raises(dev, case):
    d, c = torch.ones(3, device=dev), torch.ones(3)
    if case == "linear":
        d, c = torch.ones(2, 3, device=dev), torch.ones(4, 3)
    with pytest.raises(DeviceMismatchError, match="Expected all tensors to be on the same device"):
        MIXES[case](d, c)


def test_what_cuda_accepts_across_devices_works(dev):
    d = torch.arange(6.0, device=dev).view(3, 2)
    assert (d * torch.tensor(2.0)).cpu().tolist() == [[0, 2], [4, 6], [8, 10]]  # a 0-dim cpu tensor: a scalar
    assert d[torch.tensor([2, 0])].cpu().tolist() == [[4, 5], [0, 1]]  # cpu indices are moved by CUDA
    d[torch.tensor([1])] = torch.tensor(-1.0, device=dev)
    assert d.cpu()[1].tolist() == [-1, -1]
    d.copy_(torch.zeros(3, 2))  # copies between devices are what copy_ is for
    assert d.abs().sum().item() == 0
    host = torch.ones(3, 2)
    host.copy_(d)
    assert host.sum().item() == 0


def test_cpu_generator_drawing_on_the_device_raises(dev):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(RuntimeError, match="device type for generator"):
        torch.rand(3, generator=g, device=dev)
    with pytest.raises(RuntimeError, match="device type for generator"):
        torch.empty(3, device=dev).uniform_(generator=g)
    assert torch.rand(3, generator=g).to(dev).device == dev  # drawing on cpu, then moving, is fine


def test_views_and_inplace_ops_alias_the_base(dev):
    base = torch.zeros(2, 3, device=dev)
    row = base[1]
    row.add_(5)
    base.t()[0].fill_(1)
    assert base.cpu().tolist() == [[1, 0, 0], [1, 5, 5]]
    img = torch.rand(2, 3, 4, 4).to(dev).contiguous(memory_format=torch.channels_last)
    assert img.is_contiguous(memory_format=torch.channels_last) and img.stride() == (48, 1, 12, 3)


def test_resizing_a_device_tensor_in_place_is_refused_loudly(dev):
    out = torch.empty(0, device=dev)
    with pytest.raises(NotImplementedError, match="resized a fake-device tensor"):
        torch.add(torch.ones(3, device=dev), 1, out=out)


def test_model_left_on_cpu_or_a_forgotten_input_raises(dev):
    model = _small_model().to(dev)
    assert all(p.device == dev and is_fake(p) and isinstance(p, nn.Parameter) for p in model.parameters())
    assert all(b.device == dev for b in model.buffers())
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(RuntimeError, match="same device"):
        model(x)
    with pytest.raises(RuntimeError, match="same device"):
        _small_model()(x.to(dev))

    class MakesCpuTensor(nn.Module):  # a tensor built without device= lands on cpu: a classic GPU-only bug
        def forward(self, z):
            return z + torch.ones(z.shape)

    with pytest.raises(RuntimeError, match="same device"):
        MakesCpuTensor()(x.to(dev))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_steps_on_the_device_match_cpu(dev, opt, mnist_test_batch):
    """forward/backward/optimizer step with timm's create_optimizer_v2: the same numbers as on cpu."""
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    models = {"cpu": _small_model(), "dev": _small_model().to(dev)}
    opts = {k: create_optimizer_v2(m, opt=opt, lr=1e-3, weight_decay=1e-4, momentum=0.9) for k, m in models.items()}
    losses = {k: [] for k in models}
    for _ in range(3):
        for k, m in models.items():
            xb, yb = (x, y) if k == "cpu" else (x.to(dev), y.to(dev))
            loss = F.cross_entropy(m(xb), yb)
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            losses[k].append(loss.item())
    assert losses["dev"] == pytest.approx(losses["cpu"], rel=1e-5, abs=1e-6)
    assert losses["dev"][-1] < losses["dev"][0]  # really trained
    for (name, p_cpu), p_dev in zip(models["cpu"].named_parameters(), models["dev"].parameters(), strict=True):
        assert p_dev.device == dev and p_dev.grad.device == dev, name
        torch.testing.assert_close(p_dev.detach().cpu(), p_cpu.detach(), rtol=1e-5, atol=1e-6)
    state = next(iter(opts["dev"].state.values()))
    buffers = [v for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    assert buffers and all(v.device == dev for v in buffers), state.keys()  # momentum / moments live on the device


def test_backward_works_after_a_cpu_backward_started_the_autograd_engine():
    """In a fresh interpreter (the engine starts once per process): a cpu backward first, as in a test session."""
    code = ("import sys; sys.path.insert(0, 'tests'); import torch\n"
            "w = torch.ones(2, requires_grad=True); (w * 2).sum().backward()\n"
            "from fakedevice import fake_device\n"
            "with fake_device() as d:\n"
            "    v = torch.ones(2, device=d, requires_grad=True); (v * 3).sum().backward()\n"
            "    print(v.grad.device, v.grad.tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"{BACKEND}:0 [3.0, 3.0]"


def test_the_device_is_an_available_accelerator_only_inside_the_context():
    with fake_device() as d:
        assert torch.accelerator.is_available() and torch.accelerator.current_accelerator().type == d.type
    # outside, DataLoader pinning etc. stay off (a registered PrivateUse1 is torch's accelerator even beside CUDA)
    assert not torch.accelerator.is_available()


def test_device_tensors_outside_the_context_still_compute_and_refuse_cpu_tensors():
    with fake_device() as d:
        xd = torch.ones(3, device=d)
    assert (xd + 1).cpu().tolist() == [2, 2, 2]  # ops on existing device tensors need no mode
    assert isinstance(torch.ones(3).to(d), FakeDeviceTensor)  # allocation has a backend kernel too
    with pytest.raises(RuntimeError, match="same device"):
        xd + torch.ones(3)
    with pytest.raises(NotImplementedError):  # factories whose kernel resizes its output need the context
        torch.arange(3, device=d)
