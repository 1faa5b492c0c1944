#!/usr/bin/env python3
"""Is the data or the model the bottleneck? Images/s of the shard loader vs the folder loader, and of a training step.

Both loaders read the same images (mnist-mini exported as PNG files, and the same files packed into shards) through
the same transform, for N batches after a warm-up batch, with 0 and 2 loader workers. The model side times a plain
forward+backward+update of the demo model; one ATCD minibatch costs T*K input-gradient passes + T weight passes +
T M-H forwards, which this script counts as T*K+2T forward+backward passes (an upper bound: a M-H forward is cheaper).

    python scripts/bench_data.py                      # defaults: 20 batches of 128, workers 0 and 2, ~30-60 s
    python scripts/bench_data.py --batches 5 --workers 0

Prints a table, then one JSON line.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from atcd.data import create_atcd_dataset, create_atcd_loader, create_wds_loader
from atcd.data.shards import write_dataset_shards
from atcd.models import build_model


def _prepare(work_dir: str) -> tuple[str, str]:
    """mnist-mini as an image folder and as shards of the same files (reused when already there)."""
    from export_dataset import export_mnist_mini
    folder, shards = os.path.join(work_dir, "folder"), os.path.join(work_dir, "shards")
    if not os.path.isdir(os.path.join(folder, "train")):
        export_mnist_mini(folder, progress=False)
    if not os.path.exists(os.path.join(shards, "_info.json")):
        write_dataset_shards("folder", shards, splits=("train",), data_dir=folder, shard_size=500, seed=0)
    return folder, shards


def _images_per_s(loader, batches: int) -> float:
    it = iter(loader)
    next(it)  # warm-up: worker start-up and the first shard open are not throughput
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)[:2]
        n += len(x)
    return n / (time.perf_counter() - t0)


def _step_images_per_s(model_name: str, batch_size: int, steps: int, input_size) -> float:
    """Images/s of plain forward+backward+SGD update steps on random [0,1] input."""
    torch.manual_seed(0)
    model = build_model(model_name).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(batch_size, *input_size), torch.randint(0, 10, (batch_size,))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=20, help="timed batches per loader (after one warm-up batch)")
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("--workers", default="0,2", help="comma list of loader worker counts")
    p.add_argument("--model", default="smallcnn_mnist")
    p.add_argument("--train-steps", type=int, default=10, help="timed training steps")
    p.add_argument("--atcd-T", dest="atcd_T", type=int, default=4, help="T: replays per minibatch")
    p.add_argument("--atcd-K", dest="atcd_K", type=int, default=2, help="K: transitions per trajectory")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "atcd-bench-data"),
                   help="where the exported folder and shards are kept (reused between runs)")
    a = p.parse_args(argv)
    workers = [int(w) for w in a.workers.split(",") if w.strip()]
    input_size = (1, 28, 28)
    t_start = time.time()
    folder, shards = _prepare(a.work_dir)
    need = (a.batches + 1) * a.batch_size

    loader_ips = {}
    for nw in workers:
        ds = create_atcd_dataset("folder", "train", data_dir=folder, input_size=input_size, is_training=True)
        loader_ips[f"folder_w{nw}"] = _images_per_s(create_atcd_loader(ds, a.batch_size, True, num_workers=nw),
                                                    a.batches)
        wl = create_wds_loader(shards, "train", a.batch_size, True, num_workers=nw, input_size=input_size,
                               samples_per_epoch=max(need, 4000))
        loader_ips[f"wds_w{nw}"] = _images_per_s(wl, a.batches)

    passes = a.atcd_T * a.atcd_K + 2 * a.atcd_T
    std = _step_images_per_s(a.model, a.batch_size, a.train_steps, input_size)
    model_ips = {"standard": std, f"atcd_T{a.atcd_T}_K{a.atcd_K}_est": std / passes}
    best_wds = max(v for k, v in loader_ips.items() if k.startswith("wds"))

    print(f"{'what':<28}{'images/s':>12}")
    for k, v in loader_ips.items():
        print(f"{'loader ' + k:<28}{v:>12.0f}")
    print(f"{'train step standard':<28}{std:>12.0f}")
    print(f"{'train step ATCD (est.)':<28}{std / passes:>12.0f}   = standard / {passes} passes "
          f"(T*K + T weight + T M-H, T={a.atcd_T}, K={a.atcd_K})")
    verdict = {}
    for k, v in model_ips.items():
        verdict[k] = "data" if best_wds < v else "model"
        print(f"bottleneck for {k}: {verdict[k]} (best shard loader {best_wds:.0f} img/s vs step {v:.0f} img/s)")
    atcd_key = f"atcd_T{a.atcd_T}_K{a.atcd_K}_est"
    print(json.dumps({"loader_images_per_s": {k: round(v, 1) for k, v in loader_ips.items()},
                      "model_images_per_s": {k: round(v, 1) for k, v in model_ips.items()},
                      "atcd_passes_per_minibatch": passes, "batch_size": a.batch_size, "model": a.model,
                      "torch_threads": torch.get_num_threads(), "bottleneck_by_method": verdict,
                      "bottleneck": verdict[atcd_key], "seconds": round(time.time() - t_start, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
