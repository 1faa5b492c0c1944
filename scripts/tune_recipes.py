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
interrupted one resumes from its newest checkpoint, so a killed grid continues where it stopped. A grid continued
on another machine, without the run folders, reads its finished points from an earlier grid.csv (--scored): a row
is taken when its `config` digest (the point's resolved training options) is the one the grid resolves now.
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
from _runs import ROOT, RUN_KEYS, config_digest, fail, finished, run_logged, stale_args, started, write_csv

FIELDS = ["method", "recipe", "point", "experiment", "epochs", "train_s", "best_epoch", "holdout_clean", "holdout_pgd",
          "chosen", "below_min_clean", "budget_s", "minibatches", "planned_s", "collapsed", "config"]
NUMBERS = {"epochs": int, "train_s": float, "best_epoch": int, "holdout_clean": float, "holdout_pgd": float,
           "minibatches": int, "planned_s": float, "collapsed": int}
EXIT_COLLAPSED = 4  # atcd.faults.EXIT_COLLAPSED: a point that trained to the end at chance is a score, not a failure


def grid_points(grid: dict) -> list[tuple[str, dict]]:
    """[(recipe, {flag: value})]: per recipe, the cartesian product of its axes ({flag: [values]}) or its list of
    explicit points ([{flag: value}, ...]); recipes taken in turn, point by point (round robin), so a grid stopped
    early has as many points of every method."""
    per = []
    for recipe, axes in grid["grids"].items():
        if isinstance(axes, list):
            per.append([(recipe, dict(pt)) for pt in axes])
            continue
        keys = list(axes)
        per.append([(recipe, dict(zip(keys, values))) for values in
                    itertools.product(*(axes[k] if isinstance(axes[k], list) else [axes[k]] for k in keys))])
    return [pts[i] for i in range(max(map(len, per), default=0)) for pts in per if i < len(pts)]


def entry(recipe: str, point: dict) -> str:
    """The point as a scripts/benchmark.py entry `recipe:flags` (what its cost table times)."""
    return ":".join([recipe, " ".join(flags(point))]) if point else recipe


def budget_plans(points: list[tuple[str, dict]], common: dict, budget: float, out: str, cost_batches: int,
                 price_from: str | None = None) -> dict:
    """{entry: plan flags} pricing every point at `budget` seconds: its seconds per minibatch from one interleaved
    cost table of all the points (scripts/benchmark.py's measure_costs, written to out/grid_costs.csv and read back
    by a continued grid), laid out by atcd.budget.plan_budget as the equal-time comparison does."""
    from benchmark import measure_costs
    from equal_time import train_size

    from atcd.budget import plan_budget
    from atcd.config import parse_train_args
    entries = list(dict.fromkeys(entry(r, pt) for r, pt in points))
    path = os.path.join(out, "grid_costs.csv")
    if os.path.isfile(path):
        with open(path) as f:
            costs = [{**r, "sec_per_batch": float(r["sec_per_batch"])} for r in csv.DictReader(f)]
        missing = [e for e in entries if e not in {c["method"] for c in costs}]
        if missing:
            fail(f"error: {path} priced other points (missing {missing[:2]}); give another --out or delete it")
        print(f"[grid] reusing the cost table of the earlier run: {path}", flush=True)
    elif price_from:  # counted passes x the seconds per pass of an earlier (idle-machine) cost table
        from benchmark import predict_seconds
        with open(price_from) as f:
            first = next(csv.DictReader(f))
        unit = {k: float(first[f"unit_{k}_sec"]) for k in ("weight", "weight_input", "input_grad", "forward", "stem")}
        print(f"[grid] pricing {len(entries)} points by their counted passes x the pass seconds of {price_from}",
              flush=True)
        costs = measure_costs(entries, 128, 1, rounds=1)  # the pass counts (its timings are dropped)
        for c in costs:
            c["sec_per_batch"] = c["predicted_sec"] = predict_seconds(c, unit)
            c["priced_from"] = price_from
        write_csv(path, costs, list(costs[0]))
    else:
        print(f"[grid] timing {len(entries)} points ({cost_batches} minibatches x 2 rounds each)", flush=True)
        costs = measure_costs(entries, 128, cost_batches, rounds=2)
        write_csv(path, costs, list(costs[0]))
    sec = {c["method"]: c["sec_per_batch"] for c in costs}
    plans = {}
    for recipe, pt in points:  # the run's own config (the common flags too: the holdout sets the split's size)
        cfg = parse_train_args(["-c", os.path.join(ROOT, "recipes", f"mnist_{recipe}.yaml"), *flags({**common, **pt})])
        plans[entry(recipe, pt)] = plan_budget(budget, sec[entry(recipe, pt)], train_size(cfg), cfg.batch_size,
                                               cfg.epochs, cfg.eps_warmup_epochs)
    return plans


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


def point_args(recipe: str, point: dict, common: dict, plan=None) -> list[str]:
    """train_atcd.py's options of one point (`plan`: its atcd.budget.BudgetPlan when the grid is priced in seconds,
    `common: {budget_s: ...}`), without where its run goes."""
    return ["-c", os.path.join(ROOT, "recipes", f"mnist_{recipe}.yaml"), *flags({**common, **point}),
            *(plan.train_flags() if plan else []), "--early-stop", "robust"]


def read_scored(path: str) -> dict:
    """{experiment: row} of an earlier grid.csv, its numbers typed (chosen/below_min_clean are decided again)."""
    try:
        with open(path) as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        fail(f"error: --scored {path}: {e.strerror}")
    if rows and not {"experiment", "config", *NUMBERS} <= set(rows[0]):
        fail(f"error: --scored {path}: not a grid.csv of this script (it needs the columns experiment, config, "
             f"{', '.join(NUMBERS)})")
    try:
        return {r["experiment"]: {k: (NUMBERS[k](float(v)) if k in NUMBERS and v != "" else v) for k, v in r.items()
                                  if k not in ("chosen", "below_min_clean")} for r in rows}
    except ValueError as e:
        fail(f"error: --scored {path}: {e}")


def train_point(recipe: str, point: dict, args: list[str], out: str) -> str:
    """Train one point with its options `args` (or finish / read it); returns its run folder."""
    from atcd.config import parse_train_args
    exp = experiment_name(recipe, point)
    run = os.path.join(out, exp)
    if finished(run):  # finished earlier: read it if it is this point, as the recipe and its defaults resolve now
        stale = stale_args(run, parse_train_args(args).flat(), ignore=RUN_KEYS)
        if stale:
            fail(f"error: {run} holds a run trained with {stale}, not this grid's values; give another --out or "
                 f"delete that folder")
        return run
    print(f"[grid] {exp}", flush=True)
    os.makedirs(out, exist_ok=True)
    run_logged(["train_atcd.py", *args, "--output", out, "--experiment", exp, "--no-progress",
                *(["--resume", "auto"] if started(run) else ["--overwrite"])],
               os.path.join(out, f"{exp}.train.log"), ok=(0, EXIT_COLLAPSED))
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
            "holdout_pgd": float(best["holdout_pgd_top1"]), "collapsed": int(rows[-1].get("collapsed") == "1")}


def choose(rows: list[dict], min_clean: float) -> None:
    """Mark each recipe's chosen point in place (see the module docstring)."""
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        ok = [r for r in mine if r["holdout_clean"] >= min_clean]
        best = max(ok or mine, key=lambda r: (r["holdout_pgd"], r["holdout_clean"], -r["train_s"]))
        for r in mine:  # every point below --min-clean stays flagged (a Fast point that does not train, too)
            r["chosen"], r["below_min_clean"] = int(r is best), int(r["holdout_clean"] < min_clean)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True, help="grid YAML: `common: {flag: value}`, `grids: {recipe: {flag: [v]}}`")
    p.add_argument("--out", required=True, help="folder of the runs, grid.csv and chosen.csv")
    p.add_argument("--methods", default=None, help="comma list of the grid's recipes to run (default: all)")
    p.add_argument("--min-clean", type=float, default=95.0, help="holdout clean accuracy a chosen point needs")
    p.add_argument("--cost-batches", type=int, default=4,
                   help="with `common: {budget_s: S}`: timed minibatches per point and round of the cost table")
    p.add_argument("--price-from", default=None, metavar="COSTS_CSV",
                   help="with `common: {budget_s: S}`: price each point by its counted passes x the seconds per pass "
                        "of this cost table (scripts/benchmark.py's costs.csv, e.g. reports/mnist-mini/costs.csv) "
                        "instead of timing the points here (a busy machine distorts timings)")
    p.add_argument("--scored", default=None, metavar="GRID_CSV",
                   help="an earlier grid.csv (e.g. a committed copy): its points are read, not trained again, when "
                        "their run folder is not here and their config digest is this grid's")
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
    common = dict(grid.get("common") or {})
    budget = common.pop("budget_s", None)  # equal time: every point priced at these seconds, not at fixed epochs
    points = [(r, pt) for r, pt in points if r in wanted]
    if args.price_from and not os.path.isfile(args.price_from):
        p.error(f"--price-from {args.price_from}: no such file")
    plans = budget_plans(points, common, float(budget), args.out, args.cost_batches, args.price_from) if budget else {}
    scored = read_scored(args.scored) if args.scored else {}
    rows = []
    for recipe, point in points:
        plan = plans.get(entry(recipe, point))
        targs, exp = point_args(recipe, point, common, plan), experiment_name(recipe, point)
        digest = config_digest(targs)
        if exp in scored and not finished(os.path.join(args.out, exp)):
            if scored[exp]["config"] != digest:
                fail(f"error: --scored {args.scored}: {exp} was trained with other options (config "
                     f"{scored[exp]['config'] or 'not recorded'}, this grid's is {digest}); delete its row to train it")
            print(f"[grid] {exp}: scored earlier ({args.scored})", flush=True)
            rows.append(scored[exp])
        else:
            run = train_point(recipe, point, targs, args.out)
            rows.append({"recipe": recipe, "point": " ".join(flags(point)), "experiment": exp, **score(run),
                         **({"budget_s": budget, "minibatches": plan.minibatches,
                             "planned_s": round(plan.planned_s, 1)} if plan else {}), "config": digest})
        write_csv(os.path.join(args.out, "grid.csv"), rows, FIELDS)  # a grid stopped early keeps its rows
    choose(rows, args.min_clean)
    write_csv(os.path.join(args.out, "grid.csv"), rows, FIELDS)
    write_csv(os.path.join(args.out, "chosen.csv"), [r for r in rows if r["chosen"]], FIELDS)
    print("RESULT " + json.dumps({r["recipe"]: {k: r[k] for k in ("point", "holdout_clean", "holdout_pgd")}
                                  for r in rows if r["chosen"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
