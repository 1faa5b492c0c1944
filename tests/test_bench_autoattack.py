"""scripts/bench_autoattack.py times validate's AutoAttack against the package called directly on the same images,
and both compute the same thing (same seed for the one chunk): equal robust accuracy, equal per-example results."""
import json

import pytest
from conftest import run_main

from atcd.checkpoint import save_weights


@pytest.mark.slow  # AutoAttack (APGD-CE, APGD-T) three times on 10 images
def test_bench_autoattack_runs_and_both_paths_agree(standard_model, tmp_path):
    ckpt = str(tmp_path / "model.safetensors")
    save_weights(standard_model.model, ckpt)
    r = run_main("scripts/bench_autoattack.py", "--checkpoint", ckpt, "--num-samples", "10", "--eps", "0.2",
                 "--aa-version", "custom", "--aa-attacks", "apgd-ce,apgd-t", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["same_accuracy"] and result["same_examples"]
    assert 0.0 < result["robust_acc"] < 100.0  # APGD fools some of the 10 digits, not all: a real comparison
    full = json.loads((tmp_path / "out" / "bench_autoattack.json").read_text())
    assert full["num_samples"] == 10 and set(full["summary"]) == {"direct", "validate", "validate_nosanity"}
    for name, s in full["summary"].items():
        assert s["seconds"] > 0 and s["robust_acc"] == result["robust_acc"], name
    assert result["ratio"] == round(full["summary"]["validate"]["seconds"] / full["summary"]["direct"]["seconds"], 3)
    assert "--sanity-samples" not in full["validate_argv"]  # the default validate run keeps the probe
    assert "| direct |" in (tmp_path / "out" / "bench_autoattack.md").read_text()


def test_bench_autoattack_refuses_a_missing_checkpoint(tmp_path):
    r = run_main("scripts/bench_autoattack.py", "--checkpoint", str(tmp_path / "none.safetensors"))
    assert r.returncode == 2 and r.stderr.startswith("error:")
