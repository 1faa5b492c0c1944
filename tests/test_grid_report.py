"""scripts/grid_report.py: the parts of a grid run in pieces merge into one CSV in the grid's order, and the
report's table, Finished and Left lines follow the rows."""
import csv

from conftest import run_main

GRID = """
grids:
  standard: [{lr: 0.003}, {lr: 0.0001}]
  fast: [{attack_step: 0.3}, {attack_step: 0.1}]
"""
FIELDS = "method,recipe,point,experiment,epochs,train_s,best_epoch,holdout_clean,holdout_pgd,chosen,below_min_clean,"\
         "budget_s,minibatches,planned_s,collapsed,config"


def rows_csv(path, *rows):
    path.write_text(FIELDS + "\n" + "".join(f"{m},{m},{p},{e},3,9.5,2,{c},{a},,,,,,0,abc\n" for m, p, e, c, a in rows))
    return str(path)


def test_parts_merge_in_grid_order_later_files_win_and_the_report_says_what_is_left(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    first = rows_csv(tmp_path / "a.csv", ("standard", "--lr 0.003", "standard-lr=0.003", 90.0, 10.0),
                     ("fast", "--attack-step 0.3", "fast-attack_step=0.3", 80.0, 5.0))
    second = rows_csv(tmp_path / "b.csv", ("fast", "--attack-step 0.3", "fast-attack_step=0.3", 81.0, 6.0),
                      ("standard", "--lr 0.0001", "standard-lr=0.0001", 70.0, 1.0))
    md = tmp_path / "r.md"
    md.write_text("# Grid\n\nFinished: **0 of 4 points**; text kept.\n\n| method | old |\n|---|---|\n| x | y |\n\n"
                  "Left (4), in the order they run: all.\n\nTail kept.\n")
    r = run_main("scripts/grid_report.py", "--grid", str(grid), "--csv", first, second, "--out",
                 str(tmp_path / "m.csv"), "--md", str(md))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [(x["experiment"], x["holdout_pgd"]) for x in rows] == [  # grid order: standard 1, fast 1, standard 2
        ("standard-lr=0.003", "10.0"), ("fast-attack_step=0.3", "6.0"), ("standard-lr=0.0001", "1.0")]
    text = md.read_text()
    assert "Finished: **3 of 4 points**; text kept." in text and "| x | y |" not in text and "Tail kept." in text
    assert "| fast | `--attack-step 0.3` |  | 3 | 9.5 | 2 | 81.0 | 6.0 | 0 |" in text
    assert "Left (1), in the order they run: fast `--attack-step 0.1`." in text
    stray = rows_csv(tmp_path / "c.csv", ("pgd", "--attack-steps 3", "pgd-attack_steps=3", 1.0, 1.0))
    bad = run_main("scripts/grid_report.py", "--grid", str(grid), "--csv", stray, "--out", str(tmp_path / "n.csv"))
    assert bad.returncode == 2 and "not in the grid file: pgd-attack_steps=3" in bad.stderr.strip().splitlines()[-1]
    (tmp_path / "d.csv").write_text("experiment,holdout_pgd\nstandard-lr=0.003,1.0\n")  # not a grid.csv
    bad = run_main("scripts/grid_report.py", "--grid", str(grid), "--csv", str(tmp_path / "d.csv"), "--out",
                   str(tmp_path / "n.csv"))
    assert bad.returncode == 2 and "not a grid.csv of scripts/tune_recipes.py (no column method" in bad.stderr
