"""Which precision a run really uses: the launcher's / `accelerate config`'s value unless --mixed-precision is given,
recorded in args.yaml and the RESULT line; fp16 is refused on a cpu, where Accelerate turns it off."""
import json

import pytest
import yaml
from conftest import run_main, run_script

TINY = ("--method", "standard", "--epochs", "1", "--train-samples-per-epoch", "128", "--eval-samples", "20",
        "--eval-attack-steps", "1", "--no-progress")


def _run(tmp_path, monkeypatch, env_precision, *extra):
    if env_precision is not None:  # what `accelerate launch --mixed_precision X` puts in the environment
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env_precision)
    r = run_main("train_atcd.py", *TINY, *extra, "--output", str(tmp_path), "--experiment", "x")
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])
    return yaml.safe_load((tmp_path / "x" / "args.yaml").read_text())["mixed_precision"], result["mixed_precision"]


@pytest.mark.parametrize("env_precision,flag,want", [
    (None, (), "no"),                                   # nothing set anywhere
    ("bf16", (), "bf16"),                               # the launcher's value wins over the script's default
    ("bf16", ("--mixed-precision", "no"), "no"),        # an explicit flag wins over the launcher
    (None, ("--mixed-precision", "bf16"), "bf16"),
])
def test_precision_resolution(tmp_path, monkeypatch, env_precision, flag, want):
    assert _run(tmp_path, monkeypatch, env_precision, *flag) == (want, want)


@pytest.mark.parametrize("method", ["standard", "atcd"])
def test_fp16_is_refused_on_cpu(tmp_path, monkeypatch, method):
    """Accelerate turns fp16 off on a cpu (no autocast, no GradScaler): the run would be fp32 while recording fp16.
    (fp16 on a GPU is allowed for every method: tests/test_fp16_training.py.)"""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    r = run_main("train_atcd.py", *TINY, "--method", method, "--output", str(tmp_path), "--experiment", "x")
    assert r.returncode == 2 and "fp16 does not run on cpu" in r.stderr.splitlines()[-1]
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_accelerate_launch_mixed_precision_reaches_the_run(tmp_path):
    r = run_script("-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                   "--mixed_precision", "bf16", "--dynamo_backend", "no", "train_atcd.py", *TINY,
                   "--output", str(tmp_path), "--experiment", "x", env={"ACCELERATE_USE_CPU": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])["mixed_precision"] == "bf16"
    assert yaml.safe_load((tmp_path / "x" / "args.yaml").read_text())["mixed_precision"] == "bf16"
