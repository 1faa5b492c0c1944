"""AutoAttack through the packaged official implementation (`pyautoattack`); never re-implemented."""
import io
import contextlib

import torch
import torch.nn as nn

from .registry import register_attack

__all__ = ["autoattack"]


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str = "standard",
                   seed: int = 0, batch_size: int = 250, attacks=None, log: io.StringIO = None) -> torch.Tensor:
    from pyautoattack import AutoAttack
    kwargs = dict(eps=eps, version=version, device=x.device, seed=seed, norm="Linf")
    if attacks:
        kwargs["attacks"] = list(attacks)
        kwargs["version"] = "custom"
    adversary = AutoAttack(model, **kwargs)
    buf = log if log is not None else io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return out[0] if isinstance(out, tuple) else out


@register_attack("autoattack")
def autoattack(model, x, y, cfg):
    return run_autoattack(model, x, y, cfg.eps, seed=cfg.seed)
