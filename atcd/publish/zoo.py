"""RobustBench's model zoo as timm hub folders (`scripts/import_checkpoint.py --robustbench cifar10/Linf/NAME`).

The zoo's own module is built and loaded by the `robustbench` package (the optional `[zoo]` extra): from the user's
downloaded file, or, online, downloaded by robustbench's `load_model` into its model folder. The module is then
mapped onto a timm architecture (timm's own for torchvision ResNets and the timm models the zoo builds; those
registered by `atcd.models` for the CIFAR networks), its logits are compared with the zoo module's on random inputs
(max |Δlogit| <= `LOGIT_TOL`, else the import is refused), and a hub folder is written: `config.json` (the zoo's
preprocessing as timm's data config), `model.safetensors`, a card with the threat model, ε, the paper and the
accuracies RobustBench reports (labelled as reported; `validate.py --update-card` adds measured ones).
`coverage()` runs that on every entry of a table with seeded random weights.
"""
import csv
import importlib
import importlib.metadata
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field

import timm
import torch
from huggingface_hub import ModelCard, ModelCardData
from torch import nn

from ..checkpoint import atomic_write_text
from ..models.hub import HubError, one_line
from ..provenance import file_sha256
from .card import CARD_NAME
from .export import save_checked, write_folder
from .labels import eps_text
from .usage import card_library, is_timm_native, usage_section

__all__ = ["LOGIT_TOL", "THREAT_EPS", "ZooMapping", "ZooUnsupported", "coverage", "import_zoo", "load_zoo_module",
           "map_to_timm", "preprocessing", "random_zoo_module", "reported", "robustbench", "split_spec",
           "zoo_entries", "zoo_file_content", "zoo_file_state_dict"]

_logger = logging.getLogger(__name__)

LOGIT_TOL = 1e-5  # |Δlogit| allowed between the zoo module and the timm model: LOGIT_TOL * (1 + |logit|)
# (float32 rounding only: 1e-5 absolute on logits of order 1, relative on the large logits of a trained head)
THREAT_EPS = {("cifar10", "Linf"): 8 / 255, ("cifar100", "Linf"): 8 / 255, ("imagenet", "Linf"): 4 / 255,
              ("cifar10", "L2"): 0.5}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
INSTALL = "pip install '.[zoo]' && pip install --no-deps robustbench==1.1.1"
_AUTOATTACK_SUBMODULES = ("autoattack", "autopgd_base", "checks", "fab_base", "fab_projections", "fab_pt",
                          "other_utils", "square", "state")


def robustbench():
    """The `robustbench` package, imported here and nowhere else in the project.

    robustbench 1.1.1 imports `autoattack`, but the official AutoAttack package installs as `pyautoattack`: the
    alias (`sys.modules['autoattack']`, and its submodules robustbench reaches) is set here before the import.
    Its `loaders.py` also imports `pkg_resources`, which setuptools >= 81 no longer ships: when it is missing, a
    stub with the one function robustbench calls (`resource_filename`) stands in. And its `benchmark()` calls
    AutoAttack's older API (`AutoAttack(..., log_path=)`, `run_standard_evaluation(x, y, bs=)`), which pyautoattack
    0.2.0 refuses: `robustbench.eval.AutoAttack` is set to a subclass that translates it (`_legacy_autoattack`).

    Raises:
        HubError: robustbench (or a dependency) is not installed.
    """
    try:
        import pyautoattack
        sys.modules.setdefault("autoattack", pyautoattack)
        for sub in _AUTOATTACK_SUBMODULES:
            sys.modules.setdefault(f"autoattack.{sub}", importlib.import_module(f"pyautoattack.{sub}"))
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            stub = types.ModuleType("pkg_resources")
            stub.resource_filename = lambda pkg, path: os.path.join(
                os.path.dirname(importlib.import_module(pkg).__file__), path)
            sys.modules["pkg_resources"] = stub
        import robustbench as rb
        import robustbench.data
        import robustbench.eval
        import robustbench.model_zoo
        import robustbench.utils  # noqa: F401
    except ImportError as e:
        raise HubError(f"RobustBench's model zoo needs the robustbench package ({one_line(e)}): {INSTALL}") from None
    if rb.eval.AutoAttack.__name__ != "LegacyAutoAttack":
        rb.eval.AutoAttack = _legacy_autoattack()
    return rb


def _legacy_autoattack():
    from pyautoattack import AutoAttack

    class LegacyAutoAttack(AutoAttack):
        """pyautoattack's AutoAttack under the API robustbench 1.1.1's `benchmark()` calls: `log_path` is dropped
        (progress goes to the `auto-attack` logger), `bs` is `batch_size`, and x_adv alone is returned."""
        seed_override: int | None = None  # tests: the seed validate.py gives the same images

        def __init__(self, model, norm="Linf", eps=0.3, version="standard", device="cpu", log_path=None, seed=None,
                     **kwargs):
            seed = self.seed_override if self.seed_override is not None else seed
            super().__init__(model, norm=norm, eps=eps, version=version, device=device, seed=seed, **kwargs)

        def run_standard_evaluation(self, x, y, bs=250, state_path=None, **kwargs):
            out = super().run_standard_evaluation(x, y, batch_size=kwargs.get("batch_size", bs),
                                                  state_path=state_path)
            return out[0] if isinstance(out, tuple) else out
    return LegacyAutoAttack



def split_spec(spec: str) -> tuple[str, str, str]:
    """'cifar10/Linf/NAME' -> ('cifar10', 'Linf', 'NAME'), checked against the zoo.

    Raises:
        HubError: not DATASET/THREAT/NAME, or no such zoo entry (with the closest names).
    """
    parts = spec.split("/")
    if len(parts) != 3 or not all(parts):
        raise HubError(f"--robustbench {spec!r}: expected DATASET/THREAT/NAME, e.g. cifar10/Linf/Carmon2019Unlabeled")
    dataset, threat, name = parts
    tables = _tables()
    if (dataset, threat) not in tables:
        raise HubError(f"--robustbench {spec!r}: no zoo table {dataset}/{threat}; tables: "
                       f"{', '.join('/'.join(k) for k in tables)}")
    if name not in tables[dataset, threat]:
        import difflib
        close = difflib.get_close_matches(name, list(tables[dataset, threat]), n=3, cutoff=0.5)
        raise HubError(f"--robustbench {spec!r}: {name!r} is not in RobustBench's {dataset}/{threat} zoo"
                       + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return dataset, threat, name


def _tables() -> dict:
    rb = robustbench()
    return {(d.value, t.value): models for d, by_threat in rb.model_zoo.model_dicts.items()
            for t, models in by_threat.items()}


def zoo_entries(dataset: str, threat: str) -> list[str]:
    """The entry names of one zoo table, in the package's order."""
    return list(_tables()[dataset, threat])


def _entry(dataset: str, threat: str, name: str) -> dict:
    return _tables()[dataset, threat][name]


def _is_ensemble(entry: dict) -> bool:
    return isinstance(entry.get("gdrive_id"), list)


def _timm_name(dataset: str, threat: str, name: str) -> str:
    """The name robustbench registers an entry under in timm (its `load_model` tries it first)."""
    return f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"


# ---------------------------------------------------------------- reported numbers (the package's README tables)

_SECTIONS = {"cifar10": "### CIFAR-10", "cifar100": "### CIFAR-100", "imagenet": "### ImageNet"}
_ROW = re.compile(r"^\|\s*<sub>\*\*\d+\*\*</sub>\s*\|\s*<sub><sup>\*\*(?P<id>[^*]+)\*\*</sup></sub>\s*\|\s*"
                  r"<sub>\*(?:\[(?P<title>.*?)\]\((?P<link>[^)]*)\)|(?P<plain>[^*]*))\*</sub>\s*\|\s*"
                  r"<sub>(?P<clean>[\d.]+)%</sub>\s*\|\s*<sub>(?P<robust>[\d.]+)%</sub>\s*\|\s*"
                  r"<sub>(?P<arch>.*?)</sub>\s*\|\s*<sub>(?P<venue>.*?)</sub>\s*\|")


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
    return entry["model"]()


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
    if name.startswith("Standard") and dataset == "imagenet":  # the zoo builds it with torchvision's download
        raise HubError(f"{name}: torchvision's standard (non-robust) weights, no zoo file; robustbench builds it with "
                       f"torchvision's pretrained download")
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


# ---------------------------------------------------------------- zoo module -> timm architecture

class ZooUnsupported(HubError):
    """The zoo module has no timm architecture here; `kind` says why (custom, ensemble, ...)."""

    def __init__(self, msg: str, kind: str = "custom module"):
        super().__init__(msg)
        self.kind = kind


@dataclass
class ZooMapping:
    """A zoo module as a timm architecture: what to create and which weights it takes."""
    arch: str
    state_dict: dict[str, torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_kwargs: dict = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


_WRN_CLASSES = {"WideResNet": None, "Rice2020OverfittingNet": "mu", "Chen2020EfficientNet": "mu",
                "Augustin2020AdversarialWideNet": "mu", "Hendrycks2019UsingNet": ((0.5,) * 3, (0.5,) * 3)}
_PREACT_CLASSES = {"PreActResNet": None, "Wong2020FastNet": "mu"}
_RESNET_CLASSES = {"ResNet": None, "Engstrom2019RobustnessNet": "mu", "Augustin2020AdversarialNet": "mu"}
_ACT_NAMES = {"Swish": "swish", "SiLU": "silu", "ReLU": "relu"}
# robustbench's XCiT-S12/M12/L12 (12 blocks, eta 1, tokens_norm): timm's xcit_small_12_p16_224, with the width and
# heads of M12 / L12 as model args (timm has no 12-block medium/large config; plain timm rebuilds it from config.json)
_ROBUSTBENCH_XCIT = {"debenedetti2022light_xcit_s12_imagenet_linf": ("xcit_small_12_p16_224", {}),
                     "debenedetti2022light_xcit_m12_imagenet_linf": ("xcit_small_12_p16_224",
                                                                     {"embed_dim": 512, "num_heads": 8}),
                     "debenedetti2022light_xcit_l12_imagenet_linf": ("xcit_small_12_p16_224",
                                                                     {"embed_dim": 768, "num_heads": 16})}


def _vals(t: torch.Tensor) -> tuple[float, ...]:
    if t.is_meta:  # a structural check (`coverage(structural=True)`): no values
        return (float("nan"),) * t.numel()
    return tuple(float(v) for v in t.detach().float().flatten())


def _norm(module: nn.Module, how) -> tuple[tuple, tuple]:
    if how == "mu":
        return _vals(module.mu), _vals(module.sigma)
    if isinstance(how, tuple):
        return how
    return (0.0,) * 3, (1.0,) * 3


def _rb_module(module: nn.Module, table: dict) -> bool:
    mod = type(module).__module__  # the zoo's resnet.py / wide_resnet.py classes (robust_resnet.py reuses names)
    return type(module).__name__ in table and (mod.startswith("robustbench.model_zoo.architectures.resnet")
                                               or mod.startswith("robustbench.model_zoo.architectures.wide_resnet")
                                               or mod.startswith("robustbench.model_zoo.architectures.boosting")
                                               or mod in ("robustbench.model_zoo.cifar10",
                                                          "robustbench.model_zoo.cifar100"))


def _wrn(module, how) -> ZooMapping:
    blocks = module.block1.layer
    n, width = len(blocks), blocks[0].conv2.out_channels // 16
    if module.fc.bias is None:
        raise ZooUnsupported("WideResNet without a bias in its last layer (no timm architecture here)")
    arch = f"wrn{6 * n + 4}_{width}_cifar"
    if not timm.is_model(arch):
        raise ZooUnsupported(f"WideResNet-{6 * n + 4}-{width}: no registered architecture {arch}", "architecture")
    sd, out, dropped = module.state_dict(), {}, []
    for k, v in sd.items():
        if k in ("mu", "sigma") or k.startswith("sub_block1."):  # sub_block1: in the checkpoints, never run
            dropped.append(k)
            continue
        m = re.match(r"block(\d)\.layer\.(\d+)\.(.*)$", k)
        if m:
            k = f"stages.{int(m[1]) - 1}.{m[2]}.{m[3].replace('convShortcut', 'shortcut')}"
        elif k.startswith("bn1."):
            k = "bn." + k[len("bn1."):]
        elif k.startswith("fc."):
            k = "head." + k[len("fc."):]
        out[k] = v
    mean, std = _norm(module, how)
    return ZooMapping(arch, out, mean, std, dropped=dropped)


def _act_of(module: nn.Module) -> str:
    name = type(module.relu).__name__
    if name not in _ACT_NAMES:
        raise ZooUnsupported(f"activation {name} has no counterpart here", "architecture")
    return _ACT_NAMES[name]


def _torchvision_resnet(inner: nn.Module) -> str:
    from torchvision.models.resnet import BasicBlock, Bottleneck
    layers = tuple(len(getattr(inner, f"layer{i}")) for i in range(1, 5))
    block = type(inner.layer1[0])
    width = inner.layer1[0].conv1.out_channels if block is Bottleneck else 64
    arch = {(BasicBlock, (2, 2, 2, 2), 64): "resnet18", (BasicBlock, (3, 4, 6, 3), 64): "resnet34",
            (Bottleneck, (3, 4, 6, 3), 64): "resnet50", (Bottleneck, (3, 4, 23, 3), 64): "resnet101",
            (Bottleneck, (3, 4, 6, 3), 128): "wide_resnet50_2",
            (Bottleneck, (3, 4, 23, 3), 128): "wide_resnet101_2"}.get((block, layers, width))
    if arch is None:
        raise ZooUnsupported(f"torchvision ResNet {block.__name__} {layers} width {width}: no timm counterpart",
                             "architecture")
    return arch


def _timm_arch(inner: nn.Module) -> tuple[str, dict]:
    cfg = getattr(inner, "pretrained_cfg", None) or {}
    patch = getattr(getattr(inner, "patch_embed", None), "patch_size", None)
    if type(inner).__name__ == "Xcit" and patch not in (16, (16, 16), 8, (8, 8)):
        raise ZooUnsupported(f"XCiT with its patch embedding adapted to patch size {patch} (stride-1 convolutions): "
                             f"no timm configuration", "custom module")
    foreign = sorted({type(m).__module__ + "." + type(m).__name__ for m in inner.modules()
                      if not type(m).__module__.startswith(("timm.", "torch."))})
    if foreign:  # e.g. Singh et al.'s ConvStem put in place of the patch embedding / stem of a timm model
        raise ZooUnsupported(f"timm model {cfg.get('architecture')} with custom submodules "
                             f"({', '.join(f.replace('robustbench.model_zoo.architectures.', '') for f in foreign)})")
    arch, kwargs = _ROBUSTBENCH_XCIT.get(cfg.get("architecture"), (cfg.get("architecture"), {}))
    if not arch or not is_timm_native(arch):
        raise ZooUnsupported(f"timm-built module {type(inner).__name__} ({cfg.get('architecture')}) is not one of "
                             f"timm's own configurations", "architecture")
    return arch, kwargs


def map_to_timm(module: nn.Module, dataset: str, name: str) -> ZooMapping:
    """The timm architecture and weights that compute what the zoo module computes (checked by `verify`).

    Raises:
        ZooUnsupported: a module this importer has no timm architecture for (the reason in the message).
    """
    cls = type(module).__name__
    if isinstance(module, nn.Sequential) and hasattr(module, "normalize") and hasattr(module, "model"):
        mean, std = _vals(module.normalize.mean), _vals(module.normalize.std)
        inner = module.model
        prefix = "model."
    else:
        inner, prefix, mean, std = module, "", None, None
    icls = type(inner).__name__
    if _rb_module(inner, _WRN_CLASSES):
        return _wrn(inner, _WRN_CLASSES[icls])
    sd = {k.removeprefix(prefix): v for k, v in module.state_dict().items() if k.startswith(prefix)}
    dropped = sorted(k for k in sd if k in ("mu", "sigma"))
    sd = {k: v for k, v in sd.items() if k not in ("mu", "sigma")}
    if icls == "DMWideResNet" and type(inner).__module__.startswith("robustbench."):
        if inner.padding:
            raise ZooUnsupported("DMWideResNet with input padding: no timm architecture here", "architecture")
        depth = 6 * len(inner.layer[0].block) + 4
        width = inner.layer[0].block[0].conv_0.out_channels // 16
        arch = f"dm_wrn{depth}_{width}_cifar"
        if not timm.is_model(arch):
            raise ZooUnsupported(f"DM WideResNet-{depth}-{width}: no registered architecture {arch}", "architecture")
        return ZooMapping(arch, sd, _vals(inner.mean), _vals(inner.std), {"act_layer": _act_of(inner)}, dropped)
    if icls == "DMPreActResNet" and type(inner).__module__.startswith("robustbench."):
        if inner.padding or len(inner.layer_1) != 2:
            raise ZooUnsupported("DMPreActResNet other than depth 18 without padding", "architecture")
        return ZooMapping("dm_preact_resnet18_cifar", sd, _vals(inner.mean), _vals(inner.std),
                          {"act_layer": _act_of(inner)}, dropped)
    if _rb_module(inner, _PREACT_CLASSES):
        blocks = tuple(len(getattr(inner, f"layer{i}")) for i in range(1, 5))
        if blocks != (2, 2, 2, 2) or inner.bn_before_fc or inner.out_shortcut or \
                type(inner.layer1[0]).__name__ != "PreActBlock":
            raise ZooUnsupported(f"PreActResNet variant ({type(inner.layer1[0]).__name__}, {blocks}, bn_before_fc "
                                 f"{inner.bn_before_fc}): no registered architecture", "architecture")
        return ZooMapping("preact_resnet18_wong_cifar", sd, *_norm(inner, _PREACT_CLASSES[icls]), dropped=dropped)
    if _rb_module(inner, _RESNET_CLASSES):
        blocks = tuple(len(getattr(inner, f"layer{i}")) for i in range(1, 5))
        arch = {("BasicBlock", (2, 2, 2, 2)): "resnet18_cifar", ("Bottleneck", (3, 4, 6, 3)): "resnet50_cifar"}.get(
            (type(inner.layer1[0]).__name__, blocks))
        if arch is None:
            raise ZooUnsupported(f"CIFAR ResNet {type(inner.layer1[0]).__name__} {blocks}: no registered "
                                 f"architecture", "architecture")
        return ZooMapping(arch, sd, *_norm(inner, _RESNET_CLASSES[icls]), dropped=dropped)
    import torchvision
    if type(inner) is torchvision.models.ResNet:
        arch = _torchvision_resnet(inner)
        return ZooMapping(arch, sd, mean or (0.0,) * 3, std or (1.0,) * 3, dropped=dropped)
    if type(inner).__module__.startswith("timm."):
        arch, kwargs = _timm_arch(inner)
        return ZooMapping(arch, sd, mean or (0.0,) * 3, std or (1.0,) * 3, kwargs, dropped)
    where = type(inner).__module__.replace("robustbench.model_zoo.architectures.", "")
    raise ZooUnsupported(f"custom module {where}.{type(inner).__name__ if inner is not module else cls} "
                         f"(no timm architecture)")


def create_mapped(mapping: ZooMapping, num_classes: int) -> nn.Module:
    """The timm model of a mapping with its weights (strict load).

    Raises:
        HubError: the weights do not fit the architecture (the key map is wrong or missing).
    """
    from ..checkpoint import mismatch
    model = timm.create_model(mapping.arch, num_classes=num_classes, **mapping.model_kwargs)
    detail = mismatch(model.state_dict(), mapping.state_dict)
    if detail:
        raise ZooUnsupported(f"key map onto {mapping.arch} incomplete: {detail}", "key map")
    model.load_state_dict(mapping.state_dict, strict=True)
    return model.eval()


def verify(zoo: nn.Module, model: nn.Module, mean, std, input_size, n: int = 4, seed: int = 0) -> dict:
    """The zoo module's logits on seeded uniform [0, 1] pixels against the timm model's on the same pixels
    normalised with (mean, std); returns max |Δlogit| and the logits' scale.

    Raises:
        HubError: some |Δlogit| > LOGIT_TOL * (1 + |logit|) (the import is refused).
    """
    x = torch.rand(n, *input_size, generator=torch.Generator().manual_seed(seed))
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        theirs, ours = zoo(x), model((x - m) / s)
    if theirs.shape != ours.shape:
        raise HubError(f"logit shapes differ: zoo module {tuple(theirs.shape)}, timm model {tuple(ours.shape)}")
    diff = (ours - theirs).abs().max().item()
    out = {"n": n, "input_size": list(input_size), "max_abs_diff": diff, "max_abs_logit": theirs.abs().max().item(),
           "exact": bool(torch.equal(ours, theirs)), "tolerance": LOGIT_TOL}
    if not torch.allclose(ours, theirs, rtol=LOGIT_TOL, atol=LOGIT_TOL):
        raise HubError(f"the timm model's logits differ from the zoo module's by {diff:.3g} (> {LOGIT_TOL:g} x (1 + "
                       f"|logit|); logits up to {out['max_abs_logit']:.3g}): import refused")
    return out


# ---------------------------------------------------------------- preprocessing

_PREPROCESSING = {  # robustbench.data.PREPROCESSINGS as timm data configs
    None: {"crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "center"},
    "Res256Crop224": {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bilinear",
                      "crop_mode": "center"},
    "BicubicRes256Crop224": {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic",
                             "crop_mode": "center"},
    "Res224": {"input_size": (3, 224, 224), "crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "squash"},
    # RobustBench crops 288 px without resizing first; timm's data config has no such mode: the nearest is a
    # resize of the short side to 288 then the crop (the card says so)
    "Crop288": {"input_size": (3, 288, 288), "crop_pct": 1.0, "interpolation": "bilinear", "crop_mode": "center"},
}


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


# ---------------------------------------------------------------- coverage

def coverage(tables: list[tuple[str, str]], seed: int = 0, names: list[str] | None = None,
             on_row=None, structural: bool = False) -> list[dict]:
    """Every entry of the zoo tables: built by robustbench with seeded random weights, saved as a zoo file,
    loaded back by robustbench's `load_model`, imported into a hub folder (logits compared): one row each with
    the outcome (`imported` / `ensemble` / `custom module` / `architecture` / `key map` / `build` / `logits`)."""
    rows = []
    for dataset, threat in tables:
        for name in zoo_entries(dataset, threat):
            if names and name not in names and f"{dataset}/{threat}/{name}" not in names:
                continue
            rows.append(_structural_row(dataset, threat, name) if structural else
                        _coverage_row(dataset, threat, name, seed))
            _logger.warning("%s/%s/%s: %s %s", dataset, threat, name, rows[-1]["outcome"], rows[-1]["detail"])
            if on_row is not None:  # e.g. rewrite the table so far: a long run leaves a partial table, not none
                on_row(rows)
    return rows


def _coverage_row(dataset: str, threat: str, name: str, seed: int) -> dict:
    import gc
    spec = f"{dataset}/{threat}/{name}"
    row = {"table": f"{dataset}/{threat}", "entry": name, "outcome": "", "architecture": "", "max_abs_diff": "",
           "detail": "", "seconds": 0.0}
    t0 = time.time()
    entry = _entry(dataset, threat, name)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmp = tempfile.mkdtemp(prefix="atcd-zoo-coverage-", dir=shm)  # GB-sized files: in memory where possible
    try:
        if _is_ensemble(entry):
            row.update(outcome="ensemble", detail=f"ensemble of {len(entry['gdrive_id'])} models: not one timm model")
            return row
        try:
            zoo = random_zoo_module(dataset, threat, name, seed)
        except HubError as e:
            row.update(outcome="build", detail=str(e))
            return row
        try:
            mapping = map_to_timm(zoo, dataset, name)
        except ZooUnsupported as e:
            row.update(outcome=e.kind, detail=str(e))
            return row
        path = os.path.join(tmp, f"{name}.pt")
        torch.save(zoo_file_content(zoo, dataset, name), path)
        del zoo, mapping
        gc.collect()
        try:
            out = import_zoo(spec, os.path.join(tmp, "out"), "robustbench/" + name, file=path, verify_n=2)
            check = out["verified"]
            row.update(outcome="imported", architecture=out["architecture"] + "".join(
                f" {k}={v}" for k, v in out["model_kwargs"].items()), max_abs_diff=f"{check['max_abs_diff']:.2g}",
                detail=f"logits equal on {check['n']} inputs {tuple(check['input_size'])} (max |logit| "
                       f"{check['max_abs_logit']:.3g})")
        except ZooUnsupported as e:
            row.update(outcome=e.kind, detail=str(e))
        except HubError as e:
            row.update(outcome="logits" if "differ" in str(e) else "load", detail=str(e))
        return row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        row["seconds"] = round(time.time() - t0, 1)
        gc.collect()


def _structural_row(dataset: str, threat: str, name: str) -> dict:
    """The mapping of an entry checked without weights (modules on the meta device): which timm architecture and
    whether every key and shape fits it; logits are not compared (outcome `maps`, or why not)."""
    row = {"table": f"{dataset}/{threat}", "entry": name, "outcome": "", "architecture": "", "max_abs_diff": "",
           "detail": "", "seconds": 0.0}
    t0 = time.time()
    entry = _entry(dataset, threat, name)
    try:
        if _is_ensemble(entry):
            row.update(outcome="ensemble", detail=f"ensemble of {len(entry['gdrive_id'])} models: not one timm model")
            return row
        if name.startswith("Standard") and dataset == "imagenet":
            row.update(outcome="build", detail=f"{name}: torchvision's standard (non-robust) weights, no zoo file")
            return row
        with torch.device("meta"):
            try:
                module = _build(dataset, threat, name)
            except Exception as e:  # noqa: BLE001  (its constructor computes on tensors: meta has no values)
                row.update(outcome="not checked", detail=f"its module cannot be built without weights "
                                                         f"({one_line(e)})")
                return row
            mapping = map_to_timm(module, dataset, name)
            create_mapped(mapping, NUM_CLASSES[dataset])
        row.update(outcome="maps", architecture=mapping.arch + "".join(
            f" {k}={v}" for k, v in mapping.model_kwargs.items()),
            detail="every key and shape fits (no weights: logits not compared in this run)")
    except ZooUnsupported as e:
        row.update(outcome=e.kind, detail=str(e))
    except Exception as e:  # noqa: BLE001  (a module that cannot live on the meta device)
        row.update(outcome="not checked", detail=f"structural check failed: {one_line(e)}")
    finally:
        row["seconds"] = round(time.time() - t0, 1)
    return row


def write_coverage(rows: list[dict], csv_path: str, md_path: str, command: str, total: int | None = None) -> dict:
    """The coverage table as CSV and Markdown; returns the per-table summary (imported / single-model entries)."""
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    summary = {}
    for table in dict.fromkeys(r["table"] for r in rows):
        mine = [r for r in rows if r["table"] == table]
        single = [r for r in mine if r["outcome"] != "ensemble"]
        ok = [r for r in single if r["outcome"] == "imported"]
        maps = [r for r in single if r["outcome"] == "maps"]
        in_scope = [r for r in single if r["outcome"] != "custom module"]
        summary[table] = {"entries": len(mine), "single_model": len(single), "imported": len(ok),
                          "pct_of_single": round(100 * len(ok) / max(len(single), 1), 1),
                          "maps_not_measured": len(maps),
                          "pct_imported_or_maps": round(100 * (len(ok) + len(maps)) / max(len(single), 1), 1),
                          "in_scope": len(in_scope), "pct_of_in_scope": round(100 * len(ok) / max(len(in_scope), 1), 1)}
    lines = ["# RobustBench model zoo: which entries import exactly as timm models", "",
             f"Measured by `{command}` (robustbench {importlib.metadata.version('robustbench')}, timm "
             f"{timm.__version__}, torch {torch.__version__}). Each entry's module is built by the robustbench "
             "package with seeded random weights (BatchNorm statistics included), saved as a zoo file, loaded back "
             "by robustbench's `load_model`, imported by `scripts/import_checkpoint.py --robustbench`, and its "
             f"logits compared with the zoo module's (|Δlogit| <= {LOGIT_TOL:g} x (1 + |logit|)).", "",
             *([f"**Partial: {len(rows)} of {total} entries so far** (the run is still going or was stopped).", ""]
               if total and len(rows) < total else []),
             "Outcome `maps`: the entry was checked without weights only (modules on the meta device: the timm "
             "architecture and every key and shape fit; logits not compared), because the weighted run did not "
             "reach it in the time it had.", "",
             "| table | entries | single-model | imported exactly | % of single-model | maps (not measured) | "
             "% imported or maps | % of in-scope (no custom module) imported exactly |",
             "|---|---|---|---|---|---|---|---|"]
    for t, s in summary.items():
        lines.append(f"| {t} | {s['entries']} | {s['single_model']} | {s['imported']} | {s['pct_of_single']} | "
                     f"{s['maps_not_measured']} | {s['pct_imported_or_maps']} | {s['pct_of_in_scope']} |")
    lines += ["", "| table | entry | outcome | timm architecture | max abs Δlogit | detail | s |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['table']} | {r['entry']} | {r['outcome']} | {r['architecture']} | {r['max_abs_diff']} | "
                     f"{r['detail'].replace('|', '/')} | {r['seconds']} |")
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return summary
