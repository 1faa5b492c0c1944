"""The optimizer of a training run: timm's `create_optimizer_v2(model, **optimizer_kwargs(cfg))`, as timm's train.py.

The timm model itself (not the [0,1]-input wrapper, which holds no parameters) gives the parameter groups, so its
`no_weight_decay()` and `group_matcher()` (--layer-decay) apply under their own parameter names.
"""
import difflib

from timm.optim import create_optimizer_v2, get_optimizer_info, list_optimizers, optimizer_kwargs
from timm.optim._param_groups import auto_group_layers, group_parameters
from torch import nn

from .errors import ConfigError

__all__ = ["AccumulatingOptimizer", "check_optimizer", "create_run_optimizer", "layer_groups"]


def check_optimizer(cfg) -> None:
    """--opt-eps / --opt-betas the optimizer takes (timm drops them silently otherwise); --layer-decay needs a
    scheduler (timm applies the layer scales when it sets the lr)."""
    try:
        info = get_optimizer_info(cfg.opt)
    except ValueError:
        names = list_optimizers()
        close = difflib.get_close_matches(cfg.opt.lower(), names, n=4) or ["sgd", "momentum", "adamw", "lamb"]
        raise ConfigError(f"unknown --opt {cfg.opt!r}: give one of timm's {len(names)} optimizer names, e.g. "
                          f"{', '.join(close)} (all: python -c 'import timm.optim; "
                          f"print(timm.optim.list_optimizers())')") from None
    if cfg.opt_eps is None and cfg.opt_betas is None and cfg.layer_decay is None:
        return
    if cfg.opt_eps is not None and not info.has_eps:
        raise ConfigError(f"--opt {cfg.opt} takes no epsilon: --opt-eps would be ignored")
    if cfg.opt_betas is not None and not info.has_betas:
        raise ConfigError(f"--opt {cfg.opt} takes no betas: --opt-betas would be ignored")
    if cfg.opt_betas is not None and len(cfg.opt_betas) != info.num_betas:
        raise ConfigError(f"--opt {cfg.opt} takes {info.num_betas} betas (got {len(cfg.opt_betas)})")
    if cfg.layer_decay is not None and cfg.sched == "none":
        raise ConfigError("--layer-decay scales each group's lr through the scheduler: --sched none would ignore it")


def layer_groups(model: nn.Module) -> int:
    """The number of layer groups timm's `param_groups_layer_decay` makes of `model` (the bare timm model): its
    `group_matcher`, else timm's fallback (the pretrained_cfg's classifier, the rest 12 tensors a group)."""
    if hasattr(model, "group_matcher"):
        layer_map = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    else:
        layer_map = auto_group_layers(model)
    return max(layer_map.values()) + 1


def create_run_optimizer(cfg, model: nn.Module, name: str):
    """timm's optimizer for the bare timm `model` (`name`: the --model, for messages) as `cfg` says.

    Raises:
        ConfigError: --layer-decay on a model timm puts into one layer group (timm would only warn that it has no
            effect).
    """
    if cfg.layer_decay is not None and layer_groups(model) < 2:
        raise ConfigError(f"--layer-decay: model {name} has no layer groups (no group_matcher and no pretrained_cfg "
                          f"classifier), so every parameter would keep the same lr")
    return create_optimizer_v2(model, **optimizer_kwargs(cfg=cfg))


class AccumulatingOptimizer:
    """The optimizer the methods see under gradient accumulation: gradients are cleared after each real update.

    Methods call `zero_grad()` before every backward; with accumulation that would wipe the micro-steps already
    accumulated (Accelerate's optimizer zeroes on the syncing step, just before its backward). So `zero_grad`
    is a no-op here and the prepared optimizer zeroes right after the step it really took.
    """

    def __init__(self, optimizer, accelerator):
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
