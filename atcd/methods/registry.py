"""Training-method registry: `@register_method('name')` on a `TrainMethod` subclass."""
from ..registry import Registry

__all__ = ["create_method", "get_method_class", "list_methods", "register_method"]

_METHODS = Registry("method")


def register_method(name: str):
    return _METHODS.register(name, on_register=lambda cls: setattr(cls, "name", name))


def get_method_class(name: str) -> type:
    return _METHODS.get(name)


def create_method(name: str, cfg, **kwargs):
    return get_method_class(name)(cfg, **kwargs)


def list_methods():
    return _METHODS.names()
