"""A training method and an attack defined outside the package, as a user adds one: one file, one registry line.

Importing this module registers `toy` (random-sign noise of strength --toy-sigma x eps, then one weight update)
and the attack `toy_noise` (x + --toy-strength x eps x sign of seeded noise).
"""
from dataclasses import dataclass

import torch

from atcd.attacks import register_attack
from atcd.attacks.core import project
from atcd.methods import StepResult, TrainMethod, register_method
from atcd.options import option


@register_method("toy")
class ToyNoise(TrainMethod):
    """Weight update on x + sigma * eps * random signs: 1 weight pass per minibatch."""

    @dataclass(frozen=True)
    class Options:
        toy_sigma: float = option(0.5, "fraction of eps the random-sign noise takes", check=lambda v: 0 <= v <= 1,
                                  why="must be in [0,1]")

    def step(self, ctx, x, y):
        res = StepResult()
        noise = torch.randint(0, 2, x.shape, generator=self.gen).to(x) * 2 - 1
        self.weight_update(ctx, x, y, res, project(x, self.opts.toy_sigma * self.cfg.eps * noise, self.cfg.eps))
        return res


@dataclass(frozen=True)
class ToyAttackOptions:
    toy_strength: float = option(1.0, "fraction of eps the random-sign noise takes", check=lambda v: v >= 0,
                                 why="must be >= 0")


@register_attack("toy_noise", options=ToyAttackOptions)
def toy_noise(model, x, y, cfg):
    """Seeded random-sign noise of size strength * eps (not an adversarial attack: a plug-in example)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randint(0, 2, x.shape, generator=gen).to(x) * 2 - 1
    return x + project(x, cfg.options_for("toy_noise").toy_strength * cfg.eps * noise, cfg.eps)
