"""Transforms that end in float [0,1] tensors (timm's `normalize=False` path yields uint8 0-255)."""

from timm.data.transforms import str_to_interp_mode
from torchvision import transforms as T

__all__ = ["create_pixel_transform", "resolve_input_size"]


def resolve_input_size(pretrained_cfg: dict, input_size=None, in_chans: int | None = None) -> tuple[int, int, int]:
    """(C, H, W) the data transforms produce: --input-size if given, else the model's pretrained_cfg size (with
    --in-chans channels)."""
    if input_size:
        return tuple(int(v) for v in input_size)
    size = tuple(pretrained_cfg.get("input_size", (3, 224, 224)))
    return size if in_chans is None else (in_chans,) + size[1:]


def create_pixel_transform(
        input_size: tuple[int, int, int],
        is_training: bool,
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
) -> T.Compose:
    """Resize/crop like timm's eval transform (plus flip/crop aug for training), then ToTensor in [0,1]."""
    chans, h, w = input_size
    interp = str_to_interp_mode(interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear")
    mode = [T.Grayscale(num_output_channels=1)] if chans == 1 else [T.Lambda(lambda im: im.convert("RGB"))]
    scale = round(min(h, w) / crop_pct)
    if is_training and min(h, w) > 32:  # ImageNet-scale: timm's standard RandomResizedCrop + flip
        geo = [T.RandomResizedCrop((h, w), interpolation=interp), T.RandomHorizontalFlip()]
    else:  # small images (MNIST/CIFAR-size): deterministic resize + centre crop; no aug by default
        geo = [T.Resize(scale, interpolation=interp), T.CenterCrop((h, w))]
    return T.Compose(mode + geo + [T.ToTensor()])
