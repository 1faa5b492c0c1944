"""Paper architectures registered with timm, and the [0,1] -> normalised input wrapper."""
from . import (
    cifar_zoo,  # noqa: F401  (registers the zoo's CIFAR architectures: dm_wrn*, resnet18_cifar, ...)
    convstem,  # noqa: F401  (registers Singh et al.'s ConvStem ViTs and ConvNeXts: *_convstem*)
)
from .cifar import PreActResNetCifar, WideResNetCifar  # noqa: F401  (registers wrn34_10_cifar, preact_resnet18_cifar)
from .smallcnn import SmallCNN  # noqa: F401  (import registers `smallcnn_mnist`)
from .training import convert_sync_bn, set_grad_checkpointing  # noqa: F401
from .transfer import load_initial_checkpoint  # noqa: F401
from .wrapper import NormalizedModel, build_model, timm_kwargs, unwrap_timm  # noqa: F401
