"""The paper's diagnostics on tiny real inputs: trajectory shift (l2, cosine, norms per layer) equals an independent
recomputation of Definition 5.1, is exactly 0 (cosine 1) between k and k, and not between k and k' > k."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from atcd.attacks import AttackConfig
from atcd.diagnostics import trajectory_shift


def _reference_gradients(model, batches, k, eps, alpha, seed, lam=2.0, rho=1.0):
    """Definition 5.1 in plain torch: per weight tensor, the CE gradient (summed, averaged over the data) at the end
    of a k-step J_cd trajectory (logit gradient lam(p - y) - rho(p_ref - y), p_ref the output at the start) from a
    uniform start drawn per minibatch from a generator seeded `seed`."""
    gen = torch.Generator().manual_seed(seed)
    weights = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
    sums, n = [torch.zeros_like(p, dtype=torch.float64) for _, p in weights], 0
    for x, y in batches:
        d = (x + ((2 * torch.rand(x.shape, generator=gen) - 1) * eps).clamp(-eps, eps)).clamp(0, 1) - x
        with torch.no_grad():
            p_ref = F.softmax(model(x + d), 1)
        y1 = F.one_hot(y, 10).float()
        for _ in range(k):
            di = d.detach().requires_grad_(True)
            z = model(x + di)
            (g,) = torch.autograd.grad(z, di, grad_outputs=lam * (F.softmax(z, 1).detach() - y1) - rho * (p_ref - y1))
            d = (x + (d + alpha * g.sign()).clamp(-eps, eps)).clamp(0, 1) - x
        grads = torch.autograd.grad(F.cross_entropy(model(x + d), y, reduction="sum"), [p for _, p in weights])
        sums = [s + g.double() for s, g in zip(sums, grads)]
        n += len(y)
    return {name: s.flatten() / n for (name, _), s in zip(weights, sums)}


def test_trajectory_shift_matches_its_recomputation(standard_model, mnist_test_batch):
    """Per layer, the l2 distance, cosine and norms between the k=2 and k'=4 averaged gradients equal an independent
    recomputation of Definition 5.1; k vs k has l2 0 and cosine 1 around the recomputed (nonzero) k=2 gradient."""
    x, y = mnist_test_batch
    batches = [(x[:16], y[:16]), (x[50:66], y[50:66])]
    cfg = AttackConfig(eps=0.3, step_size=0.1)
    standard_model.eval()
    ref = {k: _reference_gradients(standard_model, batches, k, 0.3, 0.1, cfg.seed) for k in (2, 4)}
    same = trajectory_shift(standard_model, batches, 2, 2, cfg)
    diff = trajectory_shift(standard_model, batches, 2, 4, cfg)
    assert [r["layer"] for r in diff] == list(ref[2]) and len(diff) == 7  # 4 conv + 3 linear weight tensors
    for r, s in zip(diff, same):
        a, b = ref[2][r["layer"]], ref[4][r["layer"]]
        assert r["norm_k"] == pytest.approx(float(a.norm()), rel=1e-4)
        assert r["norm_k2"] == pytest.approx(float(b.norm()), rel=1e-4)
        assert r["l2"] == pytest.approx(float((a - b).norm()), rel=1e-3)
        assert r["cosine"] == pytest.approx(float(F.cosine_similarity(a, b, dim=0)), abs=1e-5)
        assert r["l2"] > 0.05 * r["norm_k"] and r["cosine"] < 0.999  # k' really moved the examples on
        assert s["l2"] == 0.0 and abs(s["cosine"] - 1.0) < 1e-9 and s["norm_k"] == pytest.approx(r["norm_k"])
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
