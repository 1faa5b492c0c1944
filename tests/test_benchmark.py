"""scripts/benchmark.py runs end to end on this machine: its cost table counts each method's passes per minibatch
as the methods' formulas say, and the timing model (passes x seconds per pass) is the one it reports."""
import csv
import os

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
    # recipes: r=5; T=4, K=2 without M-H (with it: 4 forwards more); with --reuse-grad and --no-mh: T*K = 4 weight +
    # 4 input-gradient
    assert passes == {"standard": 1.0, "fast": 2.0, "pgd": 6.0, "atcd": 12.0, "atcd_reuse:--no-mh": 8.0}
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


def test_budget_plan_prices_every_method_alike():
    """A budget becomes minibatches at the method's measured cost, in whole epochs that never draw an image twice;
    the warm-up keeps its fraction of the training."""
    from atcd.budget import plan_budget
    cheap = plan_budget(120, 0.05, train_size=4000, batch_size=128, recipe_epochs=4, recipe_warmup_epochs=2)
    dear = plan_budget(120, 0.8, train_size=4000, batch_size=128, recipe_epochs=4, recipe_warmup_epochs=2)
    assert cheap.epochs == 78 and cheap.minibatches == 78 * 31  # 2400 wanted; 4000 // 128 = 31 a full epoch
    assert dear.minibatches == 150 and dear.epochs == 5 and dear.samples_per_epoch == 30 * 128
    for p in (cheap, dear):
        assert p.samples_per_epoch <= 4000 and p.minibatches == p.epochs * p.samples_per_epoch // 128
        assert abs(p.planned_s - 120) <= 0.8 * p.epochs  # rounding to whole minibatches per epoch
        assert p.eps_warmup_epochs == pytest.approx(p.epochs / 2, abs=1e-4)
    assert dear.train_flags() == ["--epochs", "5", "--train-samples-per-epoch", "3840", "--eps-warmup-epochs", "2.5"]
    assert plan_budget(1, 10.0, 4000, 128, 4).minibatches == 1  # at least one minibatch
    with pytest.raises(ValueError, match="no minibatch"):
        plan_budget(60, 0.1, train_size=100, batch_size=128, recipe_epochs=4)


def test_intervals():
    """Welch's interval equals scipy's own Welch test turned into an interval; a single seed has none."""
    import math

    from scipy import stats as st

    from atcd.stats import diff_interval, mean_interval
    a, b = [70.2, 68.0, 71.5], [66.0, 67.5, 61.9]
    d, hw = diff_interval(a, b)
    res = st.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert d == pytest.approx((ci.low + ci.high) / 2) and hw == pytest.approx((ci.high - ci.low) / 2)
    m, h = mean_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(st.t.ppf(0.975, 2) / math.sqrt(3))
    assert math.isnan(mean_interval([5.0])[1]) and math.isnan(diff_interval([1.0], [2.0, 3.0])[1])


@pytest.mark.slow  # trainings and evaluations as subprocesses, as a user runs them (~1 min)
def test_equal_time_trains_each_method_for_the_budget_and_resumes(tmp_path):
    from conftest import run_main
    args = ["--methods", "standard,atcd", "--seeds", "0", "--cost-batches", "2", "--rounds", "1",
            "--equal-time", "4", "--attacks", "clean,pgd", "--attack-steps", "3", "--num-samples", "20",
            "--out", str(tmp_path)]
    r = run_main("scripts/benchmark.py", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp_path / "equal_time.csv") as f:
        rows = {row["recipe"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"standard", "atcd"}
    with open(tmp_path / "equal_time_plan.json") as f:
        import json
        plan = json.load(f)
    for m, row in rows.items():
        assert row["budget_s"] == "4.0" and row["n"] == "20" and float(row["train_s"]) > 0
        assert int(row["minibatches"]) == plan[m]["4"]["minibatches"]
        with open(tmp_path / "equal_time" / f"{m}-b4-s0" / "summary.csv") as f:  # the run trained the plan
            summary = list(csv.DictReader(f))
        updates = {"standard": 1, "atcd": 4}[m] * int(row["minibatches"])  # ATCD: T = 4 updates per minibatch
        assert len(summary) == int(row["epochs"]) and int(summary[-1]["num_updates"]) == updates
        assert int(row["updates"]) == updates  # the row records them (the recipe may change later)
    # a run without the M-H test (standard; the ATCD recipe, which drops it: it never rejects) has no acceptance;
    # one with it records it per replay (test_silent_paths: mh_acceptance of summary.csv's columns)
    for m in rows:
        assert rows[m]["mh_accept"] == "" == rows[m]["mh_accept_replays"]
    # every method is priced by the cost table of this run (the measured ratio itself is timing, not asserted:
    # a loaded machine distorts it); the same seconds buy more standard steps than ATCD's 16-pass minibatches
    with open(tmp_path / "costs.csv") as f:
        sec = {row["method"]: float(row["sec_per_batch"]) for row in csv.DictReader(f)}
    for m, row in rows.items():
        assert float(row["planned_s"]) == pytest.approx(int(row["minibatches"]) * sec[m], abs=0.06)
    assert int(rows["standard"]["minibatches"]) > int(rows["atcd"]["minibatches"])
    text = (tmp_path / "benchmark.md").read_text()
    assert "## Equal training time" in text and "ATCD minus the best baseline (standard) on pgd" in text
    assert (tmp_path / "equal_time.png").stat().st_size > 0
    # a re-run reads the finished trainings and evaluations and keeps the plan and the cost table it was priced
    # from (byte for byte: the methods are not timed again); nothing is trained again
    model = tmp_path / "equal_time" / "atcd-b4-s0" / "model.safetensors"
    before = model.stat().st_mtime_ns
    costs = (tmp_path / "costs.csv").read_bytes()
    r = run_main("scripts/benchmark.py", *args)
    assert r.returncode == 0 and "reusing the plan" in r.stdout and "reusing the cost table" in r.stdout
    assert model.stat().st_mtime_ns == before and (tmp_path / "costs.csv").read_bytes() == costs
    with open(tmp_path / "equal_time.csv") as f:
        assert {row["recipe"]: row["pgd"] for row in csv.DictReader(f)} == {m: rows[m]["pgd"] for m in rows}
    # --done: a new --out with the plan and cost table copied in and the rows given as --done (a protocol continued
    # on a machine that lost its run folders) trains and evaluates nothing and writes the same rows
    import shutil
    new, done = tmp_path / "continued", tmp_path / "done.csv"
    new.mkdir()
    for name in ("costs.csv", "equal_time_plan.json"):
        shutil.copy(tmp_path / name, new / name)
    shutil.copy(tmp_path / "equal_time.csv", done)
    cont = [x if x != str(tmp_path) else str(new) for x in args] + ["--done", str(done)]
    r = run_main("scripts/benchmark.py", *cont)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "finished earlier (--done)" in r.stdout and not (new / "equal_time").exists()
    assert (new / "equal_time.csv").read_text() == done.read_text()
    assert rows["atcd"]["config"] and rows["atcd"]["config"] != rows["standard"]["config"]
    # ... but not a row evaluated on other images, nor one trained with other options (its digest): one-line errors
    r = run_main("scripts/benchmark.py", *[x if x != "20" else "10" for x in cont])
    assert r.returncode == 2 and "evaluated on (n, n_aa) = (20, '')" in r.stderr and not (new / "equal_time").exists()
    done.write_text(done.read_text().replace(rows["atcd"]["config"], "0123456789ab"))
    r = run_main("scripts/benchmark.py", *cont)
    assert r.returncode == 2 and "was trained with other options (config 0123456789ab" in r.stderr
    # ... also for a subset of the methods (the cost table keeps every method's row)
    r = run_main("scripts/benchmark.py", *[x if x != "standard,atcd" else "atcd" for x in args])
    assert r.returncode == 0, r.stderr[-2000:]
    assert model.stat().st_mtime_ns == before and (tmp_path / "costs.csv").read_bytes() == costs
    with open(tmp_path / "equal_time.csv") as f:
        assert [row["pgd"] for row in csv.DictReader(f)] == [rows["atcd"]["pgd"]]
    # --report-only: the report from the finished rows, with the rows not run listed; nothing trained, evaluated
    # or timed (the cost table is the earlier run's, byte for byte)
    r = run_main("scripts/benchmark.py", *[x if x != "0" else "0,1" for x in args], "--report-only")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (tmp_path / "equal_time" / "atcd-b4-s1").exists() and model.stat().st_mtime_ns == before
    assert (tmp_path / "costs.csv").read_bytes() == costs
    text = (tmp_path / "benchmark.md").read_text()
    assert "Not run yet (2 of 4 rows" in text and "atcd 4 s seed 1" in text and "Seed 0.\n" in text
    with open(tmp_path / "equal_time.csv") as f:
        assert {row["recipe"]: row["pgd"] for row in csv.DictReader(f)} == {m: rows[m]["pgd"] for m in rows}
    r = run_main("scripts/benchmark.py", *args, "--report-only", "--out", str(tmp_path / "none"))
    assert r.returncode == 2 and "no " + str(tmp_path / "none" / "costs.csv") in r.stderr
    # another budget than the plan's: a one-line error, not a silent mix of plans
    r = run_main("scripts/benchmark.py", *[a if a != "4" else "8" for a in args])
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "planned for other" in r.stderr
    # a finished run trained with other settings than the recipe's now (an edited recipe): refused, not reused
    args_yaml = tmp_path / "equal_time" / "atcd-b4-s0" / "args.yaml"
    args_yaml.write_text(args_yaml.read_text().replace("attack_step: 0.15", "attack_step: 0.2"))
    r = run_main("scripts/benchmark.py", *args)
    assert r.returncode == 2 and "holds a run trained with {'attack_step': 0.2}" in r.stderr


def test_equal_time_stopped_after_its_plan_resumes_from_the_cost_table_it_wrote(tmp_path):
    """A run that stops after planning (here: its evaluation fails after the training) has already written the cost
    table its plan was priced from, so the re-run continues from both instead of refusing for want of costs.csv."""
    from conftest import run_main
    args = ["--methods", "standard", "--cost-batches", "2", "--rounds", "1", "--equal-time", "2",
            "--attack-steps", "2", "--num-samples", "10", "--out", str(tmp_path)]
    r = run_main("scripts/benchmark.py", *args, "--attacks", "clean,nosuchattack")
    assert r.returncode != 0 and (tmp_path / "equal_time_plan.json").is_file()
    costs = (tmp_path / "costs.csv").read_bytes()
    model = tmp_path / "equal_time" / "standard-b2-s0" / "model.safetensors"
    before = model.stat().st_mtime_ns
    r = run_main("scripts/benchmark.py", *args, "--attacks", "clean")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reusing the cost table" in r.stdout and (tmp_path / "costs.csv").read_bytes() == costs
    assert model.stat().st_mtime_ns == before and (tmp_path / "equal_time.csv").is_file()


@pytest.mark.parametrize("args, message", [
    (["--aa-samples", "50"], "--equal-time runs only"),
    (["--eval-procs", "2"], "--equal-time runs only"),
    (["--equal-time", "60", "--train-args", "--epochs 2"], "--train-args does not apply"),
    (["--report-only"], "--report-only reports an --equal-time run"),
    (["--equal-time", "sixty"], "a comma list of seconds"),
    (["--equal-time", "60,-5"], "must be > 0"),
    (["--equal-time", "60", "--batch-size", "64"], "prices minibatches of --batch-size 64"),
    (["--equal-time", "60", "--attacks", "cw"], "has none of them"),
])
def test_benchmark_refuses_options_it_would_ignore(tmp_path, args, message):
    from conftest import run_main
    r = run_main("scripts/benchmark.py", "--methods", "standard", "--out", str(tmp_path), *args)
    assert r.returncode == 2 and message in r.stderr and not (tmp_path / "costs.csv").exists()


def test_ablation_lines_are_each_variant_minus_the_recipe_on_the_same_images():
    """The ablation table (scripts/ablation_mnist.sh): per variant and attack, the paired difference to the recipe
    over the same images; baselines (not atcd*) are not variants."""
    from conftest import load_script
    et = load_script("scripts/equal_time.py")

    def row(recipe, method, clean, pgd):
        return {"recipe": recipe, "method": method, "seed": 0, "clean": 1, "pgd": 1,
                "_correct": {"clean": clean, "pgd": pgd}}
    sel = [row("atcd", "atcd", "1111111111", "1111100000"),
           row("atcd:--no-mh", "atcd", "1111111111", "1111000000"),  # one image of 10 fewer under PGD
           row("free", "free", "0000000000", "0000000000")]
    lines = et._ablation_lines(sel)
    assert lines[2] == "| variant | clean | pgd |"
    body = [ln for ln in lines if ln.startswith(("| atcd", "| free"))]
    assert len(body) == 1 and body[0].startswith("| atcd:--no-mh | +0.0 ± 0.0 | -10.0 ± ")
    assert et._ablation_lines([sel[0], sel[2]]) == []  # no variant, no table
    assert et.mh_acceptance([{"mh_accept": "1.0", "mh_accept_r0": "1.0", "mh_accept_r1": "0.5"},
                             {"mh_accept": "0.5", "mh_accept_r0": "0.0", "mh_accept_r1": "1.0"}]) == {
        "mh_accept": 0.75, "mh_accept_replays": "0.500/0.750"}


def test_one_seed_verdict_follows_the_paired_interval_over_images():
    """With one seed, ATCD is called ahead of the best baseline only when the paired interval over the images
    excludes 0; a lead inside the interval is 'not separated'. Each budget names its own seeds."""
    import types

    from conftest import load_script
    et = load_script("scripts/equal_time.py")
    a = types.SimpleNamespace(attacks="clean,autoattack", attack_steps=40, attack_loss="margin", eps=0.3,
                              num_samples=50, aa_samples=50)

    def row(recipe, budget, seed, correct):
        acc = 100.0 * correct.count("1") / len(correct)
        return {"recipe": recipe, "method": recipe, "budget_s": budget, "seed": seed, "clean": acc,
                "autoattack": acc, "train_s": budget, "epochs": 1, "minibatches": 10, "planned_s": budget,
                "cost_model_s": budget, "n": len(correct), "n_aa": len(correct), "mh_accept": "",
                "_correct": {"clean": correct, "autoattack": correct}}
    base = "1" * 25 + "0" * 25
    rows = [row("atcd", 60, 0, "1" * 26 + "0" * 24), row("free", 60, 0, base),  # +2 points: noise on 50 images
            row("atcd", 120, 0, "1" * 45 + "0" * 5), row("free", 120, 0, base),  # +40: ahead
            row("atcd", 120, 1, "1" * 45 + "0" * 5), row("free", 120, 1, base)]
    text = "\n".join(et.report(rows, a))
    verdicts = [ln for ln in text.splitlines() if ln.startswith("ATCD minus")]
    assert "**+2.0 points**" in verdicts[0] and "ATCD is not separated from it (one seed" in verdicts[0]
    assert "**+40.0 points**" in verdicts[1] and "ATCD wins" in verdicts[1]
    assert "Seed 0.\n" in text and "Seeds 0, 1.\n" in text
    one = "\n".join(et.report(rows[:2] + [row("atcd", 240, 0, "1" * 45 + "0" * 5), row("free", 240, 0, base)], a))
    assert "ATCD is ahead over these images (one seed" in one


def test_report_only_without_a_plan_fails_and_writes_none(tmp_path):
    """--report-only reads an earlier run's plan; a folder with a cost table but no plan is a one-line error, and
    no plan is made up for it."""
    import shutil
    from pathlib import Path

    from conftest import run_main
    shutil.copy(Path(__file__).parent.parent / "reports" / "mnist-mini" / "costs.csv", tmp_path / "costs.csv")
    r = run_main("scripts/benchmark.py", "--methods", "atcd", "--cost-methods", "standard,atcd", "--equal-time", "60",
                 "--report-only", "--out", str(tmp_path))
    assert r.returncode == 2 and "needs the plan of an earlier run" in r.stderr
    assert not (tmp_path / "equal_time_plan.json").exists()


def _equal_time_row(recipe, budget, seed, aa, epochs=2, n_aa=500):
    """One equal_time.csv row of a made-up run."""
    return {"method": recipe, "recipe": recipe, "budget_s": budget, "seed": seed, "train_s": budget + 1,
            "clean": 97.0, "pgd": aa + 5, "autoattack": aa, "n": 1000, "n_aa": n_aa, "epochs": epochs,
            "minibatches": 10 * epochs, "planned_s": budget, "cost_model_s": budget,
            "mh_accept": 0.9 if recipe == "atcd" else "", "mh_accept_replays": "0.8/1.0" if recipe == "atcd" else ""}


def _save_equal_time(path, rows) -> str:
    """`rows` written as an equal_time.csv of scripts/benchmark.py at `path`."""
    from conftest import load_script
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=load_script("scripts/equal_time.py").FIELDS)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def test_merge_equal_time_joins_runs_and_refuses_rows_that_are_not_one_experiment(tmp_path):
    """Rows of several runs make one report whose verdict is the interval over seeds of the merged rows; the same
    row twice is read once, and two different rows for one key, another plan for one budget, or another number of
    images are one-line errors that write nothing."""
    from conftest import run_main

    from atcd.stats import mean_interval
    row = _equal_time_row

    def save(name, rows):
        return _save_equal_time(tmp_path / f"{name}.csv", rows)

    atcd60, free60 = [70.0, 74.4, 66.2], [80.0, 79.0, 84.8]
    a = save("a", [row(m, 60.0, s, v[s]) for s in range(3) for m, v in (("atcd", atcd60), ("free", free60))])
    b = save("b", [row("atcd", 60.0, 0, 70.0), row("atcd", 120.0, 0, 88.0), row("free", 120.0, 0, 80.0)])
    out = tmp_path / "merged"
    r = run_main("scripts/merge_equal_time.py", a, b, "--out", str(out))
    assert r.returncode == 0, r.stderr
    with open(out / "equal_time.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(x["recipe"], x["budget_s"], x["seed"]) for x in rows] == [
        (m, "60.0", str(s)) for s in range(3) for m in ("atcd", "free")] + [("atcd", "120.0", "0"), ("free", "120.0", "0")]
    text = (out / "equal_time.md").read_text()
    d, hw = mean_interval([x - y for x, y in zip(atcd60, free60)])  # seed-paired: one difference per seed
    assert d + hw > 0  # -11.1 +- 17.6: the seed-paired interval is wider than Welch's +- 8.5 on these rows
    assert (f"ATCD minus the best baseline (free) on autoattack, seed-paired: **{d:+.1f} points** (per seed 0, 1, 2: "
            f"-10.0, -4.6, -18.6; 95 % t-interval over the 3 seed differences ± {hw:.1f}); ATCD is not separated "
            "from it.") in text and "images, paired" not in text
    assert "**+8.0 points**" in text and "cannot be called (one seed, no per-image results" in text
    assert "| atcd [seed 0 only] |" not in text  # at 120 s every method has the budget's one seed
    r = run_main("scripts/merge_equal_time.py", a, save("f", [row("atcd", 60.0, 3, 71.0)]), "--out", str(out))
    text = (out / "equal_time.md").read_text()
    assert r.returncode == 0 and "Seeds 0, 1, 2, 3." in text and "| free [seeds 0, 1, 2 only] |" in text
    assert "| atcd |" in text
    assert "AutoAttack on the first 500" in text and (out / "equal_time.png").stat().st_size > 0
    for bad, message in ((save("c", [row("atcd", 60.0, 1, 50.0)]), "atcd 60 s seed 1 differs between"),
                         (save("d", [row("free", 120.0, 1, 80.0, epochs=3)]), "must share the plan"),
                         (save("e", [row("free", 240.0, 0, 80.0, n_aa=100)]), "different numbers of images")):
        fresh = tmp_path / "fresh"
        r = run_main("scripts/merge_equal_time.py", a, b, bad, "--out", str(fresh))
        assert r.returncode == 2 and message in r.stderr and not fresh.exists(), r.stderr


@pytest.mark.slow  # a subprocess, as a user runs it
def test_merge_equal_time_runs_from_a_checkout_that_is_not_installed(tmp_path):
    """`python scripts/merge_equal_time.py` from a checkout whose atcd package is not importable by the interpreter
    (not pip-installed, or an editable install left pointing at another folder, as CI's): the scripts put their own
    checkout on the path, so the plot and the verdict (which import atcd.stats) are written."""
    import os
    import subprocess
    import sys
    import sysconfig

    from conftest import ROOT
    path = _save_equal_time(tmp_path / "equal_time.csv",
                            [_equal_time_row("atcd", 60.0, 0, 70.0), _equal_time_row("free", 60.0, 0, 80.0)])
    # -S: no site module, so no .pth file runs (the editable install's finder); the libraries stay importable
    libs = os.pathsep.join(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    env = dict(os.environ, PYTHONPATH=libs, MPLBACKEND="Agg")
    probe = subprocess.run([sys.executable, "-S", "-c", "import atcd"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, check=False)
    assert probe.returncode != 0, "atcd is importable without the checkout on the path: the test would prove nothing"
    r = subprocess.run([sys.executable, "-S", os.path.join(ROOT, "scripts", "merge_equal_time.py"), str(path),
                        "--out", str(tmp_path / "merged")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "**-10.0 points**" in (tmp_path / "merged" / "equal_time.md").read_text()
    assert (tmp_path / "merged" / "equal_time.png").stat().st_size > 0


def test_update_split_of_the_committed_equal_time_rows():
    """Issue 33 item 3 on the committed 54 rows: ATCD makes 6.2 weight updates per second of budget, Free-4 16.0; at
    240 s ATCD's -1.2 AutoAttack points are -3.8 from making fewer updates and +2.6 per update (Free-4's curve read
    at ATCD's 1,488 updates, between its 960 and 1,920)."""
    from conftest import ROOT, load_script
    merge = load_script("scripts/merge_equal_time.py")
    equal_time = load_script("scripts/equal_time.py")
    rows = merge.read_rows(os.path.join(ROOT, "reports", "mnist-mini", "equal_time.csv"))
    lines = equal_time.update_split(rows, "autoattack")
    assert "| 240 s | 1488 (6.2) | free: 3840 (16.0) | -1.2 | -3.8 | +2.6 |" in lines
    assert "| 60 s | 372 (6.2) | free: 960 (16.0) | -16.3 | -14.7 | -1.6 |" in lines  # ATCD's curve at 960
    # a row counts the updates its run recorded, not what the recipe makes now (the tuned Free recipe may change m:
    # a Free-4 row must stay at 4 per minibatch); a row without the column derives them from the recipe
    assert equal_time.updates({"recipe": "free", "minibatches": 10, "updates": 80}) == 80
    assert equal_time.updates({"recipe": "free", "minibatches": 10, "updates": ""}) == (
        10 * equal_time.updates_per_batch("free"))


def test_autoattack_for_some_methods_only_ranks_those_and_says_so(tmp_path):
    """--aa-methods (issue 33: AutoAttack for ATCD and the two best baselines, PGD for the others): rows without
    AutoAttack are left out of the verdict and the figure, and the report names the methods that had it."""
    from conftest import run_main
    row = _equal_time_row
    rows = [row(m, 60.0, s, v) for s in range(2) for m, v in (("atcd", 70.0 + s), ("free", 60.0 + s), ("pgd", 99.0))]
    rows += [row(m, 120.0, 0, 80.0) for m in ("atcd", "free")]  # a budget whose AutoAttack has not run yet
    for r in rows:
        if r["recipe"] == "pgd" or r["budget_s"] == 120.0:  # pgd: the best number, but no AutoAttack: it must not
            r["autoattack"], r["n_aa"] = "", ""            # become "the best baseline"
    out = tmp_path / "merged"
    r = run_main("scripts/merge_equal_time.py", _save_equal_time(tmp_path / "a.csv", rows), "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = (out / "equal_time.md").read_text()
    assert "AutoAttack was run for some methods only (--aa-methods, --aa-best)" in text
    assert "AutoAttack for atcd, free; the baselines by mean PGD: pgd 104.0, free 65.5." in text
    assert "AutoAttack for none yet; the baselines by mean PGD: free 85.0." in text
    assert "ATCD minus the best baseline (free) on autoattack, seed-paired: **+10.0 points**" in text
    assert "| pgd | 2 × 10 |" in text and (out / "equal_time_updates.png").stat().st_size > 0
    bad = run_main("scripts/benchmark.py", "--methods", "atcd,free", "--aa-methods", "atcd,yopo", "--equal-time", "60")
    assert bad.returncode == 2 and "--aa-methods" in bad.stderr


def test_aa_best_ranks_the_baselines_by_mean_pgd_over_the_seeds():
    """--aa-best K: the K baselines (not ATCD, nor its variants) with the best PGD mean over every seed of a budget;
    rows without PGD do not rank."""
    from conftest import load_script
    eq = load_script("scripts/equal_time.py")
    row = _equal_time_row
    rows = [row("atcd", 60.0, 0, 99.0), row("atcd_reuse", 60.0, 0, 98.0), row("fast", 60.0, 0, 80.0),
            row("fast", 60.0, 1, 10.0), row("pgd", 60.0, 0, 50.0), row("pgd", 60.0, 1, 49.0),
            row("trades", 60.0, 0, 60.0), row("yopo", 60.0, 0, 1.0)]
    rows[-1]["pgd"] = ""  # no PGD: not ranked
    rows[1]["method"] = "atcd (--reuse-grad)"
    assert eq.best_baselines(rows, 2) == ["trades", "pgd"]  # fast's mean is 45 + 5: its seed-0 row alone would lead
    assert eq.best_baselines(rows, 9) == ["trades", "pgd", "fast"] and eq.best_baselines(rows, 0) == []


@pytest.mark.slow  # trainings and AutoAttack as a user runs them (~2 min)
def test_aa_best_attacks_the_best_baselines_of_each_budget_and_keeps_what_it_measured(tmp_path):
    """--aa-best 1 (issue 33's protocol, --aa-methods atcd --aa-best 2, at toy scale): once both seeds have their PGD,
    AutoAttack for the baseline with the better mean PGD only; a run continued with --done reads those rows, and a
    re-run that would not attack that baseline keeps its measured AutoAttack instead of dropping it."""
    import shutil

    from conftest import run_main
    args = ["--methods", "standard,pgd", "--seeds", "0,1", "--cost-batches", "2", "--rounds", "1",
            "--equal-time", "3", "--attacks", "clean,pgd,autoattack", "--attack-steps", "3", "--eps", "0.1",
            "--num-samples", "40", "--aa-samples", "2", "--aa-best", "1", "--out", str(tmp_path)]
    r = run_main("scripts/benchmark.py", *args)
    assert r.returncode == 0, r.stderr[-2000:]

    def rows_of(path):
        with open(path) as f:
            return {(row["recipe"], row["seed"]): row for row in csv.DictReader(f)}
    rows = rows_of(tmp_path / "equal_time.csv")
    assert len(rows) == 4
    pgd = {m: sum(float(rows[(m, s)]["pgd"]) for s in "01") for m in ("standard", "pgd")}
    assert pgd["standard"] != pgd["pgd"], pgd  # the toy runs must rank (deterministic for their seeds)
    best, other = sorted(pgd, key=pgd.get, reverse=True)
    for s in "01":
        assert rows[(best, s)]["n_aa"] == "2" and rows[(best, s)]["autoattack"] != ""
        assert rows[(other, s)]["autoattack"] == "" == rows[(other, s)]["n_aa"]
    text = (tmp_path / "benchmark.md").read_text()
    assert f"AutoAttack for {best}; the baselines by mean PGD: {best} " in text
    # continued from the rows alone (--done, a machine without the run folders): nothing trained or attacked
    new = tmp_path / "continued"
    new.mkdir()
    for name in ("costs.csv", "equal_time_plan.json", "equal_time.csv"):
        shutil.copy(tmp_path / name, new / name)
    cont = [x if x != str(tmp_path) else str(new) for x in args] + ["--done", str(new / "equal_time.csv")]
    r = run_main("scripts/benchmark.py", *cont)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (new / "equal_time").exists() and rows_of(new / "equal_time.csv") == rows
    # a re-run that attacks the other baseline instead (--aa-methods, no --aa-best) reads the AutoAttack it measured
    # for the best one: kept, not dropped
    i = args.index("--aa-best")
    r = run_main("scripts/benchmark.py", *args[:i], *args[i + 2:], "--aa-methods", other)
    assert r.returncode == 0, r.stderr[-2000:]
    again = rows_of(tmp_path / "equal_time.csv")
    assert all(again[(best, s)] == rows[(best, s)] and again[(other, s)]["n_aa"] == "2" for s in "01")
    # --report-only lists an AutoAttack the chosen baseline still lacks, and attacks nothing
    aa_file = tmp_path / "equal_time" / f"{best}-b3-s1" / "results-autoattack-n2.json"
    aa_file.unlink()
    r = run_main("scripts/benchmark.py", *args, "--report-only")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"Not run yet for the baselines --aa-best chose: AutoAttack of {best} 3 s seed 1." in (
        tmp_path / "benchmark.md").read_text() and not aa_file.exists()


def test_update_split_waits_until_atcd_and_the_best_baseline_share_their_seeds():
    """A gap of means over different seeds is no gap: while the best baseline has its accuracy for fewer seeds than
    ATCD (--aa-best before its AutoAttack ran), the split's row says so instead of subtracting."""
    from conftest import load_script
    eq = load_script("scripts/equal_time.py")
    rows = [_equal_time_row("atcd", 60.0, s, 70.0 + 10 * s) for s in range(2)] + [_equal_time_row("free", 60.0, 0, 75.0)]
    for r in rows:
        r["updates"] = 10 * r["epochs"]
    text = "\n".join(eq.update_split(rows, "autoattack"))
    assert "| 60 s | 20 (0.3) | free: 20 (0.3) | not yet: autoattack of seeds [0, 1] for ATCD, [0] for free |" in text
    rows.append(_equal_time_row("free", 60.0, 1, 78.0))
    rows[-1]["updates"] = 20
    assert "| 60 s | 20 (0.3) | free: 20 (0.3) | -1.5 |" in "\n".join(eq.update_split(rows, "autoattack"))
    # a longer budget measured on seed 0 only so far is no point of the seeds-0-and-1 curves the split reads
    for r in rows:
        r["updates"] = 40 if r["recipe"] == "free" else 20
    rows.append(_equal_time_row("atcd", 120.0, 0, 95.0))
    rows[-1]["updates"] = 40
    text = "\n".join(eq.update_split(rows, "autoattack"))
    assert "| 60 s | 20 (0.3) | free: 40 (0.7) | -1.5 | outside the measured updates |" in text


def test_verdict_pairs_with_a_baseline_that_has_every_seed_and_pgd_ranks_every_method(tmp_path):
    """While --aa-best has not run its AutoAttack, a baseline attacked on one seed only (TRADES's seed 0) must not
    become the AutoAttack verdict's "best baseline" over one measured on every seed; and the report adds the PGD
    verdict and split, which rank every method on every seed."""
    from conftest import run_main
    row = _equal_time_row
    rows = [row(m, 60.0, s, v + s) for s in range(3) for m, v in (("atcd", 70.0), ("free", 60.0), ("trades", 50.0))]
    for r in rows:
        if r["recipe"] == "trades" and r["seed"] > 0:  # AutoAttack on seed 0 only, and 95 there: the best mean
            r["autoattack"], r["n_aa"] = "", ""
        elif r["recipe"] == "trades":
            r["autoattack"] = 95.0
    out = tmp_path / "merged"
    r = run_main("scripts/merge_equal_time.py", _save_equal_time(tmp_path / "a.csv", rows), "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = (out / "equal_time.md").read_text()
    assert ("ATCD minus the best baseline (free) on autoattack, seed-paired: **+10.0 points** (per seed 0, 1, 2: "
            "+10.0, +10.0, +10.0") in text
    assert "ATCD minus the best baseline (free) on pgd, seed-paired: **+10.0 points**" in text
    assert "### The gap in weight updates (autoattack)" in text and "### The gap in weight updates (pgd)" in text
    assert text.count("| 60 s | 80 (1.3) | free: 160 (2.7) | +10.0 |") == 2  # both splits' rival, never "not yet"
