"""scripts/benchmark.py runs end to end on this machine: its cost table counts each method's passes per minibatch
as the methods' formulas say, and the timing model (passes x seconds per pass) is the one it reports."""
import csv

import pytest
from conftest import run_script


@pytest.mark.slow  # a subprocess, as a user runs it
def test_benchmark_cost_table(tmp_path):
    r = run_script("scripts/benchmark.py", "--cost-only", "--methods", "standard,fast,pgd,atcd,atcd_reuse:--no-mh",
                   "--cost-batches", "2", "--rounds", "1", "--batch-size", "32", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "costs.csv") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    passes = {m: float(rows[m]["full_passes"]) for m in rows}
    # recipes: r=10; T=4, K=2 + 4 M-H forwards; with --reuse-grad and --no-mh: T*K = 4 weight + 4 input-gradient
    assert passes == {"standard": 1.0, "fast": 2.0, "pgd": 11.0, "atcd": 16.0, "atcd_reuse:--no-mh": 8.0}
    assert rows["atcd_reuse:--no-mh"]["label"] == "atcd --reuse-grad --no-mh"
    # 3 of its 4 weight passes also return the input gradient (the next replay's first step), priced as such
    assert float(rows["atcd_reuse:--no-mh"]["weight_with_input_grad"]) == 3.0
    assert float(rows["atcd"]["weight_with_input_grad"]) == 0.0
    unit = {k: float(rows["atcd_reuse:--no-mh"][f"unit_{k}_sec"]) for k in ("weight", "weight_input", "input_grad")}
    want = 4 * unit["input_grad"] + unit["weight"] + 3 * unit["weight_input"]
    assert abs(float(rows["atcd_reuse:--no-mh"]["predicted_sec"]) - want) < 1e-9
    for row in rows.values():
        assert float(row["sec_per_batch"]) > 0 and float(row["ratio"]) > 0
    assert "measured/predicted" in (tmp_path / "benchmark.md").read_text()


@pytest.mark.slow  # a subprocess, as a user runs it
def test_benchmark_refuses_a_method_without_recipe(tmp_path):
    r = run_script("scripts/benchmark.py", "--methods", "nosuch", "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("error:")
