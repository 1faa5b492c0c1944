"""ATCD: Adversarial Training using Contrastive Divergence (spec: shared/ATCD_SPEC.md, Sec. 2).

Per minibatch: T replays; each runs a K-step trajectory warm-started where the previous replay's
chain ended, ascending J_cd (logit gradient lam(p - y) - rho(p_ref - y)), then a per-example
Metropolis-Hastings test, then one weight update on the accepted states.
Cost: T*K input-gradient passes + T weight passes (+ T forwards for M-H).
"""
import torch
import torch.nn.functional as F

from ..attacks.core import input_grad, random_init, sign_step
from ..attacks.losses import jcd_loss
from .base import StepResult, TrainMethod, attack_mode
from .registry import register_method

__all__ = ["ATCD", "mh_accept"]


def mh_accept(h_start: torch.Tensor, h_end: torch.Tensor, generator=None) -> torch.Tensor:
    """Per-example acceptance: u < min(1, exp(H_start - H_end))."""
    u = torch.rand(h_start.shape, generator=generator).to(h_start.device)
    return u < torch.exp((h_start - h_end).clamp(max=0.0))


def hamiltonian(ce: torch.Tensor, v: torch.Tensor, temperature: float, kinetic: float) -> torch.Tensor:
    """H = U + K with U = -CE/tau (high loss = low energy) and K = kappa * mean|v| per example."""
    return -ce / temperature + kinetic * v.abs().flatten(1).mean(1)


@register_method("atcd")
class ATCD(TrainMethod):

    def __init__(self, cfg, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        self.accepted = 0
        self.proposed = 0

    def updates_per_batch(self) -> int:
        return self.cfg.atcd_T

    @classmethod
    def budget_divisor(cls, cfg) -> int:
        return cfg.atcd_T * cfg.atcd_K

    def step(self, ctx, x, y):
        c = self.cfg
        res = StepResult()
        amodel = ctx.attack_model
        delta = random_init(x, c.eps, self.gen)
        v = torch.zeros_like(x)
        for t in range(c.atcd_T):
            if c.atcd_restart and t > 0:  # ablation: fresh noise per replay instead of the warm-started chain
                delta, v = random_init(x, c.eps, self.gen), torch.zeros_like(x)
            d_start, v_start = delta, v
            ce_start = None
            p_ref = None
            with attack_mode(amodel, c.attack_bn):
                for k in range(c.atcd_K):
                    # p_ref: 'start' = output at the trajectory's start; 'prev' = output at transition k-1.
                    # At k=0 both readings use this forward's own output, so no extra forward is needed.
                    holder = {}

                    def loss_fn(z, yy, _p=p_ref, _h=holder):
                        p = F.softmax(z.float(), 1).detach()
                        _h["p"], _h["ce"] = p, F.cross_entropy(z.float(), yy, reduction="none").detach()
                        return jcd_loss(z.float(), yy, p if _p is None else _p, c.cd_lambda, c.cd_rho)

                    with ctx.autocast():
                        g, _, _ = input_grad(amodel, x, delta, y, loss_fn, self.passes)
                    if k == 0:
                        ce_start = holder["ce"]
                        p_ref = holder["p"]
                    elif c.atcd_q0 == "prev":
                        p_ref = holder["p"]
                    delta, v = sign_step(x, delta, v, g.float(), c.eps, c.attack_step, c.momentum_decay)
                if c.mh:
                    with torch.no_grad(), ctx.autocast():
                        ce_end = F.cross_entropy(amodel(x + delta).float(), y, reduction="none")
                    self.passes.forward += 1
                    h0 = hamiltonian(ce_start, v_start, c.mh_temperature, c.mh_kinetic)
                    h1 = hamiltonian(ce_end, v, c.mh_temperature, c.mh_kinetic)
                    acc = mh_accept(h0, h1, self.gen)
                    self.accepted += int(acc.sum())
                    self.proposed += acc.numel()
                    m = acc.view(-1, *([1] * (x.dim() - 1)))
                    delta, v = torch.where(m, delta, d_start), torch.where(m, v, v_start)
            self.weight_update(ctx, x + delta, y, res)
        return res

    def state_dict(self) -> dict:
        """RNG of random starts and M-H draws, so a resumed run draws what the uninterrupted one would."""
        return {**super().state_dict(), "mh_counts": torch.tensor([self.accepted, self.proposed])}

    def load_state_dict(self, state: dict):
        super().load_state_dict(state)
        self.accepted, self.proposed = (int(v) for v in state["mh_counts"])

    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else float("nan")
