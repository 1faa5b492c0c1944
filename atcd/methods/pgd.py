"""PGD-AT (Madry et al. 2018): r-step PGD on CE from a uniform random start, then one weight update.

Cost per minibatch: r input-gradient passes + 1 weight pass.
"""

from dataclasses import dataclass

from ..attacks.core import perturb, random_init
from ..attacks.losses import ce_loss
from ..options import AT_LEAST_1, option
from .base import StepResult, TrainMethod, attack_mode
from .registry import register_method

__all__ = ["PGDAT"]


@register_method("pgd")
class PGDAT(TrainMethod):
    """r sign steps of size --attack-step on CE from a uniform random start, then one weight update."""
    sign_steps = True

    @dataclass(frozen=True)
    class Options:
        attack_steps: int = option(10, "r: PGD-AT / TRADES attack steps", **AT_LEAST_1)

    @classmethod
    def passes_per_batch(cls, opts) -> int:
        return opts.attack_steps + 1

    @classmethod
    def default_attack_step(cls, cfg) -> float:
        return 2.5 * cfg.eps / max(1, cfg.method_opts.attack_steps)  # Madry et al.'s rule, as validate.py's PGD

    def step(self, ctx, x, y):
        c = self.cfg
        res = StepResult()
        with attack_mode(ctx.attack_model, c.attack_bn), ctx.autocast():
            delta = perturb(ctx.attack_model, x, y, ce_loss, self.eps, self.attack_step, self.opts.attack_steps,
                            random_init(x, self.eps, self.gen), counter=self.passes)
        self.weight_update(ctx, x, y, res, delta)
        return res
