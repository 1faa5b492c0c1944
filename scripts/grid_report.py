#!/usr/bin/env python3
"""Merge the grid.csv files of a tuning grid run in parts (e.g. `tune_recipes.py --methods` in two processes, or
continued on another machine with --scored) into one CSV in the grid's order, and refresh the table of its report.

    python scripts/grid_report.py --grid recipes/grids/mnist_equal_time.yaml \\
        --csv reports/mnist-mini/grid_equal_time.csv output/grid_et_a/grid.csv output/grid_et_b/grid.csv \\
        --out reports/mnist-mini/grid_equal_time.csv --md reports/mnist-mini/grid_equal_time.md

A later file's row of a point replaces an earlier one's. In the report (--md), the line starting `Finished:` gets
the count, the Markdown table after it is replaced by the merged rows, and the line starting `Left` lists the points
not scored yet in the order the grid runs them; the rest of the file is kept as written.
"""
import argparse
import csv
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _runs import fail, write_csv
from tune_recipes import FIELDS, experiment_name, flags, grid_points

COLUMNS = [("method", "method"), ("point", "point"), ("minibatches (planned s)", None), ("epochs", "epochs"),
           ("train s", "train_s"), ("best epoch", "best_epoch"), ("holdout clean", "holdout_clean"),
           ("holdout PGD-10", "holdout_pgd"), ("collapsed", "collapsed")]


def merged_rows(points: list[tuple[str, dict]], paths: list[str]) -> list[dict]:
    """The rows of `paths` (later files win), one per scored point, in the grid's order."""
    by_exp = {}
    for path in paths:
        if not os.path.isfile(path):
            fail(f"error: --csv {path}: no such file")
        with open(path) as f:
            reader = csv.DictReader(f)
            missing = [k for k in FIELDS if k not in (reader.fieldnames or [])]
            if missing:
                fail(f"error: --csv {path}: not a grid.csv of scripts/tune_recipes.py (no column {', '.join(missing)})")
            by_exp.update({r["experiment"]: r for r in reader})
    known = {experiment_name(r, p) for r, p in points}
    strays = sorted(set(by_exp) - known)
    if strays:
        fail(f"error: rows of points not in the grid file: {', '.join(strays[:3])}")
    return [by_exp[e] for e in (experiment_name(r, p) for r, p in points) if e in by_exp]


def table(rows: list[dict]) -> list[str]:
    def cell(r, key):
        if key is None:
            return f"{r['minibatches']} ({r['planned_s']})" if r.get("minibatches") else ""
        return f"`{r[key] or '(recipe)'}`" if key == "point" else r[key]
    return (["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
            + ["| " + " | ".join(cell(r, k) for _, k in COLUMNS) + " |" for r in rows])


def refresh_md(path: str, rows: list[dict], left: list[tuple[str, dict]], total: int) -> None:
    with open(path) as f:
        lines = f.read().splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Finished:"):
            out.append(f"Finished: **{len(rows)} of {total} points**" + line.split("points**", 1)[1]
                       if "points**" in line else f"Finished: **{len(rows)} of {total} points**.")
        elif line.startswith("| method |"):
            out += table(rows)
            while i + 1 < len(lines) and lines[i + 1].startswith("|"):
                i += 1
        elif line.startswith("Left"):
            out.append(f"Left ({len(left)}), in the order they run: "
                       + "; ".join(f"{r} `{' '.join(flags(p)) or '(recipe)'}`" for r, p in left) + "."
                       if left else "Left: none, every point is scored.")
        else:
            out.append(line)
        i += 1
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", required=True, help="the grid YAML the rows were run from")
    p.add_argument("--csv", nargs="+", required=True, help="grid.csv files, earliest first")
    p.add_argument("--out", required=True, help="the merged CSV")
    p.add_argument("--md", default=None, help="a report whose table, Finished and Left lines are refreshed")
    args = p.parse_args(argv)
    with open(args.grid) as f:
        points = grid_points(yaml.safe_load(f))
    rows = merged_rows(points, args.csv)
    write_csv(args.out, rows, FIELDS)
    done = {r["experiment"] for r in rows}
    left = [(r, pt) for r, pt in points if experiment_name(r, pt) not in done]
    if args.md:
        refresh_md(args.md, rows, left, len(points))
    print(f"[grid_report] {len(rows)} of {len(points)} points scored; {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
