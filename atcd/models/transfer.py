"""Start from weights of another class count: the classifier is re-initialised, everything else must fit.

This is timm's rule for pretrained weights (`timm.models.load_pretrained`): when `num_classes` differs from the
checkpoint's, the keys of `pretrained_cfg['classifier']` are dropped and the rest is loaded with `strict=False`.
Here the rest must still fit exactly, so only the head is ever left at its fresh initialisation.
"""
import logging

import torch
from safetensors import safe_open
from torch import nn

from ..checkpoint import CheckpointError, mismatch, read_weights

__all__ = ["check_fits_but_classifier", "classifier_keys", "load_initial_checkpoint", "safetensors_shapes"]

_logger = logging.getLogger(__name__)


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier named by the timm model's `pretrained_cfg['classifier']`."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else names
    own = model.state_dict()
    return {k for c in names for k in (f"{c}.weight", f"{c}.bias") if k in own}


def _head_sizes(model: nn.Module, sd: dict) -> tuple:
    keys = sorted(k for k in classifier_keys(model) if k.endswith(".weight") and k in sd)
    return (sd[keys[0]].shape[0], model.state_dict()[keys[0]].shape[0]) if keys else (None, None)


def check_fits_but_classifier(model: nn.Module, sd: dict, source: str) -> None:
    """A `CheckpointError` unless `sd` (tensors or shapes on the meta device) fits `model` apart from its head."""
    detail = mismatch(model.state_dict(), sd, ignore=classifier_keys(model))
    if detail:
        raise CheckpointError(f"{source} does not fit model {type(model).__name__} (its classifier aside): {detail}")


def safetensors_shapes(path: str) -> dict:
    """The tensors of a safetensors file as meta tensors (shapes only, nothing read but the header)."""
    with safe_open(path, "pt") as f:
        return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118


def load_initial_checkpoint(model: nn.Module, path: str | None) -> nn.Module:
    """--initial-checkpoint: load a `.safetensors` file (or a run dir's `model.safetensors`) into the bare timm
    `model`; a classifier of another class count is left re-initialised, any other mismatch is a one-line error.
    `path` None: `model` as it is."""
    if path is None:
        return model
    path, sd = read_weights(path)
    own = model.state_dict()
    if not mismatch(own, sd):
        model.load_state_dict(sd, strict=True)
        return model
    check_fits_but_classifier(model, sd, path)  # so the mismatch is the head's alone
    head = classifier_keys(model)
    have, want = _head_sizes(model, sd)
    model.load_state_dict({k: v for k, v in sd.items() if k not in head}, strict=False)
    _logger.info("initial weights from %s; classifier (%s) re-initialised: %s classes there, %s here", path,
                 ", ".join(sorted(head)), have, want)
    return model
