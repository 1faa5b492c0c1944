"""train_one_epoch / evaluate, run with an Accelerator; pass counting comes from the method."""
import itertools
import time
from collections.abc import Sequence
from dataclasses import replace

import torch
from tqdm import tqdm

from .attacks import AttackConfig, get_attack
from .cluster import wait_outside_collectives
from .data import chunk_seed
from .device import to_device
from .methods import StepContext, TrainMethod
from .precision import eval_precision

__all__ = ["evaluate_attacks", "gather_uneven", "strip_private", "train_one_epoch"]


def _skip_batches(loader, accelerator, num_batches: int):
    """An iterator over `loader` (its epoch already set) without its first `num_batches` batches.

    A loader Accelerate prepared skips them in its batch sampler (`skip_first_batches`: nothing is loaded); any
    other (a rank-sharded WebDataset loader) reads and drops them, which yields exactly the same later batches
    because its order is a function of (seed, epoch). Creating the iterator may draw a worker base seed from the
    global RNG; the RNG is put back so the training steps draw what the uninterrupted run drew.
    """
    if num_batches == 0:
        return iter(loader)
    rng = torch.get_rng_state()
    if _is_prepared(loader):
        it = iter(accelerator.skip_first_batches(loader, num_batches))
    else:
        it = itertools.islice(iter(loader), num_batches, None)
    torch.set_rng_state(rng)
    return it


def train_one_epoch(method: TrainMethod, ctx: StepContext, loader, accelerator, epoch: int, progress: bool = True,
                    channels_last: bool = False, keys_out: list | None = None, start_batch: int = 0,
                    totals: dict | None = None, after_batch=None, log_interval: int = 50,
                    on_log=None) -> dict[str, float]:
    """One pass over `loader`: each minibatch goes through `method.step` inside `accelerator.accumulate`.

    The running loss and accuracy sums stay on the device: the host reads them (and so waits for the device) only
    every `log_interval` minibatches for the progress bar and `on_log`, when `after_batch` asks for a snapshot (a
    checkpoint is being written) and once at the end of the epoch. Between those points a step makes no host sync.

    Args:
        method: the training method (owns its optimizer steps through `ctx`).
        ctx: the step context built by the trainer.
        loader: yields `(x, y)` or `(x, y, keys)`; every process must yield the same number of batches.
        accelerator: the run's Accelerator (gradient accumulation, metric reduction).
        epoch: epoch index (progress bar only).
        progress: show a tqdm bar on the main process.
        channels_last: convert inputs to channels-last memory format.
        keys_out: when given, the sample keys of `(x, y, keys)` batches are appended to it.
        start_batch: batches of this epoch already trained (mid-epoch resume): they are skipped.
        totals: the running sums of those batches (from a mid-epoch checkpoint), so the epoch's figures come out
            as in an uninterrupted run.
        after_batch: `after_batch(batches_done, snapshot) -> bool`, called after every minibatch (checkpointing,
            preemption); True ends the epoch there. `snapshot()` returns the JSON-able running sums (what `totals`
            takes back); call it only when they are needed: it reads them from the device.
        log_interval: update the progress bar's loss every this many minibatches (timm's `--log-interval`).
        on_log: `on_log(batches_done, snapshot_dict)` at the same points (experiment trackers; pass it on the main
            process only): one read of the running sums, as `snapshot()` returns them.

    Returns:
        loss and adversarial accuracy reduced over processes, seconds, this process's pass counts, and
        `completed` (False when `after_batch` ended the epoch early).
    """
    t0 = time.time()
    tot = {"loss_sum": 0.0, "n_loss": 0, "correct": 0, "count": 0, "seconds": 0.0,
           **{k: 0 for k in method.passes.as_dict()}, **(totals or {})}
    p0 = dict(method.passes.as_dict())
    device = accelerator.device
    # float64 sums (MPS has no float64: float32 there); a float64 sum round-trips exactly through JSON
    sum_dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
    loss_sum = torch.tensor(tot["loss_sum"], dtype=sum_dtype, device=device)
    correct = torch.tensor(tot["correct"], dtype=torch.int64, device=device)
    n_loss, count = tot["n_loss"], tot["count"]  # host-side numbers (list lengths, batch sizes): no sync

    def snapshot() -> dict:  # JSON-able running sums: one read of the device's sums
        loss, right = torch.stack([loss_sum, correct.to(sum_dtype)]).tolist()
        return {"loss_sum": loss, "n_loss": n_loss, "correct": int(right), "count": count,
                "seconds": tot["seconds"] + time.time() - t0,
                **{k: tot[k] + v - p0[k] for k, v in method.passes.as_dict().items()}}

    completed = True
    total = len(loader) if hasattr(loader, "__len__") else None
    show = progress and accelerator.is_main_process
    it = tqdm(_skip_batches(loader, accelerator, start_batch), desc=f"epoch {epoch}", initial=start_batch,
              total=total, disable=not show, leave=False)
    for b, batch in enumerate(it, start=start_batch + 1):
        batch = to_device(batch, device, channels_last)  # streamed loaders are never prepare()d
        x, y = batch[0], batch[1]
        method.set_progress(epoch + ((b - 1) / total if total else 0.0))  # --eps-warmup-epochs: host-side numbers
        if keys_out is not None and len(batch) > 2:
            keys_out.extend(batch[2])
        # sync_gradients is False on accumulation micro-steps: the prepared optimizer then skips step/zero_grad
        with accelerator.accumulate(ctx.model):
            res = method.step(ctx, x, y)
        for loss_t in res.losses:  # one add per update, in order: the same float64 sum as a host-side one
            loss_sum += loss_t.to(sum_dtype)
        n_loss += len(res.losses)
        correct += res.correct
        count += res.count
        if b % log_interval == 0 and (show or on_log is not None):  # the only read between epoch ends
            s = snapshot() if on_log is not None else {"loss_sum": float(loss_sum)}
            if show:
                it.set_postfix(loss=f"{s['loss_sum'] / max(1, n_loss):.3f}")
            if on_log is not None:
                on_log(b, s)
        if after_batch is not None and after_batch(b, snapshot):
            completed = False
            break
    it.close()
    seconds = tot["seconds"] + time.time() - t0
    stats = torch.cat([torch.stack([loss_sum, correct.to(sum_dtype)]),
                       torch.tensor([n_loss, count], dtype=sum_dtype, device=device)])
    loss, right, n, seen = accelerator.reduce(stats, reduction="sum").tolist()  # the epoch's one read
    out = {
        "train_loss": loss / max(1.0, n),
        "train_adv_top1": 100.0 * (right / max(1.0, seen)),
        "seconds": seconds,
        **{k: tot[k] + v - p0[k] for k, v in method.passes.as_dict().items()},
        "completed": completed,
    }
    if getattr(method.cfg, "eps_warmup_epochs", 0) > 0:
        out["train_eps"] = method.eps  # the eps of the epoch's last step
    out.update(method.epoch_metrics(accelerator))  # e.g. M-H acceptance: summed over ranks, reset per epoch
    return out


def _is_prepared(loader) -> bool:
    """True for a loader `accelerator.prepare` made (it shards batches itself and pads the last round)."""
    from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard
    return isinstance(loader, (DataLoaderShard, DataLoaderDispatcher))


def gather_uneven(accelerator, values: torch.Tensor) -> torch.Tensor:
    """Concatenate 1-D per-process results of different lengths over processes (rank order), once.

    Used for rank-sharded loaders (WebDataset) whose processes yield different numbers of batches: a per-batch
    collective would hang, and `gather_for_metrics` only knows how to trim loaders Accelerate prepared.
    """
    if accelerator.num_processes == 1:
        return values
    n = torch.tensor([values.numel()], device=accelerator.device)
    sizes = accelerator.gather(n).tolist()
    padded = accelerator.pad_across_processes(values.to(accelerator.device).long(), dim=0)  # gloo: no bool gather
    everything = accelerator.gather(padded).cpu()
    width = max(sizes)
    return torch.cat([everything[r * width:r * width + s] for r, s in enumerate(sizes)]).to(values.dtype)


def _chunk_of(loader, accelerator, prepared: bool):
    """Batch index -> chunk of the global order (`atcd.data.eval_plan`): what the loader says (an evaluation loader
    over an `EvalPlan`), else round-robin over processes (what Accelerate's batch sharding does), else the index."""
    ids = getattr(loader, "chunk_ids", None)
    if ids is not None:
        return ids.__getitem__
    if accelerator is not None and (prepared or accelerator.num_processes > 1):
        return lambda i: i * accelerator.num_processes + accelerator.process_index
    return lambda i: i


def _gather_flags(accelerator, info: dict) -> dict:
    """Every process's attack flags (AutoAttack's checks), merged once at the end."""
    from accelerate.utils import gather_object
    out = {}
    for name, extra in info.items():
        merged = gather_object([extra]) if accelerator is not None and accelerator.num_processes > 1 else [extra]
        out[name] = {k: sorted({f for e in merged for f in e.get(k, [])}) for e in merged for k in e}
    return out


def evaluate_attacks(model, loader, attacks: Sequence[str], cfg: AttackConfig, accelerator=None,
                     progress: bool = False, channels_last: bool = False, precision: str = "fp32") -> dict[str, dict]:
    """Top-1 accuracy per attack (plus `worst_case` over attacks per example); model is put in eval mode.

    Every forward pass runs in `precision` (`atcd.precision.eval_precision`: fp32 with TF32 off by default), whatever
    autocast the launcher had Accelerate wrap around the model's forward.

    Every batch is a chunk of the global sample order (`loader.chunk_ids` of an evaluation loader over an
    `EvalPlan`; otherwise as `_chunk_of` assumes), and each attack's randomness is seeded from (`cfg.seed`, chunk):
    a chunk's result does not depend on the number of processes or on the one that ran it. Per-example
    correctness is gathered so every sample is counted exactly once: per batch with `gather_for_metrics` for a
    loader Accelerate prepared (it drops the samples it duplicated to even out the processes), once at the end for
    any other loader (which must then hold this process's chunks only), put back in the global order by chunk.
    The per-example results stay on the device until the attack's last batch: one read per attack, not per batch.
    An attack that returns `(x_adv, info)` with `info["correct"]` (per-example bools: AutoAttack with a state
    directory) is scored by it, else by classifying x_adv.
    """
    was_training = model.training
    model.eval()
    per_batch_gather = accelerator is not None and _is_prepared(loader)
    chunk_of = _chunk_of(loader, accelerator, per_batch_gather)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    per_attack = {a: [] for a in attacks}
    info = {a: {} for a in attacks}
    chunk_rows = []  # the chunk of every example this process evaluated, in its order
    try:
        with eval_precision(precision, model):
            for name in attacks:
                fn = get_attack(name)
                it = tqdm(loader, desc=name, disable=not progress, leave=False)
                for i, batch in enumerate(it):
                    x, y = to_device(batch[:2], device, channels_last)  # streamed loaders are never prepare()d
                    c = chunk_of(i)
                    if name == attacks[0]:
                        chunk_rows.append(torch.full((len(y),), c, dtype=torch.long))
                    if len(y) == 0:  # a chunk whose every image was unreadable
                        continue
                    x_adv = fn(model, x, y, replace(cfg, seed=chunk_seed(cfg.seed, c)))
                    ok = None
                    if isinstance(x_adv, tuple):  # (x_adv, info): e.g. AutoAttack's own check flags
                        x_adv, extra = x_adv
                        # the attack's own verdict (a resumed AutoAttack: x_adv is partial)
                        ok = extra.pop("correct", None)
                        for k, v in extra.items():
                            info[name].setdefault(k, []).extend(v)
                    if ok is None:
                        with torch.no_grad():
                            ok = model(x_adv).argmax(1) == y
                    if per_batch_gather:
                        ok = accelerator.gather_for_metrics(ok)
                    per_attack[name].append(ok)
    finally:
        model.train(was_training)
    order = None
    if not per_batch_gather:  # this process's chunks, then every process's, back in the global order
        if accelerator is not None:
            wait_outside_collectives(accelerator)  # ranks with fewer chunks must not wait inside the gather
        chunks = torch.cat(chunk_rows) if chunk_rows else torch.zeros(0, dtype=torch.long)
        if accelerator is not None:
            chunks = gather_uneven(accelerator, chunks)
        order = torch.argsort(chunks, stable=True)
    info = _gather_flags(accelerator, info) if not per_batch_gather else info
    results = {}
    for name, oks in per_attack.items():
        ok = torch.cat(oks) if oks else torch.zeros(0, dtype=torch.bool, device=device)
        if accelerator is not None and not per_batch_gather:
            ok = gather_uneven(accelerator, ok)
        ok = ok.cpu()  # the attack's one read
        if order is not None:
            ok = ok[order]
        results[name] = {"top1": 100.0 * ok.float().mean().item(), "n": int(ok.numel()), "_ok": ok, **info[name]}
    if len(attacks) > 1:
        worst = torch.stack([r["_ok"] for r in results.values()]).all(0)
        results["worst_case"] = {"top1": 100.0 * worst.float().mean().item(), "n": int(worst.numel()), "_ok": worst}
    return results


def strip_private(results: dict[str, dict]) -> dict[str, dict]:
    """Results without the per-example `_ok` tensors (what goes into JSON)."""
    return {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()}
