"""The loaders of a training run: train, per-epoch eval and (optionally) the holdout carved from the train split."""
import logging
import math

from .eval_plan import create_eval_loader
from .factory import create_atcd_dataset, create_atcd_loader, split_holdout
from .transforms import transform_kwargs
from .wds import create_wds_loader

__all__ = ["create_train_loaders"]

_logger = logging.getLogger(__name__)


def create_train_loaders(cfg, rank: int, world_size: int, pcfg: dict) -> tuple:
    """(train, eval, holdout or None). The map-style train loader is not yet prepared; the evaluation loaders hold
    this process's chunks of 250 images (`create_eval_loader`, the validate path) and are never prepared: prepare()
    would pad every process's last batch to the full 250 with repeated images, which on 2 processes and 32
    evaluation images costs 500 images of attack per epoch instead of 32. WebDataset loaders are never prepared.
    The transforms follow the run's flags over the model's `pcfg` (`transform_kwargs`); training ones augment."""
    tf, train_tf = transform_kwargs(cfg, pcfg), transform_kwargs(cfg, pcfg, is_training=True)
    if cfg.streamed:  # rank-sharded: prepare() would shard them a second time
        shard = {"name": cfg.dataset, "seed": cfg.seed, "num_workers": cfg.workers or 0, "rank": rank,
                 "world_size": world_size, "strict": cfg.strict_data}

        def train_loader_for(samples_per_epoch):
            return create_wds_loader(cfg.data_dir, "train", cfg.batch_size, True, samples_per_epoch=samples_per_epoch,
                                     shuffle_buffer=cfg.shuffle_buffer, with_keys=cfg.log_data_keys,
                                     pin_memory=cfg.pin_mem, **shard,
                                     **train_tf)

        train_loader = train_loader_for(cfg.train_samples_per_epoch)
        n = cfg.grad_accum_steps
        if len(train_loader) % n:  # whole accumulation groups per epoch: no update straddles a checkpoint
            batches = math.ceil(len(train_loader) / n) * n
            train_loader = train_loader_for(batches * world_size * cfg.batch_size)
            _logger.info("--grad-accum-steps %d: a streamed epoch is rounded up to %d batches per process", n, batches)
        eval_loader = create_wds_loader(cfg.data_dir, "val", 250, False, num_samples=cfg.eval_samples or None,
                                        **shard, **tf)
        return train_loader, eval_loader, None
    ds_kw = {"data_dir": cfg.data_dir, "strict": cfg.strict_data, "download": cfg.dataset_download}
    train_ds, _ = split_holdout(create_atcd_dataset(cfg.dataset, "train", is_training=True, aug_seed=cfg.seed,
                                                    **ds_kw, **train_tf), cfg.holdout_size, cfg.seed)
    eval_ds = create_atcd_dataset(cfg.dataset, "val", is_training=False, **ds_kw, **tf)
    train_loader = create_atcd_loader(train_ds, cfg.batch_size, True, seed=cfg.seed, num_workers=cfg.workers or 0,
                                      samples_per_epoch=cfg.train_samples_per_epoch, pin_memory=cfg.pin_mem)
    chunks = {"rank": rank, "world_size": world_size, "num_workers": cfg.workers or 0, "pin_memory": cfg.pin_mem}
    eval_loader = create_eval_loader(eval_ds, 250, num_samples=cfg.eval_samples or None, **chunks)
    holdout_loader = None
    if cfg.holdout_size:  # the same carve, with the eval transform
        _, holdout_ds = split_holdout(create_atcd_dataset(cfg.dataset, "train", is_training=False, **ds_kw, **tf),
                                      cfg.holdout_size, cfg.seed)
        holdout_loader = create_eval_loader(holdout_ds, 250, **chunks)
    return train_loader, eval_loader, holdout_loader

