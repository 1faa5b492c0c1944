"""A RobustBench zoo module as a timm architecture: which one, with which weights, checked logit for logit."""
import re
from dataclasses import dataclass, field

import timm
import torch
from torch import nn

from ..models.hub import HubError
from ..models.zoo_package import LOGIT_TOL
from .usage import is_timm_native

__all__ = ["ZooMapping", "ZooUnsupported", "create_mapped", "map_to_timm", "verify"]

class ZooUnsupported(HubError):
    """The zoo module has no timm architecture here; `kind` says why (custom, ensemble, ...)."""

    def __init__(self, msg: str, kind: str = "custom module"):
        super().__init__(msg)
        self.kind = kind


@dataclass
class ZooMapping:
    """A zoo module as a timm architecture: what to create and which weights it takes."""
    arch: str
    state_dict: dict[str, torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_kwargs: dict = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


_WRN_CLASSES = {"WideResNet": None, "Rice2020OverfittingNet": "mu", "Chen2020EfficientNet": "mu",
                "Augustin2020AdversarialWideNet": "mu", "Hendrycks2019UsingNet": ((0.5,) * 3, (0.5,) * 3)}
_PREACT_CLASSES = {"PreActResNet": None, "Wong2020FastNet": "mu"}
_RESNET_CLASSES = {"ResNet": None, "Engstrom2019RobustnessNet": "mu", "Augustin2020AdversarialNet": "mu"}
_ACT_NAMES = {"Swish": "swish", "SiLU": "silu", "ReLU": "relu"}
# robustbench's XCiT-S12/M12/L12 (12 blocks, eta 1, tokens_norm): timm's xcit_small_12_p16_224, with the width and
# heads of M12 / L12 as model args (timm has no 12-block medium/large config; plain timm rebuilds it from config.json)
_ROBUSTBENCH_XCIT = {"debenedetti2022light_xcit_s12_imagenet_linf": ("xcit_small_12_p16_224", {}),
                     "debenedetti2022light_xcit_m12_imagenet_linf": ("xcit_small_12_p16_224",
                                                                     {"embed_dim": 512, "num_heads": 8}),
                     "debenedetti2022light_xcit_l12_imagenet_linf": ("xcit_small_12_p16_224",
                                                                     {"embed_dim": 768, "num_heads": 16})}


def _vals(t: torch.Tensor) -> tuple[float, ...]:
    if t.is_meta:  # a structural check (`coverage(structural=True)`): no values
        return (float("nan"),) * t.numel()
    return tuple(float(v) for v in t.detach().float().flatten())


def _norm(module: nn.Module, how) -> tuple[tuple, tuple]:
    if how == "mu":
        return _vals(module.mu), _vals(module.sigma)
    if isinstance(how, tuple):
        return how
    return (0.0,) * 3, (1.0,) * 3


def _rb_module(module: nn.Module, table: dict) -> bool:
    mod = type(module).__module__  # the zoo's resnet.py / wide_resnet.py classes (robust_resnet.py reuses names)
    zoo = "robustbench.model_zoo."
    return type(module).__name__ in table and (mod.startswith((f"{zoo}architectures.resnet",
                                                               f"{zoo}architectures.wide_resnet",
                                                               f"{zoo}architectures.boosting"))
                                               or mod in (f"{zoo}cifar10", f"{zoo}cifar100"))


def _wrn(module, how) -> ZooMapping:
    blocks = module.block1.layer
    n, width = len(blocks), blocks[0].conv2.out_channels // 16
    if module.fc.bias is None:
        raise ZooUnsupported("WideResNet without a bias in its last layer (no timm architecture here)")
    arch = f"wrn{6 * n + 4}_{width}_cifar"
    if not timm.is_model(arch):
        raise ZooUnsupported(f"WideResNet-{6 * n + 4}-{width}: no registered architecture {arch}", "architecture")
    sd, out, dropped = module.state_dict(), {}, []
    for k, v in sd.items():
        if k in ("mu", "sigma") or k.startswith("sub_block1."):  # sub_block1: in the checkpoints, never run
            dropped.append(k)
            continue
        m = re.match(r"block(\d)\.layer\.(\d+)\.(.*)$", k)
        if m:
            k = f"stages.{int(m[1]) - 1}.{m[2]}.{m[3].replace('convShortcut', 'shortcut')}"
        elif k.startswith("bn1."):
            k = "bn." + k[len("bn1."):]
        elif k.startswith("fc."):
            k = "head." + k[len("fc."):]
        out[k] = v
    mean, std = _norm(module, how)
    return ZooMapping(arch, out, mean, std, dropped=dropped)


def _act_of(module: nn.Module) -> str:
    name = type(module.relu).__name__
    if name not in _ACT_NAMES:
        raise ZooUnsupported(f"activation {name} has no counterpart here", "architecture")
    return _ACT_NAMES[name]


def _torchvision_resnet(inner: nn.Module) -> str:
    from torchvision.models.resnet import BasicBlock, Bottleneck
    layers = tuple(len(getattr(inner, f"layer{i}")) for i in range(1, 5))
    block = type(inner.layer1[0])
    width = inner.layer1[0].conv1.out_channels if block is Bottleneck else 64
    arch = {(BasicBlock, (2, 2, 2, 2), 64): "resnet18", (BasicBlock, (3, 4, 6, 3), 64): "resnet34",
            (Bottleneck, (3, 4, 6, 3), 64): "resnet50", (Bottleneck, (3, 4, 23, 3), 64): "resnet101",
            (Bottleneck, (3, 4, 6, 3), 128): "wide_resnet50_2",
            (Bottleneck, (3, 4, 23, 3), 128): "wide_resnet101_2"}.get((block, layers, width))
    if arch is None:
        raise ZooUnsupported(f"torchvision ResNet {block.__name__} {layers} width {width}: no timm counterpart",
                             "architecture")
    return arch


# Singh et al.'s ConvStem models: (the timm model robustbench starts from, its stem class, the stem's first width)
_CONVSTEM = {("deit_small_patch16_224", "ConvBlock", 48): "vit_small_convstem_patch16_224",
             ("vit_base_patch16_224", "ConvBlock", 48): "vit_base_convstem_patch16_224",
             ("convnext_tiny", "ConvBlock1", 48): "convnext_tiny_convstem",
             ("convnext_small", "ConvBlock1", 48): "convnext_small_convstem",
             ("convnext_base", "ConvBlock3", 64): "convnext_base_convstem",
             ("convnext_large", "ConvBlock3", 96): "convnext_large_convstem"}


def _convstem_arch(inner: nn.Module, architecture: str | None) -> str | None:
    """The registered ConvStem architecture of a timm model whose stem robustbench replaced, or None."""
    stem = getattr(inner, "stem", None) if hasattr(inner, "stages") else \
        getattr(getattr(inner, "patch_embed", None), "proj", None)
    if type(stem).__module__ != "robustbench.model_zoo.architectures.convstem_models":
        return None
    return _CONVSTEM.get((architecture, type(stem).__name__, getattr(stem, "planes", None)))


def _timm_arch(inner: nn.Module) -> tuple[str, dict]:
    cfg = getattr(inner, "pretrained_cfg", None) or {}
    convstem = _convstem_arch(inner, cfg.get("architecture"))
    if convstem:
        return convstem, {}
    patch = getattr(getattr(inner, "patch_embed", None), "patch_size", None)
    if type(inner).__name__ == "Xcit" and patch not in (16, (16, 16), 8, (8, 8)):
        raise ZooUnsupported(f"XCiT with its patch embedding adapted to patch size {patch} (stride-1 convolutions): "
                             f"no timm configuration", "custom module")
    foreign = sorted({type(m).__module__ + "." + type(m).__name__ for m in inner.modules()
                      if not type(m).__module__.startswith(("timm.", "torch."))})
    if foreign:  # e.g. Singh et al.'s ConvStem put in place of the patch embedding / stem of a timm model
        raise ZooUnsupported(f"timm model {cfg.get('architecture')} with custom submodules "
                             f"({', '.join(f.replace('robustbench.model_zoo.architectures.', '') for f in foreign)})")
    arch, kwargs = _ROBUSTBENCH_XCIT.get(cfg.get("architecture"), (cfg.get("architecture"), {}))
    if not arch or not is_timm_native(arch):
        raise ZooUnsupported(f"timm-built module {type(inner).__name__} ({cfg.get('architecture')}) is not one of "
                             f"timm's own configurations", "architecture")
    return arch, kwargs


def map_to_timm(module: nn.Module, dataset: str, name: str) -> ZooMapping:
    """The timm architecture and weights that compute what the zoo module computes (checked by `verify`).

    Raises:
        ZooUnsupported: a module this importer has no timm architecture for (the reason in the message).
    """
    cls = type(module).__name__
    if isinstance(module, nn.Sequential) and hasattr(module, "normalize") and hasattr(module, "model"):
        mean, std = _vals(module.normalize.mean), _vals(module.normalize.std)
        inner = module.model
        prefix = "model."
    else:
        inner, prefix, mean, std = module, "", None, None
    icls = type(inner).__name__
    if _rb_module(inner, _WRN_CLASSES):
        return _wrn(inner, _WRN_CLASSES[icls])
    sd = {k.removeprefix(prefix): v for k, v in module.state_dict().items() if k.startswith(prefix)}
    dropped = sorted(k for k in sd if k in ("mu", "sigma"))
    sd = {k: v for k, v in sd.items() if k not in ("mu", "sigma")}
    if icls == "DMWideResNet" and type(inner).__module__.startswith("robustbench."):
        if inner.padding:
            raise ZooUnsupported("DMWideResNet with input padding: no timm architecture here", "architecture")
        depth = 6 * len(inner.layer[0].block) + 4
        width = inner.layer[0].block[0].conv_0.out_channels // 16
        arch = f"dm_wrn{depth}_{width}_cifar"
        if not timm.is_model(arch):
            raise ZooUnsupported(f"DM WideResNet-{depth}-{width}: no registered architecture {arch}", "architecture")
        return ZooMapping(arch, sd, _vals(inner.mean), _vals(inner.std), {"act_layer": _act_of(inner)}, dropped)
    if icls == "DMPreActResNet" and type(inner).__module__.startswith("robustbench."):
        if inner.padding or len(inner.layer_1) != 2:
            raise ZooUnsupported("DMPreActResNet other than depth 18 without padding", "architecture")
        return ZooMapping("dm_preact_resnet18_cifar", sd, _vals(inner.mean), _vals(inner.std),
                          {"act_layer": _act_of(inner)}, dropped)
    if _rb_module(inner, _PREACT_CLASSES):
        blocks = tuple(len(getattr(inner, f"layer{i}")) for i in range(1, 5))
        if blocks != (2, 2, 2, 2) or inner.bn_before_fc or inner.out_shortcut or \
                type(inner.layer1[0]).__name__ != "PreActBlock":
            raise ZooUnsupported(f"PreActResNet variant ({type(inner.layer1[0]).__name__}, {blocks}, bn_before_fc "
                                 f"{inner.bn_before_fc}): no registered architecture", "architecture")
        return ZooMapping("preact_resnet18_wong_cifar", sd, *_norm(inner, _PREACT_CLASSES[icls]), dropped=dropped)
    if _rb_module(inner, _RESNET_CLASSES):
        blocks = tuple(len(getattr(inner, f"layer{i}")) for i in range(1, 5))
        arch = {("BasicBlock", (2, 2, 2, 2)): "resnet18_cifar", ("Bottleneck", (3, 4, 6, 3)): "resnet50_cifar"}.get(
            (type(inner.layer1[0]).__name__, blocks))
        if arch is None:
            raise ZooUnsupported(f"CIFAR ResNet {type(inner.layer1[0]).__name__} {blocks}: no registered "
                                 f"architecture", "architecture")
        return ZooMapping(arch, sd, *_norm(inner, _RESNET_CLASSES[icls]), dropped=dropped)
    import torchvision
    if type(inner) is torchvision.models.ResNet:
        arch = _torchvision_resnet(inner)
        return ZooMapping(arch, sd, mean or (0.0,) * 3, std or (1.0,) * 3, dropped=dropped)
    if type(inner).__module__.startswith("timm."):
        arch, kwargs = _timm_arch(inner)
        return ZooMapping(arch, sd, mean or (0.0,) * 3, std or (1.0,) * 3, kwargs, dropped)
    where = type(inner).__module__.replace("robustbench.model_zoo.architectures.", "")
    raise ZooUnsupported(f"custom module {where}.{type(inner).__name__ if inner is not module else cls} "
                         f"(no timm architecture)")


def create_mapped(mapping: ZooMapping, num_classes: int) -> nn.Module:
    """The timm model of a mapping with its weights (strict load).

    Raises:
        HubError: the weights do not fit the architecture (the key map is wrong or missing).
    """
    from ..checkpoint import mismatch
    model = timm.create_model(mapping.arch, num_classes=num_classes, **mapping.model_kwargs)
    detail = mismatch(model.state_dict(), mapping.state_dict)
    if detail:
        raise ZooUnsupported(f"key map onto {mapping.arch} incomplete: {detail}", "key map")
    model.load_state_dict(mapping.state_dict, strict=True)
    return model.eval()


def verify(zoo: nn.Module, model: nn.Module, mean, std, input_size, n: int = 4, seed: int = 0) -> dict:
    """The zoo module's logits on seeded uniform [0, 1] pixels against the timm model's on the same pixels
    normalised with (mean, std); returns max |Δlogit| and the logits' scale.

    Raises:
        HubError: some |Δlogit| > LOGIT_TOL * (1 + |logit|) (the import is refused).
    """
    x = torch.rand(n, *input_size, generator=torch.Generator().manual_seed(seed))
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        theirs, ours = zoo(x), model((x - m) / s)
    if theirs.shape != ours.shape:
        raise HubError(f"logit shapes differ: zoo module {tuple(theirs.shape)}, timm model {tuple(ours.shape)}")
    diff = (ours - theirs).abs().max().item()
    out = {"n": n, "input_size": list(input_size), "max_abs_diff": diff, "max_abs_logit": theirs.abs().max().item(),
           "exact": bool(torch.equal(ours, theirs)), "tolerance": LOGIT_TOL}
    if not torch.allclose(ours, theirs, rtol=LOGIT_TOL, atol=LOGIT_TOL):
        raise HubError(f"the timm model's logits differ from the zoo module's by {diff:.3g} (> {LOGIT_TOL:g} x (1 + "
                       f"|logit|); logits up to {out['max_abs_logit']:.3g}): import refused")
    return out


# ---------------------------------------------------------------- preprocessing

_PREPROCESSING = {  # robustbench.data.PREPROCESSINGS as timm data configs
    None: {"crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "center"},
    "Res256Crop224": {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear",
                      "crop_mode": "center"},
    "BicubicRes256Crop224": {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic",
                             "crop_mode": "center"},
    "Res224": {"input_size": (3, 224, 224), "crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "squash"},
    # RobustBench crops 288 px without resizing first; timm's data config has no such mode: the nearest is a
    # resize of the short side to 288 then the crop (the card says so)
    "Crop288": {"input_size": (3, 288, 288), "crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "center"},
}
