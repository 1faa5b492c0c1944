"""`run(cfg)`: the training job behind train_atcd.py (Accelerate, timm optimizer/scheduler, safetensors).

Scale-out: under `accelerate launch --num_processes N` every process trains on its own share of the data (a
prepared map-style loader, or a rank-sharded WebDataset loader that is never prepared), DDP synchronises the
gradients, metrics are reduced over processes and only the main process writes files, except for the per-process
parts of the resumable checkpoint (RNG states, the method's state: `method_{rank}.safetensors`).
"""
import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
from dataclasses import replace

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, gather_object, set_seed
from safetensors.torch import load_file, save_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from .attacks import AttackConfig
from .checkpoint import (
    CheckpointError,
    atomic_write_text,
    find_latest_state,
    load_weights,
    save_state_dir,
    save_weights,
)
from .config import TrainConfig
from .data import create_atcd_dataset, create_atcd_loader, create_wds_loader, split_holdout
from .engine import evaluate_attacks, train_one_epoch
from .errors import ConfigError
from .faults import FiniteGuard, Preemption
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
    return max(1, math.ceil(cfg.epochs / get_method_class(cfg.method).budget_divisor(cfg.method_opts)))


class _Scheduled:
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


def _write_summary(path: str, row: dict):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


_RUN_FILES = ("summary.csv", "model.safetensors", "model_best.safetensors", "data_keys.json")


def _earlier_run(out_dir: str) -> list[str]:
    """The files of an earlier training run in `out_dir` (what a fresh run would mix with or overwrite)."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(n for n in os.listdir(out_dir) if n in _RUN_FILES or n.startswith("checkpoint-"))


def _trim_summary(path: str, start_epoch: int):
    """On resume: drop the rows of epochs the resumed run trains again (a kill between the row and the checkpoint
    would otherwise leave the epoch twice)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) < start_epoch]
    if len(keep) < len(rows):
        buf = io.StringIO()
        csv.writer(buf).writerows(keep)
        atomic_write_text(path, buf.getvalue())


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


class _AccumulatingOptimizer:
    """The optimizer the methods see under gradient accumulation: gradients are cleared after each real update.

    Methods call `zero_grad()` before every backward; with accumulation that would wipe the micro-steps already
    accumulated (Accelerate's optimizer zeroes on the syncing step, just before its backward). So `zero_grad`
    is a no-op here and the prepared optimizer zeroes right after the step it really took.
    """

    def __init__(self, optimizer, accelerator: Accelerator):
        self.optimizer = optimizer
        self.accelerator = accelerator

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True):
        pass

    def step(self):
        self.optimizer.step()  # skipped by Accelerate on accumulation micro-steps
        if self.accelerator.sync_gradients:
            self.optimizer.zero_grad(set_to_none=True)


def _build_loaders(cfg: TrainConfig, accelerator: Accelerator, input_size: tuple, pcfg: dict):
    """(train, eval, holdout or None); map-style loaders are not yet prepared, WebDataset ones never are."""
    tf = {"input_size": input_size, "interpolation": pcfg.get("interpolation", "bilinear"),
          "crop_pct": pcfg.get("crop_pct", 1.0)}
    if cfg.streamed:  # rank-sharded: prepare() would shard them a second time
        shard = {"name": cfg.dataset, "seed": cfg.seed, "num_workers": cfg.workers, "rank": accelerator.process_index,
                 "world_size": accelerator.num_processes, "strict": cfg.strict_data, **tf}

        def train_loader_for(samples_per_epoch):
            return create_wds_loader(cfg.data_dir, "train", cfg.batch_size, True, samples_per_epoch=samples_per_epoch,
                                     shuffle_buffer=cfg.shuffle_buffer, with_keys=cfg.log_data_keys, **shard)

        train_loader = train_loader_for(cfg.train_samples_per_epoch)
        n = cfg.grad_accum_steps
        if len(train_loader) % n:  # whole accumulation groups per epoch: no update straddles a checkpoint
            batches = math.ceil(len(train_loader) / n) * n
            train_loader = train_loader_for(batches * accelerator.num_processes * cfg.batch_size)
            _logger.info("--grad-accum-steps %d: a streamed epoch is rounded up to %d batches per process", n, batches)
        eval_loader = create_wds_loader(cfg.data_dir, "val", 250, False, num_samples=cfg.eval_samples or None, **shard)
        return train_loader, eval_loader, None
    ds_kw = {"data_dir": cfg.data_dir, "strict": cfg.strict_data, **tf}
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
        holdout_loader = create_atcd_loader(holdout_ds, 250, False, num_workers=cfg.workers)
    return train_loader, eval_loader, holdout_loader


def _save_rank_state(accelerator: Accelerator, method, tmp: str | None):
    """Every process: save its part of the state into the main process's temporary checkpoint dir.

    `accelerator.save_state` must run on all processes (each writes its own RNG state; weights, optimizer and
    registered objects come from the main one); the method's state (ATCD generator, Free's delta) is per rank.
    """
    tmp = broadcast_object_list([tmp])[0]  # the main process made the dir; the others learn its name
    accelerator.save_state(tmp)
    state = method.state_dict()
    if state:
        save_file(state, os.path.join(tmp, f"method_{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()  # all parts written before the main process adds the marker and renames


def _save_checkpoint(accelerator: Accelerator, method, run_dir: str, name: str, meta: dict, keep: int,
                     protect: tuple = ()):
    """Atomic resumable checkpoint (`save_state_dir` on the main process; the other ranks join inside it)."""
    if accelerator.is_main_process:
        save_state_dir(run_dir, name, lambda tmp: _save_rank_state(accelerator, method, tmp), meta, keep, protect)
    else:
        _save_rank_state(accelerator, method, None)
    accelerator.wait_for_everyone()


def _load_method_state(method, resume_dir: str, rank: int):
    path = os.path.join(resume_dir, f"method_{rank}.safetensors")
    if not os.path.exists(path):
        path = os.path.join(resume_dir, "method.safetensors")  # single-file layout of older checkpoints
    if os.path.exists(path):
        method.load_state_dict(load_file(path))
    elif method.state_dict():
        _logger.warning("no method state for rank %d in %s (fewer processes saved it?): starting it afresh",
                        rank, resume_dir)


def _weights_sha256(model: torch.nn.Module) -> str:
    """Hash of the timm model's weights: equal on every rank when gradients are really synchronised."""
    h = hashlib.sha256()
    for k, v in sorted(unwrap_timm(model).state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run(cfg: TrainConfig) -> dict:
    """Train as `cfg` says; returns the last epoch's summary row (plus `run_dir` and per-process checks).

    `status` in the result: "completed"; "preempted" (SIGTERM/SIGUSR1: a checkpoint was written at the end of the
    step, `checkpoint` names it); "bad_steps" (--max-bad-steps non-finite updates: `checkpoint` names the newest
    complete checkpoint from before the first one, kept out of pruning). Every process returns the same dict; only
    the main process writes files and prints.
    """
    # seedable sampler: the shuffle order is a function of (seed, epoch), so a resumed run sees the same data
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum_steps,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                                        data_seed=cfg.seed))
    try:
        with Preemption() as preemption:
            return _train(cfg, accelerator, preemption)
    finally:
        accelerator.end_training()  # without it a rank can abort at interpreter exit under several processes


def _train(cfg: TrainConfig, accelerator: Accelerator, preemption: Preemption) -> dict:
    rank = accelerator.process_index
    set_seed(cfg.seed, device_specific=False)  # the same initial weights on every process
    out_dir = run_dir_for(cfg)
    earlier = _earlier_run(out_dir)
    if earlier and not cfg.resume and not cfg.overwrite:  # appending to its summary would mix two runs
        raise ConfigError(f"{out_dir} already holds a training run ({', '.join(earlier[:3])}"
                          f"{', ...' if len(earlier) > 3 else ''}): continue it with --resume auto, replace it with "
                          f"--overwrite, or choose another --experiment")

    model = build_model(cfg.model, num_classes=cfg.num_classes, pretrained=cfg.pretrained, in_chans=cfg.in_chans)
    pcfg = unwrap_timm(model).pretrained_cfg
    input_size = tuple(pcfg.get("input_size", (3, 224, 224)))
    if cfg.in_chans is not None:
        input_size = (cfg.in_chans,) + input_size[1:]
    train_loader, eval_loader, holdout_loader = _build_loaders(cfg, accelerator, input_size, pcfg)
    # the run dir appears only once model and data are known good: bad input leaves no partial output behind
    if accelerator.is_main_process:
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_text(os.path.join(out_dir, "args.yaml"), yaml.safe_dump(cfg.flat(), sort_keys=False))
        # half-written files of a run killed mid-write (never complete), and with --overwrite the earlier run
        for name in os.listdir(out_dir):
            if name.startswith(".tmp-") or (cfg.overwrite and name in earlier):
                p = os.path.join(out_dir, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    accelerator.wait_for_everyone()
    set_seed(cfg.seed, device_specific=True)  # per-process global RNG from here on (seed + rank)

    # per-rank random starts and M-H draws (each rank attacks different images); rank 0 keeps cfg.seed
    method = create_method(cfg.method, replace(cfg, seed=cfg.seed + rank))
    epochs = num_epochs(cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.torch_compile:
        # in place (no `_orig_mod` wrapper): DDP wraps the compiled module, the attack passes (on the unwrapped
        # module) run compiled too, and state-dict keys stay those of the plain model
        model.compile(backend=cfg.torch_compile)
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)
    if cfg.streamed:
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
        if holdout_loader is not None:
            holdout_loader = accelerator.prepare(holdout_loader)
    # len() is per process for both kinds of loader (prepared: its shard; streamed: the fixed batch count)
    updates_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum_steps) * type(method).updates_per_batch(cfg.method_opts)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=epochs,
                                       warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr,
                                       step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    # the update counter lives in state.json (not registered with Accelerate, whose custom-object files are pickles
    # loaded with weights_only=False: a resume must never run code from a checkpoint)
    stepper = _Scheduled(scheduler)
    attack_model = accelerator.unwrap_model(model)

    start_epoch, start_batch, totals = 0, 0, None
    best = {"metric": -1.0, "epoch": -1}
    faults = {"bad_steps": 0, "first_bad": None, "pinned": None}
    resume_dir = find_latest_state(out_dir) if cfg.resume == "auto" else cfg.resume
    if resume_dir:
        with open(os.path.join(resume_dir, "state.json")) as f:
            meta = json.load(f)
        if not meta.get("epoch_done", True) and meta.get("num_processes", 1) != accelerator.num_processes:
            raise CheckpointError(f"{resume_dir} was written mid-epoch by {meta['num_processes']} process(es); resume "
                                  f"it with as many (a mid-epoch position is per process), or from an epoch-end "
                                  f"checkpoint")
        accelerator.load_state(resume_dir)
        if meta.get("epoch_done", True):
            start_epoch = meta["epoch"] + 1
        else:  # mid-epoch: skip the batches of this epoch already trained, carry their running sums
            start_epoch, start_batch, totals = meta["epoch"], meta["batches_done"], meta["totals"][rank]
        stepper.load_state_dict({"num_updates": meta["num_updates"]})
        best = meta.get("best", best)
        faults.update({k: meta[k] for k in faults if k in meta})
        _load_method_state(method, resume_dir, rank)
        _logger.info("resumed from %s at epoch %d, batch %d", resume_dir, start_epoch, start_batch)
    if accelerator.is_main_process:  # rows of epochs trained again (none kept when no checkpoint was found)
        _trim_summary(os.path.join(out_dir, "summary.csv"), start_epoch)

    def clip():
        if cfg.clip_grad and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)

    def after_update():
        if accelerator.sync_gradients:  # the scheduler counts real updates, not accumulation micro-steps
            stepper()

    inner = optimizer if cfg.grad_accum_steps == 1 else _AccumulatingOptimizer(optimizer, accelerator)
    guard = FiniteGuard(inner, accelerator, num_updates=lambda: stepper.num_updates)
    guard.bad_steps = faults["bad_steps"]
    ctx = StepContext(model=model, attack_model=attack_model, optimizer=guard, backward=accelerator.backward,
                      after_update=after_update, clip_grad=clip, autocast=accelerator.autocast)
    eval_cfg = AttackConfig(eps=cfg.eps, step_size=2.5 * cfg.eps / max(1, cfg.eval_attack_steps),
                            steps=cfg.eval_attack_steps, seed=cfg.seed)
    row = {}
    best_path = os.path.join(out_dir, "model_best.safetensors")
    data_keys = {}
    status, status_ckpt = "completed", None

    def meta_for(epoch: int, done: bool, batches: int, snap: dict | None = None) -> dict:
        m = {"epoch": epoch, "epoch_done": done, "batches_done": batches, "num_updates": stepper.num_updates,
             "num_processes": accelerator.num_processes, "best": best, **faults}
        if snap is not None:
            m["totals"] = gather_object([snap])  # every rank's running sums of the epoch so far
        return m

    def save(name: str, meta: dict):
        _save_checkpoint(accelerator, method, out_dir, name, meta, cfg.checkpoint_keep,
                         protect=(os.path.basename(faults["pinned"]),) if faults["pinned"] else ())
        return os.path.join(out_dir, name)

    def after_batch(epoch: int, batches: int, snap: dict) -> bool:
        """Per minibatch: bad-step bookkeeping, periodic and preemption checkpoints; True ends the run here."""
        nonlocal status, status_ckpt
        faults["bad_steps"] = guard.bad_steps
        if guard.first_bad is not None and faults["first_bad"] is None:
            # keep the newest complete checkpoint from before the first bad step out of pruning
            faults["first_bad"] = guard.first_bad
            faults["pinned"] = find_latest_state(out_dir) if accelerator.is_main_process else None
        if guard.bad_steps >= cfg.max_bad_steps:
            status, status_ckpt = "bad_steps", faults["pinned"]
            return True
        if not accelerator.sync_gradients:  # inside an accumulation group: its micro-step gradients are not saved
            return False
        preempted = preemption.requested(accelerator)
        periodic = cfg.checkpoint_every_steps and batches % cfg.checkpoint_every_steps == 0 \
            and batches < len(train_loader)  # the epoch-end checkpoint follows right after the last batch
        if preempted or periodic:
            path = save(f"checkpoint-{epoch:04d}-step{batches:07d}", meta_for(epoch, False, batches, snap))
            if preempted:
                status, status_ckpt = "preempted", path
                return True
        return False

    stopped = False
    for epoch in range(start_epoch, epochs):
        train_loader.set_epoch(epoch)  # seeded per-epoch shuffle: same order on resume, new order each epoch
        keys = [] if cfg.log_data_keys else None
        stats = train_one_epoch(method, ctx, train_loader, accelerator, epoch, progress=not cfg.no_progress,
                                channels_last=cfg.channels_last, keys_out=keys, start_batch=start_batch,
                                totals=totals, after_batch=lambda b, snap, _e=epoch: after_batch(_e, b, snap))
        start_batch, totals = 0, None
        if not stats.pop("completed"):
            break
        if keys is not None:
            data_keys[str(epoch)] = gather_object([keys])  # one list of keys per rank
        ev = evaluate_attacks(attack_model, eval_loader, ["clean", "pgd"], eval_cfg, accelerator,
                              channels_last=cfg.channels_last)
        row = {"epoch": epoch, **{k: round(v, 5) if isinstance(v, float) else v for k, v in stats.items()},
               "eval_top1": round(ev["clean"]["top1"], 2), "eval_pgd_top1": round(ev["pgd"]["top1"], 2),
               "eval_n": ev["clean"]["n"], "lr": optimizer.param_groups[0]["lr"], "num_updates": stepper.num_updates,
               "bad_steps": guard.bad_steps}
        if holdout_loader is not None:
            ho = evaluate_attacks(attack_model, holdout_loader, ["clean", "pgd"], eval_cfg, accelerator,
                                  channels_last=cfg.channels_last)
            row.update(holdout_top1=round(ho["clean"]["top1"], 2), holdout_pgd_top1=round(ho["pgd"]["top1"], 2))
            stopped = _select(cfg, row, epoch, best, best_path, attack_model, accelerator)
        if accelerator.is_main_process:
            _write_summary(os.path.join(out_dir, "summary.csv"), row)
            print(f"epoch {epoch}: loss {row['train_loss']:.4f} clean {row['eval_top1']:.1f} "
                  f"pgd{cfg.eval_attack_steps} {row['eval_pgd_top1']:.1f} ({row['seconds']:.1f}s)", flush=True)
        accelerator.wait_for_everyone()
        if stopped:
            break
        path = save(f"checkpoint-{epoch:04d}", meta_for(epoch, True, len(train_loader)))
        if epoch + 1 < epochs and preemption.requested(accelerator):  # signalled during the evaluation
            status, status_ckpt = "preempted", path
            break
    if status != "completed":  # preempted or too many bad steps: the checkpoint is what remains of the run
        if accelerator.is_main_process:
            print(_stop_message(status, status_ckpt, preemption, faults, cfg), flush=True)
        accelerator.wait_for_everyone()
        return {"run_dir": out_dir, "status": status, "checkpoint": status_ckpt, **faults,
                "num_updates": stepper.num_updates, "num_processes": accelerator.num_processes}
    if accelerator.is_main_process:
        save_weights(unwrap_timm(model), os.path.join(out_dir, "model.safetensors"),
                     {"model": cfg.model, "method": cfg.method, "eps": cfg.eps})
        if data_keys:
            atomic_write_text(os.path.join(out_dir, "data_keys.json"), json.dumps(data_keys))
    # cheap cross-process checks a launcher test (or a user) can read off the RESULT line
    checks = {"num_processes": accelerator.num_processes,
              "rank_weights_sha256": gather_object([_weights_sha256(model)]),
              "rank_num_updates": gather_object([stepper.num_updates])}
    accelerator.wait_for_everyone()
    return {"run_dir": out_dir, "status": status, **row, "bad_steps": faults["bad_steps"], **checks}


def _stop_message(status: str, ckpt: str | None, preemption: Preemption, faults: dict, cfg: TrainConfig) -> str:
    if status == "preempted":
        return (f"{preemption.name}: stopped after the current step; checkpoint written to {ckpt}. Resume with the "
                f"same command plus --resume auto")
    where = (f"the newest checkpoint from before it, {ckpt}, is kept" if ckpt else
             "no checkpoint was written before it (use --checkpoint-every-steps)")
    return (f"stopped: {faults['bad_steps']} non-finite updates skipped (--max-bad-steps {cfg.max_bad_steps}), the "
            f"first at update {faults['first_bad']}; {where}. Resume from it with --resume and e.g. a lower --lr or "
            f"--clip-grad")
