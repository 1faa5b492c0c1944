"""Normalisation lives inside the model: attacks and data work in [0,1] pixel space."""
from collections.abc import Sequence

import timm
import torch
from torch import nn

from .hub import create_hub_model, create_pretrained

__all__ = ["NormalizedModel", "build_model", "unwrap_timm"]


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
    def from_timm(cls, model: nn.Module, in_chans: int | None = None) -> "NormalizedModel":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        in_chans = in_chans or cfg.get("input_size", (3,))[0]
        mean = cfg.get("mean", (0.0,) * in_chans)
        std = cfg.get("std", (1.0,) * in_chans)
        if len(mean) != in_chans:  # e.g. an ImageNet cfg on a 1-channel model: broadcast its average
            mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
        return cls(model, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def build_model(
        name: str,
        num_classes: int | None = None,
        pretrained: bool = False,
        in_chans: int | None = None,
        **kwargs,
) -> NormalizedModel:
    """Create any timm model by name (incl. `hf-hub:` / `local-dir:`) wrapped for [0,1] input.

    An `hf-hub:` / `local-dir:` name designates published weights: they are loaded whatever `pretrained` says,
    strictly (a `num_classes` / `in_chans` that does not fit them is an error), and failures raise
    `atcd.models.hub.HubError` (a `CheckpointError`) with a one-line reason. So do timm pretrained weights that do
    not exist or cannot be fetched (timm would go on with random weights, or raise deep in the download).
    """
    if timm.models.parse_model_name(name)[0] is not None:
        return NormalizedModel.from_timm(create_hub_model(name, num_classes, in_chans, **kwargs), in_chans)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    model = create_pretrained(name, **kwargs) if pretrained else timm.create_model(name, **kwargs)
    return NormalizedModel.from_timm(model, in_chans)


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
