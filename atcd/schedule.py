"""The learning-rate schedule of a training run: timm's scheduler factory, stepped per optimizer update."""
from timm.scheduler import create_scheduler_v2

from .errors import ConfigError

__all__ = ["UpdateCounter", "check_schedule", "create_lr_scheduler"]

_ENDING = ("cosine", "tanh", "poly")  # timm's schedules that end (at --min-lr): cooldown epochs follow them


def check_schedule(cfg) -> None:
    """--cooldown-epochs only after a schedule that ends (timm adds them to cosine, tanh and poly, ignores them
    otherwise)."""
    if cfg.cooldown_epochs and cfg.sched not in _ENDING:
        raise ConfigError(f"--cooldown-epochs holds --min-lr after a schedule that ends ({', '.join(_ENDING)}); "
                          f"--sched {cfg.sched} would ignore it")


def create_lr_scheduler(cfg, optimizer, epochs: int, updates_per_epoch: int):
    """timm's `create_scheduler_v2(sched=--sched, ...)` over `epochs` passes of `updates_per_epoch` updates.

    --decay-milestones (--sched multistep) are given in --epochs units, like the papers' schedules ("/10 at epochs
    30 and 36 of 40"); when `epochs` differs from --epochs (--epochs-as-budget) they are scaled with it, so each
    decay falls at the same fraction of the run (30 and 36 of a 40-epoch budget at T*K = 8: passes 3.75 and 4.5 of
    5). timm's convention: the decayed rate applies from the update before the milestone. --warmup-lr is the lr of
    the first update (with --warmup-epochs); --cooldown-epochs at --min-lr follow the schedule.

    Returns:
        (scheduler, passes): `passes` is `epochs` plus the cooldown epochs, what the run trains (as timm's train.py).
    """
    milestones = [m * epochs / cfg.epochs for m in cfg.decay_milestones or ()]
    scheduler, passes = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=epochs,
                                            warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
                                            cooldown_epochs=cfg.cooldown_epochs, min_lr=cfg.min_lr,
                                            decay_milestones=milestones, decay_rate=cfg.decay_rate,
                                            step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    return scheduler, passes


class UpdateCounter:
    """Holds the update counter so the scheduler steps per optimizer update; timm's schedulers are functions of
    that counter, so restoring it restores the learning rate exactly."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.num_updates = 0

    def __call__(self):
        self.num_updates += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.num_updates)

    def load_state_dict(self, sd):
        self.num_updates = sd["num_updates"]
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.num_updates)
