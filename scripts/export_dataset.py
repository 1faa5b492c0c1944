#!/usr/bin/env python3
"""Write a built-in dataset (mnist-mini) out as an image folder: OUT/{train,val}/<class>/<idx>.png.

    python scripts/export_dataset.py mnist-mini data/mnist-mini-folder
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from atcd.data.mnist_mini import CLASS_NAMES, load_mnist_mini


def export_mnist_mini(out_dir: str, progress: bool = True) -> dict:
    counts = {}
    for split, src in (("train", "train"), ("val", "test")):
        images, labels = load_mnist_mini(src)
        for c in CLASS_NAMES:
            os.makedirs(os.path.join(out_dir, split, c), exist_ok=True)
        for i, (im, lab) in enumerate(tqdm(list(zip(images, labels)), desc=split, disable=not progress)):
            path = os.path.join(out_dir, split, CLASS_NAMES[lab], f"{i:05d}.png")
            tmp = path + ".tmp"
            Image.fromarray(np.asarray(im, dtype=np.uint8), mode="L").save(tmp, format="PNG")
            os.replace(tmp, path)
        counts[split] = len(labels)
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["mnist-mini"])
    p.add_argument("out_dir")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    counts = export_mnist_mini(a.out_dir, progress=not a.no_progress)
    print(f"wrote {counts} images under {a.out_dir}")


if __name__ == "__main__":
    main()
