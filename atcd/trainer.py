"""`run(cfg)`: the training job behind train_atcd.py (Accelerate, timm optimizer/scheduler, safetensors).

Scale-out: under `accelerate launch --num_processes N` every process trains on its own share of the data (a
prepared map-style loader, or a rank-sharded WebDataset loader that is never prepared), DDP synchronises the
gradients, metrics are reduced over processes and only the main process writes files, except for the per-process
parts of the resumable checkpoint (RNG states, the method's state: `method_{rank}.safetensors`).
"""
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import replace

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, gather_object, set_seed
from timm.utils import adaptive_clip_grad

from .attacks import AttackConfig
from .attacks.core import device_generator
from .checkpoint import (
    atomic_write_text,
    check_earlier_run,
    find_latest_state,
    load_run_state,
    load_weights,
    save_run_state,
    save_weights,
)
from .cluster import accelerator_handlers, check_shared_output, loader_defaults
from .collapse import collapse_message, epoch_collapsed
from .config import TrainConfig
from .data import create_train_loaders, resolve_input_size, set_data_epoch
from .ema import RunEma
from .engine import evaluate_attacks, train_one_epoch
from .errors import ConfigError
from .faults import FiniteGuard, Preemption
from .methods import StepContext, create_method, get_method_class
from .models import (
    build_model,
    convert_sync_bn,
    load_initial_checkpoint,
    set_grad_checkpointing,
    timm_kwargs,
    unwrap_timm,
)
from .optim import AccumulatingOptimizer, create_run_optimizer
from .precision import train_math_policy
from .ranks import rank_weight_hashes, sync_buffers
from .schedule import UpdateCounter, create_lr_scheduler
from .summary import trim_summary, write_summary
from .trackers import accelerator_kwargs, log_scalars, start_trackers

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
    """Train as `cfg` says; returns the last epoch's summary row (plus `run_dir` and per-process checks).

    `status` in the result: "completed"; "preempted" (SIGTERM/SIGUSR1: a checkpoint was written at the end of the
    step, `checkpoint` names it); "bad_steps" (--max-bad-steps non-finite updates: `checkpoint` names the newest
    complete checkpoint from before the first one, kept out of pruning). Every process returns the same dict; only
    the main process writes files and prints.
    """
    # seedable sampler: the shuffle order is a function of (seed, epoch), so a resumed run sees the same data
    logging.getLogger().setLevel(cfg.log_level)
    # Accelerate logs six INFO lines per save_state: kept for --log-level DEBUG
    logging.getLogger("accelerate").setLevel(logging.DEBUG if cfg.log_level == "DEBUG" else logging.WARNING)
    # mixed_precision None: the launcher's or `accelerate config`'s value (ACCELERATE_MIXED_PRECISION) wins
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum_steps,
                              # non_blocking: batch copies from pinned memory (--pin-mem, on for CUDA) overlap compute
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed,
                                                                        non_blocking=True),
                              kwargs_handlers=accelerator_handlers(cfg.dist_timeout, cfg.find_unused_parameters),
                              **accelerator_kwargs(cfg.log_with, run_dir_for(cfg)))  # --log-with trackers
    try:
        # what runs is what args.yaml records: the resolved precision and loader settings
        cfg = replace(cfg, mixed_precision=accelerator.mixed_precision, **loader_defaults(cfg, accelerator))
        if cfg.mixed_precision == "fp16" and accelerator.scaler is None:  # Accelerate turns fp16 off on cpu
            raise ConfigError(f"fp16 does not run on {accelerator.device.type}: Accelerate turns it off there (no "
                              f"autocast, no GradScaler), so the run would be fp32 while recording fp16; use bf16 or "
                              f"no")
        with Preemption() as preemption:
            training = _Training(cfg, accelerator, preemption)
            for epoch in range(training.start_epoch, training.epochs):
                if not training.train_epoch(epoch) or training.evaluate(epoch) or not training.end_epoch(epoch):
                    break
            return training.finish()
    finally:
        accelerator.end_training()  # without it a rank can abort at interpreter exit under several processes


class _Training:
    """One training run's state; `run` drives it epoch by epoch through the named steps below."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, preemption: Preemption):
        self.cfg, self.accelerator, self.preemption = cfg, accelerator, preemption
        self.out_dir = run_dir_for(cfg)
        self.best = {"metric": -1.0, "epoch": -1}
        self.faults = {"bad_steps": 0, "first_bad": None, "pinned": None}
        self.status, self.status_ckpt, self.row, self.data_keys = "completed", None, {}, {}
        self.start_epoch, self.start_batch, self.totals = 0, 0, None
        self._setup()
        self._resume()
        self.logs = start_trackers(accelerator, cfg.flat(), self.out_dir)  # --log-with: True on the main process

    def _setup(self):
        """Model, loaders, run dir, method, optimizer, scheduler and the step context, in that order."""
        cfg, acc = self.cfg, self.accelerator
        set_seed(cfg.seed, device_specific=False)  # the same initial weights on every process
        check_shared_output(acc, cfg.output)  # before any rank looks for an earlier run or a checkpoint there
        self.math_policy = train_math_policy(acc.device)
        earlier = check_earlier_run(self.out_dir, cfg.resume, cfg.overwrite, cfg.flat(), cfg.resume_with_changes)
        model = build_model(cfg.model, num_classes=cfg.num_classes, pretrained=cfg.pretrained, in_chans=cfg.in_chans,
                            mean=cfg.mean, std=cfg.std, reset_classifier=True,  # fine-tuning hub weights
                            **timm_kwargs(cfg.drop, cfg.drop_path, cfg.model_kwargs))  # to another class count
        load_initial_checkpoint(unwrap_timm(model), cfg.initial_checkpoint)
        if cfg.grad_checkpointing:
            set_grad_checkpointing(unwrap_timm(model), cfg.model)
        if cfg.sync_bn:
            model = convert_sync_bn(model, acc.num_processes, acc.device.type)
        optimizer = create_run_optimizer(cfg, unwrap_timm(model), cfg.model)  # (its errors before the run dir)
        pcfg = unwrap_timm(model).pretrained_cfg
        input_size = resolve_input_size(pcfg, cfg.input_size, cfg.in_chans, cfg.img_size)
        train_loader, eval_loader, holdout_loader = create_train_loaders(cfg, acc.process_index, acc.num_processes,
                                                                         pcfg)
        data_size = input_size if cfg.streamed else tuple(train_loader.dataset[0][0].shape)
        self._check_sizes(model, pcfg, data_size, len(train_loader) * cfg.batch_size * acc.num_processes)
        self._make_run_dir(earlier)
        set_seed(cfg.seed, device_specific=True)  # per-process global RNG from here on (seed + rank)
        # per-rank random starts and M-H draws (each rank attacks different images); rank 0 keeps cfg.seed
        # drawing on the accelerator: no host draw + pageable copy per random start or M-H test
        seed = cfg.seed + acc.process_index
        self.method = create_method(cfg.method, replace(cfg, seed=seed), generator=device_generator(seed, acc.device))
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.ema = RunEma.create(cfg, model, acc.device)  # None without --model-ema; an eager copy
        if cfg.streamed:  # rank-sharded loaders never go through prepare()
            model, optimizer = acc.prepare(model, optimizer)
        else:  # the evaluation loaders already hold this process's chunks (create_train_loaders)
            model, optimizer, train_loader = acc.prepare(model, optimizer, train_loader)
        if cfg.torch_compile:
            # after prepare (DDP has registered its hooks on the plain module), in place on the inner module (no
            # `_orig_mod` wrapper): the attack passes (on the unwrapped module) run compiled too, and state-dict
            # keys stay those of the plain model
            acc.unwrap_model(model).compile(backend=cfg.torch_compile)
        self.model, self.optimizer = model, optimizer
        self.train_loader, self.eval_loader, self.holdout_loader = train_loader, eval_loader, holdout_loader
        # len() is per process for both kinds of loader (prepared: its shard; streamed: the fixed batch count)
        updates_per_epoch = (math.ceil(len(train_loader) / cfg.grad_accum_steps)
                             * get_method_class(cfg.method).updates_per_batch(cfg.method_opts))
        # --cooldown-epochs at --min-lr are added to the passes (timm's train.py)
        scheduler, self.epochs = create_lr_scheduler(cfg, optimizer, num_epochs(cfg), updates_per_epoch)
        # the update counter lives in state.json (not registered with Accelerate, whose custom-object files are
        # pickles loaded with weights_only=False: a resume must never run code from a checkpoint)
        self.stepper = UpdateCounter(scheduler)
        self.attack_model = acc.unwrap_model(model)
        inner = optimizer if cfg.grad_accum_steps == 1 else AccumulatingOptimizer(optimizer, acc)
        self.guard = FiniteGuard(inner, acc, num_updates=lambda: self.stepper.num_updates)
        self.ctx = StepContext(model=model, attack_model=self.attack_model, optimizer=self.guard,
                               backward=acc.backward, after_update=self._after_update, clip_grad=self._clip,
                               autocast=acc.autocast, no_sync=lambda: acc.no_sync(model))
        self.eval_cfg = AttackConfig(eps=cfg.eps, step_size=2.5 * cfg.eps / max(1, cfg.eval_attack_steps),
                                     steps=cfg.eval_attack_steps, seed=cfg.seed)

    def _check_sizes(self, model, pcfg: dict, data_size: tuple, images_per_epoch: int):
        """Data that the model cannot take is an error; data far from the model's pretrained size is a warning; then
        the one start line that gives the run's scale."""
        cfg, acc = self.cfg, self.accelerator
        want_chans = cfg.in_chans or pcfg.get("input_size", (3,))[0]
        if data_size[0] != want_chans:
            raise ConfigError(f"model {cfg.model} takes {want_chans}-channel input but the {cfg.dataset} images have "
                              f"{data_size[0]} channel(s): pass --in-chans {data_size[0]}"
                              + ("" if cfg.dataset == "mnist-mini" else f" or --input-size {want_chans} H W"))
        if not acc.is_main_process:
            return
        pre = tuple(pcfg.get("input_size", data_size))[1:]
        if max(max(a / b, b / a) for a, b in zip(pre, data_size[1:])) >= 2:
            _logger.warning("model %s was pretrained at %dx%d; the data is %dx%d and the model runs at that size "
                            "(--input-size C H W resizes image folders and shards)", cfg.model, *pre, *data_size[1:])
        method = get_method_class(cfg.method)
        n_params = sum(p.numel() for p in model.parameters())
        _logger.info("train %s (%.2fM params) | data %s: %d images/epoch at %s | --method %s: %d passes/minibatch | "
                     "%d process(es), precision %s (math %s, evaluation %s) | output %s", cfg.model, n_params / 1e6,
                     cfg.dataset, images_per_epoch, "x".join(map(str, data_size)), method.label(cfg.method_opts),
                     method.passes_per_batch(cfg.method_opts), acc.num_processes, cfg.mixed_precision,
                     self.math_policy, cfg.eval_precision, self.out_dir)

    def _make_run_dir(self, earlier: list[str]):
        """The run dir appears only once model and data are known good: bad input leaves no partial output."""
        if self.accelerator.is_main_process:
            os.makedirs(self.out_dir, exist_ok=True)
            atomic_write_text(os.path.join(self.out_dir, "args.yaml"), yaml.safe_dump(self.cfg.flat(),
                                                                                      sort_keys=False))
            # half-written files of a run killed mid-write (never complete), and with --overwrite the earlier run
            for name in os.listdir(self.out_dir):
                if name.startswith(".tmp-") or (self.cfg.overwrite and name in earlier):
                    p = os.path.join(self.out_dir, name)
                    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        self.accelerator.wait_for_everyone()

    def _resume(self):
        cfg = self.cfg
        resume_dir = find_latest_state(self.out_dir) if cfg.resume == "auto" else cfg.resume
        if resume_dir:
            meta = load_run_state(self.accelerator, self.method, resume_dir)
            RunEma.resume(self.ema, resume_dir)
            if meta.get("epoch_done", True):
                self.start_epoch = meta["epoch"] + 1
            else:  # mid-epoch: skip the batches of this epoch already trained, carry their running sums
                self.start_epoch, self.start_batch = meta["epoch"], meta["batches_done"]
                self.totals = meta["totals"][self.accelerator.process_index]
            self.stepper.load_state_dict({"num_updates": meta["num_updates"]})
            self.best = meta.get("best", self.best)
            self.faults.update({k: meta[k] for k in self.faults if k in meta})
            _logger.info("resumed from %s at epoch %d, batch %d", resume_dir, self.start_epoch, self.start_batch)
        self.guard.bad_steps = self.faults["bad_steps"]
        if self.accelerator.is_main_process:  # rows of epochs trained again (none kept when no checkpoint was found)
            trim_summary(os.path.join(self.out_dir, "summary.csv"), self.start_epoch)

    def _lr(self) -> float:
        """The schedule's lr: that of the unscaled parameter group under --layer-decay (the head's)."""
        return max(g["lr"] for g in self.optimizer.param_groups)

    def _log_interval(self, batches: int, s: dict):
        """--log-with, every --log-interval minibatches (main process): the epoch's running train loss and accuracy."""
        log_scalars(self.accelerator, {"step/train_loss": s["loss_sum"] / max(1, s["n_loss"]),
                                       "step/train_adv_top1": 100.0 * s["correct"] / max(1, s["count"]),
                                       "step/lr": self._lr()}, self.stepper.num_updates)

    def _clip(self):
        """--clip-grad with timm's --clip-mode: norm (total gradient norm), value (each element), agc (adaptive)."""
        cfg, acc = self.cfg, self.accelerator
        if not cfg.clip_grad or not acc.sync_gradients:
            return
        if cfg.clip_mode == "norm":
            acc.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        elif cfg.clip_mode == "value":
            acc.clip_grad_value_(self.model.parameters(), cfg.clip_grad)
        else:
            acc.unscale_gradients()  # (fp16) AGC compares true gradients with the weights
            adaptive_clip_grad(self.model.parameters(), cfg.clip_grad)

    def _after_update(self):
        if self.accelerator.sync_gradients:  # the scheduler counts real updates, not accumulation micro-steps
            self.stepper()
            if self.ema is not None:
                self.ema.update(self.attack_model, self.stepper.num_updates)

    def _meta(self, epoch: int, done: bool, batches: int, snap: dict | None = None) -> dict:
        m = {"epoch": epoch, "epoch_done": done, "batches_done": batches, "num_updates": self.stepper.num_updates,
             "num_processes": self.accelerator.num_processes, "best": self.best, **self.faults}
        if snap is not None:
            m["totals"] = gather_object([snap])  # every rank's running sums of the epoch so far
        return m

    def _save(self, name: str, meta: dict) -> str:
        pinned = self.faults["pinned"]
        path = save_run_state(self.accelerator, self.method, self.out_dir, name, meta, self.cfg.checkpoint_hist,
                              protect=(os.path.basename(pinned),) if pinned else (),
                              weights=self.ema.files() if self.ema is not None else None)
        if self.accelerator.is_main_process:  # one line per checkpoint (Accelerate's own are at DEBUG)
            size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
            where = f"epoch {meta['epoch']}" + ("" if meta["epoch_done"] else f", step {meta['batches_done']}")
            _logger.info("%s saved (%s, %.1f MB)", name, where, size / 1e6)
        return path

    def _after_batch(self, epoch: int, batches: int, snapshot) -> bool:
        """Per minibatch: bad-step bookkeeping, periodic and preemption checkpoints; True ends the run here.

        Host reads only where needed: the guard's skip count every --log-interval minibatches, at the epoch's last
        one and before a checkpoint; `snapshot()` (the epoch's running sums) only when a checkpoint is written.
        """
        cfg, acc = self.cfg, self.accelerator
        last = batches == len(self.train_loader)  # the epoch-end checkpoint follows right after it
        # inside an accumulation group micro-step gradients are not saved: no checkpoint there
        # read at once on the epoch's last minibatch (a sync point already): a request is never carried past it
        preempted = acc.sync_gradients and self.preemption.requested(acc, now=last)
        periodic = acc.sync_gradients and cfg.checkpoint_every_steps and batches % cfg.checkpoint_every_steps == 0 \
            and not last
        if (preempted or periodic or last or batches % cfg.log_interval == 0) and self._bad_steps_stop():
            return True
        if preempted or periodic:
            path = self._save(f"checkpoint-{epoch:04d}-step{batches:07d}",
                              self._meta(epoch, False, batches, snapshot()))
            if preempted:
                self.status, self.status_ckpt = "preempted", path
                return True
        return False

    def _bad_steps_stop(self) -> bool:
        """Read the guard's count of skipped updates; True (status bad_steps) once --max-bad-steps is reached."""
        guard, faults = self.guard, self.faults
        guard.poll()
        faults["bad_steps"] = guard.bad_steps
        if guard.first_bad is not None and faults["first_bad"] is None:
            # keep the newest complete checkpoint from before the first bad step out of pruning (every checkpoint
            # is written after a poll, so none was written since that step)
            faults["first_bad"] = guard.first_bad
            faults["pinned"] = find_latest_state(self.out_dir) if self.accelerator.is_main_process else None
        if guard.bad_steps >= self.cfg.max_bad_steps:
            self.status, self.status_ckpt = "bad_steps", faults["pinned"]
            return True
        return False

    def train_epoch(self, epoch: int) -> bool:
        """One pass over the training data; False when the run stopped inside it (preemption, bad steps)."""
        cfg = self.cfg
        set_data_epoch(self.train_loader, epoch)  # seeded per-epoch shuffle and augmentation: the same on resume
        keys = [] if cfg.log_data_keys else None
        self.stats = train_one_epoch(self.method, self.ctx, self.train_loader, self.accelerator, epoch,
                                     progress=not cfg.no_progress, channels_last=cfg.channels_last, keys_out=keys,
                                     start_batch=self.start_batch, totals=self.totals, log_interval=cfg.log_interval,
                                     after_batch=lambda b, snapshot: self._after_batch(epoch, b, snapshot),
                                     on_log=self._log_interval if self.logs else None)
        self.start_batch, self.totals = 0, None
        if keys is not None:
            self.data_keys[str(epoch)] = gather_object([keys])  # one list of keys per rank
        return self.stats.pop("completed")

    def evaluate(self, epoch: int) -> bool:
        """Per-epoch monitoring (test split) and selection (holdout), summary row; True when the guard stops."""
        cfg, acc = self.cfg, self.accelerator
        sync_buffers(self.attack_model, acc)  # every rank evaluates the weights rank 0 will save
        ev = evaluate_attacks(self.attack_model, self.eval_loader, ["clean", "pgd"], self.eval_cfg, acc,
                              channels_last=cfg.channels_last, precision=cfg.eval_precision)
        row = {"epoch": epoch, **{k: round(v, 5) if isinstance(v, float) else v for k, v in self.stats.items()},
               "eval_top1": round(ev["clean"]["top1"], 2), "eval_pgd_top1": round(ev["pgd"]["top1"], 2),
               "eval_n": ev["clean"]["n"], "lr": self._lr(),
               "num_updates": self.stepper.num_updates, "bad_steps": self.guard.bad_steps,
               "eval_precision": cfg.eval_precision}
        if self.ema is not None:  # the averaged weights on the same images and attack
            row.update(self.ema.evaluate(self.eval_loader, self.eval_cfg, acc, channels_last=cfg.channels_last,
                                         precision=cfg.eval_precision))
        stopped = False
        if self.holdout_loader is not None:
            ho = evaluate_attacks(self.attack_model, self.holdout_loader, ["clean", "pgd"], self.eval_cfg, acc,
                                  channels_last=cfg.channels_last, precision=cfg.eval_precision)
            row.update(holdout_top1=round(ho["clean"]["top1"], 2), holdout_pgd_top1=round(ho["pgd"]["top1"], 2))
            stopped = _select(cfg, row, epoch, self.best, os.path.join(self.out_dir, "model_best.safetensors"),
                              self.attack_model, acc)
        row["collapsed"] = epoch_collapsed(row, epoch, cfg.eps_warmup_epochs, unwrap_timm(self.model).num_classes,
                                           len(self.train_loader) * cfg.batch_size * acc.num_processes)
        if row["collapsed"] == 1 and acc.is_main_process:  # at chance after the warm-up (atcd/collapse.py)
            print(collapse_message(row, epoch, cfg), file=sys.stderr, flush=True)
        if acc.is_main_process:
            write_summary(os.path.join(self.out_dir, "summary.csv"), row)
            log_scalars(acc, row, self.stepper.num_updates)
            print(f"epoch {epoch}: loss {row['train_loss']:.4f} clean {row['eval_top1']:.1f} "
                  f"pgd{cfg.eval_attack_steps} {row['eval_pgd_top1']:.1f}{RunEma.describe(row)} "
                  f"({row['seconds']:.1f}s)", flush=True)
        acc.wait_for_everyone()
        self.row = row
        return stopped

    def end_epoch(self, epoch: int) -> bool:
        """Epoch-end checkpoint; False when a signal arrived during the evaluation (the run stops here)."""
        path = self._save(f"checkpoint-{epoch:04d}", self._meta(epoch, True, len(self.train_loader)))
        if epoch + 1 < self.epochs and self.preemption.requested(self.accelerator, now=True):
            self.status, self.status_ckpt = "preempted", path
            return False
        return True

    def finish(self) -> dict:
        """Final weights and the cross-process checks, or the stop message of a preempted / bad-steps run."""
        cfg, acc = self.cfg, self.accelerator
        if self.status != "completed":  # the checkpoint is what remains of the run
            if acc.is_main_process:
                print(self._stop_message(), flush=True)
            acc.wait_for_everyone()
            return {"run_dir": self.out_dir, "status": self.status, "checkpoint": self.status_ckpt, **self.faults,
                    "num_updates": self.stepper.num_updates, "num_processes": acc.num_processes}
        if acc.is_main_process:
            meta = {"model": cfg.model, "method": cfg.method, "eps": cfg.eps}
            save_weights(unwrap_timm(self.model), os.path.join(self.out_dir, "model.safetensors"), meta)
            if self.ema is not None:
                self.ema.save(self.out_dir, meta)
            if self.data_keys:
                atomic_write_text(os.path.join(self.out_dir, "data_keys.json"), json.dumps(self.data_keys))
        # cheap cross-process checks a launcher test (or a user) can read off the RESULT line
        checks = {"num_processes": acc.num_processes, "mixed_precision": acc.mixed_precision,
                  "eval_precision": cfg.eval_precision,
                  "rank_weights_sha256": rank_weight_hashes(unwrap_timm(self.model), acc),
                  "rank_num_updates": gather_object([self.stepper.num_updates])}
        if self.row.get("collapsed") == 1:  # trained to the end and still at chance: not "completed"
            self.status = "collapsed"
        acc.wait_for_everyone()
        return {"run_dir": self.out_dir, "status": self.status, "method": self.method.label(cfg.method_opts),
                **self.row, "bad_steps": self.faults["bad_steps"], **checks}

    def _stop_message(self) -> str:
        if self.status == "preempted":
            return (f"{self.preemption.name}: stopped after the current step; checkpoint written to "
                    f"{self.status_ckpt}. Resume with the same command plus --resume auto")
        ckpt, faults = self.status_ckpt, self.faults
        where = (f"the newest checkpoint from before it, {ckpt}, is kept" if ckpt else
                 "no checkpoint was written before it (use --checkpoint-every-steps)")
        return (f"stopped: {faults['bad_steps']} non-finite updates skipped (--max-bad-steps "
                f"{self.cfg.max_bad_steps}), the first at update {faults['first_bad']}; {where}. Resume from it with "
                f"--resume, --resume-with-changes and e.g. a lower --lr or --clip-grad")
