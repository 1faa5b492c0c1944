"""The paper's diagnostics on tiny real inputs: trajectory shift between k and k is exactly 0 (cosine 1), and
differs from 0 between k and k' > k."""

import itertools

import pytest

from atcd.attacks import AttackConfig
from atcd.diagnostics import trajectory_shift


@pytest.mark.slow  # k=10 trajectories over 100 images
def test_trajectory_shift_k_vs_k_is_zero_and_k_vs_k2_is_not(standard_model, mnist_test_batch):
    x, y = mnist_test_batch
    batches = [(x[:50], y[:50]), (x[50:], y[50:])]
    cfg = AttackConfig(eps=0.3, step_size=0.1)
    same = trajectory_shift(standard_model, batches, 2, 2, cfg)
    assert len(same) == 7  # 4 conv + 3 linear weight tensors of the small CNN
    for r in same:
        assert r["l2"] == 0.0 and abs(r["cosine"] - 1.0) < 1e-9, r
    diff = trajectory_shift(standard_model, batches, 2, 10, cfg)
    assert all(r["l2"] > 0 for r in diff) and all(-1 <= r["cosine"] < 1 for r in diff)
    assert not standard_model.training


@pytest.mark.slow  # a subprocess, as a user runs it
def test_trajectory_shift_script_writes_csv_and_plot(tmp_path, standard_model):
    from conftest import run_script
    from safetensors.torch import save_file
    ck = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in standard_model.model.state_dict().items()}, str(ck))
    r = run_script("scripts/trajectory_shift.py", "--checkpoints", str(ck), "--num-samples", "64", "--k", "1",
                   "--k2", "3", "--out", str(tmp_path / "ts"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ts" / "trajectory_shift.png").stat().st_size > 0
    rows = (tmp_path / "ts" / "trajectory_shift.csv").read_text().splitlines()
    assert rows[0].startswith("checkpoint,layer,l2,cosine") and len(rows) == 8
    assert all(-1.0 <= float(r.split(",")[3]) <= 1.0 for r in rows[1:])


def test_sweeps_are_non_increasing_and_written(standard_model, mnist_test_batch, tmp_path):
    from atcd.attacks import AttackConfig
    from atcd.sweep import read_sweep, run_sweep, write_sweep
    x, y = mnist_test_batch
    loader = [(x[:50], y[:50]), (x[50:], y[50:])]
    cfg = AttackConfig(eps=0.2, step_size=0.05, steps=10)
    by_eps = run_sweep(standard_model, loader, cfg, "pgd", "eps", [0.0, 0.05, 0.1, 0.2])
    by_steps = run_sweep(standard_model, loader, cfg, "pgd", "steps", [5, 10, 20])
    for rows in (by_eps, by_steps):
        accs = [r["top1"] for r in rows]
        assert all(a >= b for a, b in itertools.pairwise(accs)), accs
    assert by_eps[0]["top1"] > 90 and by_eps[-1]["top1"] < by_eps[0]["top1"] - 20
    csv_path, _ = write_sweep(by_eps, str(tmp_path), "eps")
    assert [r["top1"] for r in read_sweep(csv_path)] == [r["top1"] for r in by_eps]
    assert (tmp_path / "sweep_eps.png").stat().st_size > 0
