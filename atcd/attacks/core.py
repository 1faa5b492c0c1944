"""One projected-step core shared by PGD-style attacks and the training methods.

The state is a perturbation delta kept inside the eps-ball AND such that x + delta is in [0,1]
(never clamp inside the graph: clamp's zero gradient would freeze pixels outside the box).
"""
import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["PassCounter", "input_grad", "perturb", "project", "random_init", "sign_step", "step_size_at"]


class PassCounter:
    """Counts network passes spent.

    input_grad: forward + backward to the input only; weight: forward + backward producing weight gradients;
    forward: forward only (no backward); stem: forward + backward through the first layer only (YOPO).
    weight_with_input_grad: how many of the weight passes also returned the input gradient (Free's trick: the
    backward goes on through the first layer to the input, a few per cent more than a plain weight pass).
    """

    def __init__(self):
        self.input_grad = 0
        self.weight = 0
        self.forward = 0
        self.stem = 0
        self.weight_with_input_grad = 0

    def total(self) -> int:
        """Full-network passes (a stem pass is a fraction of one and is reported apart)."""
        return self.input_grad + self.weight + self.forward

    def as_dict(self):
        return {"input_grad_passes": self.input_grad, "weight_passes": self.weight, "forward_passes": self.forward,
                "stem_passes": self.stem, "weight_with_input_grad": self.weight_with_input_grad}


def project(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project delta on the L-inf eps-ball, then so that x + delta lies in [0,1]."""
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0.0, 1.0) - x


def random_init(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, device="cpu", dtype=torch.float32).to(x.device, x.dtype)
    return project(x, (2 * noise - 1) * eps, eps)


def input_grad(
        model: nn.Module,
        x: torch.Tensor,
        delta: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        counter: PassCounter | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + backward w.r.t. the input only. Returns (grad, per-example loss, logits), all detached."""
    with torch.enable_grad():
        d = delta.detach().requires_grad_(True)
        logits = model(x + d)
        loss = loss_fn(logits, y)
        (g,) = torch.autograd.grad(loss.sum(), d)
    if counter is not None:
        counter.input_grad += 1
    return g.detach(), loss.detach(), logits.detach()


def sign_step(
        x: torch.Tensor, delta: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
        eps: float, alpha: float, momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """v = mu v + g / mean|g| (per example); delta = Proj(delta + alpha sign(v)). mu=0 is PGD, mu=1 MI-FGSM."""
    norm = g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
    v = momentum * v + g / norm
    return project(x, delta + alpha * v.sign(), eps), v


def step_size_at(alpha: float, k: int, steps: int, schedule: str = "constant") -> float:
    """Step size of iteration k (0-based): constant, cosine decay to 0, or halved at 50% and 75% ('step')."""
    if schedule == "constant":
        return alpha
    if schedule == "cosine":
        return alpha * 0.5 * (1 + math.cos(math.pi * k / steps))
    if schedule == "step":
        return alpha * (0.5 ** ((k >= steps // 2) + (k >= (3 * steps) // 4)))
    raise ValueError(f"unknown step schedule {schedule!r}: constant, cosine or step")


def perturb(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable,
        eps: float,
        alpha: float,
        steps: int,
        delta: torch.Tensor | None = None,
        momentum: float = 0.0,
        counter: PassCounter | None = None,
        track_best: bool = False,
        schedule: str = "constant",
) -> torch.Tensor:
    """Projected sign-gradient ascent of `loss_fn` for `steps` steps from `delta` (zeros if None).

    With `track_best`, returns per example the first misclassified iterate, else the highest-loss one (as PGD
    evaluations do), otherwise the last iterate. `schedule` sets the step size per iteration (`step_size_at`).
    """
    delta = torch.zeros_like(x) if delta is None else project(x, delta, eps)
    v = torch.zeros_like(x)
    best, best_loss = delta.clone(), torch.full((x.shape[0],), -float("inf"), device=x.device)
    fooled_any = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def keep(d, loss, logits):
        fooled = logits.argmax(1) != y
        better = ~fooled_any & (fooled | (loss > best_loss))
        best[better], best_loss[better] = d[better], loss[better]
        fooled_any.logical_or_(fooled)

    for k in range(steps):
        g, loss, logits = input_grad(model, x, delta, y, loss_fn, counter)
        if track_best:  # loss and logits are those of the current delta (before the step)
            keep(delta, loss, logits)
        delta, v = sign_step(x, delta, v, g, eps, step_size_at(alpha, k, steps, schedule), momentum)
    if track_best:
        with torch.no_grad():
            logits = model(x + delta)
        if counter is not None:
            counter.forward += 1
        keep(delta, loss_fn(logits, y), logits)
        return best
    return delta
