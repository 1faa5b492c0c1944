"""One projected-step core shared by PGD-style attacks and the training methods.

The state is a perturbation delta kept inside the eps-ball AND such that x + delta is in [0,1]
(never clamp inside the graph: clamp's zero gradient would freeze pixels outside the box).
"""
import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["PassCounter", "input_grad", "perturb", "project", "random_init", "sign_step", "step_size_at"]


class PassCounter:
    """Counts network passes spent.

    input_grad: forward + backward to the input only; weight: forward + backward producing weight gradients;
    forward: forward only (no backward); stem: forward + backward through the first layer only (YOPO).
    weight_with_input_grad: how many of the weight passes also returned the input gradient (Free's trick: the
    backward goes on through the first layer to the input, a few per cent more than a plain weight pass).
    fp16_fallbacks: how many fp16 input-gradient passes gave a non-finite gradient and were redone in fp32 (each
    redo is also counted in input_grad: it is a full pass).
    """

    def __init__(self):
        self.input_grad = 0
        self.weight = 0
        self.forward = 0
        self.stem = 0
        self.weight_with_input_grad = 0
        self.fp16_fallbacks = 0

    def total(self) -> int:
        """Full-network passes (a stem pass is a fraction of one and is reported apart)."""
        return self.input_grad + self.weight + self.forward

    def as_dict(self):
        return {"input_grad_passes": self.input_grad, "weight_passes": self.weight, "forward_passes": self.forward,
                "stem_passes": self.stem, "weight_with_input_grad": self.weight_with_input_grad,
                "fp16_fallbacks": self.fp16_fallbacks}


def project(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project delta on the L-inf eps-ball, then so that x + delta lies in [0,1]."""
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0.0, 1.0) - x


def device_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A seeded generator that draws on `device` (a GPU draw needs no host draw and pageable copy, which would wait
    for the device); a cpu generator on a backend that has none (the random numbers are then copied)."""
    try:
        return torch.Generator(device=device).manual_seed(seed)
    except (RuntimeError, NotImplementedError):
        return torch.Generator().manual_seed(seed)


def random_init(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform start in the eps-ball (and [0,1]), drawn where the generator lives (float32 whatever x's dtype)."""
    where = generator.device if generator is not None else x.device
    noise = torch.rand(x.shape, generator=generator, device=where, dtype=torch.float32).to(x.device, x.dtype)
    return project(x, (2 * noise - 1) * eps, eps)


def _fp16_autocast(device_type: str) -> bool:
    """True inside an fp16 autocast region for `device_type` (bf16 has fp32's exponent range: nothing underflows)."""
    return (torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
            and torch.get_autocast_dtype(device_type) == torch.float16)


def _rowwise(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *([1] * (like.dim() - 1)))


def _fp16_backward(logits: torch.Tensor, d: torch.Tensor, y: torch.Tensor,
                   loss_fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """The input gradient of an fp16 forward without fp16's underflow; returns (grad, per-example loss).

    dL/dz is taken in fp32 from an fp32 copy of the logits; each example's row is divided by its largest |.| (an
    all-zero row is left as it is), so the fp16 backward through the network carries values up to 1 instead of
    p - y ~ 1e-7 (which flushes to 0 below fp16's smallest subnormal, 6e-8); the input gradient is multiplied back
    by that factor in fp32. The result is the true-scale gradient: callers that use its size get it.
    """
    z = logits.detach().float().requires_grad_(True)
    with torch.autocast(d.device.type, enabled=False):
        loss = loss_fn(z, y)
        (gz,) = torch.autograd.grad(loss.sum(), z)
    s = gz.flatten(1).abs().amax(1)
    s = torch.where(s > 0, s, torch.ones_like(s))
    (g,) = torch.autograd.grad(logits, d, grad_outputs=(gz / _rowwise(s, gz)).to(logits.dtype))
    return g * _rowwise(s, g).to(g.dtype), loss


def _any_rank(flag: torch.Tensor) -> bool:
    """Read a 0-dim bool flag, true when it is true on any process: a redo decided per rank would run a SyncBN
    forward (--attack-bn train) on some ranks only, which hangs them."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = flag.to(torch.int32)
        dist.all_reduce(flag)
    return bool(flag)


def input_grad(
        model: nn.Module,
        x: torch.Tensor,
        delta: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        counter: PassCounter | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + backward w.r.t. the input only. Returns (grad, per-example loss, logits), all detached.

    Under fp16 autocast the backward is seeded per example so that it does not underflow (`_fp16_backward`), and
    a non-finite gradient or loss (an fp16 overflow) is never returned: the pass is redone for the whole batch in
    fp32 (counted in `counter.fp16_fallbacks` and as one more input-gradient pass). That check reads one flag on
    the host per fp16 pass; fp32 and bf16 passes are unchanged (no check, no sync).
    """
    with torch.enable_grad():
        d = delta.detach().requires_grad_(True)
        logits = model(x + d)
        # fp16 logits: an autocast opened here or inside the model (Accelerate's wrapper of a prepared model)
        fp16 = logits.dtype == torch.float16 or _fp16_autocast(x.device.type)
        if fp16:
            g, loss = _fp16_backward(logits, d, y, loss_fn)
        else:
            loss = loss_fn(logits, y)
            (g,) = torch.autograd.grad(loss.sum(), d)
    if counter is not None:
        counter.input_grad += 1
    if fp16 and _any_rank(~(torch.isfinite(g).all() & torch.isfinite(loss).all())):
        if counter is not None:
            counter.fp16_fallbacks += 1
        with torch.autocast(x.device.type, enabled=False):
            return input_grad(model, x, delta, y, loss_fn, counter)
    return g.detach(), loss.detach(), logits.detach()


def sign_step(
        x: torch.Tensor, delta: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
        eps: float, alpha: float, momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """v = mu v + g / mean|g| (per example); delta = Proj(delta + alpha sign(v)). mu=0 is PGD, mu=1 MI-FGSM.

    An example whose g is not finite (the input gradient of an fp16 weight pass that overflowed, `--reuse-grad`;
    the GradScaler skips that update too) adds nothing to v in this step: a NaN kept in v would hold it at
    sign(NaN) = 0 for the rest of the chain. Finite rows are untouched.
    """
    g = torch.where(_rowwise(torch.isfinite(g).flatten(1).all(1), g), g, 0.0)
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
