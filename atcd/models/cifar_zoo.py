"""The CIFAR architectures of RobustBench's model zoo that timm lacks, registered with timm.

Module names follow the zoo's own code (`robustbench.model_zoo.architectures`), so a zoo checkpoint loads with no
key map; normalisation is not inside the network (it lives in `pretrained_cfg` / `NormalizedModel`).

* `dm_wrn{28_10,34_10,34_20,70_16,82_8,94_16,106_16}_cifar`: DeepMind's WideResNet (Gowal et al. 2020, Rebuffi et al.
  2021, Wang et al. 2023, ...): `SAME`-padded strided convolutions, activation `swish` (default), `silu` or `relu`.
* `dm_preact_resnet18_cifar`: DeepMind's PreAct-ResNet-18 (3x3 projection shortcuts, `SAME` padding).
* `preact_resnet18_wong_cifar`: PreAct-ResNet-18 as in Wong et al. 2020 (kuangliu's: no final BN, shortcut from
  the block input); `preact_resnet18_cifar` (`atcd.models.cifar`) is the other variant (final BN, Rice et al.).
* `resnet18_cifar`, `resnet50_cifar`: the standard CIFAR ResNets (3x3 stride-1 stem, no max-pool; kuangliu's,
  used by AutoAttack's examples and many zoo entries).
"""
import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .cifar import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["DMPreActResNet", "DMWideResNet", "PreActResNetWong", "ResNetCifar"]


class Swish(nn.Module):
    """x * sigmoid(x), written as the DeepMind zoo code computes it (bit-equal logits; `nn.SiLU` is fused)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


_ACTS = {"swish": Swish, "silu": nn.SiLU, "relu": nn.ReLU}


def _act(name: str) -> type:
    if name not in _ACTS:
        raise ValueError(f"act_layer must be one of {sorted(_ACTS)} (got {name!r})")
    return _ACTS[name]


def _same_pad(x: torch.Tensor, stride: int) -> torch.Tensor:
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


class _TimmHead:
    """timm's classifier interface: `self.logits` on globally average-pooled features."""

    def get_classifier(self) -> nn.Module:
        return getattr(self, self._head)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self.num_classes = num_classes
        setattr(self, self._head, nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity())

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.avg_pool2d(x, x.shape[-2:]).flatten(1)  # the zoo's own pooling op: bit-equal logits
        return x if pre_logits else getattr(self, self._head)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class _DMBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: type):
        super().__init__()
        self.batchnorm_0, self.relu_0 = nn.BatchNorm2d(cin), act()
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1, self.relu_1 = nn.BatchNorm2d(cout), act()
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.has_shortcut = cin != cout
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if self.has_shortcut else None
        self._stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        if self.has_shortcut:
            x = out
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(_same_pad(out, self._stride)))))
        return (self.shortcut(x) if self.has_shortcut else x) + out


class _DMGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, act: type):
        super().__init__()
        self.block = nn.Sequential(*[_DMBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, act)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(_TimmHead, nn.Module):
    """DeepMind's WideResNet-`depth`-`width` (robustbench `DMWideResNet` without its inner normalisation)."""
    _head = "logits"

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, in_chans: int = 3,
                 act_layer: str = "swish", **kwargs):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 (got {depth})")
        n, act = (depth - 4) // 6, _act(act_layer)
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.num_classes, self.num_features = num_classes, ch[3]
        self.init_conv = nn.Conv2d(in_chans, ch[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(*[_DMGroup(n, ch[i], ch[i + 1], 1 if i == 0 else 2, act) for i in range(3)])
        self.batchnorm, self.relu = nn.BatchNorm2d(ch[3]), act()
        self.logits = nn.Linear(ch[3], num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.batchnorm(self.layer(self.init_conv(x))))


class _DMPreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: type):
        super().__init__()
        self._stride = stride
        self.batchnorm_0, self.relu_0 = nn.BatchNorm2d(cin), act()
        self.conv_2d_1 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1, self.relu_1 = nn.BatchNorm2d(cout), act()
        self.conv_2d_2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.has_shortcut = stride != 1 or cin != cout
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        short = self.shortcut(_same_pad(x, self._stride)) if self.has_shortcut else x
        out = self.conv_2d_1(_same_pad(out, self._stride))
        return self.conv_2d_2(self.relu_1(self.batchnorm_1(out))) + short


class DMPreActResNet(_TimmHead, nn.Module):
    """DeepMind's PreAct-ResNet-18 (robustbench `DMPreActResNet` without its inner normalisation)."""
    _head = "logits"

    def __init__(self, num_classes: int = 10, in_chans: int = 3, act_layer: str = "swish", **kwargs):
        super().__init__()
        act = _act(act_layer)
        self.num_classes, self.num_features = num_classes, 512
        self.conv_2d = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        widths = (64, 128, 256, 512)
        for i, w in enumerate(widths):
            cin = widths[max(i - 1, 0)]
            setattr(self, f"layer_{i}", nn.Sequential(_DMPreActBlock(cin, w, 1 if i == 0 else 2, act),
                                                      _DMPreActBlock(w, w, 1, act)))
        self.batchnorm, self.relu = nn.BatchNorm2d(512), act()
        self.logits = nn.Linear(512, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_2d(x)
        for i in range(4):
            x = getattr(self, f"layer_{i}")(x)
        return self.relu(self.batchnorm(x))


class _PreActBlock(nn.Module):
    """kuangliu's PreActBlock: BN-ReLU-conv-BN-ReLU-conv, a 1x1 projection of the block *input* when needed."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        short = self.shortcut(x) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + short


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _layers(block, layers, widths=(64, 128, 256, 512)) -> tuple[list[nn.Sequential], int]:
    out, c = [], 64
    for i, (n, w) in enumerate(zip(layers, widths)):
        blocks = []
        for b in range(n):
            blocks.append(block(c, w, (1 if i == 0 else 2) if b == 0 else 1))
            c = w * getattr(block, "expansion", 1)
        out.append(nn.Sequential(*blocks))
    return out, c


class PreActResNetWong(_TimmHead, nn.Module):
    """PreAct-ResNet (kuangliu's; Wong et al. 2020, Andriushchenko & Flammarion 2020): no BN before the head."""
    _head = "linear"

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 10, in_chans: int = 3, **kwargs):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        stages, c = _layers(_PreActBlock, layers)
        for i, s in enumerate(stages):
            setattr(self, f"layer{i + 1}", s)
        self.num_classes, self.num_features = num_classes, c
        self.linear = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))


class ResNetCifar(_TimmHead, nn.Module):
    """The standard CIFAR ResNet (kuangliu's): 3x3 stride-1 stem without max-pool, `linear` head."""
    _head = "linear"

    def __init__(self, layers=(2, 2, 2, 2), bottleneck: bool = False, num_classes: int = 10, in_chans: int = 3,
                 **kwargs):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, c = _layers(_Bottleneck if bottleneck else _BasicBlock, layers)
        for i, s in enumerate(stages):
            setattr(self, f"layer{i + 1}", s)
        self.num_classes, self.num_features = num_classes, c
        self.linear = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _cfg(first_conv: str, classifier: str) -> dict:
    return {"url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (4, 4), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "first_conv": first_conv,
            "classifier": classifier, "license": "apache-2.0"}


DM_WRN_SIZES = ((28, 10), (34, 10), (34, 20), (70, 16), (82, 8), (94, 16), (106, 16))

default_cfgs = generate_default_cfgs({
    **{f"dm_wrn{d}_{w}_cifar.untrained": _cfg("init_conv", "logits") for d, w in DM_WRN_SIZES},
    "dm_preact_resnet18_cifar.untrained": _cfg("conv_2d", "logits"),
    "preact_resnet18_wong_cifar.untrained": _cfg("conv1", "linear"),
    "resnet18_cifar.untrained": _cfg("conv1", "linear"),
    "resnet50_cifar.untrained": _cfg("conv1", "linear"),
})


def _build(cls, name: str, pretrained: bool, **kwargs):
    return build_model_with_cfg(cls, name, pretrained, **kwargs)


def _dm_wrn(depth: int, width: int):
    name = f"dm_wrn{depth}_{width}_cifar"

    def factory(pretrained: bool = False, **kwargs) -> DMWideResNet:
        return _build(DMWideResNet, name, pretrained, depth=depth, width=width, **kwargs)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"DeepMind WideResNet-{depth}-{width} for CIFAR (act_layer swish, silu or relu)."
    factory.__module__ = __name__
    globals()[name] = register_model(factory)


for _d, _w in DM_WRN_SIZES:
    _dm_wrn(_d, _w)


@register_model
def dm_preact_resnet18_cifar(pretrained: bool = False, **kwargs) -> DMPreActResNet:
    """DeepMind PreAct-ResNet-18 for CIFAR (Rebuffi et al. 2021; act_layer swish, silu or relu)."""
    return _build(DMPreActResNet, "dm_preact_resnet18_cifar", pretrained, **kwargs)


@register_model
def preact_resnet18_wong_cifar(pretrained: bool = False, **kwargs) -> PreActResNetWong:
    """PreAct-ResNet-18 as in Wong et al. 2020 (no BN before the head)."""
    return _build(PreActResNetWong, "preact_resnet18_wong_cifar", pretrained, layers=(2, 2, 2, 2), **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> ResNetCifar:
    """The standard CIFAR ResNet-18 (3x3 stem, no max-pool)."""
    return _build(ResNetCifar, "resnet18_cifar", pretrained, layers=(2, 2, 2, 2), **kwargs)


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs) -> ResNetCifar:
    """The standard CIFAR ResNet-50 (3x3 stem, no max-pool; Engstrom et al. 2019's robustness library)."""
    return _build(ResNetCifar, "resnet50_cifar", pretrained, layers=(3, 4, 6, 3), bottleneck=True, **kwargs)
