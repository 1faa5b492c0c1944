"""YOPO-m-n (Zhang et al. 2019, "You Only Propagate Once"): the adversary is updated through the first layer only.

Per minibatch: m full forward/backward passes at x + eta; each accumulates the weight gradient (averaged over
the m passes, one optimizer step per minibatch) and yields p = dLoss/d(first-layer output). Between full passes,
n cheap steps ascend the Hamiltonian p . f_0(x + eta) through the first layer only and move eta (projected sign
steps of size --attack-step). The first layer is the timm model's stem (`pretrained_cfg['first_conv']`, else the
first convolution), found generically.
Cost per minibatch: m weight passes + m*n first-layer passes (counted as `stem_passes`).
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.core import project, random_init
from ..models import unwrap_timm
from ..options import AT_LEAST_1, option
from .base import StepResult, TrainMethod, attack_mode
from .registry import register_method

__all__ = ["YOPO", "find_stem"]


def find_stem(model: nn.Module) -> nn.Module:
    """The first layer of a timm model: the module named by its `pretrained_cfg['first_conv']`, else the first conv."""
    model = unwrap_timm(model)
    name = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    if name:
        try:
            return model.get_submodule(name)
        except AttributeError:
            pass
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError(f"YOPO: no first layer found in {type(model).__name__} (no first_conv and no Conv2d)")


class _Tap(torch.autograd.Function):
    """Identity that hands the incoming gradient (dLoss/d stem output) to a holder; copies so an in-place op
    after the stem (ReLU(inplace=True)) cannot rewrite the tapped tensor's history."""

    @staticmethod
    def forward(ctx, t, holder):
        ctx.holder = holder
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        ctx.holder["p"] = g.detach()
        return g, None


class _StopForward(Exception):
    pass


@register_method("yopo")
class YOPO(TrainMethod):

    @dataclass(frozen=True)
    class Options:
        yopo_m: int = option(5, "YOPO m: full passes per minibatch", **AT_LEAST_1)
        yopo_n: int = option(3, "YOPO n: first-layer steps per full pass", **AT_LEAST_1)

    sign_steps = True  # the first-layer steps are --attack-step sign steps

    @classmethod
    def passes_per_batch(cls, opts) -> int:
        return opts.yopo_m  # plus m*n first-layer passes (counted apart as stem passes)

    @classmethod
    def default_attack_step(cls, cfg) -> float:
        return 2.5 * cfg.eps / max(1, cfg.method_opts.yopo_m * cfg.method_opts.yopo_n)  # m*n steps per minibatch

    def _stem_grad(self, amodel: nn.Module, stem: nn.Module, x, eta, p) -> torch.Tensor:
        """d/d eta of sum(p * stem(x + eta)): forward stops right after the stem (first-layer pass only)."""
        out = {}

        def stop(_m, _inp, o):
            out["o"] = o
            raise _StopForward

        h = stem.register_forward_hook(stop)
        try:
            with torch.enable_grad():
                e = eta.detach().requires_grad_(True)
                try:
                    amodel(x + e)
                except _StopForward:
                    pass
                (g,) = torch.autograd.grad((out["o"].float() * p).sum(), e)
        finally:
            h.remove()
        self.passes.stem += 1
        return g

    def step(self, ctx, x, y):
        c, o = self.cfg, self.opts
        res = StepResult()
        stem = find_stem(ctx.attack_model)
        eta = random_init(x, self.eps, self.gen)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss_sum, logits = 0.0, None
        for j in range(o.yopo_m):
            holder = {}
            h = stem.register_forward_hook(lambda _m, _i, o, _h=holder: _Tap.apply(o, _h))
            # the m backward passes accumulate one update: DDP all-reduces the gradient once, after the last
            sync = ctx.no_sync if j < o.yopo_m - 1 else contextlib.nullcontext
            try:
                ctx.model.train()
                with sync(), ctx.autocast():
                    logits = ctx.model(x + eta)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=self.smoothing) / o.yopo_m
                    ctx.backward(loss)  # accumulates the weight gradient and fills holder["p"]
            finally:
                h.remove()
            self.passes.weight += 1
            loss_sum = loss_sum + loss.detach()
            p = holder["p"].float()
            with attack_mode(ctx.attack_model, c.attack_bn):
                for _ in range(o.yopo_n):
                    g = self._stem_grad(ctx.attack_model, stem, x, eta, p)
                    eta = project(x, eta + self.attack_step * g.sign(), self.eps)
        self.apply_update(ctx)
        self.record(res, loss_sum, logits, y)
        return res
