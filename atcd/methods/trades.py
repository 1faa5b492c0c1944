"""TRADES (Zhang et al. 2019): r-step attack on KL(p(x) || p(x')) from a small Gaussian start, then one update on
CE(f(x), y) + beta * KL(p(x) || p(x')).

Cost per minibatch: 1 forward (p(x) for the attack) + r input-gradient passes + 2 weight passes (the natural and
the adversarial batch go through the network separately, as in the original, so BatchNorm sees each on its own).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attacks.core import perturb, project
from ..options import option
from .base import StepResult, TrainMethod, attack_mode
from .pgd import PGDAT
from .registry import register_method

__all__ = ["TRADES", "trades_kl"]


def trades_kl(logits_adv: torch.Tensor, p_nat: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p_nat || softmax(logits_adv))."""
    return F.kl_div(F.log_softmax(logits_adv.float(), 1), p_nat, reduction="none").sum(1)


@register_method("trades")
class TRADES(TrainMethod):
    sign_steps = True

    @dataclass(frozen=True)
    class Options(PGDAT.Options):
        trades_beta: float = option(6.0, "TRADES beta (robust KL weight)", check=lambda v: v >= 0, why="must be >= 0")

    default_attack_step = PGDAT.default_attack_step

    @classmethod
    def passes_per_batch(cls, opts) -> int:
        return opts.attack_steps + 3  # p(x) forward, r attack passes, natural + adversarial weight passes

    def step(self, ctx, x, y):
        c, o = self.cfg, self.opts
        res = StepResult()
        amodel = ctx.attack_model
        with attack_mode(amodel, c.attack_bn), ctx.autocast():
            with torch.no_grad():
                p_nat = F.softmax(amodel(x).float(), 1)
            self.passes.forward += 1
            noise = torch.randn(x.shape, generator=self.gen, device=self.gen.device)  # on the device (trainer)
            start = project(x, 0.001 * noise.to(x.device, x.dtype), self.eps)
            delta = perturb(amodel, x, y, lambda z, _y: trades_kl(z, p_nat), self.eps, self.attack_step,
                            o.attack_steps, start, counter=self.passes)
        ctx.model.train()
        with ctx.autocast():
            logits_nat = ctx.model(x)
            logits_adv = ctx.model(x + delta)
            loss = F.cross_entropy(logits_nat.float(), y, label_smoothing=self.smoothing) + o.trades_beta * trades_kl(
                logits_adv, F.softmax(logits_nat.float(), 1)).mean()
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.backward(loss)
        self.apply_update(ctx)
        self.passes.weight += 2
        self.record(res, loss, logits_adv, y)
        return res
