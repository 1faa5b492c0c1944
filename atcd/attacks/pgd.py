"""White-box attacks built on the shared core: clean, FGSM, PGD (CE or margin loss, restarts), MI-FGSM, CW."""
import torch
from torch import nn

from .core import device_generator, perturb, random_init
from .losses import get_loss, margin_loss
from .registry import AttackConfig, register_attack

__all__ = ["pgd_attack"]


def _restarted(model, x, y, cfg: AttackConfig, loss_fn, momentum: float, random_start: bool):
    gen = device_generator(cfg.seed, x.device)
    x_adv = x.clone()
    still = torch.ones(len(y), dtype=torch.bool, device=x.device)  # not yet fooled
    for r in range(max(1, cfg.restarts)):
        idx = still.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xs, ys = x[idx], y[idx]
        d0 = random_init(xs, cfg.eps, gen) if random_start else None
        d = perturb(model, xs, ys, loss_fn, cfg.eps, cfg.step_size, cfg.steps, d0, momentum, track_best=True,
                    schedule=cfg.step_schedule)
        with torch.no_grad():
            fooled = model(xs + d).argmax(1) != ys
        x_adv[idx] = xs + d  # keep the latest (best-loss) iterate; fooled ones leave the pool
        still[idx[fooled]] = False
    return x_adv


@register_attack("clean")
def clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    return x


@register_attack("pgd")
def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """PGD (Madry et al.) with random start, `cfg.restarts` restarts, loss `ce` or `margin`, step schedule."""
    return _restarted(model, x, y, cfg, get_loss(cfg.loss), 0.0, True)


@register_attack("fgsm")
def fgsm(model, x, y, cfg: AttackConfig):
    """FGSM (Goodfellow et al.): one signed step of size eps from x."""
    return x + perturb(model, x, y, get_loss(cfg.loss), cfg.eps, cfg.eps, 1)


@register_attack("mifgsm")
def mifgsm(model, x, y, cfg: AttackConfig):
    """MI-FGSM (Dong et al. 2018): momentum mu=1, no random start."""
    return _restarted(model, x, y, cfg, get_loss(cfg.loss), 1.0, False)


@register_attack("cw")
def cw(model, x, y, cfg: AttackConfig):
    """CW-inf: PGD on the CW margin loss."""
    return _restarted(model, x, y, cfg, margin_loss, 0.0, True)
