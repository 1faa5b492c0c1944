"""AutoAttack through the packaged official implementation (`pyautoattack`); never re-implemented."""
import logging
import warnings

import torch
from torch import nn

from .registry import register_attack

__all__ = ["autoattack", "run_autoattack"]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str = "standard",
                   seed: int = 0, batch_size: int = 250, attacks=None) -> tuple[torch.Tensor, dict]:
    """Run AutoAttack; returns (x_adv, {"flags": [...]}) where flags are the package's own sanity-check warnings
    (zero gradients, softmax output, randomness, Square beating white-box), so they reach the results JSON."""
    from pyautoattack import AutoAttack
    kwargs = dict(eps=eps, version=version, device=x.device, seed=seed, norm="Linf")
    if attacks:
        kwargs.update(attacks=list(attacks), version="custom")
    adversary = AutoAttack(model, **kwargs)
    handler = _Collect()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        aa_logger.removeHandler(handler)
    flags = sorted(set(handler.messages) | {str(w.message) for w in caught if issubclass(w.category, Warning)
                                            and "autoattack" in (w.filename or "").lower()})
    return (out[0] if isinstance(out, tuple) else out), {"flags": flags}


@register_attack("autoattack")
def autoattack(model, x, y, cfg):
    """AutoAttack 'standard' (APGD-CE, APGD-T, FAB-T, Square) at L-inf eps."""
    return run_autoattack(model, x, y, cfg.eps, seed=cfg.seed)
