"""Training methods: one registry, one file per method."""
from . import atcd as _atcd  # noqa: F401  (registration)
from . import fast as _fast  # noqa: F401
from . import free as _free  # noqa: F401
from . import pgd as _pgd  # noqa: F401
from . import standard as _standard  # noqa: F401
from . import trades as _trades  # noqa: F401
from . import yopo as _yopo  # noqa: F401
from .base import StepContext, StepResult, TrainMethod, attack_mode  # noqa: F401
from .registry import create_method, get_method_class, list_methods, register_method  # noqa: F401
