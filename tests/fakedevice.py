"""A fake accelerator device for CPU-only tests: tensors report a device that is not `cpu` but compute on CPU.

Usage::

    with fake_device() as dev:                      # dev == torch.device("fakegpu", 0)
        model.to(dev)
        loss = F.cross_entropy(model(x.to(dev)), y.to(dev))   # real numbers
        model(x)                                    # x left on cpu: RuntimeError, as on CUDA

Design (torch 2.14.1, CPU build behaviour; chosen after trying the alternatives below):

- The device is PyTorch's PrivateUse1 backend renamed `fakegpu` through the Python-backend helper
  `torch.utils.backend_registration._setup_privateuseone_for_python_backend` (private, experimental: it calls
  `rename_privateuse1_backend` and `generate_methods_for_privateuse1_backend` and registers hooks and a device
  guard through `torch._C._acc`, which the autograd engine needs to run a backward on a non-cpu device). Our
  hooks report the device available only inside `fake_device()`, so elsewhere `torch.accelerator` still sees a
  cpu-only machine (DataLoader pinning stays off). The rename happens once per process and cannot be undone;
  nothing else in this project uses PrivateUse1.
- A tensor on it is a wrapper subclass, `FakeDeviceTensor` (`torch.Tensor._make_wrapper_subclass`, as DTensor
  and FakeTensor are built), holding a real CPU tensor `inner` with the same sizes and strides. Every aten op
  on a wrapper reaches `__torch_dispatch__` (the Python key sits above the backend key, below autograd), which
  checks the devices of all tensor arguments the way CUDA does, runs the op on the inner CPU tensors and
  re-wraps the outputs. Autograd, views (a view wraps a view of the inner tensor, so in-place ops on views reach
  the base), `nn.Module.to`, `nn.Parameter` and optimizers (single-tensor code path: `foreach` is only picked
  for plain `torch.Tensor` parameters) all work with real values.
- A `TorchDispatchMode` active inside `fake_device()` turns ops without a wrapper argument that ask for the
  device (`x.to(dev)`, `torch.zeros(..., device=dev)`, `torch.arange(n, device=dev)`) into CPU ops whose
  outputs are wrapped. Three PrivateUse1 kernels (`empty.memory_format`, `empty_strided`, `_copy_from`) cover
  the paths where C++ hides Python modes (`torch.tensor(data, device=dev)`); they also make `x.to(dev)` work
  outside the context, while factories that resize their output (`arange`) need it.

Device rule (what CUDA accepts, so the fake device neither misses a real bug nor invents one): every tensor
argument of an op must be on the fake device, except 0-dim CPU tensors in pointwise ops (TensorIterator's "cpu
scalar", e.g. Adam's `step`), the source of `copy_`, the indices of `index`/`index_put_` (CUDA moves CPU
indices) and a cross-device `_to_copy`. A CPU `torch.Generator` drawing on the device raises, as on CUDA.

What did not work, or was rejected:

- A pure PrivateUse1 backend with Python kernels (`torch.library.impl(..., "PrivateUse1")` on tensors from
  `torch._C._acc.create_empty_tensor`, as in pytorch's test_privateuseone_python_backend.py): checked here, those
  tensors have a 0-byte storage with a null data pointer, so the values must live in a Python attribute, and
  `t.data` and `nn.Parameter(t)` come back without it (new TensorImpls); `create_empty_tensor` only takes sizes
  (always contiguous strides, so no channels-last), and every op of forward/backward/optimizer needs a kernel.
- The C++ OpenReg extension (`test/cpp_extensions/open_registration_extension`): not shipped in the wheel;
  building a C++ backend in a test session is slow and depends on a toolchain matching torch's ABI.
- A wrapper claiming `device="cuda"` (as FakeTensor can): code under test would take CUDA-only branches
  (`pin_memory`, streams, fused/capturable optimizers) that need a driver this machine does not have.
- The `meta` device: mixing cpu and meta tensors raises too, but nothing is computed, so losses, accuracies and
  attack success (anything data-dependent, incl. `.item()`) cannot be checked.

Importing this module registers the backend (once per process): the autograd engine sizes its per-device queues
at the process's first backward, so the backend must exist by then, which a test module importing this at
collection ensures. If a backward ran before the import, the engine has no queue for the device (backward would
fail an internal assert in engine.cpp) and `fake_device()` runs backwards in the calling thread instead
(`torch.autograd.set_multithreading_enabled(False)`; slower here with 2 intra-op threads).

Limits: `torch.Generator(device=dev)`, `torch.autocast(device_type="fakegpu")`, pinned memory, streams and
saving a fake-device tensor with `torch.save` are not supported; ops that resize a fake-device tensor in place
(`out=` with a wrong size, `resize_`, `set_`) raise `NotImplementedError`; `torch.compile` is untested. Once
registered, PrivateUse1 is the process's `torch.accelerator` even on a GPU machine (torch picks a registered
PrivateUse1 first) and reports itself unavailable outside `fake_device()`: code relying on `torch.accelerator`
for the real GPU (DataLoader pinning) should not share a test process with it; `torch.cuda` is unaffected. Every op
pays a Python dispatch: the training methods' steps on the small MNIST CNN (batch 32) run 1.5-3x slower than on
plain cpu.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from typing_extensions import Self  # typing.Self needs 3.11; typing_extensions comes with torch

__all__ = ["BACKEND", "DeviceMismatchError", "FakeAccelerator", "FakeDeviceTensor", "fake_device", "is_fake"]

BACKEND = "fakegpu"
aten = torch.ops.aten

# ops whose CUDA kernels accept a tensor argument on another device
_CROSS_DEVICE = {aten.copy_.default, aten._to_copy.default, aten._copy_from.default,
                 aten._copy_from_and_resize.default}
# the indices (argument 1) of these may be on cpu: CUDA moves them to the device
_CPU_INDICES = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default,
                aten._unsafe_index.Tensor, aten._unsafe_index_put.default}


class DeviceMismatchError(RuntimeError):
    """An op got a tensor on another device than the fake device (a `RuntimeError`, as CUDA's, with its text)."""


_LIB: torch.library.Library | None = None  # kept alive: dropping it would unregister the kernels
_depth = 0  # nesting of fake_device() blocks: the device reports itself available only inside one


class _Hooks(torch._C._acc.PrivateUse1Hooks):
    """Available only inside `fake_device()`: elsewhere `torch.accelerator` (DataLoader pinning...) sees a cpu
    machine, as before the backend was registered."""

    def is_available(self) -> bool:
        return _depth > 0

    def has_primary_context(self, dev_id: int) -> bool:
        return True

    def is_built(self) -> bool:
        return True


class _BackendModule:
    """`torch.fakegpu`: what torch asks a device module (seeding, device count, availability)."""

    def is_available(self) -> bool:
        return _depth > 0

    def is_initialized(self) -> bool:
        return True

    def current_device(self) -> int:
        return 0

    def device_count(self) -> int:
        return 1

    def _is_in_bad_fork(self) -> bool:
        return False

    def manual_seed_all(self, seed: int) -> None:
        pass  # draws on the device use the cpu generator (seeded by torch.manual_seed)


def _ensure_backend() -> torch.device:
    """Rename PrivateUse1 to `fakegpu` and register its allocation and copy kernels, once per process."""
    global _LIB
    name = torch._C._get_privateuse1_backend_name()
    if name == "privateuseone":
        from torch.utils.backend_registration import _setup_privateuseone_for_python_backend
        _setup_privateuseone_for_python_backend(BACKEND, backend_module=_BackendModule(), hook=_Hooks())
    elif name != BACKEND:
        raise RuntimeError(f"PrivateUse1 is already registered as {name!r}: the fake device cannot use it")
    if _LIB is None:
        # reached where C++ hides Python modes (torch.tensor(data, device=...) copies with them excluded)
        lib = torch.library.Library("aten", "IMPL")
        lib.impl("empty.memory_format", _empty, "PrivateUse1")
        lib.impl("empty_strided", _empty_strided, "PrivateUse1")
        lib.impl("_copy_from", _copy_from, "PrivateUse1")
        _LIB = lib
    return torch.device(BACKEND, 0)


def _engine_queues_device() -> bool:
    """Whether the autograd engine runs a backward on the device in its device threads (see the module docstring)."""
    w = FakeDeviceTensor(torch.ones(1)).requires_grad_()
    try:
        (w * 2).sum().backward()
    except RuntimeError as e:
        if "device_ready_queues_" not in str(e):
            raise
        return False
    return True


def _empty(size, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return FakeDeviceTensor(torch.empty(size, dtype=dtype, layout=layout,
                                        memory_format=memory_format or torch.contiguous_format))


def _empty_strided(size, stride, *, dtype=None, layout=None, device=None, pin_memory=None):
    return FakeDeviceTensor(torch.empty_strided(size, stride, dtype=dtype, layout=layout))


def _copy_from(src, dst, non_blocking=False):
    (dst.inner if isinstance(dst, FakeDeviceTensor) else dst).copy_(src.inner if isinstance(src, FakeDeviceTensor)
                                                                     else src)
    return dst


def _is_fake_device(device: Any) -> bool:
    return device is not None and torch.device(device).type == BACKEND


def is_fake(t: Any) -> bool:
    """True for a tensor on the fake device."""
    return isinstance(t, FakeDeviceTensor)


class FakeDeviceTensor(torch.Tensor):
    """A tensor on the `fakegpu` device whose values live in `inner`, a CPU tensor of the same layout."""

    inner: torch.Tensor
    # no __torch_function__ handling: everything goes through __torch_dispatch__ (as for DTensor)
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> Self:
        if type(inner) is not torch.Tensor or inner.device.type != "cpu":
            raise TypeError(f"FakeDeviceTensor wraps a plain cpu tensor, got {type(inner).__name__} on "
                            f"{inner.device}")
        r = torch.Tensor._make_wrapper_subclass(
            cls, inner.size(), strides=inner.stride(), storage_offset=inner.storage_offset(), dtype=inner.dtype,
            layout=inner.layout, device=torch.device(BACKEND, 0), requires_grad=False)
        r.inner = inner
        return r

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        body = repr(self.inner)
        return body[:-1] + f", device='{self.device}')" if body.endswith(")") else body

    def tolist(self) -> Any:
        return self.inner.tolist()  # torch refuses tolist() on subclasses; CUDA tensors copy to the host

    def numpy(self, *, force: bool = False) -> Any:
        raise TypeError(f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to copy the "
                        f"tensor to host memory first.")  # CUDA's refusal

    def __format__(self, spec: str) -> str:
        # as torch.Tensor does for plain 0-dim tensors (f"{loss:.3f}"): through item(), a host sync
        return self.item().__format__(spec) if self.dim() == 0 else super().__format__(spec)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = kwargs.get("device")
        to_fake = target is None or _is_fake_device(target)
        _check_devices(func, args, kwargs, to_fake)
        wrappers = {}

        def unwrap(t):
            if isinstance(t, FakeDeviceTensor):
                wrappers[id(t.inner)] = t
                return t.inner
            return t

        a, k = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        if target is not None and to_fake:
            k["device"] = torch.device("cpu")
        out = func(*a, **k)
        if not to_fake:  # e.g. `.cpu()` / `.to("cpu")`: a plain cpu tensor, as a real device copy gives
            return out
        return tree_map(lambda t: _rewrap(t, wrappers), out)


def _rewrap(t: Any, wrappers: dict[int, FakeDeviceTensor]) -> Any:
    """Wrap an op's output; an input returned as such (in-place and out= ops) comes back as its own wrapper."""
    if not isinstance(t, torch.Tensor):
        return t
    w = wrappers.get(id(t))
    if w is None:
        return FakeDeviceTensor(t)
    if w.shape != t.shape or w.stride() != t.stride() or w.storage_offset() != t.storage_offset():
        raise NotImplementedError("an op resized a fake-device tensor in place (out= of another size, resize_, "
                                  "set_): not supported by the fake device")
    return w


def _check_devices(func, args: tuple, kwargs: dict, to_fake: bool) -> None:
    """Raise as CUDA would when a tensor argument of `func` is not on the fake device."""
    if func in _CROSS_DEVICE:
        return
    pointwise = torch.Tag.pointwise in func.tags
    checked = args
    if func in _CPU_INDICES and len(args) > 1:  # CUDA accepts cpu indices
        checked = (args[0], *args[2:])
    for t in tree_leaves((checked, kwargs)):
        if isinstance(t, torch.Generator) and to_fake and t.device.type != BACKEND:
            raise DeviceMismatchError(f"Expected a '{BACKEND}' device type for generator but found "
                                      f"'{t.device.type}'")
        if not isinstance(t, torch.Tensor) or isinstance(t, FakeDeviceTensor):
            continue
        if pointwise and t.dim() == 0 and t.device.type == "cpu":  # a cpu scalar, accepted by TensorIterator
            continue
        raise DeviceMismatchError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"{BACKEND}:0 and {t.device}! (fake device: {func} got a {tuple(t.shape)} tensor on "
                           f"{t.device})")


class _FakeDeviceMode(TorchDispatchMode):
    """Runs ops that create a tensor on the fake device (factories, cpu -> device copies) on cpu and wraps them."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _is_fake_device(kwargs.get("device")) or any(isinstance(t, FakeDeviceTensor)
                                                              for t in tree_leaves((args, kwargs))):
            return func(*args, **kwargs)  # a wrapper argument: the subclass handles it
        _check_devices(func, (), {k: v for k, v in kwargs.items() if k != "device"}, True)
        out = func(*args, **{**kwargs, "device": torch.device("cpu"), **({"pin_memory": False}
                                                                         if "pin_memory" in kwargs else {})})
        return tree_map(lambda t: FakeDeviceTensor(t) if isinstance(t, torch.Tensor) else t, out)


@contextlib.contextmanager
def fake_device() -> Iterator[torch.device]:
    """Context in which `torch.device("fakegpu", 0)` behaves as an accelerator backed by cpu memory.

    Yields:
        The fake device. Tensors and modules moved there compute real values; an op mixing them with a cpu
        tensor (other than a 0-dim one in a pointwise op, as CUDA allows) raises `RuntimeError`.
    """
    global _depth
    dev = _ensure_backend()
    _depth += 1
    try:
        # backward in the calling thread: the autograd engine sizes its per-device queues once, at the process's
        # first backward, so a backward on cpu before the backend was registered leaves no queue for it
        # a backward the engine cannot queue for the device runs in the calling thread instead (see above)
        single = contextlib.nullcontext() if _ENGINE_QUEUES_DEVICE else torch.autograd.set_multithreading_enabled(False)
        with single, _FakeDeviceMode():
            yield dev
    finally:
        _depth -= 1


# registered on import: a test module importing this at collection does so before any backward has started the
# autograd engine, which then sizes its device queues for the fake device too
_ensure_backend()
_ENGINE_QUEUES_DEVICE = _engine_queues_device()


class FakeAccelerator:
    """The parts of `accelerate.Accelerator` that `atcd.engine` uses: one process, bound to `device`.

    With `device` from `fake_device()`, the engine's loops run as under Accelerate on a GPU, without a GPU.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.num_processes, self.process_index = 1, 0
        self.is_main_process = True
        self.sync_gradients = True  # no gradient accumulation

    def accumulate(self, *models: torch.nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor  # one process: the sum over processes is the tensor itself

    def gather_for_metrics(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor
