"""Attacks in [0,1] pixel space; one registry; one projected-step core."""
from . import autoattack as _aa  # noqa: F401  (registration)
from . import hmc as _hmc  # noqa: F401
from . import pgd as _pgd  # noqa: F401
from .core import PassCounter, input_grad, perturb, project, random_init, sign_step  # noqa: F401
from .losses import ce_loss, jcd_loss, margin_loss, soft_cross_entropy  # noqa: F401
from .registry import AttackConfig, attack_options_class, get_attack, list_attacks, register_attack  # noqa: F401
