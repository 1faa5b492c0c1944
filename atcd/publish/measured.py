"""Which of a run's weights is published, and proof that the card's numbers were measured on that very file.

A run writes up to three weights files (`--weights` of scripts/publish.py): `final` = model.safetensors, `best` =
model_best.safetensors (`--early-stop robust`: with robust overfitting usually *the* checkpoint), `ema` =
model_ema.safetensors (`--model-ema`). validate.py records in its results JSON the file it evaluated and its
sha256 (`atcd.provenance`); publishing compares both with the chosen file and refuses a mismatch in one line that
gives the validate.py command to run.
"""
import json
import logging
import os

from ..models.hub import HubError, one_line
from ..provenance import file_sha256
from ..run_options import run_validate_flags
from .labels import eps_text

__all__ = ["WEIGHTS", "read_measured_results", "run_weights"]

_logger = logging.getLogger(__name__)

WEIGHTS = {"final": "model.safetensors", "best": "model_best.safetensors", "ema": "model_ema.safetensors"}
_WRITTEN_BY = {"best": "train with --early-stop robust", "ema": "train with --model-ema"}


def run_weights(run_dir: str, which: str) -> str:
    """The weights file of a run for `--weights final|best|ema`."""
    if which not in WEIGHTS:
        raise HubError(f"--weights must be one of {', '.join(WEIGHTS)} (got {which!r})")
    path = os.path.join(run_dir, WEIGHTS[which])
    if not os.path.isfile(path):
        how = f" ({_WRITTEN_BY[which]} to write it)" if which in _WRITTEN_BY else ""
        raise HubError(f"{run_dir} has no {WEIGHTS[which]}{how}")
    return path


def _validate_command(weights: str, results_path: str, train_args: dict) -> str:
    parts = ["python validate.py", *run_validate_flags(train_args, weights)]  # (validate.py --run reads the same)
    parts += ["--attacks clean,pgd,autoattack", f"--eps {eps_text(float(train_args.get('eps', 0.3)))}",
              f"--results-file {results_path}"]
    return " ".join(parts)


def read_measured_results(path: str, weights: str, train_args: dict) -> dict:
    """validate.py's results JSON at `path`, checked to have measured `weights` (by sha256 when it records one,
    else by path) with the run's architecture.

    Raises:
        HubError: no results, unreadable, another model, or other weights (the message says what to run).
    """
    rerun = _validate_command(weights, path, train_args)
    if not os.path.isfile(path):
        raise HubError(f"no results file {path}: measure the weights first: {rerun}")
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise HubError(f"{path}: not a readable results JSON ({one_line(e)})") from None
    if "leaderboard" in results:
        raise HubError(f"{path} holds a several-model leaderboard; publish needs the results of one model: {rerun}")
    for key in ("results", "eps", "norm", "num_samples"):
        if key not in results:
            raise HubError(f"{path}: no {key!r} (expected the file validate.py --results-file writes)")
    if results.get("model") not in (train_args.get("model"), None):
        raise HubError(f"{path} measured model {results.get('model')!r}, but the run trained "
                       f"{train_args.get('model')!r}")
    measured_sha = results.get("weights_sha256")
    if measured_sha:
        if measured_sha != file_sha256(weights):
            what = results.get("weights_file") or results.get("checkpoint")
            raise HubError(f"{path} was measured on {what} (sha256 {measured_sha[:12]}...), not on {weights}: "
                           f"run {rerun}")
        return results
    ckpt = results.get("checkpoint")  # a results file of an older validate.py: the path it names, and its age
    cand = os.path.join(ckpt, WEIGHTS["final"]) if ckpt and os.path.isdir(ckpt) else ckpt
    if not cand or not os.path.exists(cand) or not os.path.samefile(cand, weights):
        raise HubError(f"{path} was measured on {ckpt or 'unrecorded weights'}, not on {weights}: run {rerun}")
    if os.path.getmtime(weights) > os.path.getmtime(path) + 1.0:
        raise HubError(f"{path} is older than {weights}: the weights changed after they were measured; run {rerun}")
    _logger.warning("%s records no weights sha256 (an older validate.py): matched by path and date only", path)
    return results
