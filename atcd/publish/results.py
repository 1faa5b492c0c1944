"""validate.py results as Hub eval results (the card's `model-index`) and the robustness table rendered from them."""
import logging
from collections.abc import Sequence
from typing import Any

from huggingface_hub import EvalResult

from ..models.hub import HubError
from .labels import attack_label, dataset_ids, eps_text

__all__ = ["RESULTS_BEGIN", "RESULTS_END", "eval_results_from_validate"]

_logger = logging.getLogger(__name__)

RESULTS_BEGIN = "<!-- atcd:results:begin -->"
RESULTS_END = "<!-- atcd:results:end -->"


def eval_results_from_validate(results: dict, dataset_id: str | None = None) -> list[EvalResult]:
    """One `EvalResult` per attack of a validate.py results JSON (values: top-1 in %, rounded to 2 decimals).

    Each metric's `args` hold what makes the number meaningful: attack, norm, ε, the number of samples, the attack
    settings and, for AutoAttack, the package's own sanity-check flags.

    Args:
        results: the dict validate.py writes with `--results-file` (keys model, dataset, split, num_samples, eps,
            norm, attack_config, results).
        dataset_id: Hub dataset id to file the results under (default: derived from `results["dataset"]`).
    """
    for key in ("results", "eps", "norm"):
        if key not in results:
            raise HubError(f"results JSON has no {key!r} (expected the file validate.py --results-file writes)")
    ds_type, ds_name = dataset_ids(results.get("dataset"), dataset_id)
    acfg = results.get("attack_config", {})
    eps, norm = float(results["eps"]), results["norm"]
    attacks = [a for a in results["results"] if a != "worst_case"]
    out = []
    for attack, r in results["results"].items():
        args: dict[str, Any] = {"attack": attack, "norm": norm, "eps": eps, "eps_text": eps_text(eps),
                                "num_samples": int(r["n"])}
        if attack == "worst_case":
            args["over"] = attacks
        elif attack == "autoattack":
            args["version"] = acfg.get("aa_version", acfg.get("autoattack_version", "standard"))
            args["seed"] = acfg.get("seed")
            args["checks"] = list(r.get("flags", []))
        elif attack != "clean":
            for key in ("steps", "step_size", "restarts", "loss", "step_schedule", "seed"):
                if key in acfg:
                    args[key] = acfg[key]
            if attack == "fgsm":
                args = {k: v for k, v in args.items() if k not in ("steps", "step_size", "restarts", "step_schedule")}
        label = attack_label(attack, args)
        out.append(EvalResult(
            task_type="image-classification", task_name="Image Classification", dataset_type=ds_type,
            dataset_name=ds_name, dataset_split=results.get("split", "test"), metric_type="accuracy",
            metric_value=round(float(r["top1"]), 2), metric_args=args,
            metric_name=f"{label} top-1 accuracy (%), {norm} eps={eps_text(eps)}, n={int(r['n'])}"))
    return out


def result_key(er: EvalResult) -> tuple:
    a = er.metric_args or {}
    return (er.dataset_type, er.dataset_split, a.get("attack", er.metric_name), a.get("norm"), a.get("eps"),
            tuple(a.get("over", ())))


def results_block(eval_results: Sequence[EvalResult]) -> str:
    """The robustness table of the card, rendered from its model-index (so text and metadata never disagree)."""
    lines = [RESULTS_BEGIN, "| attack | top-1 (%) | n | norm | ε ([0,1] pixels) | settings | dataset (split) |",
             "|---|---:|---:|---|---|---|---|"]
    checks = []
    for er in eval_results:
        a = er.metric_args or {}
        attack = a.get("attack")
        settings = ", ".join(f"{k}={a[k]}" for k in ("steps", "step_size", "restarts", "loss", "step_schedule",
                                                     "version", "seed") if a.get(k) is not None)
        label = attack_label(attack, a) if attack else (er.metric_name or er.metric_type)
        lines.append(f"| {label} | {er.metric_value} | {a.get('num_samples', '')} | {a.get('norm', '')} | "
                     f"{a.get('eps_text', a.get('eps', ''))} | {settings} | {er.dataset_type} ({er.dataset_split}) |")
        if "checks" in a:
            checks.append((label, a["eps_text"], a["checks"]))
    lines.append("")
    lines.append("A worst-case row counts an image as robust only if it survives every attack of that evaluation.")
    for label, eps, flags in checks:
        if flags:
            lines.append(f"\n**{label} sanity checks at ε={eps} raised flags** (the evaluation may be unreliable):")
            lines.extend(f"- {f}" for f in flags)
        else:
            lines.append(f"\n{label} sanity checks at ε={eps} (zero gradients, softmax output, randomness, Square "
                         f"beating white-box attacks): none raised.")
    if not any((er.metric_args or {}).get("attack") == "autoattack" for er in eval_results):
        lines.append("\nNo AutoAttack evaluation is recorded: the robust numbers above come from weaker attacks and "
                     "are upper bounds.")
    lines.append(RESULTS_END)
    return "\n".join(lines)


