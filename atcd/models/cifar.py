"""The paper's CIFAR-10 architectures (32x32 stem, no ImageNet downsampling), registered with timm.

* `wrn34_10_cifar`: WideResNet-34-10 as in Madry et al. / TRADES (pre-activation basic blocks, widths
  16-160-320-640, 46.2M parameters).
* `wrn28_10_cifar`, `wrn34_15_cifar`, `wrn34_20_cifar`, `wrn70_16_cifar`: the same block at the other sizes of
  RobustBench's model zoo (`atcd.models.cifar_zoo` has the zoo's other CIFAR architectures).
* `preact_resnet18_cifar`: PreAct-ResNet-18 as in Rice et al. 2020 / Wong et al. 2020 (11.2M parameters).

timm has neither: its `wide_resnet50_2` / `resnet18` use the ImageNet 7x7-stride-2 stem and max-pool.
Normalisation (CIFAR-10 mean/std) lives in `pretrained_cfg` and is applied by `NormalizedModel`.
"""
import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["PreActResNetCifar", "WideResNetCifar"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def _init_weights(model: nn.Module):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class _ClassifierMixin:
    """timm's classifier interface over `self.head` on a globally average-pooled feature map."""

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.avg_pool2d(x, x.shape[-2:]).flatten(1)  # as the TRADES / RobustBench code pools: bit-equal logits
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _finish(self, stages: list, c: int, num_classes: int):
        """Stages, the final pre-activation BN and the head (after conv1 and the blocks), then the init."""
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.num_features = c
        self.head = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.stages(self.conv1(x))))


class _PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 projection when the shape changes (shared by PreAct-ResNet and the
    TRADES/Madry WideResNet block)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return o + short


class WideResNetCifar(_ClassifierMixin, nn.Module):
    """WideResNet-`depth`-`widen_factor` for 32x32 inputs."""

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, **kwargs):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 (got {depth})")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        stages, c = [], widths[0]
        for i, stride in enumerate((1, 2, 2)):
            blocks = []
            for b in range(n):
                blocks.append(_PreActBlock(c, widths[i + 1], stride if b == 0 else 1))
                c = widths[i + 1]
            stages.append(nn.Sequential(*blocks))
        self._finish(stages, c, num_classes)


class PreActResNetCifar(_ClassifierMixin, nn.Module):
    """Pre-activation ResNet (He et al. 2016b) for 32x32 inputs; `layers=(2, 2, 2, 2)` is PreAct-ResNet-18."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, **kwargs):
        super().__init__()
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        stages, c = [], 64
        for i, n in enumerate(layers):
            planes = 64 * 2 ** i
            blocks = []
            for b in range(n):
                blocks.append(_PreActBlock(c, planes, (1 if i == 0 else 2) if b == 0 else 1))
                c = planes
            stages.append(nn.Sequential(*blocks))
        self._finish(stages, c, num_classes)


def _cfg(pool_size: tuple[int, int]) -> dict:
    return {"url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": pool_size,
            "crop_pct": 1.0, "interpolation": "bilinear", "mean": CIFAR10_MEAN, "std": CIFAR10_STD,
            "first_conv": "conv1", "classifier": "head", "license": "apache-2.0"}


WRN_SIZES = ((28, 10), (34, 10), (34, 15), (34, 20), (70, 16))  # RobustBench's zoo: every TRADES-style WideResNet

default_cfgs = generate_default_cfgs({
    **{f"wrn{d}_{w}_cifar.untrained": _cfg((8, 8)) for d, w in WRN_SIZES},
    "preact_resnet18_cifar.untrained": _cfg((4, 4)),
})


@register_model
def wrn34_10_cifar(pretrained: bool = False, **kwargs) -> WideResNetCifar:
    """WideResNet-34-10 for CIFAR (ATCD Table 2; Madry et al. 2018 / TRADES architecture)."""
    kwargs.setdefault("depth", 34)
    kwargs.setdefault("widen_factor", 10)
    return build_model_with_cfg(WideResNetCifar, "wrn34_10_cifar", pretrained, **kwargs)


def _wrn(depth: int, width: int):
    name = f"wrn{depth}_{width}_cifar"

    def factory(pretrained: bool = False, **kwargs) -> WideResNetCifar:
        kwargs.setdefault("depth", depth)
        kwargs.setdefault("widen_factor", width)
        return build_model_with_cfg(WideResNetCifar, name, pretrained, **kwargs)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"WideResNet-{depth}-{width} for CIFAR (TRADES / Madry et al. architecture)."
    factory.__module__ = __name__
    globals()[name] = register_model(factory)


for _d, _w in WRN_SIZES:
    if (_d, _w) != (34, 10):  # registered above with the paper's docstring
        _wrn(_d, _w)


@register_model
def preact_resnet18_cifar(pretrained: bool = False, **kwargs) -> PreActResNetCifar:
    """PreAct-ResNet-18 for CIFAR (ATCD appendix A.3.1; Rice et al. 2020 architecture)."""
    kwargs.setdefault("layers", (2, 2, 2, 2))
    return build_model_with_cfg(PreActResNetCifar, "preact_resnet18_cifar", pretrained, **kwargs)
