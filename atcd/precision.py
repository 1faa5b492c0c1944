"""The precision robust numbers are measured in: a decision of the evaluation, not of the launcher.

`accelerate launch --mixed_precision bf16` (or a config) makes `Accelerator.prepare(model)` wrap the model's
`forward` in autocast, and `unwrap_model` keeps that wrapper (`keep_fp32_wrapper=True`): without care, clean
accuracy, every attack and AutoAttack would run in the training precision (input gradients of fp16 underflow, so
robust accuracy reads too high). `eval_precision(...)` runs a block in the chosen evaluation precision whatever the
launcher said: it bypasses Accelerate's autocast wrapper of the given models for the block, opens (or closes)
autocast itself and pins TF32 off for "fp32" (on Ampere and newer GPUs "fp32" matmuls and convolutions may
otherwise run in TF32). `--eval-precision` is the only way to change it; results record it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["EVAL_PRECISIONS", "eval_precision", "train_math_policy"]

# fp32: IEEE fp32 (TF32 off); tf32: fp32 tensors, TF32 matmuls/convolutions where the GPU has them; bf16/fp16: autocast
EVAL_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def _autocast_on(device_type: str) -> bool:
    """An autocast region of `device_type` is open (False for a backend without autocast support)."""
    try:
        return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    except (RuntimeError, AssertionError):
        return False


@contextlib.contextmanager
def eval_precision(precision: str, *models: nn.Module | None) -> Iterator[None]:
    """Run the block's forward passes of `models` in `precision` (one of `EVAL_PRECISIONS`).

    Args:
        precision: "fp32" (default of both scripts: autocast off, TF32 off), "tf32", "bf16" or "fp16" (autocast
            of that dtype opened here, outside the model, where the fp16 underflow guard of the attacks sees it).
        models: modules whose Accelerate autocast wrapper (`_original_forward`) is bypassed for the block; the
            same modules may be given again (an EMA copy that was never prepared has none).

    The wrapper is put back on exit, so training steps after the block run in the launcher's precision again.
    """
    if precision not in EVAL_PRECISIONS:
        raise ValueError(f"eval precision {precision!r}: one of {EVAL_PRECISIONS}")
    wrapped = []
    for m in dict.fromkeys(m for m in models if m is not None):  # each module once
        if "_original_forward" in m.__dict__:
            wrapped.append((m, m.__dict__["forward"]))
            m.forward = m._original_forward
    device_types = {p.device.type for m in models if m is not None for p in m.parameters()} or {"cpu"}
    old_tf32 = _tf32_flags()
    try:
        _set_tf32(precision == "tf32", precision == "tf32")
        with contextlib.ExitStack() as stack:
            for dt in sorted(device_types):
                if precision in _AUTOCAST:
                    stack.enter_context(torch.autocast(dt, dtype=_AUTOCAST[precision]))
                elif _autocast_on(dt):  # close an autocast the caller has open
                    stack.enter_context(torch.autocast(dt, enabled=False))
            yield
    finally:
        _set_tf32(*old_tf32)
        for m, fwd in wrapped:
            m.forward = fwd


def train_math_policy(device: torch.device) -> str:
    """The training steps' math policy, set explicitly (timm's train.py: TF32 matmuls and cuDNN autotuning on CUDA);
    returns it as the start line prints it.

    Evaluation pins its own precision (`eval_precision`) whatever this sets. Off CUDA nothing is changed.
    """
    if torch.device(device).type != "cuda":
        return "default"
    _set_tf32(True, True)
    torch.backends.cudnn.benchmark = True  # fixed input sizes: autotune the convolutions once
    return "tf32 + cudnn.benchmark"
