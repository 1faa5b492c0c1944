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
    # eps 0.3 breaks a normally trained CNN: every attack (FGSM, APGD-T, FAB-T, Square included) must take at least
    # half of its clean accuracy (an attack returning x unchanged keeps all of it); measured: 0 % for the white-box
    # attacks
    assert _acc(standard_model, x, y) >= 0.9
    assert _acc(standard_model, xa, y) <= 0.5 * _acc(standard_model, x, y), name
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


def test_pgd_restarts_are_strictly_stronger_when_the_start_matters(standard_model, mnist_test_batch):
    """One weak step (alpha 0.02 in an eps 0.15 ball): the random start decides, so 3 restarts (fresh starts for the
    examples still standing) fool strictly more images than 1, and every image 1 restart fools stays fooled.
    Measured: 95 % -> 90 %."""
    x, y = mnist_test_batch

    def fooled(restarts):
        xa = get_attack("pgd")(standard_model, x, y, AttackConfig(eps=0.15, step_size=0.02, steps=1,
                                                                  restarts=restarts))
        assert (xa - x).abs().max() <= 0.15 + 1e-6
        with torch.no_grad():
            return standard_model(xa).argmax(1) != y
    one, three = fooled(1), fooled(3)
    assert int(three.sum()) >= int(one.sum()) + 3, (int(one.sum()), int(three.sum()))
    assert bool((three | ~one).all())


def _one_step_pgd_reference(model, x, y, eps, alpha, seed, loss_fn):
    """PGD-1 with random start and track_best, in plain torch: the start if it already fools, else the step's end
    if it fools or has the higher loss, else the start."""
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    d0 = (x + ((2 * u - 1) * eps).clamp(-eps, eps)).clamp(0, 1) - x
    di = d0.detach().requires_grad_(True)
    z0 = model(x + di)
    (g,) = torch.autograd.grad(loss_fn(z0, y).sum(), di)
    d1 = (x + (d0 + alpha * g.sign()).clamp(-eps, eps)).clamp(0, 1) - x
    with torch.no_grad():
        z1 = model(x + d1)
    f0, f1 = z0.argmax(1) != y, z1.argmax(1) != y
    take1 = ~f0 & (f1 | (loss_fn(z1, y) > loss_fn(z0, y).detach()))
    return x + torch.where(take1.view(-1, 1, 1, 1), d1, d0)


@pytest.mark.parametrize("loss", ["margin", "ce"])
def test_pgd_loss_is_the_one_asked_for(loss, standard_model, mnist_test_batch):
    """--attack-loss margin ascends the CW margin max_{j != y} z_j - z_y, ce the cross-entropy: each matches a
    plain-torch PGD-1 on its own loss (and the two results differ)."""
    x, y = mnist_test_batch[0][:50], mnist_test_batch[1][:50]

    def margin(z, yy):
        other = z.masked_fill(torch.nn.functional.one_hot(yy, 10).bool(), float("-inf")).max(1).values
        return other - z.gather(1, yy[:, None]).squeeze(1)
    losses = {"margin": margin, "ce": lambda z, yy: torch.nn.functional.cross_entropy(z, yy, reduction="none")}
    got = get_attack("pgd")(standard_model, x, y, AttackConfig(eps=0.2, step_size=0.1, steps=1, loss=loss))
    want = _one_step_pgd_reference(standard_model, x, y, 0.2, 0.1, 0, losses[loss])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    other = _one_step_pgd_reference(standard_model, x, y, 0.2, 0.1, 0, losses["ce" if loss == "margin" else "margin"])
    assert not torch.equal(got, other)


@pytest.mark.parametrize("sched,factors", [("constant", [1, 1, 1, 1]),
                                           ("cosine", [1, 0.8535534, 0.5, 0.1464466]),  # (1 + cos(pi k / 4)) / 2
                                           ("step", [1, 1, 0.5, 0.25])])               # halved at 50 % and 75 %
def test_pgd_step_schedule_sets_each_iterations_step(sched, factors, standard_model, mnist_test_batch):
    """The largest move of any pixel in PGD iteration k is the schedule's step size at k (pixels that are not at
    the ball's or box's edge move by exactly that much)."""
    from conftest import Recorder
    x, y = mnist_test_batch[0][:20], mnist_test_batch[1][:20]
    rec = Recorder(standard_model)
    get_attack("pgd")(rec, x, y, AttackConfig(eps=0.3, step_size=0.04, steps=4, step_schedule=sched))
    inputs = [xin for xin, _, _ in rec.calls[:5]]  # the 4 iterations' inputs, then the last iterate's forward
    moves = [float((b - a).abs().max()) for a, b in itertools.pairwise(inputs)]
    assert moves == pytest.approx([0.04 * f for f in factors], abs=1e-6)


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


@pytest.mark.slow  # the standard AutoAttack twice on 5 images (Square at 100 queries: 5000 took 10 min on CPU)
def test_autoattack_is_the_package_called_directly(standard_model, mnist_test_batch, tmp_path, caplog):
    """The standard evaluation at a small eps, where images survive APGD-CE, APGD-T and FAB-T so every sub-attack
    runs on some: our run (one sub-attack per call on the images still robust, state kept between them) against
    one call of the package, per sub-attack (robust accuracy after it, from the package's own log) and per image
    (the verdict, and the adversarial image where one was found)."""
    import json
    import logging
    import re

    from pyautoattack import AutoAttack

    from atcd.attacks.autoattack import run_autoattack
    x, y = mnist_test_batch[0][::20], mnist_test_batch[1][::20]  # 5 images, digits 0, 2, 4, 6, 8
    eps = 0.1
    ours, info = run_autoattack(standard_model, x, y, eps, state_dir=str(tmp_path), square_queries=100)
    (state_file,) = tmp_path.glob("aa-*.json")
    state = json.loads(state_file.read_text())
    with caplog.at_level(logging.DEBUG, logger="auto-attack"):
        direct = AutoAttack(standard_model, eps=eps, version="standard", device="cpu", seed=0)
        direct.square.n_queries = 100
        theirs, y_adv = direct.run_standard_evaluation(x, y, batch_size=250)
    after = {m.group(1).lower(): float(m.group(2)) / 100 for m in
             (re.match(r"robust accuracy after (\S+): ([\d.]+)%", r.getMessage()) for r in caplog.records) if m}
    assert list(after) == ["apgd-ce", "apgd-t", "fab-t", "square"] == state["done"]  # every sub-attack ran ...
    assert after["fab-t"] > 0  # ... on images still standing (Square too)
    for attack, acc in after.items():
        assert state["accuracy"][attack] == pytest.approx(acc, abs=1e-6), attack
    correct = info["correct"]
    assert torch.equal(correct, y_adv == y)  # per image, the same verdict
    assert torch.equal(ours[~correct], theirs[~correct])  # and the same adversarial example where one was found
    assert 0 < int(correct.sum()) < len(y)
    with torch.no_grad():
        assert torch.equal(standard_model(ours[~correct]).argmax(1) != y[~correct], torch.ones_like(y[~correct]).bool())


def test_worst_case_is_per_example_and_over_attacks(standard_model, mnist_test_batch):
    x, y = mnist_test_batch
    loader = [(x[:50], y[:50]), (x[50:], y[50:])]
    res = evaluate_attacks(standard_model, loader, ["clean", "fgsm", "pgd"], _cfg(0.05))
    worst = res["worst_case"]["top1"]
    assert worst <= min(r["top1"] for k, r in res.items() if k != "worst_case")
    assert torch.equal(res["worst_case"]["_ok"], res["clean"]["_ok"] & res["fgsm"]["_ok"] & res["pgd"]["_ok"])
    assert res["clean"]["n"] == 100
