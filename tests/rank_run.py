"""train_atcd.py (or validate.py) under `accelerate launch`, with what a launched test needs inside each rank.

    accelerate launch ... tests/rank_run.py --chdir-per-rank DIR -- <train_atcd.py arguments>
    accelerate launch ... tests/rank_run.py --count-syncs FILE -- <train_atcd.py arguments>
    accelerate launch ... tests/rank_run.py --data-wait SECONDS -- <train_atcd.py arguments>
    accelerate launch ... tests/rank_run.py --eval-delay SECONDS -- <validate.py arguments>

--chdir-per-rank DIR: every rank works in DIR/rank<LOCAL_RANK> (a relative --output then names a folder no other rank
sees: node-local storage, simulated on one host).
--count-syncs FILE: per rank, the host syncs (`tests/syncs.py`, cpu tensors included: on cpu every tensor is "the
device"; `.to(device)` is left out, as on cpu every device is the cpu) and the tensors made from host data on a
device (`torch.tensor(data, device=...)`, a copy from pageable memory on a GPU) inside each training epoch, data
loading excluded, written to FILE.rank<R> as JSON.
--data-wait SECONDS: before each training batch the rank waits that long in Python (`time.sleep`, as a rank waiting
for an input-bound loader does): a signal is handled at once, and a second copy of it arrives separately, as on a
GPU, where the trainer is not blocked inside long C calls (on a CPU the two copies of a preemption coalesce).
--eval-delay SECONDS: runs validate.py; rank 0 starts its evaluation that much later (`time.sleep`), as a
rank whose chunks take longer (AutoAttack on a robust model's last chunk) reaches the results' gather late, and the
other ranks wait for it that long, without the compute that a really slower chunk would cost this test machine.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

# frames of the data path: the loader's own reads (sampler, dataset __getitem__, collate) and the batch transfer,
# which reads from pinned memory on a GPU (`atcd.data` loaders pin for CUDA)
_DATA_PATH = ("torch/utils/data", "accelerate/data_loader.py", "accelerate/utils/operations.py", "atcd/data/",
              "atcd/device.py")


def _count_syncs(out_file: str) -> None:
    """Wrap atcd.engine.train_one_epoch: count per epoch, write the counts when the process exits."""
    import atexit

    import torch
    from syncs import count_host_syncs

    import atcd.engine
    import atcd.trainer

    epochs = []
    original = atcd.engine.train_one_epoch
    moves = []

    def from_host(factory):
        def made(data, *args, **kwargs):  # host data made into a tensor on a device
            if kwargs.get("device") is not None:
                moves.append(_where())
            return factory(data, *args, **kwargs)
        return made

    def run_epoch(*args, **kwargs):
        moves.clear()
        torch.tensor, torch.as_tensor = from_host(real_tensor), from_host(real_as_tensor)
        try:
            with count_host_syncs(include_cpu=True) as syncs:
                stats = original(*args, **kwargs)
        finally:
            torch.tensor, torch.as_tensor = real_tensor, real_as_tensor
        calls = [f"{c.kind} {c.where}" for c in syncs.calls
                 if c.kind != "to_cpu" and not any(p in c.where for p in _DATA_PATH)]
        epochs.append({"syncs": calls, "h2d": [m for m in moves if not any(p in m for p in _DATA_PATH)]})
        return stats

    real_tensor, real_as_tensor = torch.tensor, torch.as_tensor
    atcd.trainer.train_one_epoch = run_epoch
    rank = os.environ.get("RANK", "0")
    def write():
        with open(f"{out_file}.rank{rank}", "w") as f:
            f.write(json.dumps(epochs))
    atexit.register(write)


def _data_wait(seconds: float) -> None:
    import time

    import atcd.engine

    original = atcd.engine._skip_batches

    def waiting(*args, **kwargs):
        for batch in original(*args, **kwargs):
            time.sleep(seconds)
            yield batch
    atcd.engine._skip_batches = waiting


def _eval_delay(seconds: float) -> None:
    import time

    import atcd.evaluator

    original = atcd.evaluator.evaluate_attacks

    def late(*args, **kwargs):
        if os.environ.get("RANK", "0") == "0":
            time.sleep(seconds)
        return original(*args, **kwargs)
    atcd.evaluator.evaluate_attacks = late


def _where() -> str:
    """`file:line` of the first caller outside torch and this file."""
    import torch
    f = sys._getframe(2)
    tdir = os.path.dirname(torch.__file__)
    skip = (__file__, os.path.join(HERE, "syncs.py"))  # this file and the counter's own wrappers
    while f is not None and (f.f_code.co_filename.startswith(tdir) or f.f_code.co_filename in skip):
        f = f.f_back
    return f"{f.f_code.co_filename}:{f.f_lineno}" if f else "<unknown>"


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    own, train_args = argv[:split], argv[split + 1:]
    if "--chdir-per-rank" in own:
        d = os.path.join(own[own.index("--chdir-per-rank") + 1], f"rank{os.environ.get('LOCAL_RANK', '0')}")
        os.makedirs(d, exist_ok=True)
        os.chdir(d)
    if "--data-wait" in own:
        _data_wait(float(own[own.index("--data-wait") + 1]))
    if "--count-syncs" in own:
        _count_syncs(os.path.abspath(own[own.index("--count-syncs") + 1]))
    if "--eval-delay" in own:
        _eval_delay(float(own[own.index("--eval-delay") + 1]))
        import validate
        return validate.main(train_args)
    import train_atcd
    return train_atcd.main(train_args)


if __name__ == "__main__":
    sys.exit(main())
