"""`run(cfg)`: the evaluation job behind validate.py (clean + attacks, JSON results, printed table)."""
import json
import logging
import os
import time
from dataclasses import asdict

from accelerate import Accelerator

from .attacks import AttackConfig, list_attacks
from .checkpoint import atomic_write_text, load_weights
from .config import ConfigError, EvalConfig
from .data import create_atcd_dataset, create_atcd_loader
from .engine import evaluate_attacks, strip_private
from .models import NormalizedModel, build_model, unwrap_timm

__all__ = ["attack_config", "format_table", "load_model_for_eval", "run"]

_logger = logging.getLogger(__name__)


def load_model_for_eval(cfg: EvalConfig) -> NormalizedModel:
    """timm name (+ --checkpoint safetensors or run dir), `hf-hub:` or `local-dir:`; normaliser from its cfg."""
    model = build_model(cfg.model, num_classes=cfg.num_classes, pretrained=cfg.pretrained, in_chans=cfg.in_chans)
    if cfg.checkpoint:
        load_weights(unwrap_timm(model), cfg.checkpoint)
    return model.eval()


def attack_config(cfg: EvalConfig) -> AttackConfig:
    return AttackConfig(eps=cfg.eps, step_size=cfg.step_size, steps=cfg.attack_steps, restarts=cfg.attack_restarts,
                        loss=cfg.attack_loss, seed=cfg.seed, step_schedule=cfg.attack_step_schedule,
                        aa_version=cfg.aa_version, aa_attacks=tuple(cfg.aa_attacks), hmc_momentum=cfg.hmc_momentum,
                        hmc_temperature=cfg.hmc_temperature)


def format_table(results: dict[str, dict], eps: float) -> str:
    lines = [f"{'attack':<14}{'top1 (%)':>10}{'n':>7}", "-" * 31]
    for name, r in results.items():
        lines.append(f"{name:<14}{r['top1']:>10.2f}{r['n']:>7}")
    lines.append(f"(L-inf eps = {eps:.4g})")
    return "\n".join(lines)


def run(cfg: EvalConfig) -> dict:
    unknown = [a for a in cfg.attacks if a not in list_attacks()]
    if unknown:
        raise ConfigError(f"unknown attack(s) {unknown}; available: {list_attacks()}")
    accelerator = Accelerator()
    if not cfg.no_progress and accelerator.is_main_process:  # AutoAttack reports its progress at DEBUG level
        logging.getLogger("auto-attack").setLevel(logging.DEBUG)
    model = load_model_for_eval(cfg)
    pcfg = unwrap_timm(model).pretrained_cfg
    input_size = tuple(pcfg.get("input_size", (3, 224, 224)))
    ds = create_atcd_dataset(cfg.dataset, cfg.split, data_dir=cfg.data_dir, input_size=input_size,
                             interpolation=pcfg.get("interpolation", "bilinear"), crop_pct=pcfg.get("crop_pct", 1.0))
    loader = create_atcd_loader(ds, cfg.batch_size, False, num_workers=cfg.workers, num_samples=cfg.num_samples)
    model, loader = accelerator.prepare(model, loader)
    model = accelerator.unwrap_model(model).eval()
    acfg = attack_config(cfg)
    t0 = time.time()
    res = evaluate_attacks(model, loader, list(cfg.attacks), acfg, accelerator, progress=not cfg.no_progress)
    out = {
        "model": cfg.model, "checkpoint": cfg.checkpoint, "dataset": cfg.dataset or cfg.data_dir,
        "split": cfg.split, "num_samples": res[cfg.attacks[0]]["n"], "eps": cfg.eps, "norm": "Linf",
        "attack_config": asdict(acfg),
        "results": strip_private(res), "seconds": round(time.time() - t0, 1),
    }
    if accelerator.is_main_process:
        print(format_table(out["results"], cfg.eps))
        if cfg.results_file:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.results_file)), exist_ok=True)
            atomic_write_text(cfg.results_file, json.dumps(out, indent=2))
    return out
