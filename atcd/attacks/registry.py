"""Attack registry and the settings every attack shares.

`@register_attack('name', options=Options)` on a function `(model, x, y, cfg: AttackConfig) -> x_adv` (or
`(x_adv, info)`). An attack with knobs of its own declares them as a frozen `Options` dataclass of
`atcd.options.option` fields and reads them with `cfg.options_for('name')`; validate.py builds its flags from them.
"""
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..options import AT_LEAST_1, option, option_fields, parse_fraction
from ..registry import Registry

__all__ = ["AttackConfig", "attack_options_class", "get_attack", "list_attacks", "register_attack"]

_ATTACKS = Registry("attack")
_OPTIONS: dict[str, type] = {}


def register_attack(name: str, options: type | None = None):
    """Decorator: register `fn` as attack `name`, with its own `Options` dataclass if it has knobs."""
    if options is not None:
        _OPTIONS[name] = options
    return _ATTACKS.register(name)


def get_attack(name: str) -> Callable:
    return _ATTACKS.get(name)


def attack_options_class(name: str) -> type | None:
    """The `Options` dataclass an attack registered with, or None."""
    return _OPTIONS.get(name)


def list_attacks():
    return _ATTACKS.names()


@dataclass(frozen=True)
class AttackConfig:
    """Settings every attack shares (each reads the ones it needs), plus the options of attacks that have their own.

    `step_size` None means the rule 2.5 * eps / steps (Madry et al.); it is resolved on construction.
    """
    eps: float = option(0.3, "L-inf radius in [0,1] pixels (8/255 ok)", type=parse_fraction,
                        check=lambda v: 0 <= v <= 1, why="is in [0,1] pixel units; use e.g. 8/255")
    steps: int = option(40, "iterations of the iterative attacks", flag="--attack-steps", **AT_LEAST_1)
    step_size: float | None = option(None, "step size alpha (default 2.5*eps/steps)", flag="--attack-step",
                                     type=parse_fraction, check=lambda v: v is None or v > 0, why="must be > 0")
    restarts: int = option(1, "random restarts (the strongest result per example counts)", flag="--attack-restarts",
                           **AT_LEAST_1)
    loss: str = option("ce", "loss the iterative attacks ascend", flag="--attack-loss", choices=("ce", "margin"))
    step_schedule: str = option("constant", "PGD step size over iterations (step: halved at 50%% and 75%%)",
                                flag="--attack-step-schedule", choices=("constant", "cosine", "step"))
    seed: int = option(0, "seed of random starts and AutoAttack")
    options: Mapping[str, Any] = field(default_factory=dict)  # attack name -> its Options instance

    def __post_init__(self):
        if self.step_size is None:
            object.__setattr__(self, "step_size", 2.5 * self.eps / self.steps if self.steps else 0.0)

    def options_for(self, name: str):
        """The options of attack `name`: those given, else its defaults."""
        if name in self.options:
            return self.options[name]
        cls = attack_options_class(name)
        return cls() if cls is not None else None

    def as_dict(self) -> dict:
        """Flat record for results.json: the shared settings, then every given attack option by its own name."""
        out = {f.name: getattr(self, f.name) for f in option_fields(self)}
        for opts in self.options.values():
            out.update(dataclasses.asdict(opts))
        return out
