#!/usr/bin/env python3
"""Trajectory shift (the paper's Definition 5.1 / Fig. 1) per layer, at several points of training.

    python train_atcd.py -c recipes/mnist_atcd.yaml --checkpoint-keep 100 --output output --experiment ts
    python scripts/trajectory_shift.py --model smallcnn_mnist --run-dir output/ts --k 2 --k2 10 --out output/ts/shift

Each checkpoint (`--checkpoints a.safetensors,b.safetensors` or every `checkpoint-*/model.safetensors` of
`--run-dir`, plus its final `model.safetensors`) is one point of training. Writes trajectory_shift.csv
(checkpoint, layer, l2, cosine, norms) and trajectory_shift.png (L2 distance and cosine per layer, one line per
checkpoint), and prints a final RESULT line.
"""
import argparse
import csv
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _checkpoints(args) -> list[str]:
    if args.checkpoints:
        return [c for c in args.checkpoints.split(",") if c]
    found = sorted(glob.glob(os.path.join(args.run_dir, "checkpoint-*", "model.safetensors")))
    final = os.path.join(args.run_dir, "model.safetensors")
    return found + ([final] if os.path.isfile(final) else [])


def _label(path: str) -> str:
    """checkpoint-0003/model.safetensors -> checkpoint-0003; RUN/model.safetensors -> final; else the file name."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if os.path.basename(path) == "model.safetensors":
        return parent if parent.startswith("checkpoint-") else "final"
    return os.path.basename(path)


def plot(rows: list[dict], path: str, k: int, k2: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ck in dict.fromkeys(r["checkpoint"] for r in rows):
        sel = {r["layer"]: r for r in rows if r["checkpoint"] == ck}
        for ax, key in zip(axes, ("l2", "cosine")):
            ax.plot(range(len(layers)), [sel[la][key] for la in layers], marker="o", label=ck)
    for ax, title in zip(axes, (f"L2 distance of gradients, k={k} vs k'={k2}", "cosine similarity")):
        ax.set_xticks(range(len(layers)), [la.rsplit(".", 1)[0] for la in layers], rotation=60, fontsize=7)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    import torch

    from atcd.attacks import AttackConfig
    from atcd.checkpoint import atomic_write_text, load_weights
    from atcd.cli import user_errors
    from atcd.config import check_model_name
    from atcd.data import create_atcd_dataset, create_atcd_loader
    from atcd.device import to_device
    from atcd.diagnostics import trajectory_shift
    from atcd.errors import ConfigError
    from atcd.methods.atcd import ATCD
    from atcd.models import build_model, unwrap_timm
    from atcd.options import parse_fraction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smallcnn_mnist")
    p.add_argument("--checkpoints", default="", help="comma list of .safetensors files")
    p.add_argument("--run-dir", default="", help="a train_atcd.py output folder")
    p.add_argument("--dataset", default="mnist-mini")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="train", help="data the gradients are averaged over")
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("--k", type=int, default=2, help="short trajectory length")
    p.add_argument("--k2", type=int, default=10, help="long trajectory length")
    p.add_argument("--eps", type=parse_fraction, default=0.3)
    p.add_argument("--attack-step", type=parse_fraction, default=0.1)
    p.add_argument("--cd-lambda", type=float, default=2.0)
    p.add_argument("--cd-rho", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="where the gradients are computed (default: the accelerator if "
                   "there is one, else cpu)")
    p.add_argument("--out", default="output/trajectory_shift")
    a = p.parse_args(argv)

    def measure() -> list[dict]:
        if a.k < 0 or a.k2 < 0:
            raise ConfigError(f"--k/--k2 must be >= 0 (got {a.k}, {a.k2})")
        check_model_name(a.model)
        cks = _checkpoints(a)
        if not cks:
            raise ConfigError("no checkpoints: give --checkpoints or a --run-dir holding model.safetensors")
        acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        device = torch.device(a.device or (acc.type if acc is not None else "cpu"))
        model = build_model(a.model).to(device)
        pcfg = unwrap_timm(model).pretrained_cfg
        ds = create_atcd_dataset(a.dataset, a.split, data_dir=a.data_dir,
                                 input_size=tuple(pcfg.get("input_size", (3, 224, 224))))
        batches = [to_device(b, device) for b in create_atcd_loader(ds, a.batch_size, False,
                                                                   num_samples=a.num_samples)]
        acfg = AttackConfig(eps=a.eps, step_size=a.attack_step, seed=a.seed)
        opts = ATCD.Options(cd_lambda=a.cd_lambda, cd_rho=a.cd_rho)
        out = []
        for ck in cks:
            load_weights(unwrap_timm(model), ck)
            name = _label(ck)
            for r in trajectory_shift(model, batches, a.k, a.k2, acfg, opts):
                out.append({"checkpoint": name, **r})
                print(f"{name:<20} {r['layer']:<28} l2 {r['l2']:.3e}  cos {r['cosine']:.4f}")
        return out

    rows = user_errors(measure)
    os.makedirs(a.out, exist_ok=True)
    csv_path = os.path.join(a.out, "trajectory_shift.csv")
    tmp = csv_path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, csv_path)
    plot(rows, os.path.join(a.out, "trajectory_shift.png"), a.k, a.k2)
    summary = {"csv": csv_path, "png": os.path.join(a.out, "trajectory_shift.png"),
               "checkpoints": len({r["checkpoint"] for r in rows}),
               "min_cosine": min(r["cosine"] for r in rows), "max_l2": max(r["l2"] for r in rows)}
    atomic_write_text(os.path.join(a.out, "trajectory_shift.json"), json.dumps(summary, indent=2))
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
