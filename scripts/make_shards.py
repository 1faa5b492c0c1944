#!/usr/bin/env python3
"""Write a dataset as WebDataset tar shards + `_info.json` (readable by `--dataset wds` and timm's `wds/` reader).

    python scripts/make_shards.py --source mnist-mini --out data/mnist-mini-wds --shard-size 1000
    python scripts/make_shards.py --source folder --data-dir data/imagenet --out data/imagenet-wds --shard-size 1250
    python scripts/make_shards.py --source torchvision:CIFAR10 --data-dir ~/data --out data/cifar10-wds

The layout of the published timm/imagenet-1k-wds shards from an ImageNet folder (train/ and val/ class folders):
1,024 train shards `imagenet1k-train-{0000..1023}.tar`, 64 `imagenet1k-validation-{00..63}.tar`, `__key__` = the
file stem (n01440764_10026), members jpg (the file's bytes), cls and json; both calls write into one _info.json:

    python scripts/make_shards.py --source folder --data-dir IMAGENET_ROOT --out data/imagenet-wds \
        --name imagenet1k --key filename --shard-digits auto --splits train --shard-size 1252
    python scripts/make_shards.py --source folder --data-dir IMAGENET_ROOT --out data/imagenet-wds \
        --name imagenet1k --key filename --shard-digits auto --splits validation --shard-size 782

The last line printed is one JSON object: {"out": ..., "splits": {split: {"num_samples", "shards"}}, "skipped":
{split: unreadable images left out}, "seconds"}. With the default `--image-format keep` files are copied unread, so
a corrupt one is only found (skipped and counted, or an error under --strict-data) when the shards are read.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from atcd.data.factory import DataError
from atcd.data.shards import write_dataset_shards


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="mnist-mini", help="mnist-mini, folder, or torchvision:NAME (already on disk)")
    p.add_argument("--data-dir", default=None, help="image-folder root (train/, val/ class folders) or torchvision root")
    p.add_argument("--out", required=True, help="output directory for the shards and _info.json")
    p.add_argument("--name", default=None, help="dataset name / shard prefix (default: from the source)")
    p.add_argument("--splits", default="train,val", help="comma list of splits")
    p.add_argument("--shard-size", type=int, default=10000, help="max samples per shard")
    p.add_argument("--max-count", type=int, default=None, help="per split: an evenly strided subset of this many")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed for training splits (eval splits keep order)")
    p.add_argument("--no-shuffle", action="store_true", help="write training splits in source order too")
    p.add_argument("--image-format", default="keep", choices=["keep", "png", "jpg"],
                   help="keep: copy image files as they are (arrays become PNG); png/jpg: re-encode")
    p.add_argument("--key", default="index", choices=["index", "filename"],
                   help="sample __key__: zero-padded source index, or the file stem plus a json member (folders)")
    p.add_argument("--shard-digits", default="6", help="digits of the shard index in file names, or 'auto'")
    p.add_argument("--strict-data", action="store_true",
                   help="an unreadable image is an error instead of being skipped (only re-encoding reads images)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        info = write_dataset_shards(
            a.source, a.out, splits=[s.strip() for s in a.splits.split(",") if s.strip()], data_dir=a.data_dir,
            name=a.name, shard_size=a.shard_size, max_count=a.max_count, seed=None if a.no_shuffle else a.seed,
            image_format=a.image_format, progress=not a.no_progress, key=a.key, shard_digits=a.shard_digits,
            strict=a.strict_data)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    splits = {k: {"num_samples": v["num_samples"], "shards": len(v["filenames"])} for k, v in info["splits"].items()}
    skipped = {k: v.get("num_skipped", 0) for k, v in info["splits"].items()}
    print(json.dumps({"out": a.out, "name": info["name"], "num_classes": info["num_classes"], "splits": splits,
                      "skipped": skipped, "seconds": round(time.time() - t0, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
