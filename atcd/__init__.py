"""ATCD: fast adversarial training (Adversarial Training using Contrastive Divergence) on top of timm."""
from . import models  # noqa: F401  registers the paper's architectures with timm

__version__ = "0.1.0"
