"""Standard (non-adversarial) training: one forward/backward per minibatch."""
from .base import StepResult, TrainMethod
from .registry import register_method


@register_method("standard")
class Standard(TrainMethod):
    """Cost: 1 weight pass per minibatch."""

    def step(self, ctx, x, y):
        res = StepResult()
        self.weight_update(ctx, x, y, res)
        return res
