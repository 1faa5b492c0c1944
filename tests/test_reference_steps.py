"""Each training method's step against a plain-torch reference written from its paper's formula (never calling the
method's code): a tiny conv net on 16 real digits, SGD without momentum (w <- w - lr * dL/dw, written out here), and
the method's random draws replayed from its generator (seeded with the run's --seed). The inputs the network trained
on and the weights after the step must match to float tolerance.

Names carry the method (`pytest -k trades`), so breaking a method's defining line fails a test its name selects.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import Recorder
from torch import nn

from atcd.config import TrainConfig
from atcd.methods import StepContext, create_method

LR = 0.5  # large enough that the weights after one update change the next replay's attack visibly
B = 16
TOL = {"rtol": 1e-5, "atol": 1e-6}


class Tiny(nn.Module):
    """Conv (the stem YOPO finds) -> ReLU -> linear head: 28x28 -> 4x8x8 -> 10 classes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _net(seed=0):
    torch.manual_seed(seed)
    return Tiny()


@pytest.fixture
def batches(mnist_test_batch):
    x, y = mnist_test_batch
    return (x[:B], y[:B]), (x[50:50 + B], y[50:50 + B])


def _run(cfg, net, minibatches):
    """The method's steps on a copy of `net`; returns (method, recorder of every network call, the copy)."""
    rec = Recorder(copy.deepcopy(net))
    ctx = StepContext(model=rec, attack_model=rec, optimizer=torch.optim.SGD(rec.parameters(), lr=LR),
                      backward=lambda loss: loss.backward(), after_update=lambda: None)
    method = create_method(cfg.method, cfg)
    for x, y in minibatches:
        method.set_progress(1e9)  # past any --eps-warmup-epochs (ATCD has a default one): the full eps
        method.step(ctx, x, y)
    return method, rec, rec.inner


def _trained_inputs(rec):
    """Inputs of the train-mode calls (the weight passes)."""
    return [xin for xin, training, _ in rec.calls if training]


# ---- the formulas, in plain torch ---------------------------------------------------------------------------------

def proj(x, d, eps):
    """Onto the L-inf eps-ball and so that x + d is in [0,1]."""
    return (x + d.clamp(-eps, eps)).clamp(0, 1) - x


def uniform_start(x, eps, gen):
    return proj(x, (2 * torch.rand(x.shape, generator=gen) - 1) * eps, eps)


def input_gradient(net, x, d, loss_of_logits):
    d = d.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of_logits(net(x + d)), d)
    return g


def sgd(net, loss):
    """w <- w - lr * dloss/dw."""
    grads = torch.autograd.grad(loss, list(net.parameters()))
    with torch.no_grad():
        for p, g in zip(net.parameters(), grads):
            p -= LR * g


def ce_sum(y):
    return lambda z: F.cross_entropy(z, y, reduction="sum")


def _assert_same(rec, ref_inputs, got_net, ref_net):
    got = _trained_inputs(rec)
    assert len(got) == len(ref_inputs)
    for a, b in zip(got, ref_inputs):
        torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(got_net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(a, b, **TOL)


# ---- PGD-AT (Madry et al.) ------------------------------------------------------------------------------------------

def test_pgd_step_trains_on_the_pgd_example_of_the_reference(batches):
    """delta_0 ~ U(-eps, eps) (projected); r times delta <- Proj(delta + alpha sign(dCE/dx)); one SGD step on
    CE(f(x + delta_r), y)."""
    (x, y), _ = batches
    eps, alpha, r = 0.3, 0.1, 3
    cfg = TrainConfig.of(method="pgd", eps=eps, attack_step=alpha, attack_steps=r, seed=5)
    net = _net()
    _, rec, got = _run(cfg, net, [(x, y)])
    ref = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(5)
    d = uniform_start(x, eps, gen)
    for _ in range(r):
        d = proj(x, d + alpha * input_gradient(ref, x, d, ce_sum(y)).sign(), eps)
    assert (d.abs() > 0.2).float().mean() > 0.3  # the example is far from x: training on x would not match
    sgd(ref, F.cross_entropy(ref(x + d), y))
    _assert_same(rec, [x + d], got, ref)


# ---- TRADES (Zhang et al.) ------------------------------------------------------------------------------------------

def _trades_reference(net, x, y, eps, alpha, r, beta, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        p_nat = F.softmax(net(x), 1)
    d = proj(x, 0.001 * torch.randn(x.shape, generator=gen), eps)

    def kl(z):  # KL(p(x) || p(x')) summed over the batch: the attack's objective
        return (p_nat * (p_nat.log() - F.log_softmax(z, 1))).sum()
    for _ in range(r):
        d = proj(x, d + alpha * input_gradient(net, x, d, kl).sign(), eps)
    ref = copy.deepcopy(net)
    z_nat, z_adv = ref(x), ref(x + d)
    q = F.softmax(z_nat, 1)
    robust = (q * (F.log_softmax(z_nat, 1) - F.log_softmax(z_adv, 1))).sum(1).mean()
    sgd(ref, F.cross_entropy(z_nat, y) + beta * robust)
    return d, ref


@pytest.mark.parametrize("beta", [6.0, 1.0, 0.0])
def test_trades_step_is_ce_plus_beta_kl_of_the_reference(beta, batches):
    """Attack: r sign steps on KL(p(x) || p(x + delta)) from 0.001 N(0, 1) noise; update: one SGD step on
    CE(f(x), y) + beta * KL(p(x) || p(x + delta)), both terms through the weights."""
    (x, y), _ = batches
    eps, alpha, r = 0.3, 0.1, 3
    cfg = TrainConfig.of(method="trades", eps=eps, attack_step=alpha, attack_steps=r, trades_beta=beta, seed=5)
    net = _net()
    _, rec, got = _run(cfg, net, [(x, y)])
    d, ref = _trades_reference(net, x, y, eps, alpha, r, beta, 5)
    assert (d.abs() > 0.2).float().mean() > 0.3
    # the network's calls: the natural forward of the attack, r attack passes, then the natural and adversarial batch
    inputs = [xin for xin, _, _ in rec.calls]
    assert len(inputs) == r + 3
    torch.testing.assert_close(inputs[-1], x + d, **TOL)
    assert torch.equal(inputs[-2], x)
    for a, b in zip(got.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, **TOL)


def test_trades_beta_changes_the_update(batches):
    """The robust term really reaches the weights: beta 6 and beta 0 give different updates, by more than the
    tolerance of the reference comparison."""
    (x, y), _ = batches
    w = {}
    for beta in (0.0, 6.0):
        cfg = TrainConfig.of(method="trades", eps=0.3, attack_step=0.1, attack_steps=3, trades_beta=beta, seed=5)
        _, _, got = _run(cfg, _net(), [(x, y)])
        w[beta] = torch.cat([p.detach().flatten() for p in got.parameters()])
    assert (w[6.0] - w[0.0]).abs().max() > 1e-3


# ---- Fast-AT (Wong et al.) ------------------------------------------------------------------------------------------

def test_fast_step_is_fgsm_from_a_random_start_with_alpha_1_25_eps(batches):
    """delta_0 ~ U(-eps, eps); delta = Proj(delta_0 + 1.25 eps sign(dCE/dx at x + delta_0)) (the default step);
    one SGD step on CE(f(x + delta), y)."""
    (x, y), _ = batches
    eps = 0.2
    cfg = TrainConfig.of(method="fast", eps=eps, seed=9)
    assert cfg.attack_step == pytest.approx(1.25 * eps)
    net = _net()
    _, rec, got = _run(cfg, net, [(x, y)])
    ref = copy.deepcopy(net)
    d0 = uniform_start(x, eps, torch.Generator().manual_seed(9))
    d = proj(x, d0 + 1.25 * eps * input_gradient(ref, x, d0, ce_sum(y)).sign(), eps)
    sgd(ref, F.cross_entropy(ref(x + d), y))
    attack_inputs = [xin for xin, training, _ in rec.calls if not training]
    assert len(attack_inputs) == 1
    torch.testing.assert_close(attack_inputs[0], x + d0, **TOL)  # the gradient is taken at the random start
    _assert_same(rec, [x + d], got, ref)


# ---- Free-AT (Shafahi et al.) ---------------------------------------------------------------------------------------

def test_free_two_minibatches_carry_delta_as_the_reference(batches):
    """delta starts at 0; per minibatch m replays, each one forward/backward at x + delta giving the weight step
    and dCE/dx, then delta <- Proj(delta + eps sign(dCE/dx)); delta carries to the next minibatch, projected
    onto its images' ball and box."""
    (x1, y1), (x2, y2) = batches
    eps, m = 0.3, 3
    cfg = TrainConfig.of(method="free", eps=eps, free_m=m)
    net = _net()
    method, rec, got = _run(cfg, net, [(x1, y1), (x2, y2)])
    ref = copy.deepcopy(net)
    d = torch.zeros_like(x1)
    want = []
    for x, y in ((x1, y1), (x2, y2)):
        d = proj(x, d, eps)
        for _ in range(m):
            want.append(x + d)
            di = d.detach().requires_grad_(True)
            loss = F.cross_entropy(ref(x + di), y)
            grads = torch.autograd.grad(loss, [di, *ref.parameters()])
            with torch.no_grad():
                for p, g in zip(ref.parameters(), grads[1:]):
                    p -= LR * g
            d = proj(x, d + eps * grads[0].sign(), eps)
    assert not torch.equal(want[m], x2 + torch.zeros_like(x2))  # the second minibatch starts from the carried delta
    _assert_same(rec, want, got, ref)
    torch.testing.assert_close(method.delta, d, **TOL)


# ---- YOPO (Zhang et al. 2019) ---------------------------------------------------------------------------------------

def test_yopo_step_is_m_full_passes_and_n_first_layer_steps_of_the_reference(batches):
    """eta ~ U(-eps, eps); m times: a full pass at x + eta adds dCE/dw / m to the update and gives the co-state
    p = dCE/d(stem output); n times eta <- Proj(eta + alpha sign(d/d eta [p . stem(x + eta)])); then one SGD step
    with the averaged gradient."""
    (x, y), _ = batches
    eps, alpha, m, n = 0.3, 0.05, 3, 2
    cfg = TrainConfig.of(method="yopo", eps=eps, attack_step=alpha, yopo_m=m, yopo_n=n, seed=2)
    net = _net()
    _, rec, got = _run(cfg, net, [(x, y)])
    ref = copy.deepcopy(net)
    eta = uniform_start(x, eps, torch.Generator().manual_seed(2))
    total = [torch.zeros_like(p) for p in ref.parameters()]
    full = []
    for _ in range(m):
        full.append(x + eta)
        s = ref.conv(x + eta)
        s_leaf = s.detach().requires_grad_(True)
        loss = F.cross_entropy(ref.fc(torch.relu(s_leaf).flatten(1)), y)
        gs, gfc_w, gfc_b = torch.autograd.grad(loss, [s_leaf, ref.fc.weight, ref.fc.bias])
        gconv_w, gconv_b = torch.autograd.grad(s, [ref.conv.weight, ref.conv.bias], grad_outputs=gs)
        for t, g in zip(total, (gconv_w, gconv_b, gfc_w, gfc_b)):
            t += g / m
        for _ in range(n):
            e = eta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad((ref.conv(x + e) * gs).sum(), e)
            eta = proj(x, eta + alpha * g.sign(), eps)
    with torch.no_grad():
        for p, g in zip(ref.parameters(), total):
            p -= LR * g
    assert (eta - full[-1] + x).abs().max() > 0  # the last first-layer steps moved eta after the last full pass
    _assert_same(rec, full, got, ref)


# ---- ATCD (the paper's Algorithm 1, spec Sec. 2) --------------------------------------------------------------------

def _atcd_reference(net, x, y, eps, alpha, T, K, lam, rho, tau, seed, q0="start"):
    """Returns (the inputs of the T weight passes, the net after T updates, accepted per replay)."""
    gen = torch.Generator().manual_seed(seed)
    ref = copy.deepcopy(net)
    y1 = F.one_hot(y, 10).float()
    d, v = uniform_start(x, eps, gen), torch.zeros_like(x)
    trained, accepted = [], []
    for _ in range(T):
        d_start, v_start = d, v
        with torch.no_grad():
            z0 = ref(x + d_start)
        p_ref, ce_start = F.softmax(z0, 1), F.cross_entropy(z0, y, reduction="none")
        for _ in range(K):
            di = d.detach().requires_grad_(True)
            z = ref(x + di)
            p = F.softmax(z, 1).detach()
            G = lam * (p - y1) - rho * (p_ref - y1)  # dJ_cd/dz, eq. (14)
            (g,) = torch.autograd.grad(z, di, grad_outputs=G)
            if q0 == "prev":
                p_ref = p
            v = g / g.abs().flatten(1).mean(1).view(-1, 1, 1, 1)  # mu = 0
            d = proj(x, d + alpha * v.sign(), eps)
        with torch.no_grad():
            ce_end = F.cross_entropy(ref(x + d), y, reduction="none")
        u = torch.rand(len(y), generator=gen)
        acc = u < torch.exp(((ce_end - ce_start) / tau).clamp(max=0))  # H = -CE/tau
        accepted.append(acc)
        d = torch.where(acc.view(-1, 1, 1, 1), d, d_start)
        v = torch.where(acc.view(-1, 1, 1, 1), v, v_start)
        trained.append(x + d)
        sgd(ref, F.cross_entropy(ref(x + d), y))
    return trained, ref, accepted


@pytest.mark.parametrize("lam,rho,tau,mixed", [(2.0, 1.0, 1.0, False), (1.0, 1.5, 0.3, True)])
def test_atcd_step_k2_rho_mh_matches_the_reference(lam, rho, tau, mixed, batches):
    """T=2 replays of a K=2 trajectory on J_cd (Q0 at the trajectory's start), warm-started, each followed by an
    M-H test recomputed from the CE at both ends and the generator's draws, then one SGD step on the accepted
    states. The paper's lambda 2, rho 1 raises the loss on every example (all accepted); rho > lambda descends at
    the start, and tau 0.3 then rejects most examples, so the reject path is exercised too."""
    (x, y), _ = batches
    eps, alpha, T, K = 0.3, 0.1, 2, 2
    cfg = TrainConfig.of(method="atcd", eps=eps, attack_step=alpha, atcd_T=T, atcd_K=K, cd_lambda=lam, cd_rho=rho,
                         mh_temperature=tau, seed=4)
    net = _net()
    method, rec, got = _run(cfg, net, [(x, y)])
    trained, ref, accepted = _atcd_reference(net, x, y, eps, alpha, T, K, lam, rho, tau, 4)
    acc = torch.stack(accepted)
    if mixed:
        assert 0 < int(acc.sum()) < acc.numel() // 2, acc  # measured: 3 and 4 of 16 accepted
    else:
        assert bool(acc.all())
    assert method.mh_counts().tolist() == [[int(a.sum()), B] for a in accepted]
    _assert_same(rec, trained, got, ref)


def test_atcd_rho_enters_the_trajectory(batches):
    """The same step with rho 0 (plain CE ascent) trains on other examples than with rho 1: the reference of one
    does not match the method run with the other."""
    (x, y), _ = batches
    net = _net()
    kw = {"method": "atcd", "eps": 0.3, "attack_step": 0.1, "atcd_T": 2, "atcd_K": 2, "cd_lambda": 2.0, "mh": False,
          "seed": 4}
    _, rec1, _ = _run(TrainConfig.of(cd_rho=1.0, **kw), net, [(x, y)])
    _, rec0, _ = _run(TrainConfig.of(cd_rho=0.0, **kw), net, [(x, y)])
    a, b = _trained_inputs(rec1)[-1], _trained_inputs(rec0)[-1]
    assert (a - b).abs().max() > 0.1


@pytest.mark.parametrize("q0", ["start", "prev"])
def test_atcd_q0_reading_matches_its_reference(q0, batches):
    """Q0 (p_ref) is the output at the trajectory's start (spec) or, with --atcd-q0 prev, at transition k-1; at K=2
    the two coincide, so K=3 here. Each reading matches its own reference and not the other's."""
    (x, y), _ = batches
    eps, alpha, T, K, lam, rho, tau = 0.3, 0.05, 2, 3, 2.0, 1.9, 1.0
    cfg = TrainConfig.of(method="atcd", eps=eps, attack_step=alpha, atcd_T=T, atcd_K=K, cd_lambda=lam, cd_rho=rho,
                         mh_temperature=tau, atcd_q0=q0, seed=4)
    net = _net()
    with torch.no_grad():
        net.fc.weight.mul_(20.0)  # a sharper softmax: p moves along the trajectory
    _, rec, got = _run(cfg, net, [(x, y)])
    trained, ref, _ = _atcd_reference(net, x, y, eps, alpha, T, K, lam, rho, tau, 4, q0=q0)
    _assert_same(rec, trained, got, ref)
    other, _, _ = _atcd_reference(net, x, y, eps, alpha, T, K, lam, rho, tau, 4,
                                  q0={"start": "prev", "prev": "start"}[q0])
    assert (other[0] - trained[0]).abs().max() > 0.05


# ---- default step rules ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,over,want", [
    ("pgd", {"attack_steps": 10}, 2.5 * 0.3 / 10),              # Madry et al.: 2.5 eps / r
    ("trades", {"attack_steps": 4}, 2.5 * 0.3 / 4),             # as PGD-AT's
    ("yopo", {"yopo_m": 5, "yopo_n": 3}, 2.5 * 0.3 / 15),       # m * n first-layer steps per minibatch
    ("fast", {}, 1.25 * 0.3),                                   # Wong et al.
    ("free", {"free_m": 4}, 0.3),                               # Shafahi et al.: an FGSM step of eps
    ("atcd", {"atcd_K": 3}, 0.3 / 6),                           # a K-step trajectory crosses half the ball
])
def test_default_attack_step_rule(method, over, want):
    cfg = TrainConfig.of(method=method, eps=0.3, **over)
    assert cfg.attack_step == pytest.approx(want)
    assert create_method(method, cfg).attack_step == pytest.approx(want)
