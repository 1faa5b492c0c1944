"""Issue 33 item 6: paths that used to run on silently with a wrong answer now fix it or stop with one line. Each test
was seen failing with its fix reverted."""
import math
import os

import pytest
import torch
import yaml
from conftest import ROOT, load_script

from atcd.config import TrainConfig, parse_train_args
from atcd.errors import ConfigError

equal_time = load_script("scripts/equal_time.py")
tune = load_script("scripts/tune_recipes.py")


def _recipe(entry: str):
    name, _, flags = entry.partition(":")
    return parse_train_args(["-c", os.path.join(ROOT, "recipes", f"mnist_{name}.yaml"), *flags.split()])


def test_a_saved_plan_priced_for_other_flags_is_refused(tmp_path):
    """A continued equal-time run reused equal_time_plan.json whatever the recipe and flags had become."""
    path = str(tmp_path / "plan.json")
    # the recipe: T = 4, K = 2 without M-H, 12 passes per minibatch
    cost = {"method": "atcd", "label": "atcd --no-mh", "sec_per_batch": 0.5, "predicted_sec": 0.49, "full_passes": 12.0}
    plans = equal_time.make_plans([cost], [60.0], _recipe, path)
    assert equal_time.make_plans([cost], [60.0], _recipe, path) == plans  # the same recipe: reused
    for other in ("atcd:--mh", "atcd:--eps-warmup-epochs 0", "atcd:--atcd-T 2"):
        with pytest.raises(SystemExit):  # the plan of 'atcd' read for a recipe that now runs `other`
            equal_time.make_plans([cost], [60.0], lambda _e, o=other: _recipe(o), path)
    assert "passes per minibatch" in equal_time._repriced(cost, _recipe("atcd:--mh"), {60.0: plans["atcd"]["60"]})


def test_the_grid_kappa_1_points_run_the_kinetic_term_they_were_scored_with():
    """recipes/grids/mnist.yaml's kappa_H = 1 points were scored (reports/mnist-mini/grid.csv) with the normalised
    kinetic term the recipe then named; the recipe no longer does, so the grid must."""
    with open(os.path.join(ROOT, "recipes", "grids", "mnist.yaml")) as f:
        grid = yaml.safe_load(f)
    points = [pt for r, pt in tune.grid_points(grid) if r == "atcd" and pt.get("mh_kinetic") == 1.0]
    assert len(points) == 2
    for pt in points:
        assert _recipe("atcd:" + " ".join(tune.flags(pt))).method_opts.mh_kinetic_v == "normalised"


def test_a_finished_grid_point_trained_under_other_recipe_defaults_is_not_read_as_this_one(tmp_path):
    """The grid compared only its own flags with the run's args.yaml: a point trained when the recipe resolved to
    another kinetic term was read as if it were the point now."""
    point, common = {"mh_kinetic": 1.0, "eps_warmup_epochs": 0}, {"holdout": 500}
    exp = tune.experiment_name("atcd", point)
    run = tmp_path / exp
    run.mkdir()
    args = tune.point_args("atcd", point, common)
    had = parse_train_args(args).flat()
    (run / "model.safetensors").write_bytes(b"")
    (run / "args.yaml").write_text(yaml.safe_dump({**had, "output": str(tmp_path), "experiment": exp}))
    assert tune.train_point("atcd", point, args, str(tmp_path)) == str(run)  # the same run: read
    other = "gradient" if had["mh_kinetic_v"] == "normalised" else "normalised"
    (run / "args.yaml").write_text(yaml.safe_dump({**had, "mh_kinetic_v": other}))
    with pytest.raises(SystemExit):
        tune.train_point("atcd", point, args, str(tmp_path))


def _row(seed, acc, correct=None):
    return {"seed": seed, "autoattack": acc, "n_aa": 4, "n": 4, "_correct": {"autoattack": correct or ""}}


def test_paired_says_how_many_seeds_it_pooled_and_the_verdict_pairs_seeds():
    atcd = [_row(0, 50.0, "1100"), _row(1, 75.0), _row(2, 70.0)]
    free = [_row(0, 25.0, "1000"), _row(1, 50.0), _row(2, 40.0)]
    d, _hw, pooled = equal_time._paired(atcd, free, "autoattack")
    assert pooled == 1 and d == 25.0  # seeds 1 and 2 have no per-image results: left out, and counted
    line = equal_time._verdict(atcd, {"free": free}, "autoattack")
    assert "1 of 3 seeds pooled" in line
    assert "**+26.7 points**" in line and "+25.0, +25.0, +30.0" in line  # the mean of the per-seed differences
    assert "wins" in line  # per-seed differences 25, 25, 30: the t-interval over seeds stays above 0


def test_lambda_not_above_rho_is_a_one_line_error():
    """lambda <= rho: J_cd's logit gradient at a trajectory's start, (lambda - rho)(p - y), is zero or descends."""
    base = ["--method", "atcd", "--dataset", "mnist-mini", "--model", "smallcnn_mnist"]
    for lam, rho in (("1", "1"), ("1", "2")):
        with pytest.raises(ConfigError, match="--cd-lambda"):
            parse_train_args([*base, "--cd-lambda", lam, "--cd-rho", rho])
    assert parse_train_args([*base, "--cd-lambda", "4", "--cd-rho", "1"]).method_opts.cd_lambda == 4.0


def test_reuse_grad_at_k1_leaves_the_untested_replay_out_of_the_acceptance(mnist_test_batch):
    """--reuse-grad at K = 1: replay 0 makes no move and has no M-H test. Its rate was nan, and nan flowed into the
    equal-time means; now it is empty, and the means leave it out."""
    from accelerate import Accelerator

    from atcd.methods import StepContext, create_method
    from atcd.models import build_model
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    cfg = TrainConfig.of(eps=0.3, attack_step=0.1, atcd_T=3, atcd_K=1, reuse_grad=True)
    torch.manual_seed(0)
    model = build_model("smallcnn_mnist")
    ctx = StepContext(model=model, attack_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                      backward=lambda loss: loss.backward(), after_update=lambda: None)
    method = create_method("atcd", cfg)
    for _ in range(2):
        method.step(ctx, x, y)
    out = method.epoch_metrics(Accelerator(cpu=True))
    assert out["mh_accept_r0"] == ""
    assert all(isinstance(out[k], float) and not math.isnan(out[k]) for k in ("mh_accept", "mh_accept_r1",
                                                                                "mh_accept_r2"))
    epochs = [{"mh_accept": "0.9", "mh_accept_r0": r0, "mh_accept_r1": "0.8", "mh_accept_r2": "1.0"}
              for r0 in ("", "nan")]  # this version's empty cell, and an older run's nan
    assert equal_time.mh_acceptance(epochs) == {"mh_accept": 0.9, "mh_accept_replays": "-/0.800/1.000"}


def test_a_finished_run_is_compared_on_the_options_its_args_yaml_records(tmp_path):
    """An option added after the run trained (absent from its args.yaml) does not make it stale; a recorded option
    with another value does."""
    from conftest import load_script
    runs = load_script("scripts/_runs.py")
    (tmp_path / "args.yaml").write_text(yaml.safe_dump({"lr": 0.001, "mh_kinetic_v": "normalised"}))
    assert runs.stale_args(str(tmp_path), {"lr": 0.001, "mh_kinetic_v": "normalised", "added_later": 3}) == {}
    assert runs.stale_args(str(tmp_path), {"lr": 0.001, "mh_kinetic_v": "gradient"}) == {"mh_kinetic_v": "normalised"}
