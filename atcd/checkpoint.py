"""Safetensors weights and resumable training state, every write atomic (tmp in same dir, fsync, rename)."""
import json
import logging
import os
import re
import shutil
import tempfile

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError, ConfigError

__all__ = [
    "PICKLE_SUFFIXES",
    "RESUME_FREE",
    "RUN_FILES",
    "STATE_MARKER",
    "CheckpointError",
    "atomic_write_text",
    "check_earlier_run",
    "earlier_run",
    "find_latest_state",
    "load_run_state",
    "load_weights",
    "mismatch",
    "read_state_meta",
    "read_weights",
    "save_run_state",
    "save_state_dir",
    "save_weights",
    "torch_load_weights_only",
]

_logger = logging.getLogger(__name__)

STATE_MARKER = "state.json"  # written last inside a state dir: its presence means the dir is complete


def _umask_mode(is_dir: bool = False) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if is_dir else 0o666) & ~mask


def _fsync_dir(path: str):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _atomic_write(path: str, write) -> None:
    """`write(tmp)` fills a temp file beside `path`; it is fsynced, given the user's usual permissions (mkstemp makes
    0600) and renamed over `path`, and the folder fsynced: `path` is either the old file or the complete new one."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        _fsync_dir(d)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str):
    def write(tmp: str):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic_write(path, write)


def save_weights(model: nn.Module, path: str, metadata: dict[str, str] | None = None):
    """Write `model.state_dict()` as safetensors atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()}))


PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".tar")  # torch.save / pickle checkpoints


def _first_line(e: BaseException) -> str:
    """The informative line of an exception's message (torch's unpickler errors run over many lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = next((ln.split("error:", 1)[1].strip() for ln in lines if "WeightsUnpickler error:" in ln), None)
    return (why or (lines[0] if lines else type(e).__name__)).split(". ")[0]


def torch_load_weights_only(path: str):
    """`torch.load(path, weights_only=True)` on the cpu, the only way a pickle checkpoint is ever read here.

    weights_only refuses any pickle global outside tensors and containers, so a file whose `__reduce__` would run
    code is rejected before anything of it executes (torch < 2.6 had a bypass, CVE-2025-32434: refused there).
    """
    import pickle

    import torch
    if tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2]) < (2, 6):
        raise CheckpointError(f"{path}: reading a pickle checkpoint needs torch >= 2.6 (weights_only loading is "
                              f"unsafe before, CVE-2025-32434); convert the checkpoint to safetensors instead")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused by torch.load(weights_only=True), the pickle holds more than "
                              f"tensors ({_first_line(e)})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(e)})") from None


def _read_pickle_state_dict(path: str) -> dict:
    """`torch_load_weights_only` of a plain state dict, or of a dict holding one under 'state_dict'/'model'."""
    import torch
    obj = torch_load_weights_only(path)
    if isinstance(obj, dict):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
        obj = inner if inner is not None else obj
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise CheckpointError(f"{path}: not a state dict of tensors (nor a dict holding one under 'state_dict' or "
                              f"'model')")
    from timm.models import clean_state_dict
    return clean_state_dict(obj)  # drops a DDP/DataParallel 'module.' prefix, as timm's load_checkpoint does


def load_weights(model: nn.Module, path: str, allow_pickle: bool = False) -> nn.Module:
    """Load weights strictly into `model`; any problem is a `CheckpointError` with a one-line reason.

    Args:
        model: the module whose `state_dict()` keys and shapes the file must match exactly.
        path: a `.safetensors` file, or a run dir holding `model.safetensors`; with `allow_pickle` also a
            torch.save file (`.pth`, `.pt`, `.bin`, ...).
        allow_pickle: load a non-safetensors file with `torch.load(weights_only=True)` (never unrestricted pickle).

    Returns:
        `model`, with the weights loaded.

    Raises:
        CheckpointError: missing, unreadable or truncated file; a pickle file without `allow_pickle`, or one that
            holds more than tensors; keys or shapes that do not fit `model`.
    """
    path, sd = read_weights(path, allow_pickle)
    detail = mismatch(model.state_dict(), sd)
    if detail:
        raise CheckpointError(f"{path} does not fit model {type(model).__name__}: {detail} (a checkpoint of "
                              f"another architecture or class count?)")
    model.load_state_dict(sd, strict=True)
    return model


def read_weights(path: str, allow_pickle: bool = False) -> tuple[str, dict]:
    """(the file read, its state dict): a `.safetensors` file or a run dir's `model.safetensors` (see
    `load_weights`); any problem is a one-line `CheckpointError`."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        try:
            return path, load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    if not allow_pickle:
        kind = "a pickle checkpoint" if path.lower().endswith(PICKLE_SUFFIXES) else "not a .safetensors file"
        raise CheckpointError(f"{path}: {kind}; only .safetensors checkpoints are accepted (unpickling can run "
                              f"code): convert it with python scripts/import_checkpoint.py {path} --model ARCH --out "
                              f"DIR, or pass --allow-pickle to load it with torch.load(weights_only=True)")
    return path, _read_pickle_state_dict(path)


def mismatch(own: dict, sd: dict, ignore: set[str] = frozenset()) -> str:
    """How state dict `sd` fails to fit `own` (keys outside `ignore`): '' when it fits."""
    missing, unexpected = sorted(set(own) - set(sd) - ignore), sorted(set(sd) - set(own) - ignore)
    bad = sorted(k for k in set(own) & set(sd) - ignore if own[k].shape != sd[k].shape)
    return " ".join(part for part in (f"missing {missing[:3]}" if missing else "",
                                      f"unexpected {unexpected[:3]}" if unexpected else "",
                                      f"shape mismatch {bad[:3]}" if bad else "") if part)


def find_latest_state(run_dir: str) -> str | None:
    """Newest complete `checkpoint-*` dir (one with its marker); incomplete ones are ignored.

    Newest = most updates; at equal counts an epoch-end checkpoint wins over a mid-epoch one of the same step.
    """
    if not os.path.isdir(run_dir):
        return None
    cands = []
    for name in os.listdir(run_dir):
        p = os.path.join(run_dir, name)
        if name.startswith("checkpoint-") and os.path.isfile(os.path.join(p, STATE_MARKER)):
            try:
                with open(os.path.join(p, STATE_MARKER)) as f:
                    meta = json.load(f)
                cands.append((meta["num_updates"], meta.get("epoch_done", True), meta.get("batches_done", 0), p))
            except (ValueError, KeyError, OSError):
                continue
    return max(cands)[-1] if cands else None


def save_state_dir(run_dir: str, name: str, write_fn, meta: dict, keep: int, protect: tuple = ()):
    """Write a state dir atomically: fill a tmp dir with `write_fn(tmp)`, add the marker, rename, then prune.

    The previous complete checkpoints are pruned only after the new one is in place, down to the newest `keep`;
    names in `protect` are never pruned (nor counted).
    """
    final = os.path.join(run_dir, name)
    tmp = tempfile.mkdtemp(dir=run_dir, prefix=".tmp-" + name)
    try:
        write_fn(tmp)
        atomic_write_text(os.path.join(tmp, STATE_MARKER), json.dumps(meta, indent=1))
        os.chmod(tmp, _umask_mode(is_dir=True))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    states = sorted((p for p in os.listdir(run_dir) if p.startswith("checkpoint-") and p not in protect),
                    key=lambda p: os.path.getmtime(os.path.join(run_dir, p)))
    for old in states[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(run_dir, old), ignore_errors=True)



# (tensorboard/, wandb/: what --log-with's trackers write, atcd.trackers.TRACKER_DIRS)
RUN_FILES = ("summary.csv", "model.safetensors", "model_best.safetensors", "model_ema.safetensors", "data_keys.json",
             "tensorboard", "wandb")


# where a run writes, how it is watched and the precision its launcher picks, not what it trains: free to differ
# when the run is resumed
RESUME_FREE = frozenset({"output", "experiment", "resume", "overwrite", "resume_with_changes", "no_progress",
                         "log_interval", "log_with", "log_level", "log_data_keys", "workers", "pin_mem", "dist_timeout",
                         "checkpoint_hist", "checkpoint_every_steps", "max_bad_steps", "mixed_precision",
                         "eval_precision"})


def check_earlier_run(out_dir: str, resume: str | None, overwrite: bool, flat: dict,
                      with_changes: bool) -> list[str]:
    """The files of an earlier run in `out_dir` (`earlier_run`), checked against the command: a run there is neither
    resumed nor overwritten (appending to its summary would mix two runs), or it is resumed with options outside
    `RESUME_FREE` that differ from its args.yaml (e.g. a default a newer version changed, as ATCD's eps warm-up;
    options args.yaml does not record did not exist then and are not compared) without `with_changes`.

    Raises:
        ConfigError: either case, in one line.
    """
    earlier = earlier_run(out_dir)
    if earlier and not resume and not overwrite:
        raise ConfigError(f"{out_dir} already holds a training run ({', '.join(earlier[:3])}"
                          f"{', ...' if len(earlier) > 3 else ''}): continue it with --resume auto, replace it "
                          f"with --overwrite, or choose another --experiment")
    path = os.path.join(out_dir, "args.yaml")
    if not (earlier and resume and os.path.isfile(path)):
        return earlier
    import yaml
    with open(path) as f:
        had = yaml.safe_load(f) or {}
    now = {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}
    changed = {k: (had[k], v) for k, v in now.items() if k not in RESUME_FREE and k in had and had[k] != v}
    if changed and not with_changes:
        diff = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in list(changed.items())[:4])
        raise ConfigError(f"--resume: {out_dir} trained with other options than this command gives ({diff}"
                          f"{', ...' if len(changed) > 4 else ''}; a changed default counts too): resume it with its "
                          f"own, python train_atcd.py -c {path} --resume auto, or add --resume-with-changes to "
                          f"continue with the new values")
    if changed:
        _logger.warning("resuming %s with changed options: %s", out_dir, changed)
    return earlier


def earlier_run(out_dir: str) -> list[str]:
    """The files of an earlier training run in `out_dir` (what a fresh run would mix with or overwrite)."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(n for n in os.listdir(out_dir) if n in RUN_FILES or n.startswith("checkpoint-"))


def _save_rank_state(accelerator, method, tmp: str | None, weights: dict[str, nn.Module]):
    """Every process: save its part of the state into the main process's temporary checkpoint dir.

    `accelerator.save_state` must run on all processes (each writes its own RNG state; weights, optimizer and
    registered objects come from the main one); the method's state (ATCD generator, Free's delta) is per rank.
    `weights` (file name -> module, the same on every rank, e.g. the EMA) are written by the main process.
    """
    from accelerate.utils import broadcast_object_list
    tmp = broadcast_object_list([tmp])[0]  # the main process made the dir; the others learn its name
    accelerator.save_state(tmp)
    if accelerator.is_main_process:
        for fname, module in weights.items():
            save_weights(module, os.path.join(tmp, fname))
    state = method.state_dict()
    if state:
        save_file(state, os.path.join(tmp, f"method_{accelerator.process_index}.safetensors"))
    accelerator.wait_for_everyone()  # all parts written before the main process adds the marker and renames


def save_run_state(accelerator, method, run_dir: str, name: str, meta: dict, keep: int, protect: tuple = (),
                   weights: dict[str, nn.Module] | None = None) -> str:
    """Atomic resumable checkpoint of a training run, written by all processes; returns its path.

    `weights`: extra modules saved as safetensors files of the given names (restore them with `load_weights`).
    """
    weights = weights or {}
    if accelerator.is_main_process:
        save_state_dir(run_dir, name, lambda tmp: _save_rank_state(accelerator, method, tmp, weights), meta, keep,
                       protect)
    else:
        _save_rank_state(accelerator, method, None, weights)
    accelerator.wait_for_everyone()
    return os.path.join(run_dir, name)


def read_state_meta(state_dir: str, num_processes: int) -> dict:
    """The marker of a complete checkpoint; a mid-epoch one must be resumed with as many processes as wrote it."""
    with open(os.path.join(state_dir, STATE_MARKER)) as f:
        meta = json.load(f)
    if not meta.get("epoch_done", True) and meta.get("num_processes", 1) != num_processes:
        raise CheckpointError(f"{state_dir} was written mid-epoch by {meta['num_processes']} process(es); resume it "
                              f"with as many (a mid-epoch position is per process), or from an epoch-end checkpoint")
    return meta


def load_run_state(accelerator, method, state_dir: str) -> dict:
    """Restore weights, optimizer, RNG and sampler states (Accelerate) and this rank's method state; returns the
    checkpoint's marker (epoch, position, counters)."""
    meta = read_state_meta(state_dir, accelerator.num_processes)
    accelerator.load_state(state_dir)
    rank = accelerator.process_index
    path = os.path.join(state_dir, f"method_{rank}.safetensors")
    if not os.path.exists(path):
        path = os.path.join(state_dir, "method.safetensors")  # single-file layout of older checkpoints
    if os.path.exists(path):
        method.load_state_dict(load_file(path))
    elif method.state_dict():
        _logger.warning("no method state for rank %d in %s (fewer processes saved it?): starting it afresh",
                        rank, state_dir)
    return meta
