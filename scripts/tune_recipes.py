#!/usr/bin/env python3
"""Pick each method's recipe by a small grid, selected on the holdout PGD accuracy, never on the test split.

    python scripts/tune_recipes.py --grid recipes/grids/mnist.yaml --out output/grid
    python scripts/tune_recipes.py --grid recipes/grids/mnist.yaml --out output/grid --methods pgd,atcd

The grid file names, per recipe (`recipes/mnist_<name>.yaml`), the flags to vary and their values; a point is one
combination, and every method should get the same number of points (the script says when they do not). `common`
flags apply to every point (the holdout size, the epochs). Each point runs `train_atcd.py` as a user would, with
`--early-stop robust`: per epoch the holdout carved from the training split is attacked with PGD, and the run keeps
the best holdout epoch as model_best.safetensors. A point scores its best holdout PGD accuracy over the epochs;
a method's chosen point is the best-scoring one whose holdout clean accuracy at that epoch is >= --min-clean
(if none reaches it, the best-scoring one, flagged `below_min_clean`: a baseline that does not train is a bug to
look at, not a result). A point whose run folder already holds a finished run is read, not trained again, and an
interrupted one resumes from its newest checkpoint, so a killed grid continues where it stopped.
Writes grid.csv (one row per point) and chosen.csv (one row per method); ends with a RESULT line.
"""
import argparse
import csv
import itertools
import json
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _runs import ROOT, fail, finished, run_logged, stale_args, started, write_csv

FIELDS = ["method", "recipe", "point", "experiment", "epochs", "train_s", "best_epoch", "holdout_clean", "holdout_pgd",
          "chosen", "below_min_clean"]


def grid_points(grid: dict) -> list[tuple[str, dict]]:
    """[(recipe, {flag: value})]: the cartesian product of each recipe's values, in the file's order."""
    points = []
    for recipe, axes in grid["grids"].items():
        keys = list(axes)
        for values in itertools.product(*(axes[k] if isinstance(axes[k], list) else [axes[k]] for k in keys)):
            points.append((recipe, dict(zip(keys, values))))
    return points


def experiment_name(recipe: str, point: dict) -> str:
    return "-".join([recipe] + [f"{k}={v}" for k, v in point.items()]).replace("/", "_")


def flags(options: dict) -> list[str]:
    out = []
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif v is not False and v is not None:
            out += [flag, str(v)]
    return out


def train_point(recipe: str, point: dict, common: dict, out: str) -> str:
    """Train one point (or finish / read it); returns its run folder."""
    exp = experiment_name(recipe, point)
    run = os.path.join(out, exp)
    if finished(run):  # finished earlier: read it if it is this point
        stale = stale_args(run, {**common, **point})
        if stale:
            fail(f"error: {run} holds a run trained with {stale}, not this grid's values; give another --out or "
                 f"delete that folder")
        return run
    print(f"[grid] {exp}", flush=True)
    os.makedirs(out, exist_ok=True)
    run_logged(["train_atcd.py", "-c", os.path.join(ROOT, "recipes", f"mnist_{recipe}.yaml"),
                *flags({**common, **point}), "--early-stop", "robust", "--output", out, "--experiment", exp,
                "--no-progress", *(["--resume", "auto"] if started(run) else ["--overwrite"])],
               os.path.join(out, f"{exp}.train.log"))
    return run


def score(run: str) -> dict:
    """Best holdout PGD epoch of a run's summary.csv, with its holdout clean accuracy and the total training time."""
    with open(os.path.join(run, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    if not rows or "holdout_pgd_top1" not in rows[0]:
        fail(f"error: {run}/summary.csv has no holdout columns (train with --holdout N > 0)")
    best = max(rows, key=lambda r: (float(r["holdout_pgd_top1"]), float(r["holdout_top1"])))
    with open(os.path.join(run, "args.yaml")) as f:
        method = yaml.safe_load(f)["method"]
    return {"method": method, "epochs": len(rows), "train_s": round(sum(float(r["seconds"]) for r in rows), 1),
            "best_epoch": int(best["epoch"]), "holdout_clean": float(best["holdout_top1"]),
            "holdout_pgd": float(best["holdout_pgd_top1"])}


def choose(rows: list[dict], min_clean: float) -> None:
    """Mark each recipe's chosen point in place (see the module docstring)."""
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        ok = [r for r in mine if r["holdout_clean"] >= min_clean]
        best = max(ok or mine, key=lambda r: (r["holdout_pgd"], r["holdout_clean"], -r["train_s"]))
        for r in mine:
            r["chosen"], r["below_min_clean"] = int(r is best), int(r is best and not ok)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True, help="grid YAML: `common: {flag: value}`, `grids: {recipe: {flag: [v]}}`")
    p.add_argument("--out", required=True, help="folder of the runs, grid.csv and chosen.csv")
    p.add_argument("--methods", default=None, help="comma list of the grid's recipes to run (default: all)")
    p.add_argument("--min-clean", type=float, default=95.0, help="holdout clean accuracy a chosen point needs")
    args = p.parse_args(argv)
    args.out = os.path.abspath(args.out)  # the trainings run from the repo root
    try:
        with open(args.grid) as f:
            grid = yaml.safe_load(f)
        points = grid_points(grid)
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        p.error(f"--grid {args.grid}: not a grid file ({e})")
    wanted = args.methods.split(",") if args.methods else list(grid["grids"])
    unknown = sorted(set(wanted) - set(grid["grids"]))
    if unknown:
        p.error(f"--methods {','.join(unknown)}: not in the grid file (it has {', '.join(grid['grids'])})")
    sizes = {r: sum(1 for q, _ in points if q == r) for r in wanted}
    if len(set(sizes.values())) > 1:
        print(f"[grid] note: the methods get different numbers of points {sizes}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for recipe, point in points:
        if recipe in wanted:
            run = train_point(recipe, point, grid.get("common", {}), args.out)
            rows.append({"recipe": recipe, "point": " ".join(flags(point)), "experiment": os.path.basename(run),
                         **score(run)})
    choose(rows, args.min_clean)
    write_csv(os.path.join(args.out, "grid.csv"), rows, FIELDS)
    write_csv(os.path.join(args.out, "chosen.csv"), [r for r in rows if r["chosen"]], FIELDS)
    print("RESULT " + json.dumps({r["recipe"]: {k: r[k] for k in ("point", "holdout_clean", "holdout_pgd")}
                                  for r in rows if r["chosen"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
