"""Equal-time training: the minibatches a method gets for a budget of training seconds, laid out as epochs.

A budget is turned into a number of minibatches from the method's measured seconds per minibatch (timed on this
machine in the same run as the other methods, so every method is priced alike), never by stopping a run when a
clock runs out: a slow spell of the machine during one training would otherwise decide the ranking. The measured
training time is reported beside it as the cross-check.

The minibatches are laid out as few whole epochs of equal length (each a draw without replacement of
`samples_per_epoch` images, `--train-samples-per-epoch`), so the cosine schedule and the eps warm-up see whole
epochs: the warm-up keeps the fraction of training it had in the recipe.
"""
import math
from dataclasses import dataclass

__all__ = ["BudgetPlan", "plan_budget"]


@dataclass(frozen=True)
class BudgetPlan:
    budget_s: float
    minibatches: int          # minibatches trained in all (epochs x minibatches per epoch)
    epochs: int
    samples_per_epoch: int
    eps_warmup_epochs: float  # the recipe's warm-up, scaled to keep its fraction of the training
    planned_s: float          # minibatches x the measured seconds per minibatch

    def train_flags(self) -> list[str]:
        """train_atcd.py flags that run this plan on top of the method's recipe."""
        return ["--epochs", str(self.epochs), "--train-samples-per-epoch", str(self.samples_per_epoch),
                "--eps-warmup-epochs", f"{self.eps_warmup_epochs:g}"]


def plan_budget(budget_s: float, sec_per_batch: float, train_size: int, batch_size: int, recipe_epochs: int,
                recipe_warmup_epochs: float = 0.0) -> BudgetPlan:
    """The plan for `budget_s` seconds of a method costing `sec_per_batch` per minibatch of `batch_size`, on a
    training split of `train_size` images (training loaders drop the last partial minibatch)."""
    if budget_s <= 0 or sec_per_batch <= 0:
        raise ValueError(f"budget ({budget_s} s) and seconds per minibatch ({sec_per_batch}) must be > 0")
    full = train_size // batch_size
    if full < 1:
        raise ValueError(f"a training split of {train_size} images holds no minibatch of {batch_size}")
    wanted = max(1, round(budget_s / sec_per_batch))
    epochs = math.ceil(wanted / full)
    per_epoch = max(1, round(wanted / epochs))  # <= full: an epoch never draws an image twice
    warmup = recipe_warmup_epochs * epochs / recipe_epochs if recipe_epochs else 0.0
    return BudgetPlan(budget_s=budget_s, minibatches=epochs * per_epoch, epochs=epochs,
                      samples_per_epoch=per_epoch * batch_size, eps_warmup_epochs=round(warmup, 4),
                      planned_s=epochs * per_epoch * sec_per_batch)
