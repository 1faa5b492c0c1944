#!/usr/bin/env python3
"""One equal-time report from the rows of several runs: the `equal_time.csv` files that
`scripts/benchmark.py --equal-time` wrote (a protocol split over machines, or continued in another work folder after
the first one was lost) become one equal_time.csv, equal_time.md and equal_time.png.

    python scripts/merge_equal_time.py machineA/equal_time.csv machineB/equal_time.csv --out reports/mnist-mini

A row is keyed by (recipe, budget, seed). The same key in two files must hold the same row (two renders of one
run); two different rows for one key are an error, as are rows of one (recipe, budget) trained on different plans
(epochs x minibatches: another pricing is another experiment) and rows evaluated on different numbers of images.
equal_time.csv holds no per-image results, so the merged report gives the intervals over seeds, not the paired
interval over images that a report written by benchmark.py adds.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _rows import FIELDS, read_rows
from _runs import fail, write_csv
from equal_time import plot, report


def merge(paths: list[str]) -> list[dict]:
    """The rows of every file, each (recipe, budget, seed) once, ordered by budget, seed and first-seen recipe."""
    by_key, source, plan = {}, {}, {}
    for path in paths:
        for r in read_rows(path):
            key = (r["recipe"], r["budget_s"], r["seed"])
            if key in by_key and by_key[key] != r:
                fail(f"error: {r['recipe']} {r['budget_s']:g} s seed {r['seed']} differs between {source[key]} and "
                     f"{path}; leave out the file whose row should not count")
            layout = (r["epochs"], r["minibatches"])
            first = plan.setdefault((r["recipe"], r["budget_s"]), (layout, path))
            if first[0] != layout:
                fail(f"error: {r['recipe']} at {r['budget_s']:g} s was trained on {first[0][0]} x "
                     f"{first[0][1] // first[0][0]} minibatches in {first[1]} but {layout[0]} x "
                     f"{layout[1] // layout[0]} in {path}: rows of one budget must share the plan")
            by_key.setdefault(key, r)
            source.setdefault(key, path)
    if not by_key:
        fail("error: the files hold no rows")
    sizes = {(r["n"], r["n_aa"]) for r in by_key.values() if r["n_aa"] != ""} or {(r["n"], "") for r in by_key.values()}
    sizes |= {(r["n"], next(iter(sizes))[1]) for r in by_key.values() if r["n_aa"] == ""}  # no AutoAttack: n only
    if len(sizes) > 1:
        fail(f"error: the rows were evaluated on different numbers of images (n, n_aa): {sorted(sizes, key=str)}")
    order = {m: i for i, m in enumerate(dict.fromkeys(k[0] for k in by_key))}
    return sorted(by_key.values(), key=lambda r: (r["budget_s"], r["seed"], order[r["recipe"]]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", help="equal_time.csv files of scripts/benchmark.py --equal-time")
    p.add_argument("--out", required=True, help="folder for equal_time.csv, equal_time.md and equal_time.png")
    p.add_argument("--eps", default="0.3", help="the runs' eps (the report names it)")
    p.add_argument("--attack-steps", type=int, default=40, help="the runs' PGD steps (the report names them)")
    p.add_argument("--attack-loss", default="margin", help="the runs' PGD loss (the report names it)")
    a = p.parse_args(argv)
    rows = merge(a.csv)
    a.attacks = ",".join(k for k in ("clean", "pgd") if all(r[k] != "" for r in rows))
    if not a.attacks:
        fail("error: no attack has a result in every row")
    if any(r["autoattack"] != "" for r in rows):  # AutoAttack may be left to some methods (--aa-methods)
        a.attacks += ",autoattack"
    a.num_samples = rows[0]["n"]
    a.aa_samples = next((r["n_aa"] for r in rows if r["n_aa"] != ""), 0)
    os.makedirs(a.out, exist_ok=True)
    write_csv(os.path.join(a.out, "equal_time.csv"), rows, FIELDS)
    plot(rows, os.path.join(a.out, "equal_time.png"))
    plot(rows, os.path.join(a.out, "equal_time_updates.png"), x="updates")
    lines = [f"# Equal training time: {len(rows)} rows merged from {len(a.csv)} files", "",
             "Command: `python scripts/merge_equal_time.py " + " ".join(argv if argv is not None else sys.argv[1:])
             + "`", "", *report(rows, a, costs="the runs' cost table, in their benchmark.md: equal_time.csv holds the plans, "
                                          "not the table"), "", "![AutoAttack accuracy vs training time at equal budgets](equal_time.png)",
             "", "![AutoAttack accuracy vs weight updates](equal_time_updates.png)"]
    with open(os.path.join(a.out, "equal_time.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(rows)} rows: {os.path.join(a.out, 'equal_time.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
