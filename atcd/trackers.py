"""Experiment trackers (--log-with tensorboard|wandb|all): Accelerate's own, started and written by the main process.

The run's flat config is the trackers' hyper-parameters; every --log-interval minibatches the main process's running
train loss and accuracy of the epoch are logged (`step/train_loss`, `step/train_adv_top1`, `step/lr`: read from the
device only at those points, where the progress bar already reads them), and at each epoch end every summary.csv
column under its own name. The step is the optimizer-update count, so a resumed run continues the same curves.
TensorBoard writes `RUN_DIR/tensorboard/RUN_NAME/` (`tensorboard --logdir RUN_DIR/tensorboard`), wandb
`RUN_DIR/wandb/`.
"""
import os

from accelerate.tracking import get_available_trackers
from accelerate.utils import ProjectConfiguration, is_tensorboard_available, is_wandb_available

from .errors import ConfigError

__all__ = ["TRACKER_DIRS", "accelerator_kwargs", "check_trackers", "log_scalars", "start_trackers"]

TRACKER_DIRS = ("tensorboard", "wandb")  # what the trackers write inside the run dir
_INSTALLED = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}


def check_trackers(log_with: str | None) -> None:
    """A tracker that is not installed is an error (Accelerate would leave it out with a debug message)."""
    if log_with == "all" and not get_available_trackers():
        raise ConfigError("--log-with all: no experiment tracker is installed (pip install tensorboard)")
    if log_with in _INSTALLED and not _INSTALLED[log_with]():
        raise ConfigError(f"--log-with {log_with}: the {log_with} package is not installed (pip install {log_with})")


def accelerator_kwargs(log_with: str | None, run_dir: str) -> dict:
    """`Accelerator(**...)` arguments of --log-with: the trackers, and the run dir as the project's directory."""
    if not log_with:
        return {}
    return {"log_with": log_with, "project_config": ProjectConfiguration(
        project_dir=run_dir, logging_dir=os.path.join(run_dir, TRACKER_DIRS[0]))}


def start_trackers(accelerator, flat_config: dict, run_dir: str) -> bool:
    """`init_trackers` (main process) with the run's name and flat config; True on the process that logs."""
    if not accelerator.log_with:
        return False
    name = os.path.basename(os.path.normpath(run_dir))
    # hyper-parameters must be scalars or strings (TensorBoard's add_hparams refuses None and tuples)
    config = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat_config.items()}
    accelerator.init_trackers(name, config=config, init_kwargs={"wandb": {"name": name, "dir": run_dir}})
    return accelerator.is_main_process


def log_scalars(accelerator, values: dict, step: int) -> None:
    """The numbers of `values` (e.g. a summary row) to every tracker at `step`; a no-op without trackers."""
    accelerator.log({k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                    step=step)
