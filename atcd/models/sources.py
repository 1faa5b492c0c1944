"""Which weights a validate.py run evaluates, read as timm's validate.py reads them.

Several models in one run (a comma list, a `--model-list` file, a glob over `local-dir:` folders); a bare timm name
without `--checkpoint` means its pretrained weights; `--use-ema` swaps a run's `model.safetensors` for the
`model_ema.safetensors` beside it; a published model's `results.json` records the eps it was measured at.
"""
import glob
import json
import os

from timm.models import is_model, is_model_pretrained, list_models, parse_model_name

from ..errors import CheckpointError, ConfigError

__all__ = ["EMA_WEIGHTS_NAME", "card_eps", "check_model_name", "check_pretrained", "check_sources", "default_eps",
           "ema_weights", "expand_models"]

EMA_WEIGHTS_NAME = "model_ema.safetensors"
_GLOB_CHARS = ("*", "?", "[")


def _read_list(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [ln.split("#", 1)[0].strip() for ln in f if ln.split("#", 1)[0].strip()]
    except OSError as e:
        raise ConfigError(f"--model-list {path!r}: cannot read it ({e.strerror})") from None


def expand_models(model: str, model_list: str | None = None, pretrained: bool | None = None) -> tuple[str, ...]:
    """The models named by `--model` (a comma list) or, in its place, a `--model-list` file (one name a line, `#`
    comments), with `local-dir:` globs expanded to the folders they match (sorted) and timm wildcards ('resnet1*',
    'all') to timm's names as timm's validate.py does (`list_models(pattern, pretrained=True)`; all architectures
    with `pretrained` False), duplicates dropped."""
    names = _read_list(model_list) if model_list else [m.strip() for m in model.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--model-list {model_list!r} names no model" if model_list else "--model names no model")
    out: list[str] = []
    for name in names:
        if name.startswith("robustbench:"):  # validate.py's --model imports these first (atcd.main)
            raise ConfigError(f"{name}: robustbench: entries are given with validate.py --model, which imports them "
                              f"into the Hugging Face cache on first use")
        source, path = parse_model_name(name)
        if not any(c in name for c in _GLOB_CHARS) and name != "all":
            out.append(name)
        elif source == "local-dir":
            found = sorted(p for p in glob.glob(os.path.expanduser(path)) if os.path.isdir(p))
            if not found:
                raise ConfigError(f"--model {name}: the pattern matches no folder")
            out += [f"local-dir:{p}" for p in found]
        elif source is None:
            found = list_models("*" if name == "all" else name, pretrained=pretrained is not False)
            if not found:
                raise ConfigError(f"--model {name}: the pattern matches no timm model"
                                  f"{' with pretrained weights' if pretrained is not False else ''}")
            out += found
        else:
            raise ConfigError(f"--model {name}: wildcards are expanded over timm names and local-dir: folders only "
                              f"(e.g. 'resnet1*', 'local-dir:output/*/hf-export'); list hub names with commas")
    return tuple(dict.fromkeys(out))


def check_model_name(name: str):
    """Fail early and in one line on a model timm does not know (hub/local-dir names are resolved later)."""
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    if not is_model(name):
        close = list_models(f"*{name.split('.')[0][:6]}*")[:5]
        raise ConfigError(f"unknown model {name!r} (timm has no such architecture; similar: {close})")


def check_pretrained(name: str, checkpoint: str | None, pretrained: bool | None) -> None:
    """A bare timm name without `--checkpoint` means its pretrained weights (timm's validate.py rule); one that has
    none (e.g. this package's `smallcnn_mnist`) is an error, never a silent evaluation of random weights."""
    if parse_model_name(name)[0] is not None or checkpoint or pretrained is False:
        return  # hf-hub:/local-dir: carry their weights; a checkpoint or --no-pretrained says which weights
    if is_model(name) and not is_model_pretrained(name):  # (an unknown name is reported as such elsewhere)
        raise ConfigError(f"{name} has no pretrained weights (timm would start from random ones): give --checkpoint "
                          f"RUN/model.safetensors, a local-dir:/hf-hub: model, or --no-pretrained to evaluate random "
                          f"weights on purpose")


def ema_weights(checkpoint: str | None) -> str:
    """`model_ema.safetensors` beside `--checkpoint` (a run folder or a weights file in one)."""
    if not checkpoint:
        raise ConfigError("--use-ema needs --checkpoint (a training run folder or a weights file in one)")
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint) or "."
    path = os.path.join(folder, EMA_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"--use-ema: no EMA weights {path} (train with --model-ema to write them)")
    return path


def card_eps(name: str) -> float | None:
    """The eps an `hf-hub:` / `local-dir:` model's `results.json` records (what its card reports), else None."""
    source, model_id = parse_model_name(name)
    path = None
    if source == "local-dir":
        path = os.path.join(model_id, "results.json")
    elif source == "hf-hub":
        from huggingface_hub import hf_hub_download
        repo_id, _, revision = model_id.partition("@")
        try:
            path = hf_hub_download(repo_id, "results.json", revision=revision or None)
        except Exception:  # noqa: BLE001  (no card results: offline, no such file or repo; loading reports those)
            return None
    try:
        with open(path) as f:
            eps = json.load(f).get("eps")
    except (TypeError, OSError, ValueError, AttributeError):
        return None
    return float(eps) if isinstance(eps, (int, float)) else None


def default_eps(models: tuple[str, ...], data_eps: float | None, data_name: str) -> float:
    """eps when --eps is not given: the one the models' cards record (they must agree), else the dataset's.

    Raises:
        ConfigError: neither defines one (eps = 0.3 on ImageNet would be a wrong number, not a default), or the
            cards disagree.
    """
    found = {m: e for m in models if (e := card_eps(m)) is not None}
    if len(set(found.values())) > 1:
        seen = ", ".join(f"{m}: {e:g}" for m, e in found.items())
        raise ConfigError(f"the models' results.json record different eps ({seen}): give --eps to compare them at "
                          f"one radius")
    if found:
        return next(iter(found.values()))
    if data_eps is None:
        raise ConfigError(f"--eps is required: the {data_name} dataset defines no L-inf radius and no model card "
                          f"(results.json) records one; give e.g. --eps 8/255 (in [0,1] pixel units)")
    return data_eps


def check_sources(cfg) -> tuple[str, ...]:
    """The models a validate.py config (`EvalConfig`) names, checked before anything is loaded: options that only fit
    one model, a bare timm name without weights, `--use-ema` without an EMA file, a local-dir: that is no folder."""
    models = cfg.models
    if cfg.model_list and cfg.model != type(cfg).model:
        raise ConfigError("give the models with --model or with --model-list, not both")
    one_only = [flag for flag, v in (("--checkpoint", cfg.checkpoint), ("--update-card", cfg.update_card),
                                     ("--sweep-steps", cfg.sweep_steps), ("--sweep-eps", cfg.sweep_eps)) if v]
    if len(models) > 1 and one_only:
        raise ConfigError(f"{one_only[0]} is for one model; this run evaluates {len(models)} ({', '.join(models)})")
    if cfg.use_ema:
        ema_weights(cfg.checkpoint)
    for name in models:
        source, path = parse_model_name(name)
        if source == "local-dir" and not os.path.isdir(path):
            raise ConfigError(f"{name}: no such folder")
        check_pretrained(name, cfg.checkpoint, cfg.pretrained)
    return models
