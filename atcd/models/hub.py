"""Load `hf-hub:` / `local-dir:` models with one-line errors, and lay published folders out as a Hub cache.

Loading goes through `timm.create_model` (timm reads `config.json` and `model.safetensors`); this module adds the
checks timm leaves out (a head of another size is silently re-initialised by timm, pickle weights are accepted)
and turns every failure into a one-line `HubError`. Publishing runs lives in `atcd.publish`, which reuses the
error translation here.
"""
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import timm
from huggingface_hub import snapshot_download
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
from timm.models import parse_model_name
from timm.models._hub import load_model_config_from_hf, load_model_config_from_path  # what create_model reads
from torch import nn

from ..checkpoint import CheckpointError, atomic_write_text
from .transfer import check_fits_but_classifier, safetensors_shapes

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "HubError",
    "add_folder_to_hf_cache",
    "create_hub_model",
    "create_pretrained",
    "download_model",
    "weights_file",
]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# the Hub stores these through LFS (its default .gitattributes): their cache blob is named by sha256, others by git sha1
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".npz", ".tar", ".zip")
_LFS_MIN_BYTES = 10 * 1024 * 1024
# connection failures: the HTTP client's base error (HfHubHTTPError derives from it: httpx2 in huggingface_hub 2.x)
NETWORK_ERRORS = (next(c for c in HfHubHTTPError.__mro__[1:] if c.__name__ == "HTTPError"), OSError)


class HubError(CheckpointError):
    """A hub / local-dir model that cannot be loaded, or a run that cannot be published (reported in one line)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def unreachable(name: str, exc: BaseException) -> HubError:
    """A connection failure (one of `NETWORK_ERRORS`) in one line."""
    return HubError(f"{name}: could not reach the Hub ({type(exc).__name__}: {one_line(exc)})")


def hub_error(name: str, exc: BaseException, filename: str = CONFIG_NAME) -> HubError:
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
    return HubError(f"{name}: {type(exc).__name__}: {one_line(exc)}")


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
            raise hub_error(name, e) from None
        except EntryNotFoundError:
            raise HubError(f"{name}: the repository has no {WEIGHTS_NAME} (only safetensors weights are loaded: "
                           f"pickle checkpoints can run code)") from None
        except (HfHubHTTPError, HFValidationError, OfflineModeIsEnabled, *NETWORK_ERRORS) as e:
            raise hub_error(name, e) from None
        reader = load_model_config_from_hf
        args = (model_id, cache_dir)
    try:
        return reader(*args)
    except LocalEntryNotFoundError as e:
        if source == "hf-hub" and _cached_repo_exists(_split_hub_id(model_id)[0], cache_dir):
            raise HubError(f"{name}: the cached repository has no {CONFIG_NAME} (not a timm model repository)") \
                from None
        raise hub_error(name, e) from None
    except (HfHubHTTPError, EntryNotFoundError, HFValidationError, OfflineModeIsEnabled) as e:
        raise hub_error(name, e) from None
    except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise HubError(f"{name}: {CONFIG_NAME} is not a timm model config ({type(e).__name__}: {one_line(e)})") \
            from None


def create_hub_model(
        name: str,
        num_classes: int | None = None,
        in_chans: int | None = None,
        cache_dir: str | None = None,
        reset_classifier: bool = False,
        **kwargs: Any,
) -> nn.Module:
    """`timm.create_model(name, pretrained=True)` for an `hf-hub:` / `local-dir:` name, with one-line errors.

    Such a name designates published weights, so they are always loaded. timm would silently re-initialise a
    classifier whose size differs from the checkpoint's and average the stem over other input channels; here a
    `num_classes` or `in_chans` that differs from the checkpoint's is an error instead, unless `reset_classifier`
    (fine-tuning to another class count): then timm's pretrained loading drops the classifier, and every other
    tensor of the weights file must still fit the model.

    Args:
        name: `hf-hub:org/name[@revision]` or `local-dir:PATH`.
        num_classes: expected number of classes (None: the checkpoint's).
        in_chans: expected input channels (None: the checkpoint's).
        cache_dir: Hugging Face cache folder (None: `HF_HUB_CACHE`).
        reset_classifier: accept a `num_classes` other than the checkpoint's, with a fresh classifier.
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
    reset = num_classes is not None and have_classes is not None and num_classes != have_classes
    if reset and not reset_classifier:
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
        model = timm.create_model(name, pretrained=True, cache_dir=cache_dir, **kwargs)
    except (RuntimeError, SafetensorError) as e:  # strict load_state_dict: missing keys / shape mismatch
        raise HubError(f"{name}: the weights do not fit architecture {arch!r}: {one_line(e)}") from None
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled) as e:
        raise hub_error(name, e) from None
    if reset:  # timm loaded non-strictly without the classifier: the rest must have fitted
        try:
            check_fits_but_classifier(model, safetensors_shapes(weights_file(name, cache_dir)), name)
        except CheckpointError as e:
            raise HubError(str(e)) from None
        _logger.info("%s: classifier re-initialised for %d classes (the weights have %d)", name, num_classes,
                     have_classes)
    return model


def weights_file(name: str, cache_dir: str | None) -> str:
    """The weights file timm loaded for a hub / local-dir name (for hf-hub: the cached copy)."""
    source, model_id = parse_model_name(name)
    if source == "local-dir":
        return str(Path(model_id) / WEIGHTS_NAME)
    from huggingface_hub import hf_hub_download
    repo_id, revision = _split_hub_id(model_id)
    return hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir)


def create_pretrained(name: str, **kwargs: Any) -> nn.Module:
    """`timm.create_model(name, pretrained=True)` for a bare timm name, with one-line errors.

    timm starts a model that has no pretrained weights from random ones with only a log line; here that is an
    error, and so are weights that cannot be fetched (offline, not in the Hugging Face cache).

    Raises:
        HubError: no pretrained weights exist, or they cannot be fetched.
    """
    from timm.models import get_pretrained_cfg, is_model_pretrained
    if not is_model_pretrained(name):
        raise HubError(f"{name} has no pretrained weights (timm would start from random ones): leave out "
                       f"--pretrained, or load weights with --checkpoint")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled, *NETWORK_ERRORS) as e:
        hub_id = getattr(get_pretrained_cfg(name), "hf_hub_id", None)
        fetch = f"python scripts/download.py hf-hub:{hub_id}" if hub_id else "a first online run"
        raise HubError(f"{name}: timm's pretrained weights cannot be fetched and are not in the Hugging Face cache "
                       f"({type(e).__name__}): give --checkpoint FILE or a local-dir:PATH model, or fetch them once "
                       f"online ({fetch}) and run with HF_HUB_OFFLINE=1") from None


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
        raise hub_error(f"hf-hub:{repo_id}", e) from None
    except NETWORK_ERRORS as e:
        raise unreachable(f"hf-hub:{repo_id}", e) from None
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
