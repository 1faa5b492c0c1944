"""The README demo, end to end: ATCD vs standard training on real MNIST digits, judged by AutoAttack."""
import json

import pytest
from conftest import run_script


@pytest.mark.slow
def test_atcd_demo_is_robust_and_standard_is_not(tmp_path):
    res = {}
    for method in ("atcd", "standard"):
        r = run_script("train_atcd.py", "-c", f"recipes/mnist_{method}.yaml", "--output", str(tmp_path),
                       "--experiment", method, "--no-progress")
        assert r.returncode == 0, r.stderr[-3000:]
        out = tmp_path / method / "results.json"
        r = run_script("validate.py", "--model", "smallcnn_mnist", "--checkpoint",
                       str(tmp_path / method / "model.safetensors"), "--dataset", "mnist-mini", "--eps", "0.3",
                       "--attacks", "clean,pgd,autoattack", "--num-samples", "200", "--no-progress",
                       "--results-file", str(out))
        assert r.returncode == 0, r.stderr[-3000:]
        res[method] = json.loads(out.read_text())
    atcd, std = res["atcd"]["results"], res["standard"]["results"]
    assert res["atcd"]["num_samples"] == 200 and res["atcd"]["eps"] == 0.3
    assert atcd["clean"]["top1"] >= 97.0, atcd
    assert atcd["autoattack"]["top1"] >= 35.0, atcd
    assert std["autoattack"]["top1"] <= 5.0, std
    for r in (atcd, std):  # AutoAttack is the strongest attack run and never beats clean accuracy
        assert r["autoattack"]["top1"] <= r["pgd"]["top1"] + 2.0 <= r["clean"]["top1"] + 2.0
