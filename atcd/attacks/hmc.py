"""The paper's HMC attack (ATCD Appendix A.6): a long momentum trajectory with a Metropolis-Hastings test.

Each transition proposes delta' = Proj(delta + alpha sign(v')) with v' = mu v + g / mean|g| (the same
projected-step core as PGD / MI-FGSM), then accepts per example with probability
min(1, exp(H(delta, v) - H(delta', v'))), H = -loss/tau + mean|v| (high loss = low energy, as in training).
A rejected example stays where it was. The loss (and gradient) at the proposal come from the pass that also
gives the next step's gradient, so a transition costs one forward/backward.
"""
from dataclasses import dataclass

import torch

from ..options import option
from .core import PassCounter, device_generator, input_grad, random_init, sign_step
from .losses import get_loss
from .registry import register_attack

__all__ = ["HMCOptions", "hmc_attack", "hmc_trajectory"]


def _energy(loss: torch.Tensor, v: torch.Tensor, temperature: float) -> torch.Tensor:
    return -loss / temperature + v.abs().flatten(1).mean(1)


def hmc_trajectory(model, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                   loss: str = "ce", momentum: float = 1.0, temperature: float = 1.0, seed: int = 0,
                   counter: PassCounter | None = None) -> tuple[list[torch.Tensor], dict]:
    """Run the chain; returns (every state x + delta of the trajectory, start included; stats).

    stats: `acceptance` (fraction of proposals accepted), `fooled_at` (first state index that is misclassified per
    example, -1 if none) and `best` (per example: the first misclassified state, else the highest-loss state).
    """
    loss_fn = get_loss(loss)
    gen = device_generator(seed, x.device)
    delta = random_init(x, eps, gen)
    v = torch.zeros_like(x)
    g, cur_loss, logits = input_grad(model, x, delta, y, loss_fn, counter)
    states = [x + delta]
    fooled_at = torch.where(logits.argmax(1) != y, 0, -1)
    best, best_loss = (x + delta).clone(), cur_loss.clone()
    accepted = 0
    for i in range(1, steps + 1):
        prop, v_prop = sign_step(x, delta, v, g, eps, alpha, momentum)
        g_prop, prop_loss, prop_logits = input_grad(model, x, prop, y, loss_fn, counter)
        u = torch.rand(cur_loss.shape, generator=gen, device=gen.device).to(x.device)
        h_cur, h_prop = _energy(cur_loss, v, temperature), _energy(prop_loss, v_prop, temperature)
        acc = u < torch.exp((h_cur - h_prop).clamp(max=0.0))
        accepted += int(acc.sum())
        m = acc.view(-1, *([1] * (x.dim() - 1)))
        delta, v, g = torch.where(m, prop, delta), torch.where(m, v_prop, v), torch.where(m, g_prop, g)
        cur_loss = torch.where(acc, prop_loss, cur_loss)
        newly = acc & (prop_logits.argmax(1) != y) & (fooled_at < 0)
        fooled_at = torch.where(newly, i, fooled_at)
        improve = (acc & (fooled_at < 0) & (prop_loss > best_loss)) | newly
        best[improve], best_loss[improve] = (x + delta)[improve], cur_loss[improve]
        states.append(x + delta)
    stats = {"acceptance": accepted / max(1, steps * x.shape[0]), "fooled_at": fooled_at, "best": best}
    return states, stats


@dataclass(frozen=True)
class HMCOptions:
    hmc_momentum: float = option(1.0, "HMC attack momentum mu")
    hmc_temperature: float = option(1.0, "HMC attack M-H temperature", check=lambda v: v > 0, why="must be > 0")


@register_attack("hmc", options=HMCOptions)
def hmc_attack(model, x, y, cfg):
    """HMC attack: `cfg.steps` transitions (momentum --hmc-momentum, M-H at --hmc-temperature)."""
    o = cfg.options_for("hmc")
    _, stats = hmc_trajectory(model, x, y, cfg.eps, cfg.step_size, cfg.steps, cfg.loss, o.hmc_momentum,
                              o.hmc_temperature, cfg.seed)
    return stats["best"], {"acceptance": [round(stats["acceptance"], 4)]}
