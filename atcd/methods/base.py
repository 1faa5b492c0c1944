"""A training method turns one minibatch into one or more optimizer steps, counting the passes it spends."""
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.core import PassCounter
from ..errors import ConfigError

__all__ = ["StepContext", "StepResult", "TrainMethod", "attack_mode"]


@dataclass
class StepContext:
    """What a method needs to make weight updates; built once by the engine."""
    model: nn.Module                       # the (possibly DDP-wrapped) model the optimizer owns
    attack_model: nn.Module                # same weights, unwrapped: attack passes never touch DDP's reducer
    optimizer: torch.optim.Optimizer
    backward: Callable[[torch.Tensor], None]  # accelerator.backward
    after_update: Callable[[], None]          # scheduler step_update etc., called once per optimizer step
    clip_grad: Callable[[], None] = lambda: None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # DDP: backward without all-reduce


@dataclass
class StepResult:
    """One minibatch's figures, left on the device (reading them would make the host wait for the step)."""
    losses: list[torch.Tensor] = field(default_factory=list)  # one 0-dim tensor per weight update
    correct: int | torch.Tensor = 0                           # adversarial-example accuracy during training
    count: int = 0
    extras: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def attack_mode(model: nn.Module, bn_mode: str):
    """BN in eval mode during attack steps (no running-stat updates from adversarial search) unless 'train'."""
    was_training = model.training
    model.train(bn_mode == "train")
    try:
        yield
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


class TrainMethod:
    """Base class. Subclasses implement `step(ctx, x, y) -> StepResult` and declare their own options.

    A method's options are a frozen dataclass `Options` whose fields are `atcd.options.option(...)`: the flags,
    help, defaults and checks of `--help`, `args.yaml` and the model card all come from it. `self.cfg` is the
    run-wide `TrainConfig` (eps, attack step, BN mode, seed), `self.opts` the method's own options.
    Step code reads `self.eps` and `self.attack_step` (this minibatch's, see `set_progress`), not `self.cfg`'s.
    `self.gen` draws the method's randomness (random starts, M-H tests); it is saved with the resumable state so a
    resumed run draws what the uninterrupted one would.
    """
    name = "base"
    Options: ClassVar[type] = NoOptions
    sign_steps: ClassVar[bool] = False  # the attack takes --attack-step sign steps (checked against --eps)

    def __init__(self, cfg, generator: torch.Generator | None = None):
        self.cfg = cfg
        self.opts = cfg.method_opts if isinstance(cfg.method_opts, self.Options) else self.Options()
        self.passes = PassCounter()
        self.gen = generator or torch.Generator().manual_seed(cfg.seed)
        self.eps, self.attack_step = cfg.eps, cfg.attack_step  # this step's; --eps-warmup-epochs ramps them
        self.smoothing = getattr(cfg, "smoothing", 0.0)  # label smoothing of the weight updates' loss only

    def set_progress(self, epochs_done: float):
        """Called before every minibatch with the epochs trained so far (e.g. 1.25): sets this step's `eps` and
        `attack_step`, ramped linearly from 0 over `--eps-warmup-epochs` (the step keeps its ratio to eps)."""
        w = getattr(self.cfg, "eps_warmup_epochs", 0.0)
        f = 1.0 if w <= 0 else min(1.0, epochs_done / w)
        self.eps = self.cfg.eps * f
        self.attack_step = None if self.cfg.attack_step is None else self.cfg.attack_step * f

    @classmethod
    def updates_per_batch(cls, opts) -> int:
        """Optimizer steps per minibatch (the scheduler steps per update)."""
        return 1

    @classmethod
    def passes_per_batch(cls, opts) -> int:
        """Full-network passes per minibatch (input-gradient + weight + forward-only), the cost the paper counts."""
        return 1

    @classmethod
    def budget_divisor(cls, opts) -> int:
        """With --epochs-as-budget, passes over the data = epochs / this (paper convention: Free-m: m, ATCD: T*K)."""
        return 1

    @classmethod
    def default_attack_step(cls, cfg) -> float | None:
        """The step size when --attack-step is not given: a rule of eps and the method's step count (None: the
        method takes no attack steps)."""
        return None

    @classmethod
    def default_eps_warmup(cls, cfg, passes: int) -> float:
        """The eps warm-up in epochs when --eps-warmup-epochs is not given (`passes`: the run's passes over the
        data); 0: none."""
        return 0.0

    @classmethod
    def check(cls, cfg) -> None:
        """Checks across the method's options and the run-wide ones; raise `ConfigError` (one line)."""

    @classmethod
    def label(cls, opts) -> str:
        """How a run's results are named: the method plus the flags that change what it computes or costs
        ('atcd --reuse-grad'). `opts` is the method's `Options` or a run's flat args (a mapping)."""
        return cls.name

    def epoch_metrics(self, accelerator) -> dict[str, float]:
        """Method-specific figures of the epoch for `summary.csv` (e.g. ATCD's M-H acceptance), reduced over
        processes; called once at the end of every epoch on every process, it also resets the epoch's counters."""
        return {}

    @staticmethod
    def apply_update(ctx: StepContext):
        """Clip, optimizer step, scheduler tick: once per update, after the gradients are in place."""
        ctx.clip_grad()
        ctx.optimizer.step()
        ctx.after_update()

    @staticmethod
    def record(res: StepResult, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor):
        """Loss and correct count of one update, as device tensors: no host sync (the engine reads the sums)."""
        res.losses.append(loss.detach())
        res.correct = res.correct + (logits.detach().argmax(1) == y).sum()
        res.count += y.numel()

    def weight_update(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor, res: StepResult,
                      delta: torch.Tensor | None = None, input_grad: bool = False):
        """One optimizer step on CE(model(x + delta), y) with the model in train mode.

        With `input_grad` the same backward also gives dCE/d(delta) (Free-AT's trick: no extra pass).
        Returns (that gradient or None, the logits).
        """
        ctx.model.train()
        d = None if delta is None else delta.detach().requires_grad_(input_grad)
        with ctx.autocast():
            logits = ctx.model(x if d is None else x + d)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.smoothing)  # --smoothing
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.backward(loss)
        g = d.grad.detach() if input_grad else None
        self.apply_update(ctx)
        self.passes.weight += 1
        self.passes.weight_with_input_grad += int(input_grad)
        self.record(res, loss, logits, y)
        return g, logits

    def state_dict(self) -> dict:
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: dict):
        if "generator" in state:
            try:
                self.gen.set_state(state["generator"])
            except RuntimeError:  # a cpu generator's state is 5056 bytes, a CUDA generator's 16
                raise ConfigError(f"the checkpoint's random-number state of --method {self.name} was saved on another "
                                  f"kind of device than this run's {self.gen.device.type}: resume on the kind of "
                                  f"device it was trained on") from None

    def step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        raise NotImplementedError
