"""Attack losses, per example (shape [B]); every attack ascends one of these."""
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "ce_loss", "get_loss", "jcd_loss", "jcd_target", "margin_loss", "soft_cross_entropy"]


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin: max_{j != y} z_j - z_y (ascending it pushes towards misclassification)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return other.max(1).values - z_y


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(1)


def jcd_target(y_onehot: torch.Tensor, p_ref: torch.Tensor, lam: float, rho: float) -> torch.Tensor:
    """Soft target t = ((lam - rho) y + rho p_ref) / lam, so that d[lam * softCE(z, t)]/dz = lam(p-y) - rho(p_ref-y)."""
    return ((lam - rho) * y_onehot + rho * p_ref) / lam


def jcd_loss(logits: torch.Tensor, y: torch.Tensor, p_ref: torch.Tensor, lam: float = 2.0, rho: float = 1.0):
    """The ATCD attack objective J_cd (spec Sec. 2): its logit gradient is the paper's eq. (14)."""
    t = jcd_target(F.one_hot(y, logits.shape[1]).to(logits.dtype), p_ref.detach(), lam, rho)
    return lam * soft_cross_entropy(logits, t)


LOSSES: dict[str, Callable] = {"ce": ce_loss, "margin": margin_loss, "cw": margin_loss}


def get_loss(name: str) -> Callable:
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name]
