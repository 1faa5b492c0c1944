"""Bring an existing robust checkpoint to the Hub as a timm model (`scripts/import_checkpoint.py`).

Reads the formats such weights come in: a plain state dict, `{'state_dict': ...}`, `{'model': ...}` (a DDP
`module.` prefix dropped), the robustness library's (`module.model.*` the network, `module.attacker.*` a copy of it,
`module.normalizer.new_mean/new_std` its mean and std), and safetensors; a pickle file (`.pt`, `.pth`, ...) only
through `torch.load(weights_only=True)`. The state dict is loaded strictly into a timm architecture; when the
source model's code is importable, its logits are compared with the timm model's on the same input. The output is
a timm hub folder (config.json with the data config, model.safetensors, a card) for `validate.py --model
local-dir:OUT --update-card OUT` and then `publish.py OUT --repo-id org/name --push`.
"""
import importlib
import logging
import os
from dataclasses import dataclass, field

import timm
import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import load_file

from ..checkpoint import atomic_write_text, mismatch, torch_load_weights_only
from ..errors import CheckpointError
from ..models.hub import HubError, one_line
from ..options import parse_kwargs
from ..provenance import file_sha256
from .card import CARD_NAME
from .export import save_checked, write_folder
from .usage import card_library, usage_section

__all__ = ["ImportedCheckpoint", "import_checkpoint", "read_checkpoint", "to_timm"]

_logger = logging.getLogger(__name__)

_ROBUSTNESS = ("module.model.", "module.attacker.", "module.normalizer.")


@dataclass
class ImportedCheckpoint:
    """A checkpoint read into a flat state dict, with what its format says about the data."""
    state_dict: dict[str, torch.Tensor]
    format: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dropped: list[str] = field(default_factory=list)


def _tensors_only(obj, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise HubError(f"{path}: not a state dict of tensors (nor a dict holding one under 'state_dict' or 'model')")
    return obj


def read_checkpoint(path: str) -> ImportedCheckpoint:
    """The state dict in `path` and its format (module docstring: the formats read).

    Raises:
        HubError: unreadable file, a pickle refused by `weights_only`, or no state dict of tensors inside.
    """
    if not os.path.isfile(path):
        raise HubError(f"{path}: no such checkpoint file")
    if path.endswith(".safetensors"):
        try:
            obj, fmt = load_file(path), "safetensors"
        except Exception as e:  # noqa: BLE001  (safetensors raises several types for a bad file)
            raise HubError(f"{path}: not a readable safetensors file ({one_line(e)})") from None
    else:
        try:
            obj, fmt = torch_load_weights_only(path), "torch.load(weights_only=True): state dict"
        except CheckpointError as e:
            raise HubError(str(e)) from None
        if isinstance(obj, dict):
            key = next((k for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
            if key is not None:
                obj, fmt = obj[key], f"torch.load(weights_only=True): {{'{key}': state dict}}"
    sd = _tensors_only(obj, path)
    if any(k.startswith(_ROBUSTNESS) for k in sd):
        mean, std = sd.get("module.normalizer.new_mean"), sd.get("module.normalizer.new_std")
        dropped = sorted(k for k in sd if not k.startswith("module.model."))
        sd = {k.removeprefix("module.model."): v for k, v in sd.items() if k.startswith("module.model.")}
        return ImportedCheckpoint(sd, fmt + ", robustness library keys", _values(mean), _values(std), dropped)
    if all(k.startswith("module.") for k in sd):  # DataParallel / DDP
        sd, fmt = {k.removeprefix("module."): v for k, v in sd.items()}, fmt + ", 'module.' prefix"
    return ImportedCheckpoint(sd, fmt)


def _values(t: torch.Tensor | None) -> tuple[float, ...] | None:
    return None if t is None else tuple(float(str(v)) for v in t.float().flatten().numpy())


def _renamed(sd: dict, rename: dict[str, str]) -> dict:
    out = {}
    for k, v in sd.items():
        old = next((o for o in rename if k.startswith(o)), None)
        out[rename[old] + k[len(old):] if old is not None else k] = v
    return out


def to_timm(ckpt: ImportedCheckpoint, arch: str, rename: dict[str, str] | None = None,
            **model_kwargs) -> torch.nn.Module:
    """The timm model `arch` holding the checkpoint's weights (strict load). Class and input-channel counts are read
    from the classifier and first conv of the state dict unless given in `model_kwargs`.

    Raises:
        HubError: unknown architecture, or a state dict that does not fit it (names the keys).
    """
    if not timm.is_model(arch):
        raise HubError(f"--model {arch}: not a timm architecture (nor one registered by this package)")
    sd = _renamed(ckpt.state_dict, rename or {})
    cfg = timm.models.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    head, stem = sd.get(f"{cfg.get('classifier')}.weight"), sd.get(f"{cfg.get('first_conv')}.weight")
    if head is not None and head.dim() >= 2:
        model_kwargs.setdefault("num_classes", head.shape[0])
    if stem is not None and stem.dim() == 4:
        model_kwargs.setdefault("in_chans", stem.shape[1])
    model = timm.create_model(arch, **model_kwargs)
    detail = mismatch(model.state_dict(), sd)
    if detail:
        raise HubError(f"the checkpoint does not fit timm architecture {arch}: {detail} (another architecture? "
                       f"check --model, or map key prefixes with --rename OLD=NEW)")
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _source_model(spec: str, kwargs: dict, ckpt: ImportedCheckpoint) -> torch.nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise HubError(f"--source-model {spec}: cannot import it ({one_line(e)}); give module.path:factory") \
            from None
    model = factory(**kwargs)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:
        raise HubError(f"--source-model {spec}: the checkpoint does not fit it ({one_line(e, 200)})") from None
    return model.eval()


def verify_logits(model: torch.nn.Module, source: torch.nn.Module, input_size, mean, std, n: int = 8) -> dict:
    """Both models' logits on the same normalised input (seeded uniform pixels in [0, 1]).

    Raises:
        HubError: the logits differ beyond float32 rounding (rtol 1e-4, atol 1e-5).
    """
    x = torch.rand(n, *input_size, generator=torch.Generator().manual_seed(0))
    xn = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        ours, theirs = model(xn), source(xn)
    if ours.shape != theirs.shape:
        raise HubError(f"the timm model gives logits of shape {tuple(ours.shape)}, the source model "
                       f"{tuple(theirs.shape)}")
    diff = (ours - theirs).abs().max().item()
    if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
        raise HubError(f"the timm model's logits differ from the source model's (max |diff| {diff:.3g}): the keys "
                       f"were mapped onto the wrong layers")
    return {"exact": bool(torch.equal(ours, theirs)), "max_abs_diff": diff, "n": n}


def _card(repo_id: str, arch: str, pcfg: dict, source: dict, license: str, out_dir: str) -> ModelCard:
    library, library_tags = card_library(arch)
    data = ModelCardData(library_name=library, license=license, pipeline_tag="image-classification",
                         tags=["image-classification", *library_tags, "adversarial-robustness"],
                         model_name=repo_id.split("/")[-1])
    check = source.get("verified")
    checked = "not compared with the source model (its code was not given)"
    if check:
        how = "bit for bit" if check["exact"] else f"max |diff| {check['max_abs_diff']:.2g}"
        checked = f"equal to the source model's (`{source['source_model']}`) on {check['n']} inputs ({how})"
    body = f"""
# {repo_id.split("/")[-1]}

`{arch}` weights imported from `{source["file"]}` (sha256 `{source["sha256"]}`, read as {source["format"]}) by
the ATCD suite's `scripts/import_checkpoint.py`. Logits: {checked}.

## Robustness

No evaluation is recorded yet. Measure it, which writes the numbers into this card, then push:

```bash
python validate.py --model local-dir:{out_dir} --attacks clean,autoattack --eps EPS --update-card {out_dir}
python scripts/publish.py {out_dir} --repo-id {repo_id} --push
```

{usage_section(repo_id, arch, pcfg)}"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def import_checkpoint(path: str, arch: str, out_dir: str, repo_id: str, *, rename: dict[str, str] | None = None,
                      model_kwargs=(), input_size=None, crop_pct: float | None = None,
                      interpolation: str | None = None, mean=None, std=None, source_model: str | None = None,
                      source_kwargs=(), license: str = "apache-2.0") -> dict:
    """Write a timm hub folder for the checkpoint at `path` mapped onto `arch`; returns what was done.

    mean / std: given, else the robustness library normaliser's, else the architecture's `pretrained_cfg`.
    input_size / crop_pct / interpolation: given, else the architecture's (crop_pct 1.0 at <= 32 px).

    Raises:
        HubError: unreadable checkpoint, a mismatched architecture, logits that differ from the source model's.
    """
    if repo_id.count("/") != 1:
        raise HubError(f"--repo-id must be org/name (got {repo_id!r})")
    ckpt = read_checkpoint(path)
    model = to_timm(ckpt, arch, rename, **parse_kwargs(model_kwargs))
    pcfg = model.pretrained_cfg
    chans = model.state_dict()[f"{pcfg['first_conv']}.weight"].shape[1] if pcfg.get("first_conv") else 3
    size = tuple(input_size) if input_size else (chans, *pcfg.get("input_size", (3, 224, 224))[1:])
    mean = tuple(mean or ckpt.mean or pcfg.get("mean"))
    std = tuple(std or ckpt.std or pcfg.get("std"))
    mean, std = (mean * chans if len(mean) == 1 else mean), (std * chans if len(std) == 1 else std)
    data_config = {"input_size": size, "interpolation": interpolation or pcfg.get("interpolation", "bilinear"),
                   "crop_pct": crop_pct or (1.0 if min(size[1:]) <= 32 else pcfg.get("crop_pct", 0.875)),
                   "crop_mode": "center", "mean": mean, "std": std}
    source = {"file": os.path.basename(path), "sha256": file_sha256(path), "format": ckpt.format,
              "source_model": source_model, "dropped_keys": len(ckpt.dropped)}
    if source_model:
        src = _source_model(source_model, parse_kwargs(source_kwargs), ckpt)
        source["verified"] = verify_logits(model, src, size, mean, std)

    def fill(tmp: str):
        pcfg = save_checked(model, tmp, model.state_dict(), path, data_config=data_config,
                            model_config={"pretrained_cfg": {"tag": "imported", "license": license}})["pretrained_cfg"]
        atomic_write_text(os.path.join(tmp, CARD_NAME), str(_card(repo_id, arch, pcfg, source, license, out_dir)))

    write_folder(out_dir, fill)
    return {"folder": out_dir, "architecture": arch, "num_classes": model.num_classes, "data_config": data_config,
            **source}
