"""Faults a long training run must survive: preemption signals and non-finite steps.

- `Preemption`: SIGTERM / SIGUSR1 (what SLURM, Kubernetes and spot instances send before killing a job) ask the run
  to finish the current step, write a checkpoint and exit 0. A repeated signal is the same request: SLURM signals
  every process of the step and torch's elastic agent (`accelerate launch`, torchrun) forwards its own SIGTERM to
  the trainers, so one preemption arrives twice (SIGINT / Ctrl-C still stops at once). Forked loader workers
  inherit the handler and ignore the signal (the main process stops them). Under several processes the request is
  agreed on by all of them without a host sync per step: each step all-reduces a device flag, and every rank reads
  the flag of `lag` steps earlier from host memory, so all ranks checkpoint at the same step.
- `FiniteGuard`: wraps the optimizer the methods step. An update whose gradients hold a NaN/inf (a non-finite
  loss back-propagates into them) is skipped and counted on the device instead of being applied (no host sync per
  update); the trainer reads the count every --log-interval minibatches and before every checkpoint, and stops
  the run at the first read that finds `max_bad_steps` reached. Gradients are checked after DDP's all-reduce, so
  every rank reaches the same decision without another collective. Under fp16 Accelerate's GradScaler already
  skips overflowing steps (and lowers its scale); there the guard defers to it.
"""
import collections
import os
import signal
import sys

import torch
import torch.distributed as dist

from .signals import STOP_SIGNALS

__all__ = ["EXIT_BAD_STEPS", "EXIT_COLLAPSED", "FiniteGuard", "Preemption"]

EXIT_BAD_STEPS = 3  # exit code of a run stopped by --max-bad-steps
EXIT_COLLAPSED = 4  # exit code of a run that trained to the end at chance accuracy (atcd/collapse.py)


class Preemption:
    """Context manager installing the SIGTERM/SIGUSR1 handlers for the duration of a run (main thread only)."""

    SIGNALS = STOP_SIGNALS

    def __init__(self, lag: int = 2):
        self.signum: int | None = None
        self._old = {}
        self._pid = os.getpid()
        self.lag = lag
        self._pending: collections.deque = collections.deque()  # (host flag, event) of the last `lag` steps
        self._slots: list = []

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:  # a forked loader worker: the main process stops it
            return
        if self.signum is not None:  # the scheduler's and the launcher's copy of one preemption
            return
        self.signum = signum
        print(f"{signal.Signals(signum).name} received: finishing the current step, then checkpointing and exiting "
              f"(a repeated signal is the same request; SIGINT stops at once)", file=sys.stderr, flush=True)

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

    def requested(self, accelerator, now: bool = False) -> bool:
        """True on every process, at the same call, once any process got a signal.

        Distributed, per call: a device flag is set with `fill_` (no host-to-device copy) and all-reduced; its value
        is copied into pinned host memory behind an event, and the value of `lag` calls earlier is read from there
        (the event of a step long done on the device: no wait for the current queue). `now=True` (epoch ends,
        already a sync point) all-reduces and reads at once, and drops the pending reads.
        """
        mine = self.signum is not None
        if accelerator.num_processes == 1:
            return mine
        if now:
            self._pending.clear()
            flag = torch.zeros(1, dtype=torch.int32, device=accelerator.device).fill_(int(mine))
            return int(accelerator.reduce(flag, reduction="sum").item()) > 0
        if not self._slots:
            self._slots = [_FlagSlot(accelerator.device) for _ in range(self.lag + 1)]
        slot = self._slots[0]
        self._slots.append(self._slots.pop(0))
        self._pending.append(slot.post(int(mine)))
        if len(self._pending) <= self.lag:
            return False
        return self._pending.popleft()()


class _FlagSlot:
    """A device flag, its pinned host copy and the event after the copy: one step's stop request in flight."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.flag = torch.zeros(1, dtype=torch.int32, device=self.device)
        cuda = self.device.type == "cuda"
        self.host = torch.zeros(1, dtype=torch.int32, pin_memory=cuda)
        self.host_view = self.host.numpy()  # read through numpy: host memory, no tensor read
        self.event = torch.Event(device=self.device.type) if self.device.type != "cpu" else None

    def post(self, mine: int):
        """Set, all-reduce and start copying this step's flag; returns the read of its result."""
        self.flag.fill_(mine)
        dist.all_reduce(self.flag)
        self.host.copy_(self.flag, non_blocking=self.event is not None)
        if self.event is not None:
            self.event.record()

        def read() -> bool:
            if self.event is not None:
                self.event.synchronize()  # that step's copy only, not the whole queue
            return int(self.host_view[0]) > 0
        return read


class FiniteGuard:
    """The optimizer the methods see: an update whose gradients are not all finite is skipped, with no host sync.

    Per update, on the device: a flag `bad` (some gradient holds a NaN/inf); the parameters being updated and their
    optimizer state are copied, the inner optimizer steps, and every one of them is put back where `bad` holds
    (`torch.where`: a multiplicative mask would not do, 0 * NaN is NaN). A skipped update so leaves weights and
    moment buffers exactly as they were, and the host never waits for the flag. What cannot be put back without
    reading it: state the optimizer keeps on the host while the parameters are on an accelerator (Adam's `step`
    counter on a GPU unless capturable/fused, Python numbers) advances as for an applied update, and state the
    step itself created (the first update) is zeroed, which is the initial state of torch's SGD, Adam and AdamW.
    Cost: one more copy of the updated parameters and their optimizer state in device memory, and per update two
    copies and a select of them.

    The skips are counted on the device; `poll()` reads the count (one host sync) into `bad_steps` (skipped
    updates over the run, restored on resume) and `first_bad` (the update counter at this process's first skip)
    and prints a line about new skips. The trainer polls every --log-interval minibatches, at the end of the
    epoch and before every checkpoint, so no checkpoint is written without knowing about the skips before it.
    """

    def __init__(self, optimizer, accelerator, num_updates=lambda: 0):
        self.optimizer = optimizer
        self.accelerator = accelerator
        self.num_updates = num_updates
        self.bad_steps = 0
        self.first_bad: int | None = None
        self._skipped: torch.Tensor | None = None  # skips since the last poll (device)
        self._first: torch.Tensor | None = None    # update counter at the first of them, -1: none (device)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _grads(self) -> list:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def _state(self) -> dict:
        """The torch optimizer's per-parameter state (under Accelerate's and the accumulation wrappers)."""
        opt = self.optimizer
        while not hasattr(opt, "state") and hasattr(opt, "optimizer"):
            opt = opt.optimizer
        return getattr(opt, "state", {})

    @torch.no_grad()
    def _guarded_step(self, params: list):
        device = params[0].grad.device
        # one fused kernel group for the flag (max |g| per tensor is NaN/inf iff the tensor holds one), not a
        # Python loop of isfinite/all kernels per parameter (~1,000 on ResNet-50)
        peaks = torch._foreach_norm([p.grad for p in params], float("inf"))
        bad = ~torch.stack([n.to(device) for n in peaks]).isfinite().all()
        state = self._state()

        def on_device(p) -> dict:  # p's state entries that can be put back without a host sync
            return {k: v for k, v in state.get(p, {}).items() if isinstance(v, torch.Tensor) and v.device == device}

        mine = [p for p in params if p.device == device]
        saved = torch._foreach_mul(mine, 1.0), [{k: v.clone() for k, v in on_device(p).items()} for p in mine]
        self.optimizer.step()
        for p, old_p, old_state in zip(mine, *saved):
            p.copy_(torch.where(bad, old_p, p))
            for k, v in on_device(p).items():  # looked up again: an optimizer may replace a state tensor
                old = old_state.get(k)  # None: created by this step (the first), back to the initial zeros
                v.copy_(torch.where(bad, torch.zeros_like(v) if old is None else old, v))
        if self._skipped is None:
            self._skipped = torch.zeros((), dtype=torch.int64, device=device)
            self._first = torch.full((), -1, dtype=torch.int64, device=device)
        self._first = torch.where((self._first < 0) & bad, self.num_updates(), self._first)
        self._skipped = self._skipped + bad

    def step(self):
        params = self._grads()
        if getattr(self.accelerator, "scaler", None) is not None or not self.accelerator.sync_gradients or not params:
            self.optimizer.step()  # fp16: the GradScaler skips overflow steps itself; micro-steps: nothing to apply
            return
        self._guarded_step(params)

    def poll(self) -> int:
        """Read the skips counted since the last poll (one host sync); returns how many there were."""
        if self._skipped is None:
            return 0
        new, first = torch.stack([self._skipped, self._first]).tolist()
        if new:
            self._skipped.zero_()
            self._first.fill_(-1)
            self.bad_steps += new
            if self.first_bad is None:
                self.first_bad = first
            if self.accelerator.is_main_process:
                print(f"non-finite loss/gradient: {new} update(s) skipped, the first at update {first} "
                      f"({self.bad_steps} so far)", file=sys.stderr, flush=True)
        return new
