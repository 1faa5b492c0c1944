"""Training methods: one registry, one file per method."""
from . import atcd as _atcd  # noqa: F401  (registration)
from . import standard as _standard  # noqa: F401
from .base import StepContext, StepResult, TrainMethod, attack_mode  # noqa: F401
from .registry import create_method, list_methods, register_method  # noqa: F401
