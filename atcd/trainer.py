"""`run(cfg)`: the training job behind train_atcd.py (Accelerate, timm optimizer/scheduler, safetensors)."""
import csv
import json
import logging
import math
import os
from dataclasses import asdict

import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file, save_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from .attacks import AttackConfig
from .checkpoint import atomic_write_text, find_latest_state, load_weights, save_state_dir, save_weights
from .config import TrainConfig
from .data import create_atcd_dataset, create_atcd_loader, split_holdout
from .engine import evaluate_attacks, train_one_epoch
from .methods import StepContext, create_method, get_method_class
from .models import build_model, unwrap_timm

__all__ = ["num_epochs", "run", "run_dir_for"]

_logger = logging.getLogger(__name__)


def run_dir_for(cfg: TrainConfig) -> str:
    name = cfg.experiment or f"{cfg.method}-{cfg.model}-{cfg.dataset or 'folder'}-s{cfg.seed}"
    return os.path.join(cfg.output, name)


def num_epochs(cfg: TrainConfig) -> int:
    """Passes over the data. With --epochs-as-budget, divided by the method's replays (paper convention)."""
    if not cfg.epochs_as_budget:
        return cfg.epochs
    return max(1, math.ceil(cfg.epochs / get_method_class(cfg.method).budget_divisor(cfg)))


class _Scheduled:
    """Holds the update counter so the scheduler steps per optimizer update, and is checkpointable."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.num_updates = 0

    def __call__(self):
        self.num_updates += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.num_updates)

    def state_dict(self):
        return {"num_updates": self.num_updates,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {}}

    def load_state_dict(self, sd):
        self.num_updates = sd["num_updates"]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(sd["scheduler"])
            self.scheduler.step_update(num_updates=self.num_updates)


def _write_summary(path: str, row: dict):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def _select(cfg: TrainConfig, row: dict, epoch: int, best: dict, best_path: str, model, accelerator) -> bool:
    """Model selection on the holdout's PGD accuracy; returns True when the overfitting guard stops the run.

    --early-stop robust keeps the best epoch's weights as model_best.safetensors (Rice et al. 2020);
    --co-guard restores them and stops when the metric falls more than --co-drop points below the best
    (catastrophic overfitting of single-step methods, Wong et al. 2020).
    """
    metric = row["holdout_pgd_top1"]
    row["co_stop"] = 0
    if metric > best["metric"]:
        best.update(metric=metric, epoch=epoch)
        if accelerator.is_main_process:
            save_weights(unwrap_timm(model), best_path, {"model": cfg.model, "method": cfg.method, "eps": cfg.eps,
                                                         "epoch": epoch, "holdout_pgd_top1": metric})
        accelerator.wait_for_everyone()
    row["best_epoch"] = best["epoch"]
    if cfg.co_guard and metric < best["metric"] - cfg.co_drop:
        load_weights(unwrap_timm(model), best_path)
        if accelerator.is_main_process:
            print(f"co-guard: holdout PGD accuracy {metric:.1f} fell below the best {best['metric']:.1f} "
                  f"(epoch {best['epoch']}) by more than {cfg.co_drop}; restored epoch {best['epoch']} and stopped",
                  flush=True)
        row["co_stop"] = 1
        return True
    return False


def run(cfg: TrainConfig) -> dict:
    # seedable sampler: the shuffle order is a function of (seed, epoch), so a resumed run sees the same data
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, dataloader_config=DataLoaderConfiguration(
        use_seedable_sampler=True, data_seed=cfg.seed))
    set_seed(cfg.seed, device_specific=False)
    out_dir = run_dir_for(cfg)
    if accelerator.is_main_process:
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_text(os.path.join(out_dir, "args.yaml"), yaml.safe_dump(asdict(cfg), sort_keys=False))
    accelerator.wait_for_everyone()

    model = build_model(cfg.model, num_classes=cfg.num_classes, pretrained=cfg.pretrained, in_chans=cfg.in_chans)
    pcfg = unwrap_timm(model).pretrained_cfg
    input_size = tuple(pcfg.get("input_size", (3, 224, 224)))
    if cfg.in_chans is not None:
        input_size = (cfg.in_chans,) + input_size[1:]
    ds_kw = dict(data_dir=cfg.data_dir, input_size=input_size, interpolation=pcfg.get("interpolation", "bilinear"),
                 crop_pct=pcfg.get("crop_pct", 1.0))
    train_ds, _ = split_holdout(create_atcd_dataset(cfg.dataset, "train", is_training=True, **ds_kw),
                                cfg.holdout_size, cfg.seed)
    eval_ds = create_atcd_dataset(cfg.dataset, "val", is_training=False, **ds_kw)
    train_loader = create_atcd_loader(train_ds, cfg.batch_size, True, seed=cfg.seed, num_workers=cfg.workers,
                                      samples_per_epoch=cfg.train_samples_per_epoch)
    eval_loader = create_atcd_loader(eval_ds, 250, False, num_workers=cfg.workers,
                                     num_samples=cfg.eval_samples or None)
    holdout_loader = None
    if cfg.holdout_size:  # the same carve, with the eval transform
        _, holdout_ds = split_holdout(create_atcd_dataset(cfg.dataset, "train", is_training=False, **ds_kw),
                                      cfg.holdout_size, cfg.seed)
        holdout_loader = accelerator.prepare(create_atcd_loader(holdout_ds, 250, False, num_workers=cfg.workers))

    method = create_method(cfg.method, cfg)
    epochs = num_epochs(cfg)
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)
    updates_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes) * method.updates_per_batch()
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=epochs,
                                       warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
                                       step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    stepper = _Scheduled(scheduler)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    accelerator.register_for_checkpointing(stepper)
    attack_model = accelerator.unwrap_model(model)

    start_epoch = 0
    best = {"metric": -1.0, "epoch": -1}
    resume_dir = find_latest_state(out_dir) if cfg.resume == "auto" else cfg.resume
    if resume_dir:
        accelerator.load_state(resume_dir)
        with open(os.path.join(resume_dir, "state.json")) as f:
            meta = json.load(f)
        start_epoch = meta["epoch"] + 1
        best = meta.get("best", best)
        mstate = os.path.join(resume_dir, "method.safetensors")
        if os.path.exists(mstate):
            method.load_state_dict(load_file(mstate))
        _logger.info("resumed from %s at epoch %d", resume_dir, start_epoch)

    def clip():
        if cfg.clip_grad:
            accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)

    ctx = StepContext(model=model, attack_model=attack_model, optimizer=optimizer, backward=accelerator.backward,
                      after_update=stepper, clip_grad=clip, autocast=accelerator.autocast)
    eval_cfg = AttackConfig(eps=cfg.eps, step_size=2.5 * cfg.eps / max(1, cfg.eval_attack_steps),
                            steps=cfg.eval_attack_steps, seed=cfg.seed)
    row = {}
    best_path = os.path.join(out_dir, "model_best.safetensors")
    stopped = False
    for epoch in range(start_epoch, epochs):
        train_loader.set_epoch(epoch)  # seeded per-epoch shuffle: same order on resume, new order each epoch
        stats = train_one_epoch(method, ctx, train_loader, accelerator, epoch, progress=not cfg.no_progress)
        ev = evaluate_attacks(attack_model, eval_loader, ["clean", "pgd"], eval_cfg, accelerator)
        row = {"epoch": epoch, **{k: round(v, 5) if isinstance(v, float) else v for k, v in stats.items()},
               "eval_top1": round(ev["clean"]["top1"], 2), "eval_pgd_top1": round(ev["pgd"]["top1"], 2),
               "lr": optimizer.param_groups[0]["lr"], "num_updates": stepper.num_updates}
        if holdout_loader is not None:
            ho = evaluate_attacks(attack_model, holdout_loader, ["clean", "pgd"], eval_cfg, accelerator)
            row.update(holdout_top1=round(ho["clean"]["top1"], 2), holdout_pgd_top1=round(ho["pgd"]["top1"], 2))
            stopped = _select(cfg, row, epoch, best, best_path, attack_model, accelerator)
        if accelerator.is_main_process:
            _write_summary(os.path.join(out_dir, "summary.csv"), row)
            print(f"epoch {epoch}: loss {row['train_loss']:.4f} clean {row['eval_top1']:.1f} "
                  f"pgd{cfg.eval_attack_steps} {row['eval_pgd_top1']:.1f} ({row['seconds']:.1f}s)", flush=True)
        accelerator.wait_for_everyone()
        if stopped:
            break

        def write_state(tmp):
            accelerator.save_state(tmp)
            ms = method.state_dict()
            if ms:
                save_file(ms, os.path.join(tmp, "method.safetensors"))

        if accelerator.is_main_process:
            save_state_dir(out_dir, f"checkpoint-{epoch:04d}", write_state,
                           {"epoch": epoch, "num_updates": stepper.num_updates, "best": best}, cfg.checkpoint_keep)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_weights(unwrap_timm(model), os.path.join(out_dir, "model.safetensors"),
                     {"model": cfg.model, "method": cfg.method, "eps": cfg.eps})
    accelerator.wait_for_everyone()
    return {"run_dir": out_dir, **row}
