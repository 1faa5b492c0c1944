#!/usr/bin/env python3
"""ATCD's Metropolis-Hastings acceptance as the temperature tau and the trajectory length K vary (issue 33 item 4).

    python scripts/mh_acceptance.py --checkpoints RUN/checkpoint-0001 RUN/checkpoint-0003 --out reports/mnist-mini

For each starting point (an untrained small CNN, and each checkpoint given), each K and each tau: a copy of the
weights trains on the same `--batches` minibatches of mnist-mini with the MNIST recipe (recipes/mnist_atcd.yaml:
T = 4, lambda 2, rho 1, kappa_H 0, alpha 0.1, Adam 1e-3) at the full eps, with only K and tau changed, and the
M-H acceptance of those steps is read (per replay too). A row with kappa_H = 1 and the normalised kinetic term (the
first implementation's) is added for reference. Writes mh_acceptance.md and .csv; ends with a RESULT line.
"""
import argparse
import copy
import csv
import json
import os
import sys
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def measure(model, cfg, data) -> dict:
    """Train a copy of `model` on `data` with `cfg`'s ATCD; its M-H acceptance (overall, per replay)."""
    import torch
    from accelerate import Accelerator

    from atcd.methods import StepContext, create_method
    net = copy.deepcopy(model)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    ctx = StepContext(model=net, attack_model=net, optimizer=opt, backward=lambda loss: loss.backward(),
                      after_update=lambda: None)
    method = create_method("atcd", cfg)
    for x, y in data:
        method.set_progress(1e9)  # past the warm-up: the full eps
        method.step(ctx, x, y)
    return method.epoch_metrics(Accelerator(cpu=True))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="*", default=[], help="run checkpoints (or model.safetensors) to start from")
    p.add_argument("--taus", default="1,0.1,0.01")
    p.add_argument("--ks", default="1,2,4")
    p.add_argument("--batches", type=int, default=6, help="minibatches of 128 trained per setting")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    import torch

    from atcd.checkpoint import load_weights
    from atcd.config import parse_train_args
    from atcd.data import MnistMini
    from atcd.models import build_model, unwrap_timm
    recipe = parse_train_args(["-c", os.path.join(ROOT, "recipes", "mnist_atcd.yaml")])
    ds = MnistMini("train")
    g = torch.Generator().manual_seed(0)
    idx = [torch.randperm(len(ds.targets), generator=g)[:recipe.batch_size] for _ in range(a.batches)]
    data = [(ds.images[i], ds.targets[i]) for i in idx]
    starts = [("untrained", None)] + [(c, c) for c in a.checkpoints]
    rows = []
    for name, path in starts:
        torch.manual_seed(0)
        model = build_model(recipe.model)
        if path:
            load_weights(unwrap_timm(model), path if path.endswith(".safetensors")
                         else os.path.join(path, "model.safetensors"))
        settings = [(k, tau, 0.0, "gradient") for k in map(int, a.ks.split(",")) for tau in map(float,
                                                                                             a.taus.split(","))]
        settings.append((recipe.method_opts.atcd_K, 1.0, 1.0, "normalised"))
        for k, tau, kappa, kin in settings:
            cfg = replace(recipe, eps_warmup_epochs=0.0, method_opts=replace(
                recipe.method_opts, atcd_K=k, mh_temperature=tau, mh_kinetic=kappa, mh_kinetic_v=kin))
            m = measure(model, cfg, data)
            rows.append({"start": name, "K": k, "tau": tau, "kappa_H": kappa, "kinetic_v": kin,
                         "accept": round(m["mh_accept"], 4),
                         "per_replay": "/".join(f"{m[f'mh_accept_r{t}']:.3f}" for t in range(cfg.method_opts.atcd_T)),
                         "tests": a.batches * cfg.method_opts.atcd_T * recipe.batch_size})
            print(json.dumps(rows[-1]), flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "mh_acceptance.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    taus = list(dict.fromkeys(r["tau"] for r in rows if r["kappa_H"] == 0))
    lines = ["| start | K | " + " | ".join(f"tau = {t:g}" for t in taus) + " | kappa_H 1 normalised (K, tau 1) |",
             "|---|---|" + "---|" * (len(taus) + 1)]
    for name, _ in starts:
        ref = next(r for r in rows if r["start"] == name and r["kappa_H"] == 1.0)
        for k in dict.fromkeys(r["K"] for r in rows if r["kappa_H"] == 0):
            cells = [next(f"{r['accept']:.4f}" for r in rows if r["start"] == name and r["K"] == k
                          and r["tau"] == t and r["kappa_H"] == 0) for t in taus]
            lines.append(f"| {os.path.basename(os.path.dirname(name + '/')) or name} | {k} | " + " | ".join(cells)
                         + (f" | {ref['accept']:.4f} (per replay {ref['per_replay']}) |" if k == ref["K"] else " | |"))
    with open(os.path.join(a.out, "mh_acceptance_table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("RESULT " + json.dumps({"rows": len(rows), "min_accept_tau1_kappa0": min(
        r["accept"] for r in rows if r["tau"] == 1.0 and r["kappa_H"] == 0)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
