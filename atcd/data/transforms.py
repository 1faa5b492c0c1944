"""Image transforms of image folders and shards, built by timm and ending in float [0,1] tensors.

timm's `create_transform` is called with mean 0 and std 1: normalisation lives in the model wrapper
(`atcd.models.NormalizedModel`), so attacks and eps work in pixel space (timm's `normalize=False` would give uint8).

The rule (docs/train.md, Data): built-in datasets are tensors served as they are. Image folders and shards are read through
timm's eval transform (resize, centre crop by `crop_pct`) and, for training, augmented unless `no_aug`:
  - images of at most 32 px: random crop with zero padding of 1/8 of the size (4 at 32 px) and a horizontal flip,
    the CIFAR adversarial-training recipe. timm has no pad-crop, so torchvision's `RandomCrop` follows timm's resize;
    their eval crop defaults to the whole image (`crop_pct` 1.0);
  - larger images: timm's `RandomResizedCrop` (`scale`, `ratio`) and flip, without colour jitter.
`hflip` (default 0.5), `scale`, `ratio` are timm's. 1-channel input (digits) is trained unaugmented, as the MNIST
references (and a mirrored digit is another symbol). Training draws are a function of (seed, epoch, sample)
(`Reseeded`), so a resumed run, any loader worker count and any rank see the same augmented images.
"""
import hashlib
import random

import torch
from timm.data import create_transform
from timm.data import resolve_data_config as timm_resolve_data_config
from torchvision import transforms as T

from ..errors import ConfigError

__all__ = ["SMALL_IMAGE", "Reseeded", "check_transform_options", "create_pixel_transform", "resolve_data_config",
           "resolve_input_size", "transform_kwargs"]

SMALL_IMAGE = 32  # at most this many pixels a side: pad-crop training, whole-image evaluation
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")
_RESIZE_FLAGS = ("input_size", "img_size", "crop_pct", "interpolation")
_AUG_FLAGS = ("hflip", "scale", "ratio", "no_aug")


def resolve_data_config(pretrained_cfg: dict, input_size=None, img_size: int | None = None,
                        in_chans: int | None = None, crop_pct: float | None = None,
                        interpolation: str | None = None) -> dict:
    """timm's `resolve_data_config` over the flags: {input_size, interpolation, crop_pct, crop_mode, mean, std}.

    Differences from timm: `in_chans` replaces the pretrained size's channels (timm keeps them), and images of at
    most `SMALL_IMAGE` px are evaluated whole (`crop_pct` 1.0) unless `crop_pct` is given. mean/std are the
    model's business (`atcd.models.build_model`), not the transforms'.
    """
    chans = in_chans or pretrained_cfg.get("input_size", (3,))[0]
    args = {"input_size": tuple(input_size) if input_size else None, "img_size": img_size, "in_chans": chans,
            "crop_pct": crop_pct, "interpolation": interpolation}
    dc = timm_resolve_data_config(args, pretrained_cfg=pretrained_cfg)
    dc["input_size"] = tuple(int(v) for v in dc["input_size"])
    if not input_size:
        dc["input_size"] = (chans,) + dc["input_size"][1:]
    if not crop_pct and min(dc["input_size"][1:]) <= SMALL_IMAGE:
        dc["crop_pct"] = 1.0
    return dc


def resolve_input_size(pretrained_cfg: dict, input_size=None, in_chans: int | None = None,
                       img_size: int | None = None) -> tuple[int, int, int]:
    """(C, H, W) the transforms produce: --input-size, else --img-size, else the model's pretrained size (with
    --in-chans channels)."""
    return resolve_data_config(pretrained_cfg, input_size, img_size, in_chans)["input_size"]


def transform_kwargs(cfg, pretrained_cfg: dict, is_training: bool = False) -> dict:
    """The keyword arguments of `create_atcd_dataset` / `create_wds_loader` that a run's options give: the resolved
    size, interpolation and crop, plus (training) the augmentation flags."""
    dc = resolve_data_config(pretrained_cfg, cfg.input_size, getattr(cfg, "img_size", None), cfg.in_chans,
                             getattr(cfg, "crop_pct", None), getattr(cfg, "interpolation", None))
    kw = {"input_size": dc["input_size"], "interpolation": dc["interpolation"], "crop_pct": dc["crop_pct"]}
    if is_training:
        kw.update({k: getattr(cfg, k) for k in _AUG_FLAGS})
    return kw


def check_transform_options(cfg, builtin: list[str]) -> None:
    """One-line `ConfigError`s for transform flags that cannot apply: any of them on a built-in dataset (served as
    it is, so they would be ignored), and --input-size with --img-size."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    values = {n: getattr(cfg, n, None) for n in _RESIZE_FLAGS + _AUG_FLAGS}
    given = [n for n, v in values.items() if v is not None and v is not False]  # `--hflip 0` is given
    if given and cfg.dataset in builtin:
        verb = "augments" if given[0] in _AUG_FLAGS else "resizes"
        raise ConfigError(f"{flag(given[0])} {verb} image folders and shards; the built-in {cfg.dataset} is served "
                          f"at its own size, unaugmented (export it with scripts/export_dataset.py to use it)")
    if cfg.input_size and getattr(cfg, "img_size", None):
        raise ConfigError("--input-size and --img-size both set the image size: give one")
    for name in ("scale", "ratio"):
        v = getattr(cfg, name, None)
        if v is not None and not 0 < v[0] <= v[1]:
            raise ConfigError(f"{flag(name)} must be LOW HIGH with 0 < LOW <= HIGH (got {' '.join(map(str, v))})")


def _to_rgb(img):
    return img.convert("RGB")


def create_pixel_transform(
        input_size: tuple[int, int, int],
        is_training: bool,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
        *,
        no_aug: bool = False,
        hflip: float | None = None,
        scale: tuple[float, float] | None = None,
        ratio: tuple[float, float] | None = None,
        seed: int | None = None,
) -> "T.Compose | Reseeded":
    """PIL image -> float [0,1] CHW tensor of `input_size`, by timm's `create_transform` (module docstring: the rule).

    Args:
        input_size: (C, H, W); C = 1 converts to grayscale.
        is_training: the training transform (augmented unless `no_aug`).
        interpolation: resize interpolation (timm's names).
        crop_pct: evaluation centre-crop fraction (timm: resize to size / crop_pct, then crop).
        no_aug: training without augmentation: timm's resize + centre crop to the size (always for 1 channel).
        hflip: flip probability (None: 0.5).
        scale, ratio: RandomResizedCrop's area and aspect ranges (images above `SMALL_IMAGE` px); None: timm's.
        seed: an augmenting transform comes wrapped in `Reseeded(transform, seed)`: call it with (img, epoch, id).

    Raises:
        ConfigError: `hflip` > 0, `scale` or `ratio` for 1-channel input (which is not augmented).
    """
    chans, h, w = (int(v) for v in input_size)
    mode = [T.Grayscale(num_output_channels=1)] if chans == 1 else [T.Lambda(_to_rgb)]
    if chans == 1 and is_training and not no_aug:
        asked = [f for f, v in (("--hflip", (hflip or 0) > 0), ("--scale", scale), ("--ratio", ratio)) if v]
        if asked:
            raise ConfigError(f"{asked[0]}: 1-channel (digit) input is trained unaugmented; augmentation applies to "
                              f"colour input")
        no_aug = True
    hflip = 0.5 if hflip is None else hflip
    small = min(h, w) <= SMALL_IMAGE
    common = {"input_size": (chans, h, w), "interpolation": interpolation, "mean": (0.0,) * chans,
              "std": (1.0,) * chans}
    if is_training and not no_aug and not small:  # timm's ImageNet training transform, no colour jitter
        tf = create_transform(**common, is_training=True, scale=scale, ratio=ratio, hflip=hflip, color_jitter=None)
    elif is_training and not no_aug:  # timm's resize to the size, then pad-crop + flip before its ToTensor/Normalize
        tf = create_transform(**common, is_training=False, crop_pct=1.0)
        aug = [T.RandomCrop((h, w), padding=max(1, min(h, w) // 8))]
        aug += [T.RandomHorizontalFlip(hflip)] if hflip > 0 else []
        tf = T.Compose(tf.transforms[:-2] + aug + tf.transforms[-2:])
    else:  # evaluation (resize, centre crop by crop_pct) or --no-aug training (timm's: resize, centre crop to size)
        tf = create_transform(**common, is_training=is_training, no_aug=no_aug, crop_pct=crop_pct)
    tf = T.Compose(mode + tf.transforms)
    return Reseeded(tf, seed) if seed is not None and is_training and not no_aug else tf


def _sample_seed(*parts) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


class Reseeded:
    """A random transform whose draws are a function of (seed, epoch, sample id), not of the process's RNG.

    The CPU torch generator and Python's `random` (timm's RandomResizedCrop draws from it) are seeded for the call
    and then put back, so the rest of the program draws what it would have drawn without augmentation.
    """

    def __init__(self, transform, seed: int):
        self.transform, self.seed = transform, seed

    def __call__(self, img, epoch: int, sample_id):
        s = _sample_seed(self.seed, epoch, sample_id)
        gen = torch.default_generator
        torch_state, py_state = gen.get_state(), random.getstate()
        gen.manual_seed(s)
        random.seed(s)
        try:
            return self.transform(img)
        finally:
            gen.set_state(torch_state)
            random.setstate(py_state)

    def __repr__(self) -> str:
        return f"Reseeded(seed={self.seed}, {self.transform!r})"
