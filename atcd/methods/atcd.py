"""ATCD: Adversarial Training using Contrastive Divergence (spec: shared/ATCD_SPEC.md, Sec. 2).

Per minibatch: T replays; each runs a K-step trajectory warm-started where the previous replay's
chain ended, ascending J_cd (logit gradient lam(p - y) - rho(p_ref - y)), then a Metropolis-Hastings test,
then one weight update on the accepted states.
Cost: T*K input-gradient passes + T weight passes (+ T forwards for M-H).

Metropolis-Hastings: H = U + kappa_H * K with U = -CE/tau (high loss = low energy). The end of a trajectory is
accepted with probability min(1, exp(H_start - H_end)); where it is rejected the chain returns to its start (delta
and momentum v). The test must compare like with like at the two ends:
- Default kappa_H = 0 (`--mh-kinetic 0`): H = -CE/tau, so the test compares the potential alone: accept with
  min(1, exp((CE_end - CE_start) / tau)). A trajectory that raised the loss always passes; one that lowered it
  passes with that probability (tau -> 0: never, large tau: almost always).
  Why: the first implementation's kinetic term kappa_H * mean|v| used the normalised momentum v = mu v + g/mean|g|.
  At mu = 0 mean|v| is 1 after every step and 0 at a fresh start (and after a rejection on the first replay), so
  the term carried no information: it charged each first move a fixed exp(-kappa_H) (acceptance 0.74 on the demo)
  and the examples rejected there trained on their uniform-noise start. Projected sign steps are no Hamiltonian
  flow, so there is no conserved energy for a kinetic term to check, and the paper's eq. 10 (v_t = g_t,
  H = J + |v|) makes |v| a function of the position rather than an independent momentum.
- kappa_H > 0, `--mh-kinetic-v gradient` (default): K is eq. 10's |v| with v = g, the un-normalised input gradient
  of J_cd against the trajectory's Q0, measured the same way at both ends: at the start it is the trajectory's first
  gradient (no extra pass), at the end the M-H pass becomes an input-gradient pass (counted as one instead of a
  forward). K is mean|g| per example, |g_i| per element; its scale is the model's gradient scale (~1e-4 per pixel
  for the untrained small CNN), so kappa_H has no natural unit.
- `--mh-kinetic-v normalised`: the first implementation's K = mean|v| of the chain's normalised momentum, kept
  because the ablation shows that it matters: on the demo recipe (2 epochs, seeds 0/1) kappa_H = 1 reached 56.0 /
  46.4 % holdout PGD-10 accuracy, kappa_H = 0 and --no-mh did not train (holdout clean 8-13 %). Early on a 2-step
  trajectory raises CE by less than kappa_H, so most first moves are rejected and those examples train on their
  noisy start: an implicit eps curriculum, not an M-H correction. The recipes keep it until an eps warm-up does
  that job.
- `--mh-granularity element` (as in the same authors' HMC attack code): H per element, the example's -CE/tau plus
  kappa_H |g_i|, and every pixel of delta and v is kept or returned to the start on its own draw. With kappa_H = 0
  each pixel of an example is accepted independently with the example's probability.
Acceptance is counted on the device per replay index (no host sync per replay); `epoch_metrics` sums the counts
over ranks, reads them once and resets them. They are part of the resumable state, so a mid-epoch resume keeps the
epoch's counts.

`--reuse-grad` (Free's trick, spec Sec. 2 "Cost"): the weight pass of replay t is taken on x + delta with delta
requiring grad, so the same forward/backward also gives the input gradient of CE at replay t+1's start state (the
accepted end of replay t). At a trajectory's start p_ref = p, so J_cd's logit gradient there is (lam - rho)(p - y),
i.e. the CE gradient scaled by (lam - rho): replay t+1's first step uses sign((lam - rho) * dCE/dx) from that pass.
Differences from the plain reading, all accepted for the saving:
- the reused gradient is taken with the weights before replay t's update and with BN in train mode (the weight pass;
  --attack-bn applies only to the remaining K-1 steps), as in Free-AT;
- with M-H, Q0 (p_ref) and the start's CE for the test are measured by one forward at replay t+1's start with the
  updated weights (taking them from replay t's M-H forward, before the update, made the start look better than it
  is and biased the test toward rejection); with --no-mh, p_ref comes from the weight pass's logits;
- delta is carried across minibatches like Free-AT's (projected onto the new images' eps-ball and pixel box; a
  uniform random start on the first minibatch or when the shape changes); replay 0 starts there and the carried
  start stands in for its first step, so it runs K-1 steps (none at K = 1: then it makes no move and has no M-H
  test). The delta carried on is the last accepted state (no extra step after the last weight pass). It is per-rank
  state, saved with the resumable checkpoint.
Cost with --reuse-grad: T*(K-1) input-gradient passes + T weight passes = T*K passes (Free-m's at m = T*K), plus with
M-H one forward per test and T-1 start forwards. With --atcd-restart a replay's fresh start also stands in for its
first step (the reused gradient belongs to another state and is dropped). `--mh-kinetic` > 0 needs the gradient at
the start under the current weights, which --reuse-grad does not compute: the two are refused together. Results of a
--reuse-grad run are labelled `atcd --reuse-grad` (`label`), never plain ATCD.
"""
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attacks.core import input_grad, project, random_init, sign_step
from ..attacks.losses import jcd_loss
from ..errors import CheckpointError, ConfigError
from ..options import AT_LEAST_1, option
from .base import StepResult, TrainMethod, attack_mode
from .registry import register_method

__all__ = ["ATCD", "hamiltonian", "mh_accept"]


def _uniform(shape, generator=None) -> torch.Tensor:
    """The M-H test's uniform draws, on the generator's device (the method's: the accelerator's, see the trainer)."""
    return torch.rand(shape, generator=generator, device=generator.device if generator is not None else None)


def mh_accept(h_start: torch.Tensor, h_end: torch.Tensor, generator=None) -> torch.Tensor:
    """Acceptance per entry (example or element): u < min(1, exp(H_start - H_end))."""
    u = _uniform(h_start.shape, generator).to(h_start.device)
    return u < torch.exp((h_start - h_end).clamp(max=0.0))


def hamiltonian(ce: torch.Tensor, temperature: float, kinetic: float = 0.0, v: torch.Tensor | None = None,
                like: torch.Tensor | None = None) -> torch.Tensor:
    """H = -CE/tau + kappa_H * K per example, or per element of `like` (the example's CE on each of its elements).

    K = |v| per element, mean|v| per example (v: the un-normalised input gradient, or the chain's normalised
    momentum); no K when kappa_H is 0.
    """
    h = -ce / temperature
    if like is not None:
        h = _rows(h, like).expand_as(like)
    if kinetic:
        h = h + kinetic * (v.abs() if like is not None else v.abs().flatten(1).mean(1))
    return h


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example tensor shaped to broadcast over `like`."""
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
        mh: bool = option(True, "Metropolis-Hastings accept/reject of each trajectory's end (--no-mh: ablation)")
        mh_temperature: float = option(1.0, "tau: accept with min(1, exp((CE_end - CE_start)/tau)) at kappa_H = 0",
                                       check=lambda v: v > 0, why="must be > 0")
        mh_kinetic: float = option(0.0, "kappa_H: weight of the kinetic term K = mean|v| (see --mh-kinetic-v); "
                                   "0: H = -CE/tau", check=lambda v: v >= 0, why="must be >= 0")
        mh_kinetic_v: str = option("gradient", "the v of K = mean|v|: gradient (eq. 10, v = g un-normalised, "
                                   "measured at both ends) or normalised (the first implementation's step momentum: "
                                   "a fixed exp(-kappa_H) charge on first moves, a curriculum on the demo)",
                                   choices=("gradient", "normalised"))
        mh_granularity: str = option("example", "M-H per example, or per element (pixel) of delta and v",
                                     choices=("example", "element"))
        atcd_q0: str = option("start", "Q0 = output at the trajectory start (spec) or at the previous transition",
                              choices=("start", "prev"))
        atcd_restart: bool = option(False, "ablation: fresh noise per replay instead of warm start")
        reuse_grad: bool = option(False, "the weight pass of replay t also gives the input gradient of replay t+1's "
                                  "first step (Free's trick): T*K passes per minibatch instead of T*(K+1)")

    def __init__(self, cfg, generator: torch.Generator | None = None):
        super().__init__(cfg, generator)
        self._counts = torch.zeros(self.opts.atcd_T, 2, dtype=torch.int64)  # (accepted, proposed) per replay index
        self.delta: torch.Tensor | None = None  # --reuse-grad only: the chain state carried across minibatches

    @classmethod
    def check(cls, cfg) -> None:
        o = cfg.method_opts
        if o.cd_lambda <= o.cd_rho:  # J_cd's logit gradient at a trajectory's start is (lam - rho)(p - y)
            raise ConfigError(f"--cd-lambda {o.cd_lambda:g} <= --cd-rho {o.cd_rho:g}: each trajectory's first step "
                              f"would then be zero or descend the loss; give lambda > rho (the paper's best: 4 rho)")
        if o.reuse_grad and o.mh and o.mh_kinetic > 0 and o.mh_kinetic_v == "gradient":
            raise ConfigError("--mh-kinetic > 0 with --mh-kinetic-v gradient measures the input gradient at each "
                              "trajectory's start under the current weights, which --reuse-grad does not compute: "
                              "drop --reuse-grad, or give --mh-kinetic-v normalised, --mh-kinetic 0 or --no-mh")

    @classmethod
    def label(cls, opts) -> str:
        get = opts.get if isinstance(opts, Mapping) else functools.partial(getattr, opts)
        flags = (" --reuse-grad" if get("reuse_grad", False) else "") + ("" if get("mh", True) else " --no-mh")
        return cls.name + flags

    @classmethod
    def default_attack_step(cls, cfg) -> float:
        # a K-step trajectory can cross half the ball: eps/4 at K=2
        return cfg.eps / (2 * max(1, cfg.method_opts.atcd_K))

    @classmethod
    def default_eps_warmup(cls, cfg, passes: int) -> float:
        # measured (issue 33): at eps 0.3 on mnist-mini, without a ramp the chains start on noise of the whole ball
        # and the model never leaves chance (10.0 % clean after each of 4 epochs); with eps ramped over half the
        # passes the same run trains (reports/mnist-mini/collapse.md). The paper's CIFAR/ImageNet radii (8/255,
        # 4/255) train without one.
        return passes / 2 if cfg.eps >= 0.1 else 0.0

    @classmethod
    def updates_per_batch(cls, opts) -> int:
        return opts.atcd_T

    @classmethod
    def passes_per_batch(cls, opts) -> int:
        T, K = opts.atcd_T, opts.atcd_K
        if not opts.reuse_grad:  # the M-H pass is a forward, or an input-gradient pass with --mh-kinetic > 0
            return T * K + T + (T if opts.mh else 0)
        fresh = T if opts.atcd_restart else 1  # replays that start without a reused gradient
        tests = T - (fresh if K == 1 else 0)   # every replay that moved is tested
        return T * (K - 1) + T + (tests + T - fresh if opts.mh else 0)  # + a start forward per reused start

    @classmethod
    def budget_divisor(cls, opts) -> int:
        return opts.atcd_T * opts.atcd_K

    def step(self, ctx, x, y):
        if self.opts.reuse_grad:
            return self._step_reuse(ctx, x, y)
        c, o = self.cfg, self.opts
        res = StepResult()
        delta = random_init(x, self.eps, self.gen)
        v = torch.zeros_like(x)
        for t in range(o.atcd_T):
            if o.atcd_restart and t > 0:  # ablation: fresh noise per replay instead of the warm-started chain
                delta, v = random_init(x, self.eps, self.gen), torch.zeros_like(x)
            d_start, v_start = delta, v
            with attack_mode(ctx.attack_model, c.attack_bn):
                delta, v, start = self._trajectory(ctx, x, y, delta, v, None, o.atcd_K)
                if o.mh:
                    delta, v = self._metropolis(ctx, x, y, t, (d_start, v_start, *start), delta, v)
            self.weight_update(ctx, x, y, res, delta)
        return res

    def _step_reuse(self, ctx, x, y):
        """--reuse-grad: T*(K-1) attack passes; each weight pass also gives the next replay's first step."""
        c, o = self.cfg, self.opts
        res = StepResult()
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = random_init(x, self.eps, self.gen)
        delta = project(x, self.delta.to(x.device, x.dtype), self.eps)
        v = torch.zeros_like(x)
        g = p_ref = None  # g: CE input gradient at this replay's start, from the last weight pass
        for t in range(o.atcd_T):
            if o.atcd_restart and t > 0:  # ablation: the fresh start stands in for the first step
                delta, v, g = random_init(x, self.eps, self.gen), torch.zeros_like(x), None
            d_start, v_start = delta, v
            with attack_mode(ctx.attack_model, c.attack_bn):
                if g is None:  # the start's own first attack pass gives Q0 and its CE (no step, no test at K = 1)
                    delta, v, start = self._trajectory(ctx, x, y, delta, v, None, o.atcd_K - 1)
                else:
                    if o.mh:  # Q0 and the start's CE with the weights as they are now (one forward)
                        start = self._forward(ctx, x, y, delta)
                        p_ref = start[1]
                    # J_cd's gradient at the start is (lam - rho) x CE's
                    delta, v = sign_step(x, delta, v, (o.cd_lambda - o.cd_rho) * g.float(), self.eps, self.attack_step,
                                         o.momentum_decay)
                    delta, v, _ = self._trajectory(ctx, x, y, delta, v, p_ref, o.atcd_K - 1)
                if o.mh and start is not None:
                    delta, v = self._metropolis(ctx, x, y, t, (d_start, v_start, *start), delta, v)
            last = t == o.atcd_T - 1
            g, logits = self.weight_update(ctx, x, y, res, delta, input_grad=not last)  # + next replay's first step
            if not o.mh:
                p_ref = F.softmax(logits.detach().float(), 1)
        self.delta = delta.detach()
        return res

    def _grad(self, ctx, x, y, delta, p_ref):
        """One input-gradient pass of J_cd at x + delta; p_ref None: this pass's own output (a trajectory's start).

        Returns (gradient, CE per example, softmax output), all detached.
        """
        o = self.opts
        seen = {}

        def loss_fn(z, yy):
            p = F.softmax(z.float(), 1).detach()
            seen["p"], seen["ce"] = p, F.cross_entropy(z.float(), yy, reduction="none").detach()
            return jcd_loss(z.float(), yy, p if p_ref is None else p_ref, o.cd_lambda, o.cd_rho)

        with ctx.autocast():
            g, _, _ = input_grad(ctx.attack_model, x, delta, y, loss_fn, self.passes)
        return g.float(), seen["ce"], seen["p"]

    def _forward(self, ctx, x, y, delta):
        """(CE per example, softmax output, None) at x + delta: one forward."""
        with torch.no_grad(), ctx.autocast():
            z = ctx.attack_model(x + delta).float()
        self.passes.forward += 1
        return F.cross_entropy(z, y, reduction="none"), F.softmax(z, 1), None

    def _trajectory(self, ctx, x, y, delta, v, p_ref, steps):
        """`steps` J_cd sign steps (attack passes; the caller sets the BN mode).

        With `p_ref` None the first pass is at the trajectory's start: it gives Q0, and `start` = (CE, Q0, J_cd
        input gradient) there for the M-H test. Returns (delta, v, start); start is None when `p_ref` was given or
        `steps` is 0.
        """
        o = self.opts
        start = None
        for _ in range(steps):
            # p_ref: 'start' = output at the trajectory's start; 'prev' = output at transition k-1.
            # At the start both readings use this forward's own output, so no extra forward is needed.
            fresh = p_ref is None
            g, ce, p = self._grad(ctx, x, y, delta, p_ref)
            if fresh:
                start, p_ref = (ce, p, g), p
            elif o.atcd_q0 == "prev":
                p_ref = p
            delta, v = sign_step(x, delta, v, g, self.eps, self.attack_step, o.momentum_decay)
        return delta, v, start

    def _metropolis(self, ctx, x, y, t, start, delta, v):
        """M-H test of replay t's end against its start; rejected examples (or elements) return to the start.

        `start` = (delta, v, CE, Q0, J_cd input gradient or None) at the trajectory's start. One pass at the end: a
        forward, or with kappa_H > 0 an input-gradient pass of J_cd against the same Q0. Returns (delta, v).
        """
        o = self.opts
        d_start, v_start, ce_start, q0, g_start = start
        if o.mh_kinetic > 0 and o.mh_kinetic_v == "gradient":
            g_end, ce_end, _ = self._grad(ctx, x, y, delta, q0)
            k_start, k_end = g_start, g_end
        else:  # the normalised reading takes the chain's own momentum at both ends
            ce_end, _, _ = self._forward(ctx, x, y, delta)
            k_start, k_end = v_start, v
        like = x if o.mh_granularity == "element" else None
        h0 = hamiltonian(ce_start, o.mh_temperature, o.mh_kinetic, k_start, like)
        h1 = hamiltonian(ce_end, o.mh_temperature, o.mh_kinetic, k_end, like)
        acc = mh_accept(h0, h1, self.gen)
        if self._counts.device != acc.device:
            self._counts = self._counts.to(acc.device)
        self._counts[t, 0] += acc.sum()  # stays on the device: no host sync per replay
        self._counts[t, 1] += acc.numel()
        m = acc if like is not None else _rows(acc, x)
        return torch.where(m, delta, d_start), torch.where(m, v, v_start)

    def mh_counts(self) -> torch.Tensor:
        """(accepted, proposed) per replay index on this rank since the epoch began, on the CPU (a host sync)."""
        return self._counts.cpu()

    def epoch_metrics(self, accelerator) -> dict[str, float]:
        """M-H acceptance of the epoch, summed over ranks: overall and per replay index; resets the counts."""
        if not self.opts.mh:
            return {}
        counts = accelerator.reduce(self._counts.to(accelerator.device), reduction="sum").cpu().tolist()
        self._counts = torch.zeros_like(self._counts)

        def rate(accepted, proposed):  # "": nothing tested (--reuse-grad at K = 1: replay 0 makes no move)
            return accepted / proposed if proposed else ""

        out = {"mh_accept": rate(sum(a for a, _ in counts), sum(n for _, n in counts))}
        return {**out, **{f"mh_accept_r{t}": rate(a, n) for t, (a, n) in enumerate(counts)}}

    def state_dict(self) -> dict:
        """RNG of random starts and M-H draws and this epoch's M-H counts, so a resumed run draws and reports what
        the uninterrupted one would; with --reuse-grad also the carried chain state."""
        own = {} if self.delta is None else {"delta": self.delta.cpu().contiguous()}
        return {**super().state_dict(), "mh_counts": self._counts.cpu().contiguous(), **own}

    def load_state_dict(self, state: dict):
        T = self.opts.atcd_T
        if "mh_counts" not in state:
            raise CheckpointError("the checkpoint's ATCD method state has no 'mh_counts' (M-H acceptance counts): "
                                  "it was not written by this version's ATCD: resume it with the version that wrote "
                                  "it, or start afresh from its weights with --initial-checkpoint RUN/model.safetensors "
                                  "--overwrite")
        counts = state["mh_counts"]
        if tuple(counts.shape) != (T, 2):
            raise CheckpointError(f"the checkpoint's ATCD M-H counts have shape {tuple(counts.shape)}, this run "
                                  f"needs ({T}, 2) (per replay of --atcd-T {T}): written by another version or "
                                  "another --atcd-T")
        super().load_state_dict(state)
        self._counts = counts.to(torch.int64).clone()
        self.delta = state.get("delta")
