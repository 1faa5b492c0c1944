"""AutoAttack through the packaged official implementation (`pyautoattack`); never re-implemented.

With a state directory (`--aa-state-dir`) a killed evaluation continues where it stopped: each call keeps the
sub-attacks done and the images still robust in a file named by everything that makes its result (see
`state_path`). The package's own `state_path` cannot do this in pyautoattack 0.2.0: it writes the set of attacks as
a string (a resume raises "different set of attacks"), saves the finished sub-attack only after 60 s, reads the run
attacks back as a list (`add` fails), leaves `y_adv` unbound on resume, and returns only the current run's
adversarial examples. So the package's loop runs here one sub-attack per call on the images still robust (the
same batches and seeds as its single call), and the state between sub-attacks is ours.
"""
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..options import comma_list, option
from .registry import register_attack

__all__ = ["AA_ATTACKS", "AutoAttackOptions", "autoattack", "run_autoattack", "state_path"]

AA_INDIVIDUAL = ("apgd-ce", "apgd-t", "fab-t", "square")
AA_ATTACKS = ("apgd-ce", "apgd-t", "apgd-dlr", "fab", "fab-t", "square")


@dataclass(frozen=True)
class AutoAttackOptions:
    aa_version: str = option("standard", "AutoAttack version (rand for randomised models)",
                             choices=("standard", "plus", "rand", "custom"))
    aa_attacks: tuple = option((), f"with --aa-version custom: comma list of {', '.join(AA_ATTACKS)}",
                               type=comma_list, check=lambda v: all(a in AA_ATTACKS for a in v),
                               why=f"must name attacks the package offers: {AA_ATTACKS}")
    aa_state_dir: str | None = option(None, "keep AutoAttack's progress here (per loader batch: sub-attacks done, "
                                      "images still robust; named by a hash of model weights, eps, seed, version, "
                                      "attacks and images): rerun a killed evaluation with the same DIR and the "
                                      "sub-attacks already done are skipped", type=str, metavar="DIR")

    def __post_init__(self):
        if self.aa_version == "custom" and not self.aa_attacks:
            raise ConfigError("--aa-version custom needs --aa-attacks, e.g. apgd-ce,apgd-t")


_logger = logging.getLogger(__name__)


def _report_progress(adversary) -> None:
    """One line as each sub-attack starts on the images still robust (Square and FAB-T run minutes without one).

    The package's own loop calls `perturb` of its attack objects batch by batch; each call is announced with the
    sub-attack's name, the images it gets and the time since the evaluation started.
    """
    t0 = time.time()
    for attr in ("apgd", "apgd_targeted", "fab", "square"):
        obj = getattr(adversary, attr, None)
        if obj is None:
            continue

        def perturb(x, y, *args, _obj=obj, _orig=obj.perturb, _attr=attr, **kwargs):
            name = {"apgd": f"apgd-{getattr(_obj, 'loss', 'ce')}", "apgd_targeted": "apgd-t",
                    "fab": "fab-t" if getattr(_obj, "targeted", False) else "fab"}.get(_attr, _attr)
            _logger.info("AutoAttack %s: %d images left, %.0f s elapsed", name, len(x), time.time() - t0)
            return _orig(x, y, *args, **kwargs)
        obj.perturb = perturb


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def state_path(state_dir: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
               version: str, attacks, batch_size: int, square_queries: int | None) -> str:
    """The state file of one AutoAttack call: `aa-<sha256>.json` in `state_dir`, the hash over the package and torch
    versions, the model's class, weights and buffers, eps, seed, version, sub-attacks, batch size, Square's queries
    and the images and labels (shape, dtype, values). A state made for anything else has another name and is never
    read. (The weights' hash costs ~0.2 s for a ResNet-50, per call: nothing next to AutoAttack.)"""
    import pyautoattack

    from ..models.fingerprint import model_fingerprint
    what = {"package": pyautoattack.__version__, "torch": torch.__version__, "model": type(model).__qualname__,
            "eps": float(eps).hex(), "seed": int(seed), "version": version, "attacks": list(attacks),
            "batch_size": int(batch_size), "square_queries": square_queries, "norm": "Linf"}
    h = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    h.update(model_fingerprint(model).encode())
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)} {t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return os.path.join(state_dir, f"aa-{h.hexdigest()}.json")


def _read_state(path: str, attacks: list[str], n: int) -> dict | None:
    """The saved state, or None when there is none or it is unusable (then the call starts afresh)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            state = json.load(f)
        ok = state["attacks"] == attacks and len(state["robust"]) == n and set(state["done"]) <= set(attacks)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        _logger.warning("AutoAttack state %s is unreadable or was made for another run: starting afresh", path)
        return None
    return state


def _write_state(path: str, text: str) -> None:
    from ..checkpoint import atomic_write_text
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, text)


def _run_with_state(adversary, x: torch.Tensor, y: torch.Tensor, batch_size: int, path: str,
                    flags_now) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The package's evaluation, one sub-attack per call on the images still robust, saved after each.

    Returns (x_adv, robust flags, the package's check flags of every call so far). x_adv holds the adversarial
    examples found in this call only (a resumed call has none of the sub-attacks run before it): a caller scores
    examples by the robust flags, never by re-classifying x_adv.
    """
    from pyautoattack import checks
    attacks = list(adversary.attacks_to_run)
    state = _read_state(path, attacks, len(y))
    written = None if state is None else json.dumps(state)  # what the file holds
    if state is None:
        with torch.no_grad():  # the package's first step: the clean predictions, in its batches
            robust = torch.cat([adversary.get_logits(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                                for i in range(0, len(y), batch_size)])
        state = {"attacks": attacks, "done": [], "robust": "", "accuracy": {"clean": robust.float().mean().item()},
                 "flags": []}
    else:
        robust = torch.tensor([c == "1" for c in state["robust"]], device=y.device)
        _logger.info("AutoAttack: resuming %s: %s already run, %d of %d images robust", path,
                     ", ".join(state["done"]) or "no sub-attack", int(robust.sum()), len(y))

    def save():  # only what changed: a finished state read again is left as it is
        nonlocal written
        state["robust"] = "".join("1" if v else "0" for v in robust.tolist())
        state["flags"] = sorted(set(state["flags"]) | set(flags_now()))
        text = json.dumps(state)
        if text != written:
            _write_state(path, text)
            written = text

    save()
    x_adv = x.clone()
    try:
        for attack in attacks:
            if attack in state["done"]:
                continue
            idx = robust.nonzero().flatten()
            if len(idx):  # the package's loop stops when no image is left; so does this one
                adversary.attacks_to_run = [attack]
                xa, ya = adversary.run_standard_evaluation(x[idx], y[idx], batch_size=batch_size)
                broken = ya != y[idx]
                x_adv[idx[broken]] = xa[broken]
                robust[idx[broken]] = False
                state["accuracy"][attack] = robust.float().mean().item()
            state["done"].append(attack)
            save()
    finally:
        adversary.attacks_to_run = attacks
    checks.check_square_sr(state["accuracy"], logger=adversary.logger)  # over all sub-attacks, as in one call
    save()
    return x_adv, robust, state["flags"]


def _check_targets(model: nn.Module, x: torch.Tensor, version: str, attacks) -> None:
    """APGD-T and FAB-T of the standard protocol attack 9 target classes: a model with fewer than 10 classes would
    crash inside the package (IndexError)."""
    targeted = version != "custom" or any(a in ("apgd-t", "fab-t") for a in attacks or ())
    if not targeted or len(x) == 0:
        return
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    if classes < 10:
        raise ConfigError(f"AutoAttack's {version} version runs APGD-T and FAB-T on 9 target classes and needs a model "
                          f"with at least 10 classes; this one has {classes}: use --aa-version custom --aa-attacks "
                          f"apgd-ce,square (or --attacks pgd)")


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str = "standard",
                   seed: int = 0, batch_size: int = 250, attacks=None, square_queries: int | None = None,
                   state_dir: str | None = None) -> tuple[torch.Tensor, dict]:
    """Run AutoAttack (L-inf); returns (x_adv, {"flags": [...]}), with `state_dir` (x_adv, {"flags", "correct"}).

    `version`: standard | plus | rand, the package's own presets; `custom` runs only `attacks` (e.g.
    ['apgd-ce', 'square']) with the standard version's per-attack settings (1 APGD restart, 9 target classes,
    5000 Square queries), so a single attack scores what it would inside the standard evaluation.
    `square_queries` overrides Square's query budget (5000 in the standard version; validate.py's sanity probe uses
    fewer). flags are the package's own sanity-check warnings (zero gradients, softmax output, randomness, Square
    beating white-box), so they reach the results JSON.
    `state_dir`: progress is kept in a file there (`state_path`) and a call with the same inputs continues from it;
    `correct` (per example, bool) is then the package's verdict, and x_adv holds only this call's adversarial
    examples (see `_run_with_state`).
    """
    from pyautoattack import AutoAttack
    _check_targets(model, x, version, attacks)
    if version == "custom":
        if not attacks:
            raise ValueError("AutoAttack version 'custom' needs a list of attacks")
        adversary = AutoAttack(model, eps=eps, version="standard", device=x.device, seed=seed, norm="Linf")
        adversary.attacks_to_run, adversary.version = list(attacks), "custom"
    else:
        adversary = AutoAttack(model, eps=eps, version=version, device=x.device, seed=seed, norm="Linf")
    if square_queries is not None:
        adversary.square.n_queries = square_queries
    _report_progress(adversary)
    handler = _Collect()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.addHandler(handler)
    extra = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")

            def flags_now() -> list[str]:
                return sorted(set(handler.messages) | {str(w.message) for w in caught if issubclass(w.category, Warning)
                                                       and "autoattack" in (w.filename or "").lower()})

            if state_dir is None:
                out = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
                x_adv, flags = (out[0] if isinstance(out, tuple) else out), flags_now()
            else:
                path = state_path(state_dir, model, x, y, eps, seed, adversary.version, adversary.attacks_to_run,
                                  batch_size, square_queries)
                x_adv, extra["correct"], flags = _run_with_state(adversary, x, y, batch_size, path, flags_now)
    finally:
        aa_logger.removeHandler(handler)
    return x_adv, {"flags": flags, **extra}


@register_attack("autoattack", options=AutoAttackOptions)
def autoattack(model, x, y, cfg):
    """AutoAttack at L-inf eps, version --aa-version (standard: APGD-CE, APGD-T, FAB-T, Square)."""
    o = cfg.options_for("autoattack")
    return run_autoattack(model, x, y, cfg.eps, version=o.aa_version, seed=cfg.seed, attacks=o.aa_attacks,
                          state_dir=o.aa_state_dir)


def _single(name: str):
    def attack(model, x, y, cfg):
        return run_autoattack(model, x, y, cfg.eps, version="custom", seed=cfg.seed, attacks=[name])
    attack.__doc__ = f"{name} alone, from the official AutoAttack package, with its standard-version settings."
    return attack


for _name in AA_INDIVIDUAL:
    register_attack(_name)(_single(_name))
