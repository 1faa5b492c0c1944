"""Training-method registry: `@register_method('name')` on a `TrainMethod` subclass."""

__all__ = ["create_method", "get_method_class", "list_methods", "register_method"]

_METHODS: dict[str, type] = {}


def register_method(name: str):
    def deco(cls):
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def get_method_class(name: str) -> type:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {list_methods()}")
    return _METHODS[name]


def create_method(name: str, cfg, **kwargs):
    return get_method_class(name)(cfg, **kwargs)


def list_methods():
    return sorted(_METHODS)
