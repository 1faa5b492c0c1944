"""The attack suite on real MNIST digits and a normally trained small CNN: every attack stays in the eps-ball and
[0,1]; eps=0 gives clean accuracy; accuracy falls with eps and with iterations; AutoAttack is the package's own."""
import itertools

import pytest
import torch

from atcd.attacks import AttackConfig, get_attack, list_attacks
from atcd.attacks.hmc import hmc_trajectory
from atcd.engine import evaluate_attacks

AA_BASED = {"autoattack", "apgd-ce", "apgd-t", "fab-t", "square"}


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


AA_NAMES = ("autoattack", "apgd-ce", "apgd-t", "fab-t", "square")  # the official package: minutes on CPU


def _cfg(eps, steps=10, **kw):
    return AttackConfig(eps=eps, step_size=2.5 * eps / steps if eps else 0.0, steps=steps, **kw)


@pytest.mark.parametrize("name", [pytest.param(a, marks=pytest.mark.slow) if a in AA_NAMES else a
                                  for a in list_attacks()])
def test_attack_stays_in_ball_and_box_and_eps0_is_clean(name, standard_model, mnist_test_batch):
    x, y = mnist_test_batch[0][::10], mnist_test_batch[1][::10]  # 10 images, one per class
    out = get_attack(name)(standard_model, x, y, _cfg(0.3))  # large eps: Square/FAB finish in few queries
    xa = out[0] if isinstance(out, tuple) else out
    assert xa.shape == x.shape and torch.isfinite(standard_model(xa)).all()
    assert (xa - x).abs().max() <= 0.3 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    if name == "clean":
        return
    assert _acc(standard_model, xa, y) <= _acc(standard_model, x, y)
    if name not in AA_BASED:  # the AutoAttack-based ones at eps=0: see the next test
        out0 = get_attack(name)(standard_model, x, y, _cfg(0.0))
        x0 = out0[0] if isinstance(out0, tuple) else out0
        assert torch.equal(x0, x)


@pytest.mark.slow  # many attack runs on 100 images
def test_autoattack_at_eps0_equals_clean(standard_model, mnist_test_batch):
    x, y = mnist_test_batch[0][::5], mnist_test_batch[1][::5]
    xa, _ = get_attack("apgd-ce")(standard_model, x, y, _cfg(0.0))
    assert _acc(standard_model, xa, y) == _acc(standard_model, x, y)


@pytest.mark.slow  # many attack runs on 100 images
@pytest.mark.parametrize("name", ["pgd", "cw", "mifgsm", "hmc"])
def test_accuracy_non_increasing_in_eps(name, standard_model, mnist_test_batch):
    x, y = mnist_test_batch
    accs = [_acc(standard_model, _x(get_attack(name)(standard_model, x, y, _cfg(e, steps=20))), y)
            for e in (0.0, 0.02, 0.05, 0.1, 0.2)]
    assert all(a >= b for a, b in itertools.pairwise(accs)), accs
    assert accs[0] > 0.9 and accs[-1] < 0.5, accs  # a normally trained model loses most of its accuracy


def _x(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.slow  # many attack runs on 100 images
def test_more_iterations_never_help_the_model(standard_model, mnist_test_batch):
    x, y = mnist_test_batch
    a = [_acc(standard_model, get_attack("pgd")(standard_model, x, y, AttackConfig(eps=0.05, step_size=0.01,
                                                                                    steps=s)), y) for s in (5, 20, 40)]
    assert a[0] >= a[1] >= a[2], a


@pytest.mark.slow  # many attack runs on 100 images
def test_pgd_restarts_and_margin_loss_are_at_least_as_strong(standard_model, mnist_test_batch):
    x, y = mnist_test_batch
    one = _acc(standard_model, get_attack("pgd")(standard_model, x, y, _cfg(0.05)), y)
    three = _acc(standard_model, get_attack("pgd")(standard_model, x, y, _cfg(0.05, restarts=3)), y)
    assert three <= one
    for sched in ("cosine", "step"):
        xa = get_attack("pgd")(standard_model, x, y, _cfg(0.05, step_schedule=sched))
        assert (xa - x).abs().max() <= 0.05 + 1e-6


def test_hmc_returns_the_whole_trajectory_with_mh(standard_model, mnist_test_batch):
    x, y = mnist_test_batch[0][:20], mnist_test_batch[1][:20]
    states, stats = hmc_trajectory(standard_model, x, y, eps=0.1, alpha=0.02, steps=15, temperature=0.05)
    assert len(states) == 16
    for s in states:
        assert (s - x).abs().max() <= 0.1 + 1e-6 and s.min() >= 0 and s.max() <= 1
    assert 0.0 < stats["acceptance"] < 1.0  # a cold chain rejects some proposals ...
    moved = [(a != b).flatten(1).any(1) for a, b in itertools.pairwise(states)]
    assert not torch.stack(moved).all()  # ... and a rejected example stays where it was
    fooled = stats["fooled_at"] >= 0
    with torch.no_grad():
        assert (standard_model(stats["best"][fooled]).argmax(1) != y[fooled]).all()


def test_autoattack_is_the_package_called_directly(standard_model, mnist_test_batch):
    from pyautoattack import AutoAttack
    x, y = mnist_test_batch[0][::10], mnist_test_batch[1][::10]  # 10 images, one per class
    ours, _ = get_attack("autoattack")(standard_model, x, y, _cfg(0.25))
    direct = AutoAttack(standard_model, eps=0.25, version="standard", device="cpu", seed=0)
    theirs = direct.run_standard_evaluation(x, y, batch_size=250)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    assert torch.equal(ours, theirs)


def test_worst_case_is_per_example_and_over_attacks(standard_model, mnist_test_batch):
    x, y = mnist_test_batch
    loader = [(x[:50], y[:50]), (x[50:], y[50:])]
    res = evaluate_attacks(standard_model, loader, ["clean", "fgsm", "pgd"], _cfg(0.05))
    worst = res["worst_case"]["top1"]
    assert worst <= min(r["top1"] for k, r in res.items() if k != "worst_case")
    assert torch.equal(res["worst_case"]["_ok"], res["clean"]["_ok"] & res["fgsm"]["_ok"] & res["pgd"]["_ok"])
    assert res["clean"]["n"] == 100
