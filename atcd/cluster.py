"""What a run across processes and nodes needs beyond Accelerate's defaults.

- `accelerator_handlers`: the process group's timeout (`--dist-timeout`; NCCL aborts a collective after 10 minutes
  by default, gloo after 30, which hides the problem on CPU) and DDP's options.
- `wait_outside_collectives`: ranks that finished their share of an evaluation early wait for the others by polling
  the process group's key-value store, not inside a collective, so a long evaluation (AutoAttack on a robust
  ResNet-50 chunk) never trips the timeout however unequal the ranks' last chunks are.
- `loader_defaults`: loader workers and pinned memory as a GPU run needs them.
- `check_shared_output`: every rank writes a marker into `--output` at start and every rank must see all of them;
  otherwise the run stops with one line: checkpoints, resume and the run folder need storage all nodes share.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from datetime import timedelta

import torch.distributed as dist
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, broadcast_object_list, gather_object

from .errors import ConfigError

__all__ = ["accelerator_handlers", "check_shared_output", "loader_defaults", "wait_outside_collectives"]


def accelerator_handlers(dist_timeout: float, find_unused_parameters: bool = False) -> list:
    """`Accelerator(kwargs_handlers=...)` of the run: the process-group timeout in seconds and DDP's options."""
    handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=dist_timeout))]
    if find_unused_parameters:
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    return handlers


_waits = {"n": 0}  # every rank calls wait_outside_collectives in the same order: the n-th call has one key on all


def wait_outside_collectives(accelerator, poll_seconds: float = 0.05) -> None:
    """Return once every process has called this (the n-th time), waiting in Python, not in a collective.

    A barrier or a gather would count the wait against the process group's timeout; the store's non-blocking
    `check` does not. A rank that died is seen by the launcher, which stops the others.
    """
    if accelerator.num_processes == 1 or not dist.is_initialized():
        return
    store = dist.distributed_c10d._get_default_store()
    _waits["n"] += 1
    prefix = f"atcd_wait/{_waits['n']}/"
    store.set(f"{prefix}{accelerator.process_index}", "1")
    keys = [f"{prefix}{r}" for r in range(accelerator.num_processes)]
    while not store.check(keys):
        time.sleep(poll_seconds)


def check_shared_output(accelerator, output: str) -> None:
    """Stop every rank with one line unless all ranks see one another's marker files in `output`.

    Rank 0 names a marker folder (broadcast), every rank writes its marker, and after a barrier every rank counts
    what it sees. With node-local `--output` each node would write its own checkpoints (rank 0's temporary folder
    half-filled by the others) and resume from its own "latest checkpoint", at different steps.
    """
    if accelerator.num_processes == 1:
        return
    token = broadcast_object_list([uuid.uuid4().hex if accelerator.is_main_process else None])[0]
    folder = os.path.join(output, f".storage-check-{token}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"rank{accelerator.process_index}"), "w") as f:
        f.write(f"{os.uname().nodename}\n")
    accelerator.wait_for_everyone()
    seen = sorted(os.listdir(folder))
    views = gather_object([(accelerator.process_index, os.uname().nodename, len(seen))])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process or any(n != accelerator.num_processes for _, _, n in views):
        shutil.rmtree(folder, ignore_errors=True)  # (each rank its own copy when storage is not shared)
    blind = [(r, host, n) for r, host, n in views if n != accelerator.num_processes]
    if blind:
        r, host, n = blind[0]
        raise ConfigError(f"--output {output} is not shared storage: rank {r} on {host} sees {n} of the "
                          f"{accelerator.num_processes} ranks' marker files there; every node must write checkpoints "
                          f"to one folder (a shared file system path for --output), or resume would find different "
                          f"checkpoints per node")


def loader_defaults(cfg, accelerator) -> dict:
    """--workers and --pin-mem as a GPU run needs them unless given: workers per process from this process's share
    of the CPUs (at most 8), pinned batches on CUDA (a copy from pageable memory waits for the device). Loaders are
    not persistent: a training dataset's per-epoch augmentation seed is set in the main process, which persistent
    workers would not see."""
    workers = cfg.workers
    if workers is None and accelerator.device.type == "cpu":
        workers = 0  # the cpu computes the steps too
    elif workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(8, max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))  # (torchrun sets it)
    return {"workers": workers, "pin_mem": cfg.pin_mem or accelerator.device.type == "cuda"}
