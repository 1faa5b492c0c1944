"""The evaluation protocol as RobustBench asks for it: on the card (`protocol_section`) and as RobustBench's
`model_info` JSON (`model_info`; fields as in its `model_info/<dataset>/<threat>/*.json` files: name, authors,
additional_data, number_forward_passes, dataset, venue, architecture, eps, clean_acc, reported, autoattack_acc,
footnote). Everything comes from validate.py's results JSON (AutoAttack package and version, images, ε) and the
run's args.yaml (the training recipe)."""
import logging
import os

from ..methods import list_methods
from ..models.hub import HubError
from .labels import eps_text
from .run_table import option_table

__all__ = ["model_info", "protocol_section", "training_recipe"]

_logger = logging.getLogger(__name__)


def training_recipe(train_args: dict | None) -> str:
    """'pgd: --eps 0.3 --attack-steps 10 ...; 4 epochs' from args.yaml; '' when there is none (an imported model)."""
    if not train_args or train_args.get("method") not in list_methods():
        return ""
    opts = " ".join(f"{flag} {value}" for flag, value, _ in option_table(train_args, "method"))
    return f"{train_args['method']}{': ' + opts if opts else ''}; {train_args.get('epochs')} epochs"


def images_text(results: dict) -> str:
    """Which images were evaluated: 'all L', or the strided subset, with its first indices."""
    n, img = int(results["num_samples"]), results.get("images") or {}
    where = f"{results.get('dataset')} {results.get('split', 'test')}"
    if img.get("selection") == "all":
        return f"all {img['split_size']} images of {where}"
    if "indices" in img and img.get("selection") != "strided":
        return (f"{n} images of {where} listed with --sample-ids (their ids: `results.json` `evaluated_ids`, their "
                f"positions: `images.indices`)")
    if "indices" in img:
        ids = img["indices"]
        head = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
        return (f"{n} of the {img['split_size']} images of {where}, evenly strided: indices int(i·{img['split_size']}"
                f"/{n}) for i < {n} in the split's order ({head}; all listed in `results.json` `images.indices`)")
    return f"{n} images of {where} (selection not recorded: {img.get('selection', 'an older validate.py')})"


def _autoattack_text(results: dict) -> str:
    if "autoattack" not in results["results"]:
        return "not run (the robust numbers come from weaker attacks: upper bounds)"
    pkg = results.get("autoattack_package") or {}
    acfg = results.get("attack_config", {})
    version = acfg.get("aa_version", "standard")
    extra = f" ({', '.join(acfg['aa_attacks'])})" if acfg.get("aa_attacks") else ""
    return (f"`{pkg.get('package', 'pyautoattack')}` {pkg.get('version') or 'version not recorded'}, "
            f"version `{version}`{extra}, seed {acfg.get('seed')}")


def protocol_section(results: dict, train_args: dict | None, weights: str, weights_sha256: str | None,
                     additional_data: bool | None) -> str:
    """The card's "Evaluation protocol" section (the facts RobustBench lists for an entry)."""
    extra = {True: "yes", False: "no"}.get(additional_data, "not recorded")
    if additional_data is False and train_args:
        data = train_args.get("dataset")
        extra += f" (trained on `{train_args.get('data_dir') if data in (None, 'folder') else data}` only)"
    recipe = training_recipe(train_args) or "not recorded (imported weights)"
    dc = results.get("data_config") or {}
    prep = (f"input {tuple(dc['input_size'])}, crop_pct {dc['crop_pct']}, {dc['interpolation']}, mean "
            f"{tuple(dc['mean'])}, std {tuple(dc['std'])}" if dc else "not recorded")
    return "\n".join([
        "## Evaluation protocol", "",
        f"- threat model: {results['norm']}, ε = {eps_text(float(results['eps']))} in [0, 1] pixel units",
        f"- images: {images_text(results)}",
        f"- AutoAttack: {_autoattack_text(results)}",
        f"- preprocessing: {prep}",
        "- forward passes per prediction: 1 (a deterministic model)",
        f"- extra training data: {extra}",
        f"- training recipe: {recipe}",
        (f"- weights evaluated: `{weights}`, sha256 `{weights_sha256}` (the tensors of the published "
         "`model.safetensors`)"), ""])


def model_info(results: dict, arch: str, name: str, authors: str = "", venue: str = "", link: str = "",
               additional_data: bool = False, dataset: str | None = None) -> dict:
    """RobustBench's `model_info` entry for these results (accuracies as strings with 2 decimals, as its files).

    Raises:
        HubError: the results hold no clean or no AutoAttack accuracy.
    """
    res = results["results"]
    missing = [a for a in ("clean", "autoattack") if a not in res]
    if missing:
        raise HubError(f"RobustBench's model_info needs clean and AutoAttack accuracy; the results have no "
                       f"{' and no '.join(missing)}: run validate.py with --attacks clean,autoattack")
    acfg, img = results.get("attack_config", {}), results.get("images") or {}
    notes = []
    if img.get("selection") != "all":
        notes.append(f"evaluated on {results['num_samples']} evenly strided images of the {img.get('split_size', '')}"
                     f"-image {results.get('split', 'test')} split (ids in results.json), not the full test set")
    if acfg.get("aa_version", "standard") != "standard":
        notes.append(f"AutoAttack version {acfg.get('aa_version')}, not standard")
    pkg = results.get("autoattack_package") or {}
    aa = f"{res['autoattack']['top1']:.2f}"
    dataset = dataset or results.get("dataset") or ""
    return {
        "link": link, "name": name, "authors": authors, "additional_data": bool(additional_data),
        "number_forward_passes": 1, "dataset": os.path.basename(os.path.normpath(dataset)) if dataset else "",
        "venue": venue, "architecture": arch, "eps": eps_text(float(results["eps"])),
        "clean_acc": f"{res['clean']['top1']:.2f}", "reported": aa, "autoattack_acc": aa,
        "footnote": "; ".join(notes + [f"{pkg.get('package', 'pyautoattack')} {pkg.get('version')}"]),
    }
