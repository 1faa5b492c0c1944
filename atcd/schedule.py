"""The learning-rate schedule of a training run: timm's scheduler factory, stepped per optimizer update."""
from timm.scheduler import create_scheduler_v2

__all__ = ["create_lr_scheduler"]


def create_lr_scheduler(cfg, optimizer, epochs: int, updates_per_epoch: int):
    """timm's `create_scheduler_v2(sched=--sched, ...)` over `epochs` passes of `updates_per_epoch` updates.

    --decay-milestones (--sched multistep) are given in --epochs units, like the papers' schedules ("/10 at epochs
    30 and 36 of 40"); when `epochs` differs from --epochs (--epochs-as-budget) they are scaled with it, so each
    decay falls at the same fraction of the run (30 and 36 of a 40-epoch budget at T*K = 8: passes 3.75 and 4.5 of
    5). timm's convention: the decayed rate applies from the update before the milestone.
    """
    milestones = [m * epochs / cfg.epochs for m in cfg.decay_milestones or ()]
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=epochs, warmup_epochs=cfg.warmup_epochs,
                                       min_lr=cfg.min_lr, decay_milestones=milestones, decay_rate=cfg.decay_rate,
                                       step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    return scheduler
