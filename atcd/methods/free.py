"""Free-AT (Shafahi et al. 2019): each minibatch is replayed m times; one forward/backward per replay gives the
weight gradient (one optimizer step) and the input gradient (one FGSM step of size eps on the perturbation).

The perturbation is carried across minibatches as in the original (projected onto the new images' eps-ball and
pixel box). It is per-rank state, saved with the resumable checkpoint. The attack gradient comes from the
weight pass, so it is taken with BatchNorm in train mode (the method's definition; --attack-bn does not apply).
Cost per minibatch: m weight passes.
"""
from dataclasses import dataclass

import torch

from ..attacks.core import project
from ..options import AT_LEAST_1, option
from .base import StepResult, TrainMethod
from .registry import register_method

__all__ = ["FreeAT"]


@register_method("free")
class FreeAT(TrainMethod):

    @dataclass(frozen=True)
    class Options:
        free_m: int = option(8, "Free-AT m: replays per minibatch", **AT_LEAST_1)

    def __init__(self, cfg, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        self.delta: torch.Tensor | None = None

    @classmethod
    def default_attack_step(cls, cfg) -> float:
        return cfg.eps  # Shafahi et al.: an FGSM step of eps per replay

    @classmethod
    def updates_per_batch(cls, opts) -> int:
        return opts.free_m

    passes_per_batch = updates_per_batch  # each replay's weight pass also gives the input gradient

    @classmethod
    def budget_divisor(cls, opts) -> int:
        return opts.free_m

    def step(self, ctx, x, y):
        res = StepResult()
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = torch.zeros_like(x)  # the original starts from zero noise
        delta = project(x, self.delta.to(x.device, x.dtype), self.eps)
        for _ in range(self.opts.free_m):
            g, _ = self.weight_update(ctx, x, y, res, delta, input_grad=True)
            delta = project(x, delta + self.attack_step * g.float().sign(), self.eps)
        self.delta = delta.detach()
        return res

    def state_dict(self) -> dict:
        own = {} if self.delta is None else {"delta": self.delta.cpu().contiguous()}
        return {**super().state_dict(), **own}

    def load_state_dict(self, state: dict):
        super().load_state_dict(state)
        self.delta = state.get("delta")
