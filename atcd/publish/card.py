"""The model card of a published run: Hub metadata with a `model-index`, and the human sections around it."""
import logging
import os
import platform
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

from .. import __version__
from ..checkpoint import atomic_write_text
from ..methods import get_method_class, list_methods
from ..models.hub import NETWORK_ERRORS, HubError, hub_error, one_line, unreachable
from .auth import require_token
from .labels import HUB_DATASETS, attack_label, dataset_ids, eps_text
from .results import RESULTS_BEGIN, RESULTS_END, eval_results_from_validate, result_key, results_block
from .robustbench import protocol_section
from .run_table import option_table
from .usage import card_library, usage_section

__all__ = ["CARD_NAME", "build_model_card", "update_card_with_results"]

_logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
_METHODS = {
    "atcd": "ATCD (Adversarial Training using Contrastive Divergence)",
    "standard": "standard training (no adversarial examples)",
    "pgd": "PGD adversarial training (Madry et al. 2018)",
    "trades": "TRADES (Zhang et al. 2019)",
    "free": "Free adversarial training (Shafahi et al. 2019)",
    "fast": "Fast adversarial training, FGSM with random start (Wong et al. 2020)",
    "yopo": "YOPO (Zhang et al. 2019)",
}

_ATCD_BIBTEX = """@misc{atcd,
  title = {Adversarial Training Using Contrastive Divergence},
  author = {Anonymous},
  note = {Under review as a conference paper at ICLR 2021},
}"""
_AUTOATTACK_BIBTEX = """@inproceedings{croce2020autoattack,
  title = {Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks},
  author = {Croce, Francesco and Hein, Matthias},
  booktitle = {International Conference on Machine Learning (ICML)},
  year = {2020},
}"""


def _card(data: ModelCardData, body: str) -> ModelCard:
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _precision_text(results: dict) -> str:
    """The evaluation precision as the card states it (results from before --eval-precision: the launcher's)."""
    p = results.get("eval_precision")
    if p is None:
        return "the precision of its launch (not recorded)"
    return {"fp32": "fp32 (TF32 off)", "tf32": "fp32 with TF32 matmuls"}.get(p, f"{p} autocast")


def _reproduce_command(model: str, results: dict) -> str:
    acfg = results.get("attack_config", {})
    attacks = [a for a in results["results"] if a != "worst_case"]
    dataset = results.get("dataset") or "folder"
    parts = ["python validate.py", f"--model {model}"]
    parts += [f"--dataset {dataset}"] if dataset in HUB_DATASETS else ["--dataset folder --data-dir DATA_DIR"]
    parts += [f"--split {results.get('split', 'test')}", f"--eps {eps_text(float(results['eps']))}",
              f"--attacks {','.join(attacks)}", f"--num-samples {results['num_samples']}"]
    if any(a not in ("clean", "fgsm", "autoattack") for a in attacks):
        steps = acfg.get("steps", 40)
        parts.append(f"--attack-steps {steps}")
        if "step_size" in acfg and abs(acfg["step_size"] - 2.5 * float(results["eps"]) / steps) > 1e-12:
            parts.append(f"--attack-step {acfg['step_size']!r}")
        parts += [f"--attack-restarts {acfg.get('restarts', 1)}", f"--attack-loss {acfg.get('loss', 'ce')}"]
        if acfg.get("step_schedule", "constant") != "constant":
            parts.append(f"--attack-step-schedule {acfg['step_schedule']}")
    if results.get("eval_precision", "fp32") != "fp32":
        parts.append(f"--eval-precision {results['eval_precision']}")
    if "autoattack" in attacks and acfg.get("aa_version", "standard") != "standard":
        parts.append(f"--aa-version {acfg['aa_version']}")
        if acfg.get("aa_attacks"):
            parts.append(f"--aa-attacks {','.join(acfg['aa_attacks'])}")
    if "hmc" in attacks:
        parts += [f"--hmc-momentum {acfg.get('hmc_momentum', 1.0)}",
                  f"--hmc-temperature {acfg.get('hmc_temperature', 1.0)}"]
    parts.append(f"--seed {acfg.get('seed', 0)}")
    return " ".join(parts)


def _summary_cost(rows: list[dict]) -> dict:
    by_epoch = {r.get("epoch"): r for r in rows}  # a resumed run may repeat an epoch: the last row wins
    rows = list(by_epoch.values())
    cost: dict[str, Any] = {"epochs": len(rows), "seconds": sum(float(r.get("seconds") or 0) for r in rows)}
    for key in rows[0] if rows else ():
        if key.endswith("_passes"):
            cost[key] = sum(int(float(r.get(key) or 0)) for r in rows)
    if rows and rows[-1].get("num_updates"):
        cost["num_updates"] = int(float(rows[-1]["num_updates"]))
    cost["last"] = rows[-1] if rows else {}
    return cost


def _method_name(train_args: dict) -> tuple[str, str]:
    """(readable name, label) of a run's method; the label adds the flags that change what it computes
    ('atcd --reuse-grad'), so such a run is never presented as the plain method."""
    method = train_args.get("method", "unknown")
    label = get_method_class(method).label(train_args) if method in list_methods() else method
    flags = label[len(method):].strip()
    return _METHODS.get(method, method) + (f" with `{flags}`" if flags else ""), label


def _this_machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def _training_section(train_args: dict, arch: str, summary_rows: list[dict] | None, hardware: str | None) -> str:
    name, label = _method_name(train_args)
    lines = ["## Training", "",
             (f"Method: {name} (`--method {label}`), model `{arch}`, data "
             f"`{train_args.get('dataset') or train_args.get('data_dir')}`. `args.yaml` holds the exact configuration "
             "(`python train_atcd.py -c args.yaml` runs it again)."), ""]
    tables = (("Method options", option_table(train_args, "method")),
              ("Optimisation", option_table(train_args, "optimisation")))
    for title, rows in tables:
        if rows:
            lines += [f"{title}:", "", "| option | value | meaning |", "|---|---|---|"]
            lines += [f"| `{flag}` | `{value}` | {help_text} |" for flag, value, help_text in rows]
            lines.append("")
    lines += ["Training cost (from `summary.csv`):", ""]
    if summary_rows:
        cost = _summary_cost(summary_rows)
        passes = {k: v for k, v in cost.items() if k.endswith("_passes")}
        total = sum(v for k, v in passes.items() if k != "stem_passes")  # a stem pass is a fraction of one
        last = cost["last"]
        lines += [
            (f"- epochs: {cost['epochs']}; optimizer updates: {cost.get('num_updates', 'n/a')}; batch size "
            f"{train_args.get('batch_size')} per process"),
            "- network passes over minibatches: "
            + ", ".join(f"{k.removesuffix('_passes').replace('_', '-')} {v:,}" for k, v in passes.items())
            + f" (total {total:,})",
            (f"- wall time of the training loop: {cost['seconds']:.1f} s (without start-up and the per-epoch "
            "monitoring evaluation)"),
            (f"- last epoch's monitoring numbers on {train_args.get('eval_samples')} test images (never used for "
            f"selection): clean {last.get('eval_top1')}%, PGD-{train_args.get('eval_attack_steps')} "
            f"{last.get('eval_pgd_top1')}%"),
        ]
        acc = [float(r["mh_accept"]) for r in summary_rows if r.get("mh_accept") not in (None, "")]
        if acc:  # ATCD with M-H: say whether the test acted (issue 33: at kappa_H = 0, tau = 1 it did not)
            lines.append(f"- Metropolis-Hastings acceptance per epoch: {min(acc):.4f}-{max(acc):.4f}" + (
                "; the test (almost) never rejected, so the chains ran as warm-started PGD steps and its forward pass "
                "per replay bought nothing (MNIST recipe: reports/mnist-mini/mh_acceptance.md)"
                if min(acc) >= 0.999 else ""))
        elif train_args.get("method") == "atcd" and train_args.get("mh") is False:
            lines.append("- Metropolis-Hastings test: off (`--no-mh`); at the paper's settings (kappa_H = 0, tau = 1) "
                         "it never rejected on MNIST (reports/mnist-mini/mh_acceptance.md), so its forward pass per "
                         "replay is not paid")
    else:
        lines.append("- the run folder had no `summary.csv`")
    lines.append(f"- hardware: {hardware}" if hardware else
                 f"- hardware: not recorded by the training run (publish.py ran on: {_this_machine()})")
    return "\n".join(lines) + "\n"


def _limitations_section(results: dict, eval_results: list[EvalResult]) -> str:
    n = int(results["num_samples"])
    p = min((er.metric_value for er in eval_results), default=0.0) / 100
    se = max(100 * (p * (1 - p) / n) ** 0.5, 50 / n)  # binomial standard error, floored at half a sample
    lines = ["## Limitations", "",
             (f"- Robustness is measured only against {results['norm']} attacks at ε = "
             f"{eps_text(float(results['eps']))}, on {n} images (standard error about ±{se:.1f} points at the "
             "lowest number). Other norms, larger ε and distribution shift were not evaluated. These are empirical "
             "numbers, not certified bounds."),
             ("- Gradient attacks such as PGD overstate robustness on small models; AutoAttack is the number to "
             "compare, and only with results at the same ε, norm and test set."),
             "- One training run (one seed); no variance across seeds is reported."]
    if results.get("dataset") in HUB_DATASETS:
        lines.append(f"- The test set is {HUB_DATASETS[results['dataset']][1]}, not the full 10,000-image MNIST test "
                     "set: the numbers are not directly comparable with published MNIST tables.")
    lines.append("- Inputs must be preprocessed as above: fed unnormalised or 0-255 inputs, or attacked in normalised "
                 "space, the model sees a different ε.")
    return "\n".join(lines) + "\n"


def build_model_card(
        repo_id: str,
        train_args: dict,
        results: dict,
        model_config: dict,
        summary_rows: list[dict] | None = None,
        license: str = "apache-2.0",
        hardware: str | None = None,
        weights_sha256: str | None = None,
        dataset_id: str | None = None,
        weights_name: str = "model.safetensors",
) -> ModelCard:
    """The model card of a published run: Hub metadata with a `model-index` plus the human sections.

    Args:
        repo_id: `org/name` the card is for.
        train_args: the run's args.yaml.
        results: validate.py's results JSON for these weights.
        model_config: the config.json written by `timm.models.save_for_hf`.
        summary_rows: rows of the run's summary.csv (training cost), if any.
        license: license id of the weights.
        hardware: what training ran on (the run folder does not record it).
        weights_sha256: sha256 of the published model.safetensors.
        dataset_id: Hub dataset id (default: derived from the dataset name).
        weights_name: the run's weights file that was published (and measured).
    """
    eval_results = eval_results_from_validate(results, dataset_id)
    method, arch = train_args.get("method", "unknown"), model_config["architecture"]
    train_ds = train_args.get("dataset") or train_args.get("data_dir")
    hub_datasets = {dataset_ids(train_ds, dataset_id)[0], eval_results[0].dataset_type}
    library, library_tags = card_library(arch)
    tags = list(dict.fromkeys(["image-classification", *library_tags, "adversarial-robustness", "atcd", method]))
    data = ModelCardData(library_name=library, license=license, tags=tags, pipeline_tag="image-classification",
                         datasets=sorted(d for d in hub_datasets if "/" in d) or None,
                         model_name=repo_id.split("/")[-1], eval_results=eval_results)
    pcfg = model_config.get("pretrained_cfg", {})
    headline = ", ".join(f"{attack_label(er.metric_args['attack'], er.metric_args)} {er.metric_value}%"
                         for er in eval_results if er.metric_args["attack"] != "worst_case")
    body = f"""
# {repo_id.split("/")[-1]}

`{arch}` ({model_config.get("num_classes")} classes, input {tuple(pcfg.get("input_size", ()))}) trained with
**{_method_name(train_args)[0]}** on `{train_ds}` by the ATCD suite (atcd {__version__}, timm {timm.__version__}).
On {results["num_samples"]} `{results.get("dataset")}` {results.get("split", "test")} images at {results["norm"]}
ε = {eps_text(float(results["eps"]))} ([0, 1] pixel units), evaluated in {_precision_text(results)}: {headline}.

## Robustness

{results_block(eval_results)}

Reproduce these numbers (same images, attacks and seeds):

```bash
{_reproduce_command("hf-hub:" + repo_id, results)}
```

{protocol_section(results, train_args, weights_name, results.get('weights_sha256'), additional_data=False)}
{usage_section(repo_id, arch, pcfg)}
{_training_section(train_args, arch, summary_rows, hardware)}
## Files

- `model.safetensors`: weights of the bare timm model (the run's `{weights_name}`), sha256 `{weights_sha256}`
  (no pickle files)
- `config.json`: timm's config (`architecture`, `num_classes`, `label_names`, `pretrained_cfg` with mean / std /
  input_size / crop)
- `args.yaml`: the exact training configuration; `summary.csv`: the per-epoch training log
- `results.json`: the validate.py output the numbers above come from

{_limitations_section(results, eval_results)}
## Citation

```bibtex
{_ATCD_BIBTEX}
```

Robustness evaluated with AutoAttack:

```bibtex
{_AUTOATTACK_BIBTEX}
```
"""
    return _card(data, body)


def update_card_with_results(
        card_path_or_repo: str,
        results: dict,
        push: bool = False,
        *,
        out_path: str | None = None,
        repo_id: str | None = None,
        revision: str | None = None,
        dataset_id: str | None = None,
) -> ModelCard:
    """Add (or replace) the eval results of a validate.py run in a model card.

    A result replaces an existing one with the same dataset, split, attack, norm and ε (a worst-case row also
    by the attacks it covers); the others are appended. The card's robustness table is re-rendered from the
    updated `model-index`.

    Args:
        card_path_or_repo: a README.md, a folder holding one, or a repo id `org/name` (its README.md at
            `revision`, read from the Hub or the local cache).
        results: the dict validate.py writes with `--results-file`.
        push: upload the updated card to the Hub (token from `get_token()`, never printed).
        out_path: where to write the card (default: back to `card_path_or_repo` when that is a local path).
        repo_id: the repo to push to when `card_path_or_repo` is a local path.
        revision: branch of the repo to read the card from and push it to (default main).
        dataset_id: Hub dataset id the results are filed under.

    Returns:
        The updated card.

    Raises:
        HubError: the card cannot be read or written, or there is nowhere to write it.
    """
    path = Path(card_path_or_repo)
    local = path.exists()
    push_repo = repo_id or (None if local else card_path_or_repo)
    if push and push_repo is None:
        raise HubError("push=True needs repo_id when the card is a local file")
    if path.is_dir():
        path = path / CARD_NAME
    elif not local and (card_path_or_repo.endswith(".md") or card_path_or_repo.count("/") != 1):
        raise HubError(f"{card_path_or_repo}: no such card file (and not an org/name repo id)")
    try:
        if not local:  # the card of a repo at a revision, through the cache
            from huggingface_hub import hf_hub_download
            path = Path(hf_hub_download(card_path_or_repo, CARD_NAME, revision=revision))
        card = ModelCard.load(path)
    except (HfHubHTTPError, EntryNotFoundError, HFValidationError, OfflineModeIsEnabled) as e:
        raise hub_error(f"hf-hub:{card_path_or_repo}", e, CARD_NAME) from None
    except (*NETWORK_ERRORS, ValueError) as e:
        raise HubError(f"{card_path_or_repo}: cannot read a model card ({type(e).__name__}: {one_line(e)})") \
            from None
    new = eval_results_from_validate(results, dataset_id)
    keys = {result_key(er) for er in new}
    old = [er for er in (card.data.eval_results or []) if result_key(er) not in keys]
    card.data.eval_results = old + new
    card.data.model_name = card.data.model_name or (repo_id or card_path_or_repo).rstrip("/").split("/")[-1]
    block = results_block(card.data.eval_results)
    text = card.text
    if RESULTS_BEGIN in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_BEGIN, 1)
        text = head + block + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Robustness\n\n" + block + "\n"
    card = _card(card.data, text)
    target = out_path or (str(path) if local else None)
    if target is None and not push:
        raise HubError(f"{card_path_or_repo} is a repo id: give out_path to write the card locally, or push=True")
    if target is not None:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, str(card))
    if push:
        require_token()
        try:
            card.push_to_hub(push_repo, revision=revision, commit_message="Update eval results (validate.py)")
        except (HfHubHTTPError, OfflineModeIsEnabled) as e:
            raise hub_error(f"hf-hub:{push_repo}", e) from None
        except NETWORK_ERRORS as e:
            raise unreachable(f"hf-hub:{push_repo}", e) from None
    return card

