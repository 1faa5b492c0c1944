"""ATCD: Adversarial Training using Contrastive Divergence (spec: shared/ATCD_SPEC.md, Sec. 2).

Per minibatch: T replays; each runs a K-step trajectory warm-started where the previous replay's
chain ended, ascending J_cd (logit gradient lam(p - y) - rho(p_ref - y)), then a per-example
Metropolis-Hastings test, then one weight update on the accepted states.
Cost: T*K input-gradient passes + T weight passes (+ T forwards for M-H).

`--reuse-grad` (Free's trick, spec Sec. 2 "Cost"): the weight pass of replay t is taken on x + delta with delta
requiring grad, so the same forward/backward also gives the input gradient of CE at replay t+1's start state (the
accepted end of replay t). At a trajectory's start p_ref = p, so J_cd's logit gradient there is (lam - rho)(p - y),
i.e. the CE gradient scaled by (lam - rho): replay t+1's first step uses sign((lam - rho) * dCE/dx) from that pass.
Differences from the plain reading, all accepted for the saving:
- the reused gradient is taken with the weights before replay t's update and with BN in train mode (the weight pass;
  --attack-bn applies only to the remaining K-1 steps), as in Free-AT;
- Q0 (p_ref) and the start state's CE for the M-H test of replay t+1 are not recomputed: they are those of the
  accepted end of replay t, already known from its M-H forward (rejected examples keep replay t's start values);
  with --no-mh, p_ref comes from the weight pass's logits;
- delta is carried across minibatches like Free-AT's (projected onto the new images' eps-ball and pixel box; a
  uniform random start on the first minibatch or when the shape changes); replay 0 starts there and the carried
  start stands in for its first step, so it runs K-1 steps. The delta carried on is the last accepted state (no
  extra step after the last weight pass). It is per-rank state, saved with the resumable checkpoint.
Cost with --reuse-grad: T*(K-1) input-gradient passes + T weight passes = T*K passes (Free-m's at m = T*K), plus T
M-H forwards. With --atcd-restart a replay's fresh start also stands in for its first step (the reused gradient
belongs to another state and is dropped).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attacks.core import input_grad, project, random_init, sign_step
from ..attacks.losses import jcd_loss
from ..options import AT_LEAST_1, option
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


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example mask shaped to broadcast over `like`."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


@register_method("atcd")
class ATCD(TrainMethod):
    sign_steps = True

    @dataclass(frozen=True)
    class Options:
        atcd_T: int = option(4, "T: replays per minibatch", flag="--atcd-T", **AT_LEAST_1)
        atcd_K: int = option(2, "K: transitions per trajectory", flag="--atcd-K", **AT_LEAST_1)
        cd_lambda: float = option(2.0, "lambda in J_cd", check=lambda v: v > 0, why="must be > 0")
        cd_rho: float = option(1.0, "rho in J_cd (0 = plain CE ascent)")
        momentum_decay: float = option(0.0, "mu: 0 PGD-like, 1 MI-FGSM-like")
        mh: bool = option(True, "Metropolis-Hastings accept/reject per example (--no-mh: ablation)")
        mh_temperature: float = option(1.0, "tau", check=lambda v: v > 0, why="must be > 0")
        mh_kinetic: float = option(1.0, "kappa_H, weight of K(v)=mean|v|", check=lambda v: v >= 0,
                                   why="must be >= 0")
        atcd_q0: str = option("start", "Q0 = output at the trajectory start (spec) or at the previous transition",
                              choices=("start", "prev"))
        atcd_restart: bool = option(False, "ablation: fresh noise per replay instead of warm start")
        reuse_grad: bool = option(False, "the weight pass of replay t also gives the input gradient of replay t+1's "
                                  "first step (Free's trick): T*K passes per minibatch instead of T*(K+1)")

    def __init__(self, cfg, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        self.accepted = 0  # a device tensor once counting starts: read by acceptance_rate(), not per replay
        self.proposed = 0
        self.delta: torch.Tensor | None = None  # --reuse-grad only: the chain state carried across minibatches

    @classmethod
    def default_attack_step(cls, cfg) -> float:
        # a K-step trajectory can cross half the ball: eps/4 at K=2
        return cfg.eps / (2 * max(1, cfg.method_opts.atcd_K))

    @classmethod
    def updates_per_batch(cls, opts) -> int:
        return opts.atcd_T

    @classmethod
    def passes_per_batch(cls, opts) -> int:
        steps = opts.atcd_T * (opts.atcd_K - 1 if opts.reuse_grad else opts.atcd_K)  # reuse: the weight pass gives one
        return steps + opts.atcd_T + (opts.atcd_T if opts.mh else 0)

    @classmethod
    def budget_divisor(cls, opts) -> int:
        return opts.atcd_T * opts.atcd_K

    def step(self, ctx, x, y):
        if self.opts.reuse_grad:
            return self._step_reuse(ctx, x, y)
        c, o = self.cfg, self.opts
        res = StepResult()
        amodel = ctx.attack_model
        delta = random_init(x, c.eps, self.gen)
        v = torch.zeros_like(x)
        for t in range(o.atcd_T):
            if o.atcd_restart and t > 0:  # ablation: fresh noise per replay instead of the warm-started chain
                delta, v = random_init(x, c.eps, self.gen), torch.zeros_like(x)
            d_start, v_start = delta, v
            with attack_mode(amodel, c.attack_bn):
                delta, v, ce_start, _ = self._trajectory(ctx, x, y, delta, v, None, o.atcd_K)
                if o.mh:
                    delta, v, *_ = self._metropolis(ctx, x, y, d_start, v_start, ce_start, delta, v)
            self.weight_update(ctx, x, y, res, delta)
        return res

    def _step_reuse(self, ctx, x, y):
        """--reuse-grad: T*(K-1) attack passes; each weight pass also gives the next replay's first step."""
        c, o = self.cfg, self.opts
        res = StepResult()
        amodel = ctx.attack_model
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = random_init(x, c.eps, self.gen)
        delta = project(x, self.delta.to(x.device, x.dtype), c.eps)
        v = torch.zeros_like(x)
        g = ce_start = p_start = None  # g: CE input gradient at this replay's start, from the last weight pass
        for t in range(o.atcd_T):
            if o.atcd_restart and t > 0:  # ablation: the fresh start stands in for the first step
                delta, v, g = random_init(x, c.eps, self.gen), torch.zeros_like(x), None
            d_start, v_start = delta, v
            with attack_mode(amodel, c.attack_bn):
                if g is None:  # the start's own first attack pass gives Q0 and its CE (none when K = 1)
                    delta, v, ce_start, p_start = self._trajectory(ctx, x, y, delta, v, None, o.atcd_K - 1)
                else:  # J_cd's gradient at the start is (lam - rho) x CE's
                    delta, v = sign_step(x, delta, v, (o.cd_lambda - o.cd_rho) * g.float(), c.eps, c.attack_step,
                                         o.momentum_decay)
                    delta, v, _, _ = self._trajectory(ctx, x, y, delta, v, p_start, o.atcd_K - 1)
                if o.mh:
                    delta, v, acc, ce_end, p_end = self._metropolis(ctx, x, y, d_start, v_start, ce_start, delta, v)
            last = t == o.atcd_T - 1
            g, logits = self.weight_update(ctx, x, y, res, delta, input_grad=not last)  # + next replay's first step
            if o.mh:  # the next replay starts at the accepted states: their CE and output are known already
                ce_start = torch.where(acc, ce_end, ce_start if ce_start is not None else ce_end)
                p_start = torch.where(_rows(acc, p_end), p_end, p_start if p_start is not None else p_end)
            else:
                p_start = F.softmax(logits.detach().float(), 1)
        self.delta = delta.detach()
        return res

    def _trajectory(self, ctx, x, y, delta, v, p_ref, steps):
        """`steps` J_cd sign steps (attack passes; the caller sets the BN mode).

        With `p_ref` None the first pass is at the trajectory's start and gives Q0 (and the start's CE for M-H).
        Returns (delta, v, ce_start, p_start); the last two are None when `p_ref` was given or `steps` is 0.
        """
        c, o = self.cfg, self.opts
        ce_start = p_start = None
        for k in range(steps):
            # p_ref: 'start' = output at the trajectory's start; 'prev' = output at transition k-1.
            # At the start both readings use this forward's own output, so no extra forward is needed.
            holder = {}

            def loss_fn(z, yy, _p=p_ref, _h=holder):
                p = F.softmax(z.float(), 1).detach()
                _h["p"], _h["ce"] = p, F.cross_entropy(z.float(), yy, reduction="none").detach()
                return jcd_loss(z.float(), yy, p if _p is None else _p, o.cd_lambda, o.cd_rho)

            with ctx.autocast():
                g, _, _ = input_grad(ctx.attack_model, x, delta, y, loss_fn, self.passes)
            if p_ref is None:
                ce_start = holder["ce"]
                p_ref = p_start = holder["p"]
            elif o.atcd_q0 == "prev":
                p_ref = holder["p"]
            delta, v = sign_step(x, delta, v, g.float(), c.eps, c.attack_step, o.momentum_decay)
        return delta, v, ce_start, p_start

    def _metropolis(self, ctx, x, y, d_start, v_start, ce_start, delta, v):
        """Per-example M-H test of the trajectory's end (one forward); rejected examples return to the start.

        Returns (delta, v, accepted, ce_end, p_end); `ce_start` None means the start is the end (no step taken).
        """
        o = self.opts
        with torch.no_grad(), ctx.autocast():
            z = ctx.attack_model(x + delta).float()
            ce_end = F.cross_entropy(z, y, reduction="none")
        self.passes.forward += 1
        h0 = hamiltonian(ce_end if ce_start is None else ce_start, v_start, o.mh_temperature, o.mh_kinetic)
        h1 = hamiltonian(ce_end, v, o.mh_temperature, o.mh_kinetic)
        acc = mh_accept(h0, h1, self.gen)
        self.accepted = self.accepted + acc.sum()  # stays on the device (no host sync per replay)
        self.proposed += acc.numel()
        m = _rows(acc, x)
        return torch.where(m, delta, d_start), torch.where(m, v, v_start), acc, ce_end, F.softmax(z, 1)

    def state_dict(self) -> dict:
        """RNG of random starts and M-H draws, so a resumed run draws what the uninterrupted one would; with
        --reuse-grad also the carried chain state."""
        own = {} if self.delta is None else {"delta": self.delta.cpu().contiguous()}
        return {**super().state_dict(), "mh_counts": torch.tensor([int(self.accepted), self.proposed]), **own}

    def load_state_dict(self, state: dict):
        super().load_state_dict(state)
        self.accepted, self.proposed = (int(v) for v in state["mh_counts"])
        self.delta = state.get("delta")

    def acceptance_rate(self) -> float:
        return int(self.accepted) / self.proposed if self.proposed else float("nan")  # the one read of the counts
