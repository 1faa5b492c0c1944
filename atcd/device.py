"""Device placement of batches: the one place a batch moves from the loader to the accelerator.

A loader passed to `accelerator.prepare()` already yields device tensors; a WebDataset loader (rank-sharded, never
prepared) yields cpu tensors, which must be moved before the first forward. `to_device` is safe on both: a tensor
already on the device is returned as is (no copy).
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["loader_kwargs_for", "to_device"]


def _move(t: Any, device: torch.device, channels_last: bool, non_blocking: bool) -> Any:
    if not isinstance(t, torch.Tensor):
        return t  # sample keys, strings, lists of keys
    if channels_last and t.dim() == 4 and t.is_floating_point():
        # one copy for both the move and the layout change
        return t.to(device, non_blocking=non_blocking, memory_format=torch.channels_last)
    return t.to(device, non_blocking=non_blocking)


def to_device(batch: tuple | list | torch.Tensor, device: torch.device | str, channels_last: bool = False,
              non_blocking: bool = True) -> tuple | list | torch.Tensor:
    """Move every tensor of a batch to `device`.

    Args:
        batch: `(x, y)` or `(x, y, keys)` (tuple or list), or a single tensor. Elements that are not tensors
            (sample keys, strings, lists) pass through unchanged; nested containers are not searched.
        device: the target device, e.g. `accelerator.device`.
        channels_last: convert 4-D floating-point tensors (image batches) to channels-last memory format; labels
            and other tensors keep their layout.
        non_blocking: asynchronous host-to-device copies (they overlap with compute when the loader pins memory,
            see `loader_kwargs_for`). Only for moves onto an accelerator: a non-blocking copy back to the host may
            be read before it has landed.

    Returns:
        A batch of the same type (tuple, list or tensor) with its tensors on `device`; a tensor already there
        (and in the requested layout) is returned without a copy.

    Raises:
        TypeError: `batch` is not a tuple, list or tensor.
    """
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        return _move(batch, device, channels_last, non_blocking)
    if isinstance(batch, (tuple, list)):
        moved = [_move(t, device, channels_last, non_blocking) for t in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)  # namedtuple: positional
    raise TypeError(f"a batch is a tuple or list (x, y[, keys]) or a tensor, not {type(batch).__name__}")


def loader_kwargs_for(device: torch.device | str) -> dict[str, Any]:
    """DataLoader keyword arguments suiting batches bound for `device`.

    Args:
        device: the device the batches are moved to.

    Returns:
        `{"pin_memory": True}` for a CUDA device (page-locked host batches make `to_device(...,
        non_blocking=True)` copies asynchronous), else `{}`. No `pin_memory_device`: the DataLoader of this torch
        (2.14) pins for the current accelerator and ignores that argument with a deprecation warning.
    """
    return {"pin_memory": True} if torch.device(device).type == "cuda" else {}
