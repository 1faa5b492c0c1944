"""Attack registry: `@register_attack('name')` on a function (model, x, y, cfg) -> x_adv."""
from collections.abc import Callable

__all__ = ["get_attack", "list_attacks", "register_attack"]

_ATTACKS: dict[str, Callable] = {}


def register_attack(name: str):
    def deco(fn):
        _ATTACKS[name] = fn
        return fn
    return deco


def get_attack(name: str) -> Callable:
    if name not in _ATTACKS:
        raise ValueError(f"unknown attack {name!r}; available: {list_attacks()}")
    return _ATTACKS[name]


def list_attacks():
    return sorted(_ATTACKS)
