"""Robustness curves (the paper's Figs. 4-5): accuracy under one attack as the number of attack steps or eps
grows, on the same samples. validate.py --sweep-steps / --sweep-eps write sweep_<param>.csv and .png."""
import csv
import os
from dataclasses import replace

from .attacks import AttackConfig
from .engine import evaluate_attacks

__all__ = ["plot_sweep", "run_sweep", "write_sweep"]


def run_sweep(model, loader, cfg: AttackConfig, attack: str, param: str, values: list[float],
              accelerator=None, precision: str = "fp32") -> list[dict]:
    """Top-1 under `attack` for each value of `param` ('steps' or 'eps'); the step size follows the default rule
    (2.5 eps / steps) unless it was given explicitly (then it is kept for a steps sweep and scaled for eps)."""
    rows = []
    for v in values:
        if param == "steps":
            c = replace(cfg, steps=int(v), step_size=cfg.step_size * cfg.steps / int(v))
        elif param == "eps":
            c = replace(cfg, eps=float(v), step_size=cfg.step_size * float(v) / cfg.eps if cfg.eps else 0.0)
        else:
            raise ValueError(f"unknown sweep parameter {param!r}")
        res = evaluate_attacks(model, loader, [attack], c, accelerator, precision=precision)
        rows.append({"param": param, "value": v, "attack": attack, "top1": res[attack]["top1"],
                     "n": res[attack]["n"]})
    return rows


def write_sweep(rows: list[dict], out_dir: str, param: str) -> tuple[str, str]:
    from .checkpoint import atomic_write_text
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"sweep_{param}.csv")
    lines = [",".join(rows[0])] + [",".join(str(r[k]) for k in rows[0]) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
    png = os.path.join(out_dir, f"sweep_{param}.png")
    plot_sweep(rows, png, param)
    return path, png


def read_sweep(path: str) -> list[dict]:
    with open(path) as f:
        return [{**r, "value": float(r["value"]), "top1": float(r["top1"])} for r in csv.DictReader(f)]


def plot_sweep(rows: list[dict], path: str, param: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["value"] for r in rows], [r["top1"] for r in rows], marker="o", label=rows[0]["attack"])
    ax.set_xlabel("attack steps" if param == "steps" else "eps (L-inf, [0,1] pixels)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
