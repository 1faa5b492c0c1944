"""AutoAttack through the packaged official implementation (`pyautoattack`); never re-implemented."""
import logging
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..options import comma_list, option
from .registry import register_attack

__all__ = ["AA_ATTACKS", "AutoAttackOptions", "autoattack", "run_autoattack"]

AA_INDIVIDUAL = ("apgd-ce", "apgd-t", "fab-t", "square")
AA_ATTACKS = ("apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square")


@dataclass(frozen=True)
class AutoAttackOptions:
    aa_version: str = option("standard", "AutoAttack version (rand for randomised models)",
                             choices=("standard", "plus", "rand", "custom"))
    aa_attacks: tuple = option((), f"with --aa-version custom: comma list of {', '.join(AA_ATTACKS)}",
                               type=comma_list, check=lambda v: all(a in AA_ATTACKS for a in v),
                               why=f"must name attacks the package offers: {AA_ATTACKS}")

    def __post_init__(self):
        if self.aa_version == "custom" and not self.aa_attacks:
            from ..errors import ConfigError
            raise ConfigError("--aa-version custom needs --aa-attacks, e.g. apgd-ce,apgd-t")


_logger = logging.getLogger(__name__)


def _report_progress(adversary) -> None:
    """One line as each sub-attack starts on the images still robust (Square and FAB-T run minutes without one).

    The package's own loop calls `perturb` of its attack objects batch by batch; each call is announced with the
    sub-attack's name, the images it gets and the time since the evaluation started.
    """
    t0 = time.time()
    for attr in ("apgd", "apgd_targeted", "fab", "square"):
        obj = getattr(adversary, attr, None)
        if obj is None:
            continue

        def perturb(x, y, *args, _obj=obj, _orig=obj.perturb, _attr=attr, **kwargs):
            name = {"apgd": f"apgd-{getattr(_obj, 'loss', 'ce')}", "apgd_targeted": "apgd-t",
                    "fab": "fab-t" if getattr(_obj, "targeted", False) else "fab"}.get(_attr, _attr)
            _logger.info("AutoAttack %s: %d images left, %.0f s elapsed", name, len(x), time.time() - t0)
            return _orig(x, y, *args, **kwargs)
        obj.perturb = perturb


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str = "standard",
                   seed: int = 0, batch_size: int = 250, attacks=None,
                   square_queries: int | None = None) -> tuple[torch.Tensor, dict]:
    """Run AutoAttack (L-inf); returns (x_adv, {"flags": [...]}).

    `version`: standard | plus | rand, the package's own presets; `custom` runs only `attacks` (e.g.
    ['apgd-ce', 'square']) with the standard version's per-attack settings (1 APGD restart, 9 target classes,
    5000 Square queries), so a single attack scores what it would inside the standard evaluation.
    `square_queries` overrides Square's query budget (5000 in the standard version; validate.py's sanity probe uses
    fewer). flags are the package's own sanity-check warnings (zero gradients, softmax output, randomness, Square
    beating white-box), so they reach the results JSON.
    """
    from pyautoattack import AutoAttack
    if version == "custom":
        if not attacks:
            raise ValueError("AutoAttack version 'custom' needs a list of attacks")
        adversary = AutoAttack(model, eps=eps, version="standard", device=x.device, seed=seed, norm="Linf")
        adversary.attacks_to_run, adversary.version = list(attacks), "custom"
    else:
        adversary = AutoAttack(model, eps=eps, version=version, device=x.device, seed=seed, norm="Linf")
    if square_queries is not None:
        adversary.square.n_queries = square_queries
    _report_progress(adversary)
    handler = _Collect()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        aa_logger.removeHandler(handler)
    flags = sorted(set(handler.messages) | {str(w.message) for w in caught if issubclass(w.category, Warning)
                                            and "autoattack" in (w.filename or "").lower()})
    return (out[0] if isinstance(out, tuple) else out), {"flags": flags}


@register_attack("autoattack", options=AutoAttackOptions)
def autoattack(model, x, y, cfg):
    """AutoAttack at L-inf eps, version --aa-version (standard: APGD-CE, APGD-T, FAB-T, Square)."""
    o = cfg.options_for("autoattack")
    return run_autoattack(model, x, y, cfg.eps, version=o.aa_version, seed=cfg.seed, attacks=o.aa_attacks)


def _single(name: str):
    def attack(model, x, y, cfg):
        return run_autoattack(model, x, y, cfg.eps, version="custom", seed=cfg.seed, attacks=[name])
    attack.__doc__ = f"{name} alone, from the official AutoAttack package, with its standard-version settings."
    return attack


for _name in AA_INDIVIDUAL:
    register_attack(_name)(_single(_name))
