"""Normalisation lives inside the model: attacks and data work in [0,1] pixel space."""
from collections.abc import Sequence

import timm
import torch
from timm.layers import DropPath
from torch import nn

from ..errors import ConfigError
from ..options import parse_kwargs
from .hub import create_hub_model, create_pretrained

__all__ = ["NormalizedModel", "build_model", "timm_kwargs", "unwrap_timm"]


class NormalizedModel(nn.Module):
    """Wraps a timm model so it takes [0,1] NCHW input; mean/std come from the model's `pretrained_cfg`."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        c = len(mean)
        # non-persistent: the weights file holds only the timm model, so hub/local-dir loading sees a plain timm model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)

    @classmethod
    def from_timm(cls, model: nn.Module, in_chans: int | None = None, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> "NormalizedModel":
        """mean/std: the model's `pretrained_cfg` ones, or those given (1 or `in_chans` values; timm's --mean/--std),
        which then also replace the `pretrained_cfg` ones, so a published model states what it was trained with."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        in_chans = in_chans or cfg.get("input_size", (3,))[0]
        for name, given in (("mean", mean), ("std", std)):
            if given is not None and len(given) not in (1, in_chans):
                raise ConfigError(f"--{name} takes 1 or {in_chans} values for a {in_chans}-channel model "
                                  f"(got {len(given)})")
        if mean is not None or std is not None:
            mean = tuple(mean) * (in_chans // len(mean)) if mean is not None else tuple(cfg.get("mean", (0.0,)))
            std = tuple(std) * (in_chans // len(std)) if std is not None else tuple(cfg.get("std", (1.0,)))
            model.pretrained_cfg = model.default_cfg = {**cfg, "mean": mean, "std": std}
        mean = tuple(mean or cfg.get("mean", (0.0,) * in_chans))
        std = tuple(std or cfg.get("std", (1.0,) * in_chans))
        if len(mean) != in_chans:  # e.g. an ImageNet cfg on a 1-channel model: broadcast its average
            mean = (sum(mean) / len(mean),) * in_chans
        if len(std) != in_chans:
            std = (sum(std) / len(std),) * in_chans
        return cls(model, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.mean.shape[1]
        if x.shape[1] != c:  # else (x - mean) would broadcast 1-channel digits to c channels without a word
            raise ConfigError(f"the model takes {c}-channel input but the images have {x.shape[1]} channel(s): give "
                              f"--in-chans {x.shape[1]} (a model trained on such images), or data with {c} channels "
                              f"(e.g. --data-dir IMAGE_FOLDER)")
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def build_model(
        name: str,
        num_classes: int | None = None,
        pretrained: bool = False,
        in_chans: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        reset_classifier: bool = False,
        **kwargs,
) -> NormalizedModel:
    """Create any timm model by name (incl. `hf-hub:` / `local-dir:`) wrapped for [0,1] input.

    An `hf-hub:` / `local-dir:` name designates published weights: they are loaded whatever `pretrained` says,
    strictly (a `num_classes` / `in_chans` that does not fit them is an error; with `reset_classifier` another
    `num_classes` gets a fresh classifier, as timm's pretrained loading does), and failures raise
    `atcd.models.hub.HubError` (a `CheckpointError`) with a one-line reason. So do timm pretrained weights that do
    not exist or cannot be fetched (timm would go on with random weights, or raise deep in the download).
    `mean` / `std` replace the normalisation of the model's `pretrained_cfg` (`NormalizedModel.from_timm`).
    """
    try:
        if timm.models.parse_model_name(name)[0] is not None:
            model = create_hub_model(name, num_classes, in_chans, reset_classifier=reset_classifier, **kwargs)
        else:
            kwargs.update({k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None})
            model = create_pretrained(name, **kwargs) if pretrained else timm.create_model(name, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ConfigError(f"model {name} does not take that argument (--model-kwargs?): {e}") from None
    if kwargs.get("drop_path_rate") and not any(isinstance(m, DropPath) for m in model.modules()):
        raise ConfigError(f"model {name} has no drop-path (stochastic depth) blocks: --drop-path would be ignored")
    return NormalizedModel.from_timm(model, in_chans, mean, std)


def timm_kwargs(drop: float = 0.0, drop_path: float | None = None, model_kwargs=()) -> dict:
    """The `timm.create_model` arguments of --drop, --drop-path and --model-kwargs (timm's train.py flags)."""
    out = parse_kwargs(model_kwargs)
    if drop:
        out["drop_rate"] = drop
    if drop_path is not None:
        out["drop_path_rate"] = drop_path
    return out


def unwrap_timm(model: nn.Module) -> nn.Module:
    """The bare timm model inside (DDP/compile wrappers and the normaliser removed)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, NormalizedModel):
            model = model.model
        else:
            return model
