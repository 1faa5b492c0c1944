"""train_one_epoch / evaluate, run with an Accelerator; pass counting comes from the method."""
import time
from collections.abc import Sequence

import torch
from tqdm import tqdm

from .attacks import AttackConfig, get_attack
from .methods import StepContext, TrainMethod

__all__ = ["evaluate_attacks", "train_one_epoch"]


def train_one_epoch(method: TrainMethod, ctx: StepContext, loader, accelerator, epoch: int,
                    progress: bool = True) -> dict[str, float]:
    t0 = time.time()
    p0 = dict(method.passes.as_dict())
    loss_sum = torch.zeros((), dtype=torch.float64)
    n_loss, correct, count = 0, 0, 0
    it = tqdm(loader, desc=f"epoch {epoch}", disable=not (progress and accelerator.is_main_process), leave=False)
    for x, y in it:
        res = method.step(ctx, x, y)
        for loss_t in res.losses:
            loss_sum += loss_t.double().cpu()
        n_loss += len(res.losses)
        correct += res.correct
        count += res.count
        if progress and n_loss % 10 == 0:
            it.set_postfix(loss=f"{float(loss_sum) / max(1, n_loss):.3f}")
    stats = torch.tensor([float(loss_sum), n_loss, correct, count], dtype=torch.float64,
                         device=accelerator.device)
    stats = accelerator.reduce(stats, reduction="sum")
    passes = {k: v - p0[k] for k, v in method.passes.as_dict().items()}
    out = {
        "train_loss": float(stats[0] / max(1.0, float(stats[1]))),
        "train_adv_top1": 100.0 * float(stats[2] / max(1.0, float(stats[3]))),
        "seconds": time.time() - t0,
        **passes,
    }
    if hasattr(method, "acceptance_rate"):
        out["mh_accept"] = method.acceptance_rate()
    return out


def evaluate_attacks(model, loader, attacks: Sequence[str], cfg: AttackConfig, accelerator=None,
                     progress: bool = False) -> dict[str, dict]:
    """Top-1 accuracy per attack (plus `worst_case` over attacks per example); model is put in eval mode.

    Per-example correctness is gathered across processes so every sample is counted exactly once.
    """
    was_training = model.training
    model.eval()
    per_attack = {a: [] for a in attacks}
    info = {a: {} for a in attacks}
    try:
        for name in attacks:
            fn = get_attack(name)
            it = tqdm(loader, desc=name, disable=not progress, leave=False)
            for x, y in it:
                x_adv = fn(model, x, y, cfg)
                if isinstance(x_adv, tuple):  # (x_adv, info): e.g. AutoAttack's own check flags
                    x_adv, extra = x_adv
                    for k, v in extra.items():
                        info[name].setdefault(k, []).extend(v)
                with torch.no_grad():
                    ok = model(x_adv).argmax(1) == y
                if accelerator is not None:
                    ok = accelerator.gather_for_metrics(ok)
                per_attack[name].append(ok.cpu())
    finally:
        model.train(was_training)
    results = {}
    for name, oks in per_attack.items():
        ok = torch.cat(oks)
        results[name] = {"top1": 100.0 * ok.float().mean().item(), "n": int(ok.numel()), "_ok": ok, **info[name]}
    if len(attacks) > 1:
        worst = torch.stack([r["_ok"] for r in results.values()]).all(0)
        results["worst_case"] = {"top1": 100.0 * worst.float().mean().item(), "n": int(worst.numel()), "_ok": worst}
    return results


def strip_private(results: dict[str, dict]) -> dict[str, dict]:
    return {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()}

