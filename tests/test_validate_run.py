"""validate.py --run DIR evaluates a training run as trained (its args.yaml), the same as the long command."""
import json

import pytest
from conftest import run_main

ATTACKS = ("--attacks", "clean,pgd", "--attack-steps", "3", "--num-samples", "40", "--sanity-samples", "0",
           "--no-progress")


def _result(r):
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])


@pytest.mark.slow
def test_run_gives_the_numbers_of_the_long_command(tmp_path):
    r = run_main("train_atcd.py", "--method", "standard", "--opt", "adam", "--lr", "1e-3", "--epochs", "1",
                 "--eval-samples", "20", "--eval-attack-steps", "1", "--no-progress", "--output", str(tmp_path),
                 "--experiment", "run")
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    long = _result(run_main("validate.py", "--model", "smallcnn_mnist", "--checkpoint",
                            str(run / "model.safetensors"), "--dataset", "mnist-mini", "--eps", "0.3", *ATTACKS))
    short = _result(run_main("validate.py", "--run", str(run), *ATTACKS))
    assert short == long and set(long) == {"clean", "pgd", "worst_case"}, (short, long)
    assert long["clean"] > 50 > long["pgd"], long  # a trained, non-robust model: real numbers
    weaker = _result(run_main("validate.py", "--run", str(run), "--eps", "0.05", *ATTACKS))  # a flag overrides
    assert weaker["clean"] == long["clean"] and weaker["pgd"] > long["pgd"], (weaker, long)


def test_run_without_args_yaml_is_one_line(tmp_path):
    r = run_main("validate.py", "--run", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (f"error: --run {tmp_path}: no {tmp_path}/args.yaml; give the folder a "
                                        f"train_atcd.py run wrote (--output/--experiment)")
