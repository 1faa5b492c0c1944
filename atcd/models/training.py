"""Model settings only training uses, as timm's train.py applies them: --grad-checkpointing and --sync-bn."""
import logging

from timm.layers import convert_sync_batchnorm
from torch import nn

from ..errors import ConfigError

__all__ = ["SYNC_BN_DEVICES", "convert_sync_bn", "set_grad_checkpointing"]

_logger = logging.getLogger(__name__)

SYNC_BN_DEVICES = ("cuda", "xpu", "hpu")  # where torch's SyncBatchNorm runs (it refuses cpu and mps input)


def set_grad_checkpointing(model: nn.Module, name: str) -> None:
    """timm's `model.set_grad_checkpointing()` on the bare timm `model` (`name`: the --model, for the message)."""
    try:
        model.set_grad_checkpointing(True)
    except (AttributeError, AssertionError, NotImplementedError):  # no such method, or timm's "not supported"
        raise ConfigError(f"model {name} does not support --grad-checkpointing (no timm set_grad_checkpointing)") \
            from None


def convert_sync_bn(model: nn.Module, num_processes: int, device_type: str) -> nn.Module:
    """--sync-bn: BatchNorm layers (timm's BatchNormAct included) become SyncBatchNorm when several processes train,
    as in timm's train.py (`timm.layers.convert_sync_batchnorm`); on one process `model` is returned as it is.
    Call it before the optimizer is created and before DDP wraps the model.

    Raises:
        ConfigError: several processes on a device SyncBatchNorm does not run on.
    """
    if num_processes == 1:
        _logger.info("--sync-bn: one process, no BatchNorm statistics to synchronise (BatchNorm kept)")
        return model
    if device_type not in SYNC_BN_DEVICES:
        raise ConfigError(f"--sync-bn: torch's SyncBatchNorm runs on {'/'.join(SYNC_BN_DEVICES)} only, this run is on "
                          f"{device_type}")
    return convert_sync_batchnorm(model)
