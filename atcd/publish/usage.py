"""How a published model is loaded, said truthfully on its card: plain timm for timm's own architectures, this
package first for the architectures it registers (a plain `timm.create_model` of those fails)."""
import logging

import timm

from .. import __version__

__all__ = ["card_library", "is_timm_native", "usage_section"]

_logger = logging.getLogger(__name__)


def is_timm_native(arch: str) -> bool:
    """True when `arch` is one of timm's own architectures (a plain `pip install timm` can build it)."""
    return timm.is_model(arch) and timm.models.model_entrypoint(arch).__module__.startswith("timm.")


def card_library(arch: str) -> tuple[str, list[str]]:
    """(the card's `library_name`, its library tags): 'timm' only when plain timm loads the model, since the Hub
    then offers a `timm.create_model` snippet; otherwise this package, which registers the architecture."""
    return ("timm", ["timm"]) if is_timm_native(arch) else ("atcd", ["atcd"])


def _install(arch: str) -> str:
    if is_timm_native(arch):
        return f"`{arch}` is one of timm's own architectures: `pip install timm` (>= {timm.__version__}) is enough."
    return (f"`{arch}` is not a timm architecture: it is registered with timm by the ATCD suite. Install the suite "
            f"first (package `atcd` {__version__}: `pip install -e .` in its source checkout), then `import atcd` "
            "before `timm.create_model` (a plain timm install cannot build this model).")


def usage_section(repo_id: str, arch: str, pcfg: dict) -> str:
    """The card's "How to use" section for a model whose `pretrained_cfg` is `pcfg`.

    The numbers on the card were measured on [0, 1] pixels normalised by the mean/std below inside the suite's
    model wrapper; timm's own pipeline (`resolve_data_config` + `create_transform`) applies the same resize, crop
    and normalisation, so a plain-timm user gets the same logits without knowing about the wrapper.
    """
    mean, std = tuple(pcfg.get("mean", ())), tuple(pcfg.get("std", ()))
    input_size = tuple(pcfg.get("input_size", ()))
    identity = all(m == 0 for m in mean) and all(v == 1 for v in std)
    note = " (the identity for this model; keep the step, it is what other timm models need)" if identity else ""
    register = "" if is_timm_native(arch) else f"import atcd  # registers the architecture `{arch}` with timm\n"
    gray = ("\nThe model takes 1-channel input: read images as grayscale (`create_dataset(..., input_img_mode='L')`)."
            if input_size[:1] == (1,) else "")
    return f"""## How to use

{_install(arch)}

**The data config the numbers were measured with is the model's `pretrained_cfg`:** input_size {input_size},
interpolation '{pcfg.get("interpolation")}', crop_pct {pcfg.get("crop_pct")} (centre crop),
mean = {mean}, std = {std}{note}. timm's own transforms apply it:

```python
import timm
import torch
{register}
model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()
cfg = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**cfg)  # resize, centre crop, to [0, 1], (x - mean) / std
logits = model(transform(img).unsqueeze(0))  # img: a PIL image
```
{gray}
**ε is in [0, 1] pixel units:** attack the image before normalisation, e.g. on `x` in [0, 1] with
`model((x - mean) / std)`, mean / std from `model.pretrained_cfg` as `(1, C, 1, 1)` tensors. With the ATCD suite,
`atcd.models.build_model("hf-hub:{repo_id}")` returns the same weights wrapped so that the model itself takes
[0, 1] pixels (normalisation inside, as attacks need). Offline use: `python scripts/download.py hf-hub:{repo_id}`
once, then set `HF_HUB_OFFLINE=1`.
"""
