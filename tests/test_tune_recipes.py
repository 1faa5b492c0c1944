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
    # continued elsewhere without the run folders: the committed grid.csv's rows are read, not trained again
    (tmp_path / "scored.csv").write_text((out / "grid.csv").read_text())
    elsewhere = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(tmp_path / "o2"),
                         "--scored", str(tmp_path / "scored.csv"))
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    assert elsewhere.stdout.count("scored earlier") == 2 and "[grid] standard-lr=0.003\n" not in elsewhere.stdout
    assert list(csv.DictReader((tmp_path / "o2" / "grid.csv").open())) == rows
    grid.write_text(GRID.replace("holdout: 100", "holdout: 50"))  # the finished runs are no longer this grid's
    changed = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(tmp_path / "o3"),
                       "--scored", str(tmp_path / "scored.csv"))  # nor the scored rows: their config differs
    assert changed.returncode == 2 and "standard-lr=0.003 was trained with other options" in changed.stderr
    stale = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(out))
    assert stale.returncode == 2 and "holds a run trained with {'holdout': 100}" in stale.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("text,needle", [("grids: [1, 2]", "not a grid file"),
                                         ("grids: {standard: {lr: [0.1]}}\n", "--methods nosuch")])
def test_bad_grid_or_method_is_a_one_line_error(tmp_path, text, needle):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    r = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(tmp_path / "o"), "--methods", "nosuch")
    assert r.returncode == 2 and needle in r.stderr.strip().splitlines()[-1]


EQUAL_TIME_GRID = """
common: {holdout: 100, budget_s: 3, eval_samples: 20, eval_attack_steps: 2}
grids:
  standard:
    - {lr: 0.003}
    - {lr: 0.0001}
  fast:
    - {attack_step: 0.3}
"""


def test_grid_at_equal_time_prices_every_point_from_one_cost_table_and_runs_round_robin(tmp_path):
    """`common: {budget_s: S}`: each point trains for S priced seconds (its minibatches from the interleaved cost
    table of all the points, grid_costs.csv), not for the recipe's epochs; explicit points run method by method in
    turn; a continued grid reads the cost table instead of timing again."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(EQUAL_TIME_GRID)
    out = tmp_path / "out"
    r = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(out), "--cost-batches", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    trained = [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("[grid] ")]
    assert [t for t in trained if t not in ("timing", "note:")] == [
        "standard-lr=0.003", "fast-attack_step=0.3", "standard-lr=0.0001"]  # round robin
    costs = {row["method"]: float(row["sec_per_batch"]) for row in csv.DictReader((out / "grid_costs.csv").open())}
    assert set(costs) == {"standard:--lr 0.003", "standard:--lr 0.0001", "fast:--attack-step 0.3"}
    rows = list(csv.DictReader((out / "grid.csv").open()))
    for row in rows:
        sec = costs[row["recipe"] + ":" + row["point"]]
        assert row["budget_s"] == "3" and abs(float(row["planned_s"]) - int(row["minibatches"]) * sec) < 0.06
        assert abs(int(row["minibatches"]) - 3 / sec) <= 1  # the budget's minibatches, whatever the recipe's epochs
        summary = list(csv.DictReader((out / row["experiment"] / "summary.csv").open()))
        assert sum(int(s["weight_passes"]) for s in summary) == int(row["minibatches"])  # one per minibatch here
    again = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(out))
    assert again.returncode == 0 and "reusing the cost table" in again.stdout and "[grid] standard" not in again.stdout


def test_grid_priced_from_an_earlier_cost_table_uses_counted_passes_times_its_pass_seconds(tmp_path):
    """--price-from: a busy machine does not time the points; each is priced by its counted passes x the seconds per
    pass of the given cost table (reports/mnist-mini/costs.csv: a standard step is one weight pass)."""
    import os

    from conftest import ROOT
    table = os.path.join(ROOT, "reports", "mnist-mini", "costs.csv")
    with open(table) as f:
        weight = float(next(csv.DictReader(f))["unit_weight_sec"])
    grid = tmp_path / "grid.yaml"
    grid.write_text("common: {holdout: 100, budget_s: 2, eval_samples: 20, eval_attack_steps: 2}\n"
                    "grids:\n  standard:\n    - {lr: 0.003}\n")
    out = tmp_path / "out"
    r = run_main("scripts/tune_recipes.py", "--grid", str(grid), "--out", str(out), "--price-from", table)
    assert r.returncode == 0, r.stderr[-2000:]
    (cost,) = csv.DictReader((out / "grid_costs.csv").open())
    assert float(cost["sec_per_batch"]) == weight and cost["priced_from"] == table
    (row,) = csv.DictReader((out / "grid.csv").open())
    from atcd.budget import plan_budget
    assert int(row["minibatches"]) == plan_budget(2, weight, 4000 - 100, 128, 4).minibatches  # 3,900 images
    assert float(row["planned_s"]) == round(int(row["minibatches"]) * weight, 1)
