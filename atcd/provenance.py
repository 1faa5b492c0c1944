"""What a validate.py measurement was taken on, recorded in its results JSON so a published card can prove it.

`measurement_record` gives the keys validate.py adds to each model's results: the sha256 of the weights file it
evaluated (so `scripts/publish.py` can refuse a card whose numbers were measured on other weights), the data config
the images went through (the size, crop and interpolation of the transform and the mean/std the model wrapper
normalised with: exactly what a plain-timm user must apply to get the same numbers), the images evaluated, and the
AutoAttack package and version when an AutoAttack attack ran.
"""
import importlib.metadata
import os

from timm.models import parse_model_name

from .data.eval_plan import strided_positions

__all__ = ["AUTOATTACK_PACKAGE", "autoattack_package", "file_sha256", "measurement_record", "weights_file"]

AUTOATTACK_PACKAGE = "pyautoattack"
_AA_NAMES = ("autoattack", "apgd-ce", "apgd-t", "fab-t", "square")


def file_sha256(path: str) -> str:
    from huggingface_hub.utils.sha import sha_fileobj
    with open(path, "rb") as f:
        return sha_fileobj(f).hex()


def weights_file(model: str, checkpoint: str | None) -> str | None:
    """The weights file a validate.py run loaded: `--checkpoint` (a run dir means its model.safetensors), else a
    `local-dir:` / cached `hf-hub:` model's model.safetensors; None for timm's own pretrained weights."""
    if checkpoint:
        return os.path.join(checkpoint, "model.safetensors") if os.path.isdir(checkpoint) else checkpoint
    if parse_model_name(model)[0] is None:
        return None
    from .models.hub import weights_file as hub_weights_file
    return hub_weights_file(model, None)


def autoattack_package() -> dict:
    """{'package': 'pyautoattack', 'version': 'x.y.z'} of the installed official AutoAttack."""
    try:
        version = importlib.metadata.version(AUTOATTACK_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"package": AUTOATTACK_PACKAGE, "version": version}


def _images(loader) -> dict:
    """Which images of the split were evaluated, from the loader's evaluation plan (`atcd.data.eval_plan`): all of
    them, or the evenly strided / listed subset with its positions in the split's order (timm's sorted file order
    for a folder, the sample number for shards)."""
    plan = getattr(loader, "plan", None)
    if plan is None:
        return {"selection": "not recorded"}
    positions = [int(p) for p in plan.positions]
    if len(positions) == plan.split_size:
        return {"selection": "all", "split_size": plan.split_size}
    strided = positions == strided_positions(plan.split_size, len(positions))
    return {"selection": "strided" if strided else "listed (--sample-ids)", "split_size": plan.split_size,
            "indices": positions}


def _float32_values(t) -> list[float]:
    """The shortest decimals that are these float32 values again (0.485, not 0.48500001430511475)."""
    return [float(str(v)) for v in t.detach().cpu().flatten().numpy()]


def measurement_record(model: str, checkpoint: str | None, loader, transform: dict, wrapper, attacks) -> dict:
    """The provenance keys of one model's results (see the module docstring).

    Args:
        model: the `--model` name.
        checkpoint: the weights file or run dir loaded with `--checkpoint` (EMA already resolved), or None.
        loader: the evaluation loader.
        transform: the resolved `transform_kwargs` (input_size, interpolation, crop_pct).
        wrapper: the `NormalizedModel` evaluated (its mean/std buffers).
        attacks: the attacks run.
    """
    path = weights_file(model, checkpoint)
    out = {
        "weights_file": os.path.abspath(path) if path else None,
        "weights_sha256": file_sha256(path) if path and os.path.isfile(path) else None,
        "data_config": {"input_size": list(transform["input_size"]), "crop_pct": float(transform["crop_pct"]),
                        "crop_mode": "center", "interpolation": transform["interpolation"],
                        "mean": _float32_values(wrapper.mean), "std": _float32_values(wrapper.std)},
        "images": _images(loader),
    }
    if any(a in _AA_NAMES for a in attacks):
        out["autoattack_package"] = autoattack_package()
    return out
