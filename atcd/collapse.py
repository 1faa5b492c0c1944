"""A run that does not train must not end as "completed": accuracy at chance once the eps warm-up is over.

Measured (issue 33): ATCD at eps 0.3 on mnist-mini without an eps warm-up (`--opt adam --lr 0.002 --attack-step
0.15`, T = 4, K = 2) sits at 10.0 % clean and 10.0 % PGD after every epoch, train loss 2.30 = log 10 (uniform
output), and used to report `completed`. Here an epoch is *at chance* when its clean test accuracy or its
adversarial training accuracy cannot be told from a constant guess: at most chance + 3 binomial standard errors of
the images it was measured on (10 classes, 500 images: 14.0 %). It is judged only at epoch ends the warm-up has
finished (`--eps-warmup-epochs`; with none, from the first epoch on), and once the run has made `MIN_UPDATES`
weight updates (a smoke run of a few minibatches is untrained, not collapsed; the small CNN leaves chance within
50 Adam updates of standard training). Every epoch row of `summary.csv` carries `collapsed` (1 at chance, 0 not,
empty while not judged); each flagged epoch prints one loud line naming the flag to try; a run whose last epoch is flagged ends with status "collapsed" and exit status `EXIT_COLLAPSED`
(atcd/faults.py). The run is not stopped early: a run that recovers after a flagged epoch ends "completed".
"""
import math

__all__ = ["MIN_UPDATES", "at_chance", "collapse_message", "epoch_collapsed"]

MIN_UPDATES = 50  # weight updates before a run at chance counts as collapsed rather than not yet trained


def at_chance(top1: float, n: int, num_classes: int) -> bool:
    """Whether an accuracy (%) on `n` images is within 3 standard errors of a constant guess among the classes."""
    if not n or not num_classes or num_classes < 2:
        return False
    c = 1.0 / num_classes
    return top1 <= 100.0 * (c + 3.0 * math.sqrt(c * (1.0 - c) / n))


def epoch_collapsed(row: dict, epoch: int, warmup_epochs: float, num_classes: int, train_n: int) -> int | str:
    """1 / 0 for an epoch row (`eval_top1` on `eval_n` images, `train_adv_top1` on `train_n`), '' while the eps
    warm-up still runs at this epoch's end or fewer than MIN_UPDATES updates (`num_updates`) were made."""
    if epoch + 1 < warmup_epochs or row.get("num_updates", MIN_UPDATES) < MIN_UPDATES:
        return ""
    clean = at_chance(row["eval_top1"], row.get("eval_n", 0), num_classes)
    adv = "train_adv_top1" in row and at_chance(row["train_adv_top1"], train_n, num_classes)
    return int(clean or adv)


def collapse_message(row: dict, epoch: int, cfg) -> str:
    """The one loud line of a collapsed epoch, naming the flag to try."""
    if cfg.method != "standard" and not cfg.eps_warmup_epochs:
        hint = (f"try --eps-warmup-epochs {max(1.0, cfg.epochs / 2):g} (eps ramps from 0; the MNIST references "
                f"ramp eps 0.3)")
    else:
        hint = f"try a lower --lr (now {cfg.lr:g})" + ("" if cfg.method == "standard" else
                                                      " or a longer --eps-warmup-epochs")
    after = f" after the {cfg.eps_warmup_epochs:g}-epoch eps warm-up" if cfg.eps_warmup_epochs else ""
    return (f"COLLAPSED: epoch {epoch} ended at chance{after} (clean test {row['eval_top1']:.1f} %, training "
            f"accuracy {row.get('train_adv_top1', float('nan')):.1f} %, loss {row.get('train_loss', float('nan')):.3g})"
            f"; {hint}")
