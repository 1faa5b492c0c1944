"""scripts/tune_recipes.py: a grid of real (short) trainings, scored on the holdout, resumable, with clear errors."""
import csv

import pytest
from conftest import run_main

pytestmark = pytest.mark.slow  # two short trainings as subprocesses

GRID = """
common: {holdout: 100, epochs: 1, train_samples_per_epoch: 256, eval_samples: 20, eval_attack_steps: 2}
grids:
  standard:
    lr: [0.003, 0.0001]
"""


def test_grid_trains_each_point_scores_it_on_the_holdout_and_continues_without_retraining(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    out = tmp_path / "out"
    r = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("[grid] ") == 2
    rows = list(csv.DictReader((out / "grid.csv").open()))
    assert [row["point"] for row in rows] == ["--lr 0.003", "--lr 0.0001"]
    for row in rows:  # the score is the run's own best holdout epoch (one epoch here)
        summary = list(csv.DictReader((out / row["experiment"] / "summary.csv").open()))
        assert float(row["holdout_pgd"]) == float(summary[0]["holdout_pgd_top1"])
        assert float(row["holdout_clean"]) == float(summary[0]["holdout_top1"]) and row["method"] == "standard"
    best = max(rows, key=lambda row: (float(row["holdout_pgd"]), float(row["holdout_clean"])))
    assert [row["chosen"] for row in rows] == ["1" if row is best else "0" for row in rows]
    assert best["below_min_clean"] == ("1" if float(best["holdout_clean"]) < 95 else "0")  # 256 images: it is
    again = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(out))
    assert again.returncode == 0 and "[grid] " not in again.stdout  # finished points are read, not retrained
    assert list(csv.DictReader((out / "grid.csv").open())) == rows
    grid.write_text(GRID.replace("holdout: 100", "holdout: 50"))  # the finished runs are no longer this grid's
    stale = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(out))
    assert stale.returncode == 2 and "holds a run trained with {'holdout': 100}" in stale.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("text,needle", [("grids: [1, 2]", "not a grid file"),
                                         ("grids: {standard: {lr: [0.1]}}\n", "--methods nosuch")])
def test_bad_grid_or_method_is_a_one_line_error(tmp_path, text, needle):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    r = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(tmp_path / "o"), "--methods", "nosuch")
    assert r.returncode == 2 and needle in r.stderr.strip().splitlines()[-1]
