"""RobustBench's model zoo as timm hub folders (`scripts/import_checkpoint.py --robustbench cifar10/Linf/NAME`).

The zoo's own module is built and loaded by the `robustbench` package (the optional `[zoo]` extra): from the user's
downloaded file, or, online, downloaded by robustbench's `load_model` into its model folder. The module is then
mapped onto a timm architecture (timm's own for torchvision ResNets and the timm models the zoo builds; those
registered by `atcd.models` for the CIFAR networks), its logits are compared with the zoo module's on random inputs
(max |Δlogit| <= `LOGIT_TOL`, else the import is refused), and a hub folder is written: `config.json` (the zoo's
preprocessing as timm's data config), `model.safetensors`, a card with the threat model, ε, the paper and the
accuracies RobustBench reports (labelled as reported; `validate.py --update-card` adds measured ones).
`atcd.publish.zoo_coverage.coverage()` runs that on every entry of a table with seeded random weights; the package
and its tables are `atcd.models.zoo_package`, the mapping onto timm `atcd.publish.zoo_map`.
"""
import importlib
import importlib.metadata
import logging
import math
import os
import re
import shutil
import tempfile

import timm
import torch
from huggingface_hub import ModelCard, ModelCardData
from torch import nn

from ..checkpoint import atomic_write_text
from ..models.hub import HubError, one_line
from ..models.zoo_package import (
    _ROW,
    _SECTIONS,
    LOGIT_TOL,
    NUM_CLASSES,
    THREAT_EPS,
    _entry,
    _is_ensemble,
    _timm_name,
    robustbench,
    split_spec,
    zoo_entries,
)
from ..provenance import file_sha256
from .card import CARD_NAME
from .export import save_checked, write_folder
from .labels import eps_text
from .usage import card_library, usage_section
from .zoo_map import _PREPROCESSING, ZooMapping, ZooUnsupported, create_mapped, map_to_timm, verify

__all__ = [
    "LOGIT_TOL",
    "THREAT_EPS",
    "ZooMapping",
    "ZooUnsupported",
    "import_zoo",
    "load_zoo_module",
    "map_to_timm",
    "preprocessing",
    "random_zoo_module",
    "reported",
    "robustbench",
    "robustbench_model",
    "split_spec",
    "zoo_entries",
    "zoo_file_content",
    "zoo_file_state_dict",
]

_logger = logging.getLogger(__name__)

def reported(dataset: str, threat: str, name: str) -> dict | None:
    """What RobustBench reports for an entry, read from the leaderboard tables of the installed package's README
    (its `model_info` JSON files are not shipped in the wheel): clean and robust (AutoAttack) accuracy in %, paper
    title and link, architecture, venue. None when the entry is not in the tables."""
    try:
        text = importlib.metadata.metadata("robustbench").get_payload() or ""
    except importlib.metadata.PackageNotFoundError:
        return None
    section, sub = None, None
    for line in text.splitlines():
        if line.startswith("### "):
            section, sub = line.strip(), None
        elif line.startswith("#### "):
            sub = line[5:].split(",")[0].strip()
        elif section == _SECTIONS.get(dataset) and sub == threat:
            m = _ROW.match(line.strip())
            if m and m["id"].strip() == name:
                return {"clean_acc": float(m["clean"]), "autoattack_acc": float(m["robust"]),
                        "title": (m["title"] or m["plain"] or "").strip(), "link": (m["link"] or "").strip(),
                        "architecture": m["arch"].strip(), "venue": re.sub(r"<br/?>", " ", m["venue"]).strip(),
                        "source": f"robustbench {importlib.metadata.version('robustbench')} README leaderboard"}
    return None


def _citation(name: str, rep: dict | None) -> str:
    """A BibTeX entry from what the package records (title, venue, year, link; it records no authors)."""
    if not rep or not rep.get("title"):
        return ""
    year = next(iter(re.findall(r"(?:19|20)\d\d", rep.get("venue", "") or name)), "")
    key = re.sub(r"[^A-Za-z0-9]", "", name.split("_")[0])
    return (f"@misc{{{key},\n  title = {{{rep['title']}}},\n  howpublished = {{{rep.get('venue', '')}}},\n"
            f"  year = {{{year}}},\n  url = {{{rep.get('link', '')}}}\n}}")


# ---------------------------------------------------------------- the zoo module

def _build(dataset: str, threat: str, name: str) -> nn.Module:
    entry = _entry(dataset, threat, name)
    tname = _timm_name(dataset, threat, name)
    if timm.is_model(tname):  # registered by robustbench; its pretrained=True would download
        return timm.create_model(tname, pretrained=False, num_classes=NUM_CLASSES[dataset])
    if _is_torchvision_standard(dataset, name):  # the zoo's own wrapper around torchvision's ResNet-50, no download
        import torchvision
        normalize_model = robustbench().model_zoo.architectures.utils_architectures.normalize_model
        return normalize_model(torchvision.models.resnet50(weights=None), _IMAGENET_MEAN, _IMAGENET_STD)
    return entry["model"]()


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # robustbench.model_zoo.imagenet


def _is_torchvision_standard(dataset: str, name: str) -> bool:
    """ImageNet's `Standard_R50`: torchvision's ResNet-50 with its IMAGENET1K_V1 weights (`pretrained=True`, no
    zoo file: the file is torchvision's `resnet50-0676ba61.pth`)."""
    return dataset == "imagenet" and name == "Standard_R50"


def random_zoo_module(dataset: str, threat: str, name: str, seed: int = 0) -> nn.Module:
    """The zoo's module for an entry with seeded random weights, BatchNorm statistics and affine parameters included
    (so that a key map that swaps two BatchNorms cannot pass the logit check); in eval mode.

    Raises:
        HubError: the entry is an ensemble, or its module cannot be built offline.
    """
    entry = _entry(dataset, threat, name)
    if _is_ensemble(entry):
        raise HubError(f"{name} is an ensemble of {len(entry['gdrive_id'])} models")
    torch.manual_seed(seed)
    try:
        module = _build(dataset, threat, name)
    except Exception as e:  # noqa: BLE001  (the zoo's constructors raise anything: downloads, asserts, ...)
        raise HubError(f"robustbench could not build {name}: {one_line(e)}") from None
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                if m.affine:
                    m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return module.eval()


_NO_MODEL_PREFIX = {  # robustbench's load_model adds 'model.' to ImageNet keys except for these (utils.py)
    "Singh2023Revisiting_ConvNeXt-T-ConvStem", "Singh2023Revisiting_ViT-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-S-ConvStem", "Singh2023Revisiting_ConvNeXt-B-ConvStem",
    "Singh2023Revisiting_ConvNeXt-L-ConvStem", "Peng2023Robust", "Chen2024Data_WRN_50_2", "Xu2024MIMIR_Swin-B",
    "Xu2024MIMIR_Swin-L"}


def zoo_file_state_dict(module: nn.Module, dataset: str, name: str) -> dict[str, torch.Tensor]:
    """The state dict a zoo file holds for `module`, as robustbench's `load_model` reads it back: the network's
    weights without the normaliser buffers the zoo code adds (`mu`/`sigma`, `normalize.*`), and for ImageNet
    without the `model.` prefix of its normalising wrapper."""
    sd = {k: v for k, v in module.state_dict().items() if k not in ("mu", "sigma")}
    if dataset == "imagenet" and name not in _NO_MODEL_PREFIX:
        sd = {k.removeprefix("model."): v for k, v in sd.items() if not k.startswith("normalize.")}
    return sd


def zoo_file_content(module: nn.Module, dataset: str, name: str) -> dict:
    """What a zoo file of `module` holds: its state dict (`zoo_file_state_dict`), under 'last' for the entries
    whose files keep the last and the best weights (robustbench's `load_model` takes 'last')."""
    sd = zoo_file_state_dict(module, dataset, name)
    if "Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding":
        return {"last": sd, "best": sd}
    return sd


def load_zoo_module(dataset: str, threat: str, name: str, file: str | None = None,
                    model_dir: str | None = None) -> nn.Module:
    """The zoo's module with the entry's weights, loaded by robustbench's own `load_model` (its prefix handling,
    its key fixes): from `file` when given (robustbench reads it from a temporary model folder; the file is not
    modified), else from `model_dir`, where robustbench downloads it when it is missing (online only). Pickle
    files are read by robustbench's `torch.load`, whose default here is `weights_only=True` (torch >= 2.6).

    Raises:
        HubError: an ensemble, a missing file offline, or weights that do not fit the zoo module.
    """
    rb = robustbench()
    entry = _entry(dataset, threat, name)
    if _is_ensemble(entry):
        raise HubError(f"{name} is an ensemble of {len(entry['gdrive_id'])} models: not importable as one timm model")
    if file is not None and not os.path.isfile(file):
        raise HubError(f"{file}: no such checkpoint file")
    tname = _timm_name(dataset, threat, name)
    tmp = None
    try:
        if _is_torchvision_standard(dataset, name) and file is not None:  # torchvision's weights file, not a zoo's
            from .importer import read_checkpoint
            module = _build(dataset, threat, name)
            module.model.load_state_dict(read_checkpoint(file).state_dict, strict=True)
            return module.eval()
        if timm.is_model(tname):  # robustbench's own timm registration (XCiT): its weights are a timm checkpoint
            if file is None:
                raise HubError(f"{name} is a timm model registered by robustbench: give its downloaded file "
                               f"(robustbench would fetch it with pretrained=True)")
            from .importer import read_checkpoint
            module = timm.create_model(tname, pretrained=False, num_classes=NUM_CLASSES[dataset])
            target = module.model if isinstance(module, nn.Sequential) else module
            target.load_state_dict(read_checkpoint(file).state_dict, strict=True)
            return module.eval()
        if file is not None:
            tmp = tempfile.mkdtemp(prefix="atcd-robustbench-")
            where = os.path.join(tmp, dataset, threat)
            os.makedirs(where)
            os.symlink(os.path.abspath(file), os.path.join(where, f"{name}.pt"))
            model_dir = tmp
        model_dir = model_dir or os.path.join(os.path.expanduser("~"), ".cache", "atcd", "robustbench")
        if not os.path.isfile(os.path.join(model_dir, dataset, threat, f"{name}.pt")) and \
                os.environ.get("HF_HUB_OFFLINE") == "1":
            raise HubError(f"{name}: no downloaded file in {model_dir} and HF_HUB_OFFLINE=1; give the file")
        return rb.utils.load_model(name, model_dir=model_dir, dataset=dataset, threat_model=threat).eval()
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001  (robustbench raises RuntimeError, KeyError, gdown/requests errors ...)
        raise HubError(f"robustbench could not load {dataset}/{threat}/{name}"
                       f"{' from ' + file if file else ''}: {one_line(e, 300)}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def preprocessing(dataset: str, threat: str, name: str) -> tuple[str | None, dict]:
    """(RobustBench's preprocessing name for the entry, the timm data config carrying it, without mean/std)."""
    entry = _entry(dataset, threat, name)
    tname = _timm_name(dataset, threat, name)
    if dataset != "imagenet":
        return None, {"input_size": (3, 32, 32), **_PREPROCESSING[None]}
    if timm.is_model(tname):  # robustbench.data.get_timm_model_preprocessing
        cfg = timm.models.get_pretrained_cfg(tname).to_dict()
        size = cfg["input_size"][1]
        return f"timm:{tname}", {"input_size": (3, size, size), "crop_pct": size / math.floor(size / cfg["crop_pct"]),
                                 "interpolation": cfg["interpolation"], "crop_mode": "center"}
    prep = entry.get("preprocessing")
    return prep, dict(_PREPROCESSING[prep])


# ---------------------------------------------------------------- the hub folder

def _card(repo_id: str, spec: str, arch: str, pcfg: dict, source: dict, rep: dict | None, prep: str | None,
          license: str, out_dir: str) -> ModelCard:
    dataset, threat, name = spec.split("/")
    library, tags = card_library(arch)
    data = ModelCardData(library_name=library, license=license, pipeline_tag="image-classification",
                         tags=["image-classification", *tags, "adversarial-robustness", "robustbench"],
                         model_name=repo_id.split("/")[-1])
    eps = THREAT_EPS.get((dataset, threat))
    eps_s = f"ε = {eps_text(eps)}" if eps is not None else "ε not defined here"
    check = source["verified"]
    paper = (f"[{rep['title']}]({rep['link']})" if rep and rep.get("link") else (rep or {}).get("title")) or \
        "not recorded in the robustbench package"
    rep_rows = ("| clean accuracy | AutoAttack accuracy | ε | source |\n|---|---|---|---|\n"
                f"| {rep['clean_acc']:.2f} % | {rep['autoattack_acc']:.2f} % | {eps_text(eps) if eps else '?'} | "
                f"{rep['source']} |" if rep else "RobustBench reports no accuracy for this entry in the installed "
                                                  "package.")
    crop288 = ("\nRobustBench's `Crop288` crops the central 288 px without resizing first; timm's data config has "
               "no such mode, so `timm.data.create_transform` resizes the short side to 288 then crops. `validate.py "
               "--protocol robustbench` applies RobustBench's own crop." if prep == "Crop288" else "")
    cite = _citation(name, rep)
    body = f"""
# {repo_id.split("/")[-1]}

RobustBench model zoo entry **`{spec}`** as the timm architecture `{arch}`: weights from `{source['file']}`
(sha256 `{source['sha256']}`), loaded into the zoo's own module by the `robustbench` package
({source['robustbench']}), then mapped onto `{arch}` by the ATCD suite's `scripts/import_checkpoint.py`.
Logits checked equal to the zoo module's on {check['n']} random inputs of size {tuple(check['input_size'])}:
max |Δlogit| {check['max_abs_diff']:.2g} (tolerance {check['tolerance']:g}).

- threat model: {threat}, {eps_s} in [0, 1] pixel units ({dataset})
- paper: {paper}{f" ({rep['venue']})" if rep and rep.get('venue') else ""}
- RobustBench preprocessing: `{prep or 'none (ToTensor)'}` (as this folder's data config, below){crop288}

## Accuracy reported by RobustBench (not measured here)

{rep_rows}

These are RobustBench's figures (full test set, its AutoAttack evaluation), copied from the package; the card's
`model-index` holds only numbers measured on these very weights. Measure them:

```bash
python validate.py --model local-dir:{out_dir} --protocol robustbench --data-dir DATA --num-samples 1000 \\
    --update-card {out_dir}
python scripts/publish.py {out_dir} --repo-id {repo_id} --push
```

{usage_section(repo_id, arch, pcfg)}
## Citation

Cite the paper of the weights{":" if cite else " (the package records no BibTeX)."}
{f"```bibtex{chr(10)}{cite}{chr(10)}```" if cite else ""}
and RobustBench (Croce et al., NeurIPS 2021 Datasets and Benchmarks), whose model zoo distributes them.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def import_zoo(spec: str, out_dir: str, repo_id: str, file: str | None = None, model_dir: str | None = None,
               license: str = "other", module: nn.Module | None = None, verify_n: int = 4) -> dict:
    """Write a timm hub folder for the zoo entry `spec` ('cifar10/Linf/NAME'); returns what was done.

    `module`: the zoo module already loaded (tests, `coverage`); else it is loaded from `file` / `model_dir`
    (`load_zoo_module`). `verify_n`: random inputs of the logit check (`coverage` uses 2: its nets are GB-sized).

    Raises:
        HubError: bad spec, unloadable weights, no timm architecture (`ZooUnsupported`), logits that differ.
    """
    if repo_id.count("/") != 1:
        raise HubError(f"--repo-id must be org/name (got {repo_id!r})")
    dataset, threat, name = split_spec(spec)
    if module is None:
        module = load_zoo_module(dataset, threat, name, file, model_dir)
    module = module.eval()
    mapping = map_to_timm(module, dataset, name)
    model = create_mapped(mapping, NUM_CLASSES[dataset])
    prep, dc = preprocessing(dataset, threat, name)
    check = verify(module, model, mapping.mean, mapping.std, dc["input_size"], n=verify_n)
    data_config = {**dc, "mean": mapping.mean, "std": mapping.std}
    rep = reported(dataset, threat, name)
    rb_version = importlib.metadata.version("robustbench")
    source = {"robustbench": f"robustbench {rb_version}", "file": os.path.basename(file) if file else
              f"robustbench's download of {name}", "sha256": file_sha256(file) if file else "not recorded",
              "verified": check, "dropped_keys": mapping.dropped}
    extra = {"robustbench": {"entry": spec, "preprocessing": prep, "eps": THREAT_EPS.get((dataset, threat)),
                             "threat_model": threat, "dataset": dataset, "reported": rep}}

    def fill(tmp: str):
        pcfg = save_checked(model, tmp, model.state_dict(), spec, data_config=data_config,
                            model_config={"pretrained_cfg": {"tag": "robustbench", "license": license}, **extra}
                            )["pretrained_cfg"]
        atomic_write_text(os.path.join(tmp, CARD_NAME),
                          str(_card(repo_id, spec, mapping.arch, pcfg, source, rep, prep, license, out_dir)))

    write_folder(out_dir, fill)
    return {"folder": out_dir, "entry": spec, "architecture": mapping.arch, "model_kwargs": mapping.model_kwargs,
            "num_classes": NUM_CLASSES[dataset], "data_config": data_config, "preprocessing": prep,
            "reported": rep, **source}


# ---------------------------------------------------------------- `robustbench:` as a model source

def robustbench_model(name: str, model_dir: str | None = None, cache_dir: str | None = None) -> str:
    """`robustbench:DATASET/THREAT/NAME` as a model validate.py loads: the entry imported on first use (`import_zoo`,
    its file from `model_dir` or robustbench's download) into the Hugging Face cache as `robustbench/DATASET-THREAT-
    NAME`, then that cached snapshot (`local-dir:` of it: no Hub request, the repo exists only in this cache). A
    file lock keeps the ranks of a launch from importing it twice.

    Raises:
        HubError: bad spec, no file offline, an entry that does not import.
    """
    from filelock import FileLock
    from huggingface_hub import constants, try_to_load_from_cache

    from ..models.hub import add_folder_to_hf_cache
    spec = name.removeprefix("robustbench:")
    dataset, threat, entry = split_spec(spec)
    repo_id = f"robustbench/{dataset}-{threat}-{entry}"
    cache_dir = cache_dir or constants.HF_HUB_CACHE

    def cached() -> str | None:
        path = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
        return os.path.dirname(path) if isinstance(path, str) else None

    os.makedirs(cache_dir, exist_ok=True)
    with FileLock(os.path.join(cache_dir, f".atcd-robustbench-{dataset}-{threat}-{entry}.lock")):
        if cached() is None:
            with tempfile.TemporaryDirectory(prefix="atcd-robustbench-") as tmp:
                out = os.path.join(tmp, "folder")
                import_zoo(spec, out, repo_id, model_dir=model_dir)
                add_folder_to_hf_cache(out, repo_id, cache_dir=cache_dir)
            _logger.warning("%s: imported into the Hugging Face cache as %s", name, repo_id)
    return f"local-dir:{cached()}"
