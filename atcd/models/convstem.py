"""Singh et al. 2023's ConvStem models (RobustBench's ImageNet `Singh2023Revisiting_*`), registered with timm.

A timm ConvNeXt or ViT whose patchify stem is replaced by a stack of 3x3 convolutions, each followed by a
channels-first LayerNorm and GELU (a final 1x1 projection for the ViTs). Module names follow the zoo's own code
(`robustbench.model_zoo.architectures.convstem_models`), so a zoo checkpoint loads with no key map: `stem.stem.*`
(ConvNeXt) and `patch_embed.proj.stem.*` (ViT). Normalisation is not inside the network (it lives in
`pretrained_cfg` / `NormalizedModel`).

* `vit_small_convstem_patch16_224`, `vit_base_convstem_patch16_224`: ViT-S (DeiT-S) / ViT-B, stem widths 48-384.
* `convnext_{tiny,small}_convstem`: stem 48, 96 (two stride-2 convolutions).
* `convnext_{base,large}_convstem`: stem 64, 96, 128 / 96, 144, 192 (stride 2, 2, 1).
"""
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt
from timm.models.vision_transformer import VisionTransformer
from torch import nn

__all__ = ["ConvStem", "ConvStemConvNeXt", "ConvStemViT"]


class LayerNormChannelsFirst(nn.Module):
    """LayerNorm over the channels of an NCHW tensor, computed as the zoo's code does (bit-equal logits)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvStem(nn.Module):
    """3x3 convolutions of the given widths and strides, each followed by LayerNorm and GELU, then an optional 1x1
    projection to `out_dim` (the ViT stems)."""

    def __init__(self, widths: tuple[int, ...], strides: tuple[int, ...], out_dim: int | None = None,
                 in_chans: int = 3):
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"ConvStem: {len(widths)} widths but {len(strides)} strides")
        layers, prev = [], in_chans
        for w, s in zip(widths, strides):
            layers += [nn.Conv2d(prev, w, kernel_size=3, stride=s, padding=1), LayerNormChannelsFirst(w), nn.GELU()]
            prev = w
        if out_dim is not None:
            layers.append(nn.Conv2d(prev, out_dim, kernel_size=1))
        self.stem = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


class ConvStemConvNeXt(ConvNeXt):
    """timm's ConvNeXt with a ConvStem in place of its 4x4 patchify stem."""

    def __init__(self, stem_widths: tuple[int, ...], stem_strides: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        if stem_widths[-1] != self.stages[0].blocks[0].conv_dw.in_channels:
            raise ValueError(f"ConvStem width {stem_widths[-1]} does not feed the first stage")
        self.stem = ConvStem(tuple(stem_widths), tuple(stem_strides), in_chans=kwargs.get("in_chans", 3))


class ConvStemViT(VisionTransformer):
    """timm's VisionTransformer whose patch embedding projection is a ConvStem (four stride-2 3x3 convolutions and
    a 1x1 projection to the embedding width: the 16x16 patch grid of the original)."""

    def __init__(self, stem_widths: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        if self.patch_embed.patch_size != (16, 16) or len(stem_widths) != 4:
            raise ValueError("ConvStemViT: patch size 16 and four stride-2 stem convolutions")
        self.patch_embed.proj = ConvStem(tuple(stem_widths), (2, 2, 2, 2), out_dim=self.embed_dim,
                                         in_chans=kwargs.get("in_chans", 3))


def _cfg(first_conv: str, classifier: str) -> dict:
    return {"num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.875,
            "crop_mode": "center", "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "first_conv": first_conv, "classifier": classifier,
            "license": "see the checkpoint's source"}


_VIT = {"vit_small_convstem_patch16_224": {"embed_dim": 384, "depth": 12, "num_heads": 6},
        "vit_base_convstem_patch16_224": {"embed_dim": 768, "depth": 12, "num_heads": 12}}
_CONVNEXT = {"convnext_tiny_convstem": ({"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768)}, (48, 96), (2, 2)),
             "convnext_small_convstem": ({"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768)}, (48, 96), (2, 2)),
             "convnext_base_convstem": ({"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024)}, (64, 96, 128),
                                        (2, 2, 1)),
             "convnext_large_convstem": ({"depths": (3, 3, 27, 3), "dims": (192, 384, 768, 1536)}, (96, 144, 192),
                                         (2, 2, 1))}

default_cfgs = generate_default_cfgs({
    **{f"{n}.untrained": _cfg("patch_embed.proj.stem.0", "head") for n in _VIT},
    **{f"{n}.untrained": _cfg("stem.stem.0", "head.fc") for n in _CONVNEXT},
})


def _register(name: str, cls: type, doc: str, **fixed):
    def factory(pretrained: bool = False, **kwargs) -> nn.Module:
        return build_model_with_cfg(cls, name, pretrained, **{**fixed, **kwargs})
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    factory.__module__ = __name__
    globals()[name] = register_model(factory)


for _n, _args in _VIT.items():
    _register(_n, ConvStemViT, f"{_n}: ViT ({_args['embed_dim']} wide) with Singh et al.'s ConvStem.",
              patch_size=16, stem_widths=(48, 96, 192, 384), **_args)
for _n, (_args, _w, _s) in _CONVNEXT.items():
    _register(_n, ConvStemConvNeXt, f"{_n}: ConvNeXt with Singh et al.'s ConvStem ({', '.join(map(str, _w))}).",
              stem_widths=_w, stem_strides=_s, **_args)
