"""`run(cfg)`: the evaluation job behind validate.py (clean + attacks, JSON results, printed table).

Several models (`--model a,b`, `--model-list`, a local-dir: glob) are evaluated in turn with the same data and attacks
into one leaderboard (a row per model: each attack's top-1, worst case, n, eps, seconds), as timm's validate.py
writes its bulk results; `--results-format csv` writes that table, json the leaderboard with each model's results.
"""
import csv
import io
import json
import logging
import os
import time
from dataclasses import replace

import torch
from accelerate import Accelerator

from .checkpoint import atomic_write_text, load_weights
from .cluster import accelerator_handlers
from .config import EvalConfig
from .data import (
    create_atcd_dataset,
    create_eval_loader,
    create_wds_loader,
    is_wds,
    read_sample_ids,
    shard_keys,
    transform_kwargs,
)
from .device import to_device
from .engine import evaluate_attacks, strip_private
from .models import NormalizedModel, build_model, timm_kwargs, unwrap_timm
from .models.sources import ema_weights
from .precision import eval_precision
from .provenance import measurement_record
from .sanity import model_fingerprint, probe_checks, summarize
from .sweep import run_sweep, write_sweep

__all__ = ["format_leaderboard", "format_table", "leaderboard_rows", "load_model_for_eval", "run"]

_logger = logging.getLogger(__name__)


def _weights(cfg: EvalConfig) -> str | None:
    """The weights file loaded into the model: --checkpoint, or with --use-ema the EMA weights beside it."""
    return ema_weights(cfg.checkpoint) if cfg.use_ema else cfg.checkpoint


def load_model_for_eval(cfg: EvalConfig) -> NormalizedModel:
    """timm name (+ --checkpoint safetensors or run dir), `hf-hub:` or `local-dir:`; normaliser from its cfg.

    A bare timm name without --checkpoint loads its pretrained weights unless --no-pretrained (timm's rule)."""
    pretrained = cfg.pretrained if cfg.pretrained is not None else not cfg.checkpoint
    # with --checkpoint a hub model's head may take another --num-classes (a fine-tuned run): it is loaded strictly
    model = build_model(cfg.model, num_classes=cfg.num_classes, pretrained=pretrained, in_chans=cfg.in_chans,
                        mean=cfg.mean, std=cfg.std, reset_classifier=bool(cfg.checkpoint),
                        **timm_kwargs(model_kwargs=cfg.model_kwargs))
    if cfg.checkpoint:
        load_weights(unwrap_timm(model), _weights(cfg), allow_pickle=cfg.allow_pickle)
    return model.eval()


def format_table(results: dict[str, dict], eps: float) -> str:
    lines = [f"{'attack':<14}{'top1 (%)':>10}{'n':>7}", "-" * 31]
    for name, r in results.items():
        lines.append(f"{name:<14}{r['top1']:>10.2f}{r['n']:>7}")
    lines.append(f"(L-inf eps = {eps:.4g})")
    return "\n".join(lines)


def leaderboard_rows(outs: list[dict]) -> list[dict]:
    """One row per evaluated model: model, checkpoint, top-1 of each attack and the worst case, n, eps, seconds."""
    return [{"model": o["model"], "checkpoint": o["checkpoint"] or "",
             **{a: round(r["top1"], 4) for a, r in o["results"].items()},
             "n": o["num_samples"], "eps": o["eps"], "seconds": o["seconds"]} for o in outs]


def format_leaderboard(rows: list[dict]) -> str:
    """The leaderboard as a fixed-width text table (the results file holds the same rows)."""
    cols = [c for c in rows[0] if c != "checkpoint" or any(r["checkpoint"] for r in rows)]

    def cell(c, v) -> str:
        return f"{v:.4g}" if c == "eps" else f"{v:.2f}" if isinstance(v, float) and c != "seconds" else str(v)

    text = [[cell(c, r[c]) for c in cols] for r in rows]
    width = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(cols)]

    def line(cells) -> str:  # names left-aligned, numbers right-aligned
        return "  ".join(v.ljust(w) if c in ("model", "checkpoint") else v.rjust(w)
                         for c, v, w in zip(cols, cells, width))

    return "\n".join([line(cols), "-" * (sum(width) + 2 * len(width) - 2)] + [line(t) for t in text])


def _results_text(out: dict, outs: list[dict], fmt: str) -> str:
    rows = leaderboard_rows(outs)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    return json.dumps(out if len(outs) == 1 else {"leaderboard": rows, "runs": outs}, indent=2)


def run(cfg: EvalConfig) -> dict:
    """Evaluate every model of `cfg` (one, or several into a leaderboard); returns the one model's results dict, or
    `{"leaderboard": rows, "runs": [results, ...]}`."""
    accelerator = Accelerator(kwargs_handlers=accelerator_handlers(cfg.dist_timeout))
    if not cfg.no_progress and accelerator.is_main_process:  # AutoAttack reports its progress at DEBUG level
        logging.getLogger("auto-attack").setLevel(logging.DEBUG)
        logging.getLogger("atcd.attacks.autoattack").setLevel(logging.INFO)  # a line per sub-attack as it starts
    models = cfg.models
    outs = []
    for name in models:
        if len(models) > 1 and accelerator.is_main_process:
            print(f"== {name}")
        outs.append(_evaluate(replace(cfg, model=name, model_list=None), accelerator))
        accelerator.free_memory()  # drop the prepared model before the next one is loaded
    out = outs[0] if len(outs) == 1 else {"leaderboard": leaderboard_rows(outs), "runs": outs}
    if accelerator.is_main_process:
        if len(outs) > 1:
            print(format_leaderboard(out["leaderboard"]))
        if cfg.results_file:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.results_file)), exist_ok=True)
            atomic_write_text(cfg.results_file, _results_text(out, outs, cfg.results_format))
    out["is_main_process"] = accelerator.is_main_process
    accelerator.end_training()
    return out


def _evaluate(cfg: EvalConfig, accelerator: Accelerator) -> dict:
    """One model: load, build its loader, run the attacks, probes and sweeps; print its table (main process)."""
    model = load_model_for_eval(cfg)
    tf = transform_kwargs(cfg, unwrap_timm(model).pretrained_cfg)
    # fixed chunks of the global order, rank r taking chunks r, r+N, ...: never through prepare(), which would
    # re-shard and pad them; results are gathered once at the end (atcd.data.eval_plan)
    sample_ids = read_sample_ids(cfg.sample_ids) if cfg.sample_ids else None
    shard = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
             "num_samples": cfg.num_samples, "sample_ids": sample_ids, "num_workers": cfg.workers}
    if is_wds(cfg.dataset):
        loader = create_wds_loader(cfg.data_dir, cfg.split, cfg.batch_size, False, name=cfg.dataset,
                                   strict=cfg.strict_data, **shard, **tf)
    else:
        ds = create_atcd_dataset(cfg.dataset, cfg.split, data_dir=cfg.data_dir, strict=cfg.strict_data,
                                 download=cfg.dataset_download, **tf)
        loader = create_eval_loader(ds, cfg.batch_size, **shard)
    model = accelerator.prepare(model)
    # prepare() wraps forward in the launcher's autocast (kept by unwrap_model): every pass below bypasses it and
    # runs in --eval-precision (fp32, TF32 off, by default)
    model = accelerator.unwrap_model(model).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    with eval_precision(cfg.eval_precision, model):
        return _measure(cfg, accelerator, model, loader, tf, sample_ids)


def _measure(cfg: EvalConfig, accelerator: Accelerator, model, loader, tf: dict, sample_ids) -> dict:
    """Clean accuracy, attacks, probes and sweeps of one prepared model (inside its evaluation precision)."""
    acfg = cfg.attack
    t0 = time.time()
    fingerprint = model_fingerprint(model)
    sanity = _probe(model, loader, cfg, acfg) if cfg.sanity_samples else {}
    res = evaluate_attacks(model, loader, list(cfg.attacks), acfg, accelerator, progress=not cfg.no_progress,
                           precision=cfg.eval_precision, channels_last=cfg.channels_last)
    out = {
        "model": cfg.model, "checkpoint": _weights(cfg), "dataset": cfg.dataset or cfg.data_dir,
        "split": cfg.split, "num_samples": res[cfg.attacks[0]]["n"],
        "evaluated_ids": _evaluated_ids(loader, listed=sample_ids is not None),
        "eps": acfg.eps, "norm": "Linf", "eval_precision": cfg.eval_precision,
        "launcher_mixed_precision": accelerator.mixed_precision,
        "attack_config": acfg.as_dict(),
        "results": {a: {**r, "correct": _bits(res[a]["_ok"])} for a, r in strip_private(res).items()},
        "seconds": round(time.time() - t0, 1),
        "num_skipped": int(loader.num_skipped),
    }
    out.update(measurement_record(cfg.model, _weights(cfg), loader, tf, model, cfg.attacks))  # what publish checks
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
            rows = run_sweep(model, loader, acfg, cfg.sweep_attack, param, list(values), accelerator,
                             precision=cfg.eval_precision)
            out[f"sweep_{param}"] = rows
            if accelerator.is_main_process:
                out[f"sweep_{param}_files"] = write_sweep(rows, sweep_dir, param)
    if accelerator.is_main_process:
        print(format_table(out["results"], acfg.eps))
        for msg in summarize(sanity, cfg.attacks):
            _logger.warning(msg)
    return out


def _bits(ok: torch.Tensor) -> str:
    """Per-example correctness as a string of 0/1 in `evaluated_ids` order (the results file's per-example record)."""
    return "".join("1" if v else "0" for v in ok.tolist())


def _evaluated_ids(loader, listed: bool) -> list[str] | str:
    """The ids of the evaluated samples in evaluation order (RobustBench's protocol names its 5,000 images), or
    "first N" when the whole split of N samples was evaluated without a list. Shard keys are listed from the tar
    headers."""
    plan = loader.plan
    if not listed and plan.split_size == len(plan.positions):
        return f"first {plan.split_size}"
    ids = plan.ids if plan.ids is not None else [shard_keys(loader.source)[p] for p in plan.positions]
    return list(ids)


def _probe(model, loader, cfg: EvalConfig, acfg) -> dict:
    """Sanity checks on the first `cfg.sanity_samples` images this process evaluates (see atcd.sanity)."""
    xs, ys, n = [], [], 0
    for batch in loader:
        x, y = batch[:2]
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
