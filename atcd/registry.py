"""A name -> object registry, as timm registers models: methods, attacks and datasets each keep one."""
from collections.abc import Callable
from typing import Any

__all__ = ["Registry"]


class Registry:
    """`register(name)(obj)` adds an entry; `get(name)` finds it; `names()` lists them sorted (for --help)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, on_register: Callable[[Any], None] | None = None):
        def deco(obj):
            if on_register is not None:
                on_register(obj)
            self._entries[name] = obj
            return obj
        return deco

    def get(self, name: str):
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {self.names()}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)
