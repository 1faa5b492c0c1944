"""Fast-AT (Wong et al. 2020): one FGSM step of size alpha (default 1.25 eps) from a uniform random start.

Cost per minibatch: 1 input-gradient pass + 1 weight pass. Catastrophic overfitting is watched by the trainer's
`--co-guard` (holdout PGD accuracy collapsing -> restore the best weights and stop), as in the paper's early stop.
"""
from dataclasses import dataclass

from ..attacks.core import input_grad, project, random_init
from ..attacks.losses import ce_loss
from ..errors import ConfigError
from ..options import option, parse_fraction
from .base import StepResult, TrainMethod, attack_mode
from .registry import register_method

__all__ = ["FastAT"]


@register_method("fast")
class FastAT(TrainMethod):

    @dataclass(frozen=True)
    class Options:
        fast_alpha: float | None = option(None, "Fast-AT FGSM step (default 1.25*eps)", type=parse_fraction,
                                          check=lambda v: v is None or v > 0, why="must be > 0")

    @classmethod
    def passes_per_batch(cls, opts) -> int:
        return 2

    @classmethod
    def default_attack_step(cls, cfg) -> float:
        alpha = cfg.method_opts.fast_alpha
        return alpha if alpha is not None else 1.25 * cfg.eps  # Wong et al.

    @classmethod
    def check(cls, cfg) -> None:
        alpha = cfg.method_opts.fast_alpha
        if alpha is not None and alpha != cfg.attack_step:
            raise ConfigError(f"--fast-alpha {alpha:g} and --attack-step {cfg.attack_step:g} both set Fast-AT's step: "
                              f"give one")

    def step(self, ctx, x, y):
        c = self.cfg
        res = StepResult()
        delta = random_init(x, self.eps, self.gen)
        with attack_mode(ctx.attack_model, c.attack_bn), ctx.autocast():
            g, _, _ = input_grad(ctx.attack_model, x, delta, y, ce_loss, self.passes)
        delta = project(x, delta + self.attack_step * g.float().sign(), self.eps)
        self.weight_update(ctx, x, y, res, delta)
        return res
