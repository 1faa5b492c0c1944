"""Publish a training run: a Hub-ready folder in timm's layout (`export_run`) and its upload (`push_folder`).

The folder holds timm's `config.json` + `model.safetensors` (`timm.models.save_for_hf`), the run's `args.yaml` and
`summary.csv`, validate.py's `results.json` and a model card. The token is only ever read by `huggingface_hub`
itself (`get_token()`: `HF_TOKEN` or the login); nothing here prints or stores it.
"""
import csv
import json
import logging
import os
import shutil
import tempfile

import torch
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils.sha import sha_fileobj
from safetensors.torch import load_file
from timm.models import save_for_hf

from .. import __version__
from ..checkpoint import atomic_write_text, load_weights
from ..data import resolve_data_config
from ..models import build_model, timm_kwargs, unwrap_timm
from ..models.hub import CONFIG_NAME, NETWORK_ERRORS, WEIGHTS_NAME, HubError, hub_error, one_line, unreachable
from .auth import assert_no_token, require_token
from .card import CARD_NAME, build_model_card
from .labels import eps_text

__all__ = ["export_run", "push_folder"]

_logger = logging.getLogger(__name__)


def _read_results(path: str, run_dir: str, train_args: dict) -> dict:
    if not os.path.isfile(path):
        raise HubError(f"no results file {path}: measure the weights first, e.g. python validate.py --checkpoint "
                       f"{os.path.join(run_dir, WEIGHTS_NAME)} --attacks clean,pgd,autoattack --eps "
                       f"{eps_text(float(train_args.get('eps', 0.3)))} --results-file {path}")
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise HubError(f"{path}: not a readable results JSON ({one_line(e)})") from None
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

    from ..data import create_atcd_dataset
    from ..data.factory import list_builtin_datasets
    names = None
    if train_args.get("dataset") in list_builtin_datasets():
        names = getattr(create_atcd_dataset(train_args["dataset"], "test"), "classes", None)
    elif train_args.get("data_dir") and os.path.isdir(os.path.join(train_args["data_dir"], "train")):
        root = os.path.join(train_args["data_dir"], "train")
        names = sorted((d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))), key=natural_key)
    return list(names) if names and len(names) == num_classes else None


def _data_config(model, train_args: dict) -> dict | None:
    """The size, crop and interpolation the run's eval transform used, when its flags changed them: the published
    `pretrained_cfg` then states them (its mean/std come from `build_model(mean=, std=)`)."""
    flags = ("input_size", "img_size", "crop_pct", "interpolation")
    if all(train_args.get(k) is None for k in flags):
        return None
    dc = resolve_data_config(model.pretrained_cfg, *(train_args.get(k) for k in ("input_size", "img_size", "in_chans",
                                                                                 "crop_pct", "interpolation")))
    return {k: dc[k] for k in ("input_size", "crop_pct", "interpolation")}


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

    model = unwrap_timm(build_model(train_args["model"], num_classes=train_args.get("num_classes"),  # --mean/--std
                                    in_chans=train_args.get("in_chans"), mean=train_args.get("mean"),  # reach
                                    std=train_args.get("std"),  # the published pretrained_cfg
                                    reset_classifier=True,  # strict load below
                                    **timm_kwargs(model_kwargs=train_args.get("model_kwargs") or ())))
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
                                  "pretrained_cfg": {"tag": tag, "license": license}},
                    data_config=_data_config(model, train_args))
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
        assert_no_token(tmp)
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


def push_folder(folder: str, repo_id: str, private: bool = False, revision: str | None = None,
                commit_message: str | None = None) -> str:
    """`create_repo` + `upload_folder` of an exported folder; returns the commit URL.

    The token comes from `huggingface_hub.get_token()` (HF_TOKEN or the saved login); it is never printed.

    Raises:
        HubError: no token, offline, or the Hub refused the upload.
    """
    require_token()
    assert_no_token(folder)
    api = HfApi(library_name="atcd", library_version=__version__)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_url.repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_url.repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message or "Upload model (atcd scripts/publish.py)")
    except (HfHubHTTPError, HFValidationError, OfflineModeIsEnabled) as e:
        raise hub_error(f"hf-hub:{repo_id}", e) from None
    except NETWORK_ERRORS as e:
        raise unreachable(f"hf-hub:{repo_id}", e) from None
    return str(getattr(info, "commit_url", info))

