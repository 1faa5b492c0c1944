"""Count host syncs: places where Python waits for a device tensor's value (on CUDA, the GPU queue drains there).

Usage::

    with fake_device() as dev, count_host_syncs() as syncs:
        train_one_epoch(...)
    assert syncs.total <= 2, syncs.report()

Counted, per kind: `item`, `cpu` (`Tensor.cpu()`), `to_cpu` (`.to("cpu")` / `.to(cpu_tensor)`), `tolist`, `numpy`
(also `np.asarray(t)`), `float`, `int`, `index` (`__index__`, e.g. `range(t)`), `bool` (`if t:`, data-dependent
control flow) and `nonzero` (ops whose output shape depends on the data: `nonzero`, `masked_select`, boolean-mask
indexing `x[mask]` / `x[mask] = v`). Only tensors on a non-cpu device count (on a GPU a cpu tensor's value is
already on the host, e.g. Adam's `step`); `include_cpu=True` counts cpu tensors as well, for code run on cpu.

The Python-level calls are caught by patching `torch.Tensor`'s methods while the context is active (a C++ caller
of `item()` inside an op is not seen); the shape-dependent ops by a `TorchDispatchMode`. Each call records the
first frame outside torch and this module as `file:line in function`, so a failing assertion names the line.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["KINDS", "SyncCounter", "count_host_syncs"]

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_HERE = os.path.abspath(__file__)
_ROOT = os.path.dirname(os.path.dirname(_HERE))
_SKIP = {_HERE, os.path.join(os.path.dirname(_HERE), "fakedevice.py")}  # instruments, not code under test
# Tensor method -> kind; `to` counts only when it targets the cpu
_METHODS = {"item": "item", "cpu": "cpu", "to": "to_cpu", "tolist": "tolist", "numpy": "numpy",
            "__float__": "float", "__int__": "int", "__index__": "index", "__bool__": "bool"}
KINDS = tuple(dict.fromkeys([*_METHODS.values(), "nonzero"]))
_aten = torch.ops.aten
_SHAPE_FROM_DATA = {_aten.nonzero.default, _aten.masked_select.default}
_MASK_INDEXING = {_aten.index.Tensor, _aten.index_put_.default, _aten.index_put.default,
                  _aten._index_put_impl_.default}


@dataclasses.dataclass(frozen=True)
class SyncCall:
    """One counted call: its kind and where the code under test made it."""
    kind: str
    where: str


@dataclasses.dataclass(eq=False)  # identity: nested counters must be told apart
class SyncCounter:
    """The host syncs seen in a `count_host_syncs()` block."""
    include_cpu: bool = False
    calls: list[SyncCall] = dataclasses.field(default_factory=list)

    @property
    def counts(self) -> collections.Counter:
        """Calls per kind."""
        return collections.Counter(c.kind for c in self.calls)

    @property
    def total(self) -> int:
        return len(self.calls)

    def __getitem__(self, kind: str) -> int:
        if kind not in KINDS:
            raise KeyError(f"unknown sync kind {kind!r}: one of {KINDS}")
        return self.counts[kind]

    def by_location(self) -> collections.Counter:
        """Calls per `(kind, file:line in function)`, most frequent first."""
        return collections.Counter((c.kind, c.where) for c in self.calls)

    def report(self, limit: int = 20) -> str:
        """A short text for assertion messages: total, then the busiest call sites."""
        lines = [f"{self.total} host sync(s): {dict(self.counts)}"]
        lines += [f"  {n:5d} x {kind:8s} {where}" for (kind, where), n in self.by_location().most_common(limit)]
        return "\n".join(lines)

    def _counts_tensor(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and (self.include_cpu or t.device.type != "cpu")

    def _record(self, kind: str) -> None:
        self.calls.append(SyncCall(kind, _caller()))


def _caller() -> str:
    """`file:line in function` of the first frame outside torch and the test instruments (paths relative to the
    repo)."""
    f = sys._getframe(2)
    while f is not None:
        name = os.path.abspath(f.f_code.co_filename)
        if not name.startswith(_TORCH_DIR) and name not in _SKIP:
            rel = os.path.relpath(name, _ROOT) if name.startswith(_ROOT + os.sep) else name
            return f"{rel}:{f.f_lineno} in {f.f_code.co_name}"
        f = f.f_back
    return "<unknown>"


_active: list[SyncCounter] = []  # innermost last; every active counter sees every call
# (class, name) -> the class's own attribute before patching (None: inherited, removed again on exit)
_originals: dict[tuple[type, str], Callable | None] = {}
_state = threading.local()  # depth of patched calls: a sync calling another (a subclass's tolist) counts once


def _to_targets_cpu(args: tuple, kwargs: dict) -> bool:
    device = torch._C._nn._parse_to(*args, **kwargs)[0]
    return device is not None and device.type == "cpu"


def _patched(name: str, kind: str, original: Callable) -> Callable:
    def method(self, *args, **kwargs):
        depth = getattr(_state, "depth", 0)
        if depth == 0 and _active and (name != "to" or _to_targets_cpu(args, kwargs)):
            for counter in _active:
                if counter._counts_tensor(self):
                    counter._record(kind)
        _state.depth = depth + 1
        try:
            return original(self, *args, **kwargs)
        finally:
            _state.depth = depth

    method.__name__ = method.__qualname__ = name
    method.__doc__ = original.__doc__
    return method


def _tensor_classes() -> list[type]:
    """torch.Tensor and its subclasses loaded now (e.g. the fake device's, which defines its own tolist)."""
    out, todo = [], [torch.Tensor]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def _patch() -> None:
    for cls in _tensor_classes():
        for name, kind in _METHODS.items():
            if cls is torch.Tensor or name in cls.__dict__:
                _originals[(cls, name)] = cls.__dict__.get(name)
                setattr(cls, name, _patched(name, kind, getattr(cls, name)))


def _unpatch() -> None:
    for (cls, name), original in _originals.items():
        if original is None:
            delattr(cls, name)
        else:
            setattr(cls, name, original)
    _originals.clear()


class _ShapeFromDataMode(TorchDispatchMode):
    """Counts ops whose output shape depends on tensor values (the host must read them to allocate the output)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        data_shape = func in _SHAPE_FROM_DATA
        if func in _MASK_INDEXING and len(args) > 1:  # a bool/uint8 index is turned into nonzero() indices
            data_shape = any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                             for i in tree_leaves(args[1]))
        if data_shape:
            for counter in _active:
                if counter._counts_tensor(args[0]):
                    counter._record("nonzero")
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_host_syncs(include_cpu: bool = False) -> Iterator[SyncCounter]:
    """Count host syncs made inside the block (see the module docstring for what counts).

    Args:
        include_cpu: count calls on cpu tensors too (code under test runs on cpu); by default only tensors on
            another device (e.g. the fake device of `tests/fakedevice.py`) count, as only they sync on a GPU.

    Yields:
        The `SyncCounter`, filled while the block runs.
    """
    counter = SyncCounter(include_cpu=include_cpu)
    if not _active:
        _patch()
    _active.append(counter)
    try:
        with _ShapeFromDataMode():
            yield counter
    finally:
        _active.remove(counter)
        if not _active:
            _unpatch()
