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
from collections.abc import Callable

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
from ..models import NormalizedModel, build_model, timm_kwargs, unwrap_timm
from ..models.hub import CONFIG_NAME, NETWORK_ERRORS, WEIGHTS_NAME, HubError, hub_error, unreachable
from .auth import assert_no_token, require_token
from .card import CARD_NAME, build_model_card
from .measured import read_measured_results, run_weights
from .robustbench import model_info

__all__ = ["ROBUSTBENCH_INFO_NAME", "export_run", "measured_hub_folder", "push_folder"]

_logger = logging.getLogger(__name__)

ROBUSTBENCH_INFO_NAME = "robustbench_model_info.json"


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


def _data_config(model, train_args: dict, results: dict) -> dict:
    """The data config the card's numbers were measured with, for `save_for_hf`: validate.py records it (size, crop,
    interpolation of the transform; mean/std of the model wrapper); for a results file without it, the run's flags.
    Given in full, it also drops the source cfg's `test_input_size` / `test_crop_pct`, which no number here used."""
    dc = results.get("data_config")
    if not dc:
        _logger.warning("the results JSON records no data_config (an older validate.py): publishing the run's")
        dc = resolve_data_config(model.pretrained_cfg, *(train_args.get(k) for k in (
            "input_size", "img_size", "in_chans", "crop_pct", "interpolation")))
        wrapper = NormalizedModel.from_timm(model, train_args.get("in_chans"), train_args.get("mean"),
                                            train_args.get("std"))
        dc = {**dc, "mean": wrapper.mean.flatten().tolist(), "std": wrapper.std.flatten().tolist()}
    return {"input_size": tuple(dc["input_size"]), "crop_pct": float(dc["crop_pct"]), "crop_mode": "center",
            "interpolation": dc["interpolation"], "mean": tuple(dc["mean"]), "std": tuple(dc["std"])}


def export_run(
        run_dir: str,
        repo_id: str,
        out_dir: str | None = None,
        results_path: str | None = None,
        license: str | None = None,
        hardware: str | None = None,
        dataset_id: str | None = None,
        weights: str = "final",
        robustbench_info: dict | None = None,
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
        license: license id of the weights (card metadata and pretrained_cfg); required unless the run trained on
            the bundled mnist-mini (then apache-2.0): weights trained on other data may carry that data's terms.
        hardware: what training ran on, for the card.
        dataset_id: Hub dataset id (default: derived from the dataset name).
        weights: which of the run's weights to publish: final, best or ema (`atcd.publish.measured.WEIGHTS`); the
            results JSON must have measured that very file.
        robustbench_info: when given (keys name, authors, venue, link of `atcd.publish.robustbench.model_info`),
            also write RobustBench's model_info JSON into the folder as `ROBUSTBENCH_INFO_NAME`.

    Returns:
        The folder written.

    Raises:
        HubError: missing or inconsistent inputs.
    """
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise HubError(f"--repo-id must be org/name (got {repo_id!r})")
    if not os.path.isfile(os.path.join(run_dir, "args.yaml")):
        raise HubError(f"{run_dir} has no args.yaml (expected a train_atcd.py run folder)")
    weights = run_weights(run_dir, weights)
    with open(os.path.join(run_dir, "args.yaml")) as f:
        train_args = yaml.safe_load(f) or {}
    if license is None:
        if train_args.get("dataset") != "mnist-mini":
            raise HubError(f"--license is required: {run_dir} was trained on {train_args.get('dataset')} data, whose "
                           f"terms may bind the weights (ImageNet's do); give the license you may use, e.g. --license "
                           f"other, or --license apache-2.0 for data that allows it")
        license = "apache-2.0"  # the suite's own; the bundled MNIST digits put no terms on the weights
        _logger.info("--license apache-2.0 (the weights were trained on the bundled mnist-mini)")
    results_path = results_path or os.path.join(run_dir, "results.json")
    results = read_measured_results(results_path, weights, train_args)
    info = model_info(results, train_args["model"], **robustbench_info) if robustbench_info is not None else None
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
    load_weights(model, weights)
    out_dir = out_dir or os.path.join(run_dir, "hf-export")

    def fill(tmp: str):
        tag = f"{train_args.get('method')}_{train_args.get('dataset') or 'folder'}"
        model_config = save_checked(model, tmp, load_file(weights), weights,
                                    model_config={"label_names": _label_names(train_args, model.num_classes),
                                                  "pretrained_cfg": {"tag": tag, "license": license}},
                                    data_config=_data_config(model, train_args, results))
        shutil.copyfile(os.path.join(run_dir, "args.yaml"), os.path.join(tmp, "args.yaml"))
        if summary_rows is not None:
            shutil.copyfile(summary_path, os.path.join(tmp, "summary.csv"))
        atomic_write_text(os.path.join(tmp, "results.json"), json.dumps(results, indent=2))
        with open(os.path.join(tmp, WEIGHTS_NAME), "rb") as f:
            sha = sha_fileobj(f).hex()
        card = build_model_card(repo_id, train_args, results, model_config, summary_rows, license=license,
                                hardware=hardware, weights_sha256=sha, dataset_id=dataset_id,
                                weights_name=os.path.basename(weights))
        atomic_write_text(os.path.join(tmp, CARD_NAME), str(card))
        if info is not None:
            atomic_write_text(os.path.join(tmp, ROBUSTBENCH_INFO_NAME), json.dumps(info, indent=2) + "\n")
        assert_no_token(tmp)

    write_folder(out_dir, fill)
    return out_dir


def save_checked(model: torch.nn.Module, folder: str, expected: dict, source: str, **kwargs) -> dict:
    """`timm.models.save_for_hf` into `folder`, checked tensor by tensor against `expected` (the state dict of
    `source`); returns the config.json written."""
    save_for_hf(model, folder, safe_serialization=True, **kwargs)
    written = load_file(os.path.join(folder, WEIGHTS_NAME))
    if written.keys() != expected.keys() or any(not torch.equal(written[k], expected[k]) for k in expected):
        raise HubError(f"the weights written by save_for_hf differ from {source}")
    with open(os.path.join(folder, CONFIG_NAME)) as f:
        return json.load(f)


def write_folder(out_dir: str, fill: Callable[[str], None]):
    """Build a hub folder with `fill(tmp)` in a temp dir beside `out_dir`, then rename it into place (an earlier hub
    folder there is replaced; any other non-empty folder is refused). Nothing is left behind on failure."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, CONFIG_NAME)):
        raise HubError(f"{out_dir} exists and is not an earlier export (no {CONFIG_NAME}); choose another --out")
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-hf-export-")
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def measured_hub_folder(folder: str) -> str:
    """A hub folder to push as it is (e.g. written by scripts/import_checkpoint.py): config.json, model.safetensors
    and a card that holds measured results (`validate.py --update-card`).

    Raises:
        HubError: a file is missing, or the card records no evaluation.
    """
    from huggingface_hub import ModelCard
    for f in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME):
        if not os.path.isfile(os.path.join(folder, f)):
            raise HubError(f"{folder} has no {f} (expected a train_atcd.py run or a hub folder)")
    if not ModelCard.load(os.path.join(folder, CARD_NAME)).data.eval_results:
        raise HubError(f"{folder}: its card records no results; measure them first: python validate.py --model "
                       f"local-dir:{folder} --attacks clean,autoattack --eps EPS --update-card {folder}")
    return folder


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

