"""Faults a long training run must survive: preemption signals and non-finite steps.

- `Preemption`: SIGTERM / SIGUSR1 (what SLURM, Kubernetes and spot instances send before killing a job) ask the run
  to finish the current step, write a checkpoint and exit 0; a second signal exits at once. Under several
  processes the request is agreed on by all of them at the end of every step, so a signal to one rank makes every
  rank checkpoint at the same step.
- `FiniteGuard`: wraps the optimizer the methods step. An update whose gradients hold a NaN/inf (a non-finite
  loss back-propagates into them) is skipped and counted instead of being applied; after `max_bad_steps` the run
  stops. Gradients are checked after DDP's all-reduce, so every rank reaches the same decision without another
  collective. Under fp16 Accelerate's GradScaler already skips overflowing steps (and lowers its scale); there the
  guard defers to it.
"""
import os
import signal
import sys

import torch

__all__ = ["EXIT_BAD_STEPS", "FiniteGuard", "Preemption"]

EXIT_BAD_STEPS = 3  # exit code of a run stopped by --max-bad-steps


class Preemption:
    """Context manager installing the SIGTERM/SIGUSR1 handlers for the duration of a run (main thread only)."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:  # second signal: no more grace
            print(f"{name} again: exiting now without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"{name} received: finishing the current step, then checkpointing and exiting "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave the default handling
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal to another process"

    def requested(self, accelerator) -> bool:
        """True on every process once any process got a signal (one tiny all-reduce per step when distributed)."""
        mine = self.signum is not None
        if accelerator.num_processes == 1:
            return mine
        flag = accelerator.reduce(torch.tensor([int(mine)], device=accelerator.device), reduction="sum")
        return int(flag.item()) > 0


class FiniteGuard:
    """The optimizer the methods see: `step()` applies an update only when every gradient is finite.

    `bad_steps` counts skipped updates over the run (restored on resume); `first_bad` is the update counter at the
    first skip of this process's run.
    """

    def __init__(self, optimizer, accelerator, num_updates=lambda: 0):
        self.optimizer = optimizer
        self.accelerator = accelerator
        self.num_updates = num_updates
        self.bad_steps = 0
        self.first_bad: int | None = None

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _grads(self) -> list:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def _finite(self) -> bool:
        grads = [p.grad for p in self._grads()]
        if not grads:
            return True
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def step(self):
        if getattr(self.accelerator, "scaler", None) is not None or not self.accelerator.sync_gradients:
            self.optimizer.step()  # fp16: the GradScaler skips overflow steps itself; micro-steps: nothing to apply
            return
        if self._finite():
            self.optimizer.step()
            return
        self.bad_steps += 1
        if self.first_bad is None:
            self.first_bad = self.num_updates()
        for p in self._grads():  # (not optimizer.zero_grad: under accumulation that is deliberately a no-op)
            p.grad = None
        if self.accelerator.is_main_process:
            print(f"non-finite loss/gradient at update {self.num_updates()}: update skipped "
                  f"({self.bad_steps} so far)", file=sys.stderr, flush=True)
