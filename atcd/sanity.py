"""Sanity checks that make a robustness number trustworthy (run by validate.py by default, recorded in the JSON).

On a small probe subset: eps=0 gives clean accuracy; robust <= clean for every attack; PGD accuracy is
non-increasing in eps and in iterations; the white-box attack is at least as strong as the black-box Square
(else the model probably masks gradients); the model stays in eval mode and unchanged (parameters and buffers
hashed before and after the whole evaluation).
"""
import logging
from dataclasses import replace

import torch
from torch import nn

from .attacks import AttackConfig, get_attack
from .attacks.autoattack import run_autoattack
from .models.fingerprint import model_fingerprint

__all__ = ["model_fingerprint", "probe_checks", "summarize"]

_logger = logging.getLogger(__name__)



def _acc(model, x, y) -> float:
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def _attack_acc(model, name, x, y, cfg: AttackConfig) -> float:
    out = get_attack(name)(model, x, y, cfg)
    return _acc(model, out[0] if isinstance(out, tuple) else out, y)


def probe_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig,
                 square: bool = True, tol: float = 0.0, square_queries: int = 1000) -> dict[str, dict]:
    """Checks on a probe batch (x, y). Each entry: {"ok": bool, ...measured numbers}.

    Square (the official package's) runs with `square_queries` queries: a black-box attack that needs few queries
    to beat the white-box one is a strong sign of masked gradients.

    `tol` is the slack in accuracy points allowed for the monotonicity checks (0 = exact; one probe example is
    100/len(y) points).
    """
    checks = {}
    training = []
    hook = model.register_forward_pre_hook(lambda m, _i: training.append(m.training))
    try:
        clean = _acc(model, x, y)
        at0 = _attack_acc(model, "pgd", x, y, replace(cfg, eps=0.0))
        checks["eps0_equals_clean"] = {"ok": abs(at0 - clean) <= 1e-9, "clean": clean, "pgd_eps0": at0}
        eps_grid = [cfg.eps * f for f in (0.25, 0.5, 1.0)]
        by_eps = [_attack_acc(model, "pgd", x, y, replace(cfg, eps=e, step_size=cfg.step_size * e / cfg.eps))
                  for e in eps_grid] if cfg.eps > 0 else []
        checks["non_increasing_in_eps"] = {
            "ok": all(a + tol >= b for a, b in zip([clean, *by_eps], by_eps)), "eps": eps_grid, "pgd": by_eps}
        more = _attack_acc(model, "pgd", x, y, replace(cfg, steps=2 * cfg.steps, step_size=cfg.step_size / 2))
        base = by_eps[-1] if by_eps else clean
        checks["non_increasing_in_iterations"] = {"ok": more <= base + tol, "steps": [cfg.steps, 2 * cfg.steps],
                                                  "pgd": [base, more]}
        if square and cfg.eps > 0:
            x_sq, _ = run_autoattack(model, x, y, cfg.eps, version="custom", seed=cfg.seed, attacks=["square"],
                                     square_queries=square_queries)
            sq = _acc(model, x_sq, y)
            # a white-box attack weaker than a black-box one means the gradients mislead: likely gradient masking
            checks["whitebox_beats_square"] = {"ok": base <= sq + tol, "pgd": base, "square": sq}
    finally:
        hook.remove()
    checks["eval_mode"] = {"ok": not any(training), "forward_calls_in_train_mode": sum(training)}
    return checks


def summarize(checks: dict[str, dict], attacks=()) -> list[str]:
    """One warning line per failed check; `attacks` (those run) says which result row already accounts for it."""
    msgs = {
        "eps0_equals_clean": "accuracy at eps=0 differs from clean accuracy (randomised or non-deterministic model?)",
        "non_increasing_in_eps": "PGD accuracy rises with eps (the attack is not converging: gradient masking?)",
        "non_increasing_in_iterations": "more PGD iterations raised accuracy (the attack is not converging)",
        "whitebox_beats_square": "black-box Square beats white-box PGD: the gradients are masked/obfuscated, "
                                 "white-box numbers overstate robustness",
        "eval_mode": "the model ran in train mode during evaluation",
        "robust_le_clean": "an attack scored above clean accuracy",
        "model_unchanged": "the model's parameters or buffers changed during evaluation",
    }
    if any(a in ("autoattack", "square") for a in attacks):  # the robust number to read already includes Square
        msgs["whitebox_beats_square"] += ("; the autoattack/square rows include Square's result: report those (or "
                                          "worst_case), not PGD (docs/validate.md: Gradient masking on the MNIST demo)")
    return [f"sanity check failed: {k}: {msgs.get(k, '')}" for k, v in checks.items() if not v["ok"]]
