"""`run(cfg)`: the evaluation job behind validate.py (clean + attacks, JSON results, printed table)."""
import json
import logging
import os
import time
from dataclasses import replace

import torch
from accelerate import Accelerator

from .checkpoint import atomic_write_text, load_weights
from .config import EvalConfig
from .data import create_atcd_dataset, create_atcd_loader, create_wds_loader, is_wds, transform_kwargs
from .device import to_device
from .engine import evaluate_attacks, strip_private
from .models import NormalizedModel, build_model, timm_kwargs, unwrap_timm
from .sanity import model_fingerprint, probe_checks, summarize
from .sweep import run_sweep, write_sweep

__all__ = ["format_table", "load_model_for_eval", "run"]

_logger = logging.getLogger(__name__)


def load_model_for_eval(cfg: EvalConfig) -> NormalizedModel:
    """timm name (+ --checkpoint safetensors or run dir), `hf-hub:` or `local-dir:`; normaliser from its cfg."""
    # with --checkpoint a hub model's head may take another --num-classes (a fine-tuned run): it is loaded strictly
    model = build_model(cfg.model, num_classes=cfg.num_classes, pretrained=cfg.pretrained, in_chans=cfg.in_chans,
                        mean=cfg.mean, std=cfg.std, reset_classifier=bool(cfg.checkpoint),
                        **timm_kwargs(model_kwargs=cfg.model_kwargs))
    if cfg.checkpoint:
        load_weights(unwrap_timm(model), cfg.checkpoint, allow_pickle=cfg.allow_pickle)
    return model.eval()


def format_table(results: dict[str, dict], eps: float) -> str:
    lines = [f"{'attack':<14}{'top1 (%)':>10}{'n':>7}", "-" * 31]
    for name, r in results.items():
        lines.append(f"{name:<14}{r['top1']:>10.2f}{r['n']:>7}")
    lines.append(f"(L-inf eps = {eps:.4g})")
    return "\n".join(lines)


def run(cfg: EvalConfig) -> dict:
    accelerator = Accelerator()
    if not cfg.no_progress and accelerator.is_main_process:  # AutoAttack reports its progress at DEBUG level
        logging.getLogger("auto-attack").setLevel(logging.DEBUG)
        logging.getLogger("atcd.attacks.autoattack").setLevel(logging.INFO)  # a line per sub-attack as it starts
    model = load_model_for_eval(cfg)
    tf = transform_kwargs(cfg, unwrap_timm(model).pretrained_cfg)
    if is_wds(cfg.dataset):  # rank-sharded, exact once: never through prepare(); results gathered at the end
        loader = create_wds_loader(cfg.data_dir, cfg.split, cfg.batch_size, False, name=cfg.dataset,
                                   num_workers=cfg.workers, rank=accelerator.process_index,
                                   world_size=accelerator.num_processes, num_samples=cfg.num_samples,
                                   strict=cfg.strict_data, **tf)
        model = accelerator.prepare(model)
    else:
        ds = create_atcd_dataset(cfg.dataset, cfg.split, data_dir=cfg.data_dir, strict=cfg.strict_data, **tf)
        loader = create_atcd_loader(ds, cfg.batch_size, False, num_workers=cfg.workers, num_samples=cfg.num_samples)
        model, loader = accelerator.prepare(model, loader)
    model = accelerator.unwrap_model(model).eval()
    acfg = cfg.attack
    t0 = time.time()
    fingerprint = model_fingerprint(model)
    sanity = _probe(model, loader, cfg, acfg) if cfg.sanity_samples else {}
    res = evaluate_attacks(model, loader, list(cfg.attacks), acfg, accelerator, progress=not cfg.no_progress)
    out = {
        "model": cfg.model, "checkpoint": cfg.checkpoint, "dataset": cfg.dataset or cfg.data_dir,
        "split": cfg.split, "num_samples": res[cfg.attacks[0]]["n"], "eps": acfg.eps, "norm": "Linf",
        "attack_config": acfg.as_dict(),
        "results": strip_private(res), "seconds": round(time.time() - t0, 1),
        "num_skipped": int(getattr(loader, "num_skipped", 0) or getattr(getattr(loader, "dataset", None),
                                                                        "num_skipped", 0) or 0),
    }
    if cfg.sanity_samples:
        sanity["model_unchanged"] = {"ok": model_fingerprint(model) == fingerprint, "sha256": fingerprint}
        if "clean" in res:
            worse = {a: r["top1"] for a, r in res.items() if r["top1"] > res["clean"]["top1"] + 1e-9}
            sanity["robust_le_clean"] = {"ok": not worse, "above_clean": worse}
        out["sanity"] = sanity
    sweeps = [("steps", cfg.sweep_steps), ("eps", cfg.sweep_eps)]
    sweep_dir = os.path.dirname(os.path.abspath(cfg.results_file)) if cfg.results_file else "output/validate"
    for param, values in sweeps:
        if values:
            rows = run_sweep(model, loader, acfg, cfg.sweep_attack, param, list(values), accelerator)
            out[f"sweep_{param}"] = rows
            if accelerator.is_main_process:
                out[f"sweep_{param}_files"] = write_sweep(rows, sweep_dir, param)
    if accelerator.is_main_process:
        print(format_table(out["results"], acfg.eps))
        for msg in summarize(sanity):
            _logger.warning(msg)
        if cfg.results_file:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.results_file)), exist_ok=True)
            atomic_write_text(cfg.results_file, json.dumps(out, indent=2))
    out["is_main_process"] = accelerator.is_main_process
    accelerator.end_training()
    return out


def _probe(model, loader, cfg: EvalConfig, acfg) -> dict:
    """Sanity checks on the first `cfg.sanity_samples` images this process evaluates (see atcd.sanity)."""
    xs, ys, n = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        n += len(y)
        if n >= cfg.sanity_samples:
            break
    if not xs:
        return {}
    device = next(model.parameters()).device  # a streamed loader yields cpu batches
    x, y = to_device((torch.cat(xs)[:cfg.sanity_samples], torch.cat(ys)[:cfg.sanity_samples]), device)
    # a probe, not the measurement: at most 10 PGD steps (and 2x that for the iterations check)
    steps = min(acfg.steps, 10)
    pcfg = replace(acfg, steps=steps, step_size=acfg.step_size * acfg.steps / steps)
    # one probe image is 100/n points: allow that much slack in the monotonicity checks (random starts)
    return probe_checks(model, x, y, pcfg, square=acfg.eps > 0, tol=100.0 / len(y))
