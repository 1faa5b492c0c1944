"""The rows of an equal-time run (equal_time.csv of scripts/benchmark.py --equal-time): their columns, reading
them back, and a finished row of an earlier run that counts again (`--done`), so a long protocol continues on a
machine that lost its run folders without training or attacking a finished (method, budget, seed) twice."""
from __future__ import annotations

import csv
import os

from _runs import fail

FIELDS = ["method", "recipe", "budget_s", "seed", "train_s", "clean", "pgd", "autoattack", "n", "n_aa", "epochs",
          "minibatches", "planned_s", "cost_model_s", "mh_accept", "mh_accept_replays", "updates", "config"]
OPTIONAL = {"updates", "config"}  # columns added later: an older row has no digest (it merges, but never counts as
# --done) and no weight-update count (equal_time.updates then derives it from the recipe: see there)
NUMBERS = {"budget_s": float, "seed": int, "train_s": float, "clean": float, "pgd": float, "autoattack": float,
           "n": int, "n_aa": int, "epochs": int, "minibatches": int, "planned_s": float, "cost_model_s": float,
           "mh_accept": float, "updates": int}


def read_rows(path: str, what: str = "") -> list[dict]:
    """The rows of one equal_time.csv, numbers as numbers (an empty cell stays ''); a missing file, another file or
    a cell that is not a number is a one-line error (`what` names the option that gave the file)."""
    where = f"{what} {path}" if what else path
    if not os.path.isfile(path):
        fail(f"error: no such file: {where}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in FIELDS if k not in (reader.fieldnames or []) and k not in OPTIONAL]
        if missing:
            fail(f"error: {where} is not an equal_time.csv of scripts/benchmark.py: no column {missing}")
        rows = list(reader)
    try:
        return [{**dict.fromkeys(OPTIONAL, ""), **{k: (NUMBERS[k](float(v)) if k in NUMBERS and v != "" else v)
                                                   for k, v in r.items()}}
                for r in rows]
    except ValueError as e:
        fail(f"error: {where}: {e}")


def read_done(paths: list[str]) -> dict:
    """{(recipe, budget, seed): row} of the --done files (a later file's row replaces an earlier one's)."""
    return {(r["recipe"], r["budget_s"], r["seed"]): r for p in paths for r in read_rows(p, "--done")}


def reuse(done: dict, entry: str, budget: float, seed: int, config: str, n: int, n_aa: list) -> dict | None:
    """The finished row of (entry, budget, seed) in `done` if it is this point: trained with the options (plan
    included) that digest to `config` now and evaluated on `n` images (AutoAttack on one of the counts `n_aa`, ''
    for none); None when `done` has no such row; a row of the point that differs is a one-line error, never a silent
    mix."""
    row = done.get((entry, float(budget), seed))
    if row is None:
        return None
    where = f"--done row {entry} {budget:g} s seed {seed}"
    if row["config"] != config:
        fail(f"error: {where} was trained with other options (config {row['config'] or 'not recorded'}, now "
             f"{config}): the recipe, its defaults or the plan changed since; leave that file out or train again")
    if row["n"] != n or row["n_aa"] not in n_aa:
        fail(f"error: {where} was evaluated on (n, n_aa) = {(row['n'], row['n_aa'])} images, this run evaluates "
             f"{(n, ' or '.join(map(repr, n_aa)))}; give the same --num-samples, --aa-samples, --aa-methods and "
             "--aa-best")
    return dict(row)
