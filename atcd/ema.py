"""Weight EMA of a training run (--model-ema): timm's `ModelEmaV3`, updated once per optimizer update.

The EMA copies the unwrapped model (the [0,1]-input wrapper, not DDP), lives on the accelerator's device in fp32
and is evaluated per epoch beside the raw weights. Every resumable checkpoint holds it as `model_ema.safetensors`
(written by the main process: the parameters are equal on every rank after each update, and the BN buffers are
given rank 0's before each evaluation, as for the raw model), so a resumed run continues the very same average;
the run ends with it beside `model.safetensors`.
"""
import os

import torch
from timm.utils import ModelEmaV3
from torch import nn

from .checkpoint import CheckpointError, load_weights, save_weights
from .engine import evaluate_attacks
from .models import unwrap_timm
from .ranks import sync_buffers

__all__ = ["EMA_NAME", "RunEma"]

EMA_NAME = "model_ema.safetensors"


class RunEma:
    """The EMA of a run's model. Create it from the bare model, before `torch.compile` and DDP wrap it."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool, device: torch.device):
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup, dtype=torch.float32)
        self.ema.module.to(device)  # the model joins it there in `accelerator.prepare` (same device: foreach lerp)
        self.ema.requires_grad_(False)  # attacks on it take input gradients only
        self.decay, self.warmup = decay, warmup

    @classmethod
    def create(cls, cfg, model: nn.Module, device: torch.device) -> "RunEma | None":
        """The EMA of `model` as `cfg` (--model-ema, --model-ema-decay, --model-ema-warmup) says, or None.

        Call it before `torch.compile`: the copy stays eager (evaluated once per epoch, it is not worth compiling).
        """
        return cls(model, cfg.model_ema_decay, cfg.model_ema_warmup, device) if cfg.model_ema else None

    @staticmethod
    def describe(row: dict) -> str:
        """The EMA's part of the epoch line ('' without EMA columns)."""
        if "ema_eval_top1" not in row:
            return ""
        return f" | ema clean {row['ema_eval_top1']:.1f} pgd {row['ema_eval_pgd_top1']:.1f}"

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def update(self, model: nn.Module, num_updates: int):
        """After optimizer update number `num_updates` (1-based, as timm's train.py counts: the first copies)."""
        self.ema.update(model, step=num_updates)

    def evaluate(self, loader, attack_cfg, accelerator, channels_last: bool = False, precision: str = "fp32") -> dict:
        """The summary columns: `ema_eval_top1` / `ema_eval_pgd_top1` beside the raw `eval_top1` / `eval_pgd_top1`."""
        sync_buffers(self.ema.module, accelerator)
        ev = evaluate_attacks(self.ema.module, loader, ["clean", "pgd"], attack_cfg, accelerator,
                              channels_last=channels_last, precision=precision)  # as the raw weights' columns
        return {"ema_eval_top1": round(ev["clean"]["top1"], 2), "ema_eval_pgd_top1": round(ev["pgd"]["top1"], 2)}

    def files(self) -> dict[str, nn.Module]:
        """What a checkpoint saves (`save_run_state(weights=...)`): the bare timm model's state dict."""
        return {EMA_NAME: unwrap_timm(self.ema.module)}

    def save(self, run_dir: str, metadata: dict):
        save_weights(unwrap_timm(self.ema.module), os.path.join(run_dir, EMA_NAME),
                     {**metadata, "ema_decay": self.decay, "ema_warmup": self.warmup})

    @staticmethod
    def resume(ema: "RunEma | None", state_dir: str):
        """Restore the EMA from a checkpoint; a checkpoint and a run that disagree on --model-ema is an error
        (a fresh average would not be the run's, and the summary's columns would not match its header)."""
        path = os.path.join(state_dir, EMA_NAME)
        if ema is not None and not os.path.isfile(path):
            raise CheckpointError(f"{state_dir} holds no EMA weights (its run had no --model-ema): resume it without "
                                  f"--model-ema, or start a new run with it")
        if ema is None and os.path.isfile(path):
            raise CheckpointError(f"{state_dir} holds EMA weights (its run had --model-ema): resume it with "
                                  f"--model-ema")
        if ema is not None:
            load_weights(unwrap_timm(ema.module), path)
