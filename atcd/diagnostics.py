"""The paper's trajectory shift (Definition 5.1, Appendix A.2): how much the weight gradient of each layer changes
when the adversarial examples come from a k-step instead of a k'-step trajectory.

For each layer i, g_{k,i} is the gradient of the training loss w.r.t. the layer's weights at the end of a k-step
ATCD trajectory (J_cd ascent, the same random start, weights and minibatch for k and k'), summed over the
minibatches and averaged over the data (A.2: "all gradients will be added and averaged throughout the dataset");
the trajectory shift is the L2 distance ||g_k - g_k'|| and the cosine similarity of the two averages.
Gradients are taken with the model in eval mode so the measurement changes nothing (no BN statistics updates).
"""
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import AttackConfig
from .attacks.core import device_generator, perturb, random_init
from .attacks.losses import jcd_loss
from .methods.atcd import ATCD

__all__ = ["layer_gradients", "trajectory_delta", "trajectory_shift"]

_ATCD_DEFAULTS = ATCD.Options()


def trajectory_delta(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, cfg: AttackConfig,
                     start: torch.Tensor, opts: ATCD.Options = _ATCD_DEFAULTS) -> torch.Tensor:
    """End of a k-step ATCD trajectory from `start` (p_ref = the model's output at the start).

    `cfg` gives eps, step size and seed; `opts` ATCD's lambda, rho and momentum.
    """
    if k == 0:
        return start
    with torch.no_grad():
        p_ref = F.softmax(model(x + start).float(), 1)
    loss = lambda z, yy: jcd_loss(z.float(), yy, p_ref, opts.cd_lambda, opts.cd_rho)
    return perturb(model, x, y, loss, cfg.eps, cfg.step_size, k, start, opts.momentum_decay)


def layer_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient of the summed CE w.r.t. every weight tensor (parameters with >= 2 dims: conv / linear layers)."""
    named = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        grads = torch.autograd.grad(loss, [p for _, p in named])
    return {n: g.detach() for (n, _), g in zip(named, grads)}


def trajectory_shift(model: nn.Module, batches: Iterable, k: int, k2: int, cfg: AttackConfig,
                     opts: ATCD.Options = _ATCD_DEFAULTS) -> list[dict]:
    """Per layer: {layer, l2, cosine, norm_k, norm_k2} between the data-averaged gradients of k and k2 trajectories."""
    was_training = model.training
    model.eval()
    gen = None  # made on the batches' device at the first batch
    sums: dict[int, dict[str, torch.Tensor]] = {k: {}, k2: {}}
    n = 0
    try:
        for x, y in batches:
            gen = gen or device_generator(cfg.seed, x.device)
            start = random_init(x, cfg.eps, gen)  # one start shared by both trajectory lengths
            for kk in {k, k2}:
                g = layer_gradients(model, x + trajectory_delta(model, x, y, kk, cfg, start, opts), y)
                for name, v in g.items():
                    sums[kk][name] = sums[kk].get(name, 0) + v.double()
            n += len(y)
    finally:
        model.train(was_training)
    if k == k2:
        sums[k2] = sums[k]
    rows = []
    for name in sums[k]:
        a, b = sums[k][name].flatten() / n, sums[k2][name].flatten() / n
        rows.append({"layer": name, "l2": float((a - b).norm()), "cosine": float(F.cosine_similarity(a, b, dim=0)),
                     "norm_k": float(a.norm()), "norm_k2": float(b.norm())})
    return rows
