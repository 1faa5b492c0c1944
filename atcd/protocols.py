"""Evaluation protocols (`validate.py --protocol NAME`): a name resolved into concrete `EvalConfig` values before the
run, so the evaluation itself is the ordinary one and its results file records every value used.

`robustbench` is what RobustBench's `benchmark()` (robustbench 1.1.1, `eval.py`) does:

* images: CIFAR-10/100 the first N test images in torchvision's order (`load_cifar10`: `--dataset torch/cifar10`,
  split `test[:N]`, N = `--num-samples`, default the whole 10,000); ImageNet the first N (default 5,000) of its
  `helper_files/imagenet_test_image_ids.txt` list (`--sample-ids`), from the `val/` folder of `--data-dir`;
* preprocessing: CIFAR none (the 32 px images as they are); ImageNet the entry's (`Res256Crop224`,
  `BicubicRes256Crop224`, ...), read from the hub folder written by `scripts/import_checkpoint.py --robustbench`;
* attack: clean accuracy, then AutoAttack version standard at the threat model's ε (CIFAR L∞ 8/255, ImageNet
  L∞ 4/255; an `--eps` given is used instead, as `benchmark(eps=...)`, with a warning: not a leaderboard number).
  `benchmark()` seeds AutoAttack with the time; here the seed is `--seed`'s (per chunk, as always).
"""
import json
import logging
import os
from dataclasses import replace

from .errors import ConfigError

__all__ = ["PROTOCOLS", "protocol_eps", "resolve_protocol", "zoo_info"]

_logger = logging.getLogger(__name__)

PROTOCOLS = ("robustbench",)
_CIFAR = {"cifar10": 10000, "cifar100": 10000}
_IMAGENET_N = 5000
_PREP = {  # robustbench.data.PREPROCESSINGS as the evaluation's resize flags (img_size, crop_pct, interpolation)
    None: None,
    "Res256Crop224": (224, 0.875, "bilinear"),
    "BicubicRes256Crop224": (224, 0.875, "bicubic"),
    "Res224": (224, 1.0, "bilinear"),
    "Crop288": (288, 1.0, "bilinear"),
}
_INEXACT = {"Res224": "RobustBench squashes the image to 224x224 (no aspect kept); the suite's transform resizes the "
                      "short side and crops", "Crop288": "RobustBench crops 288 px without resizing first; the "
                      "suite's transform resizes the short side to 288, then crops"}


def zoo_info(model: str) -> dict | None:
    """The `robustbench` block of a hub folder's config.json (written by the zoo importer), or None."""
    path = None
    if model.startswith("local-dir:"):
        path = os.path.join(model[len("local-dir:"):], "config.json")
    elif model.startswith("hf-hub:"):
        try:
            from huggingface_hub import hf_hub_download
            path = hf_hub_download(model[len("hf-hub:"):].split("@")[0], "config.json")
        except Exception:  # noqa: BLE001  (offline, no such repo: the dataset then decides)
            return None
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("robustbench")


def protocol_eps(run: dict) -> float:
    """The ε the protocol of the parsed options `run` evaluates at (before `resolve_protocol`, which sets it)."""
    from .models.sources import expand_models
    models = expand_models(run["model"], run.get("model_list"))
    info = zoo_info(models[0]) if len(models) == 1 else None
    dataset = (info or {}).get("dataset") or (run.get("dataset") or "").removeprefix("torch/")
    return 8 / 255 if dataset in _CIFAR else 4 / 255


def resolve_protocol(cfg):
    """`cfg` with the values of its `--protocol` (none: `cfg` itself), validated again.

    Raises:
        ConfigError: a protocol that cannot apply (several models, no data, an unsupported threat model).
    """
    if not getattr(cfg, "protocol", None):
        return cfg
    if cfg.protocol != "robustbench":
        raise ConfigError(f"unknown --protocol {cfg.protocol!r}; available: {', '.join(PROTOCOLS)}")
    return _robustbench(cfg).validate()


def _robustbench_dataset(cfg, info: dict | None) -> str:
    if info and info.get("dataset"):
        return info["dataset"]
    if cfg.dataset in ("torch/cifar10", "torch/cifar100"):
        return cfg.dataset.split("/")[1]
    if cfg.dataset in ("folder", "imagefolder"):
        return "imagenet"
    raise ConfigError(f"--protocol robustbench evaluates CIFAR-10/100 (--dataset torch/cifar10) or ImageNet (an image "
                      f"folder with val/); --dataset {cfg.dataset} is neither, and the model is not a RobustBench "
                      f"import that says which")


def _robustbench(cfg):
    models = cfg.models
    if len(models) != 1:
        raise ConfigError("--protocol robustbench evaluates one model at a time (got several)")
    info = zoo_info(models[0])
    dataset = _robustbench_dataset(cfg, info)
    threat = (info or {}).get("threat_model", "Linf")
    if threat != "Linf":
        raise ConfigError(f"--protocol robustbench: threat model {threat}; the suite's attacks are L-inf only")
    if not cfg.data_dir:
        raise ConfigError(f"--protocol robustbench needs --data-dir: the {dataset} data "
                          + ("(torchvision's CIFAR folder; --dataset-download fetches it)" if dataset in _CIFAR
                             else "(an ImageNet folder with val/<wnid>/*.JPEG)"))
    eps = 8 / 255 if dataset in _CIFAR else 4 / 255
    if abs(cfg.attack.eps - protocol_eps({"model": models[0], "dataset": cfg.dataset})) > 1e-12:
        eps = cfg.attack.eps  # --eps given: benchmark(eps=...) at another radius, never a leaderboard number
        _logger.warning("--protocol robustbench at --eps %.4g: not the leaderboard's threat model", eps)
    opts = cfg.attack.options_for("autoattack")
    attack = replace(cfg.attack, eps=eps, step_size=None,
                     options={**cfg.attack.options, "autoattack": replace(opts, aa_version="standard", aa_attacks=())})
    common = {"attacks": ("clean", "autoattack"), "attack": attack, "sweep_steps": (), "sweep_eps": ()}
    if dataset in _CIFAR:
        expected = f"torch/{dataset}"
        if cfg.dataset not in (expected, "folder", None) and not cfg.dataset.startswith("torch/"):
            raise ConfigError(f"--protocol robustbench on {dataset}: --dataset {expected} (got {cfg.dataset})")
        n = min(cfg.num_samples or _CIFAR[dataset], _CIFAR[dataset])
        out = replace(cfg, dataset=expected, split=f"test[:{n}]", num_samples=None, sample_ids=None,
                      input_size=None, img_size=32, crop_pct=1.0, interpolation="bilinear", **common)
        what = f"{dataset} Linf: the first {n} test images in torchvision's order, no preprocessing"
    else:
        from .models.zoo_package import robustbench
        rb = robustbench()
        ids = os.path.join(os.path.dirname(rb.__file__), "helper_files", "imagenet_test_image_ids.txt")
        n = min(cfg.num_samples or _IMAGENET_N, _IMAGENET_N)
        prep = (info or {}).get("preprocessing", "Res256Crop224")
        if prep is not None and prep.startswith("timm:"):
            size, crop, interp = None, None, None  # the model's own timm data config (robustbench's rule)
        elif prep in _PREP and _PREP[prep] is not None:
            size, crop, interp = _PREP[prep]
        else:
            raise ConfigError(f"--protocol robustbench: unknown RobustBench preprocessing {prep!r}")
        if prep in _INEXACT:
            _logger.warning("--protocol robustbench, preprocessing %s: %s", prep, _INEXACT[prep])
        out = replace(cfg, dataset="folder", split="val", num_samples=n, sample_ids=ids, input_size=None,
                      img_size=size, crop_pct=crop, interpolation=interp, **common)
        what = f"imagenet Linf: the first {n} images of RobustBench's list, preprocessing {prep}"
    print(f"protocol robustbench: {what}; clean + AutoAttack standard at eps {eps:.4g}, seed {cfg.attack.seed}")
    return out
