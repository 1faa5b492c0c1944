"""ATCD's Metropolis-Hastings test (issue 16): what H compares at the two ends of a trajectory, rejection, the
tau -> 0 limit, per-element acceptance, and the acceptance counts (per replay, per epoch, over ranks, resumable).
Real MNIST digits and the paper's small CNN throughout; the network's own outputs are recorded and the decisions
recomputed from them."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import Recorder, run_script

import atcd.methods.atcd as atcd_module
from atcd.attacks.core import random_init
from atcd.config import TrainConfig
from atcd.errors import CheckpointError, ConfigError
from atcd.methods import StepContext, create_method, get_method_class
from atcd.models import NormalizedModel


def _run(cfg, x, y, lr=0.01, method=None, seed=0):
    torch.manual_seed(seed)
    model = Recorder(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")))
    ctx = StepContext(model=model, attack_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                      backward=lambda loss: loss.backward(), after_update=lambda: None)
    method = method or create_method("atcd", cfg)
    method.step(ctx, x, y)
    return method, model


@pytest.fixture
def energies(monkeypatch):
    """Every (H_start, H_end) pair the M-H test compared."""
    seen = []
    real = atcd_module.mh_accept

    def spy(h0, h1, generator=None):
        seen.append((h0.clone(), h1.clone()))
        return real(h0, h1, generator)

    monkeypatch.setattr(atcd_module, "mh_accept", spy)
    return seen


def _ce(z, y):
    return F.cross_entropy(z, y, reduction="none")


@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_energy_difference_is_the_ce_difference_over_tau_at_every_replay(mu, mnist_test_batch, energies):
    """Default (kappa_H = 0): H_end - H_start = -(CE_end - CE_start)/tau at every replay, the first included, where
    CE_start is the network's output at the replay's real start (the state the previous replay trained on)."""
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    T, K, tau = 4, 2, 0.5
    cfg = TrainConfig.of(eps=0.3, attack_step=0.1, atcd_T=T, atcd_K=K, mh_temperature=tau, momentum_decay=mu)
    _, model = _run(cfg, x, y)
    calls = model.calls
    assert len(calls) == T * (K + 2) and len(energies) == T  # per replay: K attack passes, M-H forward, weight pass
    for t in range(T):
        start, end, trained = calls[t * (K + 2)], calls[t * (K + 2) + K], calls[t * (K + 2) + K + 1]
        assert not start[1] and not end[1] and trained[1]
        if t > 0:  # the warm start: where the previous replay's chain was accepted
            assert torch.equal(start[0], calls[t * (K + 2) - 1][0])
        h0, h1 = energies[t]
        want = -(_ce(end[2], y) - _ce(start[2], y)) / tau
        torch.testing.assert_close(h1 - h0, want, rtol=0, atol=1e-5)
        assert (end[0] != start[0]).any()  # the trajectory moved


def test_gradient_kinetic_term_is_measured_the_same_way_at_both_ends(mnist_test_batch, energies):
    """kappa_H > 0: K = mean|dJ_cd/dx| against the trajectory's Q0 at the start (the first step's gradient) and at
    the end (the M-H pass, then an input-gradient pass); recomputed here with the unchanged weights (lr 0)."""
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    T, K, tau, kappa = 2, 2, 0.5, 1e4  # mean|dJ/dx| of the untrained net is ~1e-4 per pixel
    cfg = TrainConfig.of(eps=0.3, attack_step=0.1, atcd_T=T, atcd_K=K, mh_temperature=tau, mh_kinetic=kappa)
    method, model = _run(cfg, x, y, lr=0.0)
    assert method.passes.as_dict()["input_grad_passes"] == T * K + T and method.passes.forward == 0
    net = model.inner.eval()
    for t in range(T):
        start, end = model.calls[t * (K + 2)], model.calls[t * (K + 2) + K]
        q0 = F.softmax(start[2], 1)
        k = []
        for xin in (start[0], end[0]):
            d = xin.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(atcd_module.jcd_loss(net(d), y, q0, 2.0, 1.0).sum(), d)
            k.append(g.abs().flatten(1).mean(1))
        h0, h1 = energies[t]
        want = -(_ce(end[2], y) - _ce(start[2], y)) / tau + kappa * (k[1] - k[0])
        torch.testing.assert_close(h1 - h0, want, rtol=1e-4, atol=1e-5)
        assert (kappa * (k[1] - k[0])).abs().max() > 1e-3  # the term is really there


def test_normalised_kinetic_reading_charges_the_first_move_a_fixed_kappa(mnist_test_batch, energies):
    """--mh-kinetic-v normalised (the first implementation, kept as an option): at mu = 0 mean|v| is 0 at the
    random start and 1 after any step, so replay 0's energy difference is the CE term plus exactly kappa_H, and a
    later replay from an accepted (moved) start has the CE term alone."""
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    T, K, tau, kappa = 2, 2, 0.5, 1.0
    cfg = TrainConfig.of(eps=0.3, attack_step=0.1, atcd_T=T, atcd_K=K, mh_temperature=tau, mh_kinetic=kappa,
                         mh_kinetic_v="normalised")
    method, model = _run(cfg, x, y)
    assert method.passes.forward == T
    moved = (model.calls[K + 1][0] != model.calls[0][0]).flatten(1).any(1)  # accepted on replay 0
    for t in range(T):
        start, end = model.calls[t * (K + 2)], model.calls[t * (K + 2) + K]
        h0, h1 = energies[t]
        ce_term = -(_ce(end[2], y) - _ce(start[2], y)) / tau
        extra = torch.full_like(ce_term, kappa) if t == 0 else torch.where(moved, 0.0, kappa)
        torch.testing.assert_close(h1 - h0, ce_term + extra, rtol=0, atol=1e-5)


@pytest.mark.parametrize("granularity", ["example", "element"])
def test_forced_rejection_keeps_the_start_state(granularity, mnist_test_batch, monkeypatch):
    """Uniform draws of 1 reject every proposal: every replay trains on the random start, and, the momentum being
    reset to the start's too, with fixed weights (lr 0) every replay repeats the first one's trajectory exactly."""
    monkeypatch.setattr(atcd_module, "_uniform", lambda shape, generator=None: torch.ones(shape))
    x, y = mnist_test_batch[0][:16], mnist_test_batch[1][:16]
    T, K = 3, 2
    cfg = TrainConfig.of(eps=0.3, attack_step=0.1, atcd_T=T, atcd_K=K, momentum_decay=1.0, seed=7,
                         mh_granularity=granularity)
    method, model = _run(cfg, x, y, lr=0.0)
    d0 = random_init(x, 0.3, torch.Generator().manual_seed(7))
    replays = [model.calls[t * (K + 2):(t + 1) * (K + 2)] for t in range(T)]
    for calls in replays:
        assert torch.equal(calls[-1][0], x + d0)  # the weight pass: the start state
        assert not torch.equal(calls[K][0], x + d0)  # the proposal did move
        for a, b in zip(calls, replays[0]):
            assert torch.equal(a[0], b[0])
    counts = method.mh_counts()
    assert counts[:, 0].tolist() == [0] * T
    assert counts[:, 1].tolist() == [x.numel() if granularity == "element" else len(y)] * T


def test_rejection_returns_delta_and_momentum_to_the_start(mnist_test_batch, monkeypatch):
    """The test itself, per entry: rejected examples get back (delta, v) of the start, accepted ones keep the end."""
    x, y = mnist_test_batch[0][:16], mnist_test_batch[1][:16]
    method = create_method("atcd", TrainConfig.of(eps=0.3, atcd_T=1))
    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")).eval()
    ctx = StepContext(model=model, attack_model=model, optimizer=None, backward=None, after_update=None)
    g = torch.Generator().manual_seed(1)
    d0, d1 = random_init(x, 0.3, g), random_init(x, 0.3, g)
    v0, v1 = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    keep = torch.arange(16) % 2 == 0
    monkeypatch.setattr(atcd_module, "_uniform", lambda shape, generator=None: torch.where(keep, 0.0, 1.0))
    with torch.no_grad():
        ce0 = _ce(model(x + d0), y)
    delta, v = method._metropolis(ctx, x, y, 0, (d0, v0, ce0, None, None), d1, v1)
    assert torch.equal(delta[keep], d1[keep]) and torch.equal(v[keep], v1[keep])
    assert torch.equal(delta[~keep], d0[~keep]) and torch.equal(v[~keep], v0[~keep])


def test_tau_to_zero_accepts_exactly_the_trajectories_that_did_not_lower_the_loss(mnist_test_batch, energies):
    """tau -> 0 makes the test greedy: a proposal passes iff CE_end >= CE_start (there is no other term at
    kappa_H = 0); the default ascent raises the loss almost everywhere, so nearly all pass."""
    x, y = mnist_test_batch[0][:64], mnist_test_batch[1][:64]
    T, K = 3, 2
    cfg = TrainConfig.of(eps=0.3, attack_step=0.1, atcd_T=T, atcd_K=K, mh_temperature=1e-9)
    method, model = _run(cfg, x, y)
    for t in range(T):
        start, end, trained = (model.calls[t * (K + 2) + i] for i in (0, K, K + 1))
        rose = _ce(end[2], y) >= _ce(start[2], y)
        got = (trained[0] == end[0]).flatten(1).all(1)
        assert torch.equal(got, rose), t
    counts = method.mh_counts()
    assert counts[:, 1].tolist() == [64] * T
    assert counts[:, 0].sum() / counts[:, 1].sum() > 0.8


def _epoch(cfg, batch, n=96, epochs=1, seed=0):
    """`epochs` real epochs of train_one_epoch over n real digits in minibatches of 32; the epoch results, the
    counts each epoch reduced, and the method."""
    from accelerate import Accelerator

    from atcd.engine import train_one_epoch
    torch.manual_seed(seed)
    images, labels = batch
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images[:n], labels[:n]), batch_size=32)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist"))
    acc = Accelerator(cpu=True)
    reduced = []
    real = acc.reduce
    acc.reduce = lambda t, reduction="sum": reduced.append(t.clone().cpu()) or real(t, reduction=reduction)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx = StepContext(model=model, attack_model=model, optimizer=opt, backward=lambda loss: loss.backward(),
                      after_update=lambda: None)
    method = create_method("atcd", cfg)
    outs = [train_one_epoch(method, ctx, loader, acc, e, progress=False) for e in range(epochs)]
    return outs, reduced, method


def test_epoch_acceptance_with_tau_to_zero_is_zero_when_trajectories_lower_the_loss(mnist_test_batch):
    """rho > lam: J_cd's gradient at a trajectory's start is (lam - rho)(p - y), so a one-step trajectory descends
    CE. At tau -> 0 the epoch accepts (almost) none of them, at tau = 1 a real fraction; summary keys per replay."""
    base = {"eps": 0.3, "attack_step": 0.1, "atcd_T": 2, "atcd_K": 1, "cd_lambda": 1.0, "cd_rho": 2.0,
            "eps_warmup_epochs": 0.0}  # the whole ball from the first step (ATCD ramps eps 0.3 by default)
    (cold,), _, _ = _epoch(TrainConfig.of(**base, mh_temperature=1e-9), mnist_test_batch)
    (warm,), _, _ = _epoch(TrainConfig.of(**base, mh_temperature=1.0), mnist_test_batch)
    assert cold["mh_accept"] <= 0.02 and cold["mh_accept_r0"] <= 0.02 and cold["mh_accept_r1"] <= 0.02
    assert warm["mh_accept"] >= 0.2
    assert "mh_accept_r2" not in warm


def test_counts_are_reset_every_epoch_and_only_kept_with_mh(mnist_test_batch):
    T, n = 2, 64
    outs, reduced, method = _epoch(TrainConfig.of(eps=0.3, attack_step=0.1, atcd_T=T, atcd_K=1), mnist_test_batch,
                                   n=n, epochs=2)
    assert len(reduced) == 2 + 2  # the loss sums and the M-H counts, once per epoch each
    counts = [r for r in reduced if r.shape == (T, 2)]
    assert [c[:, 1].tolist() for c in counts] == [[n] * T, [n] * T]  # each epoch its own n proposals per replay
    for out, c in zip(outs, counts):
        assert out["mh_accept"] == pytest.approx(float(c[:, 0].sum() / c[:, 1].sum()))
        assert out["mh_accept_r1"] == pytest.approx(float(c[1, 0] / c[1, 1]))
    assert method.mh_counts().sum() == 0
    (no_mh,), _, _ = _epoch(TrainConfig.of(eps=0.3, attack_step=0.1, atcd_T=T, atcd_K=1, mh=False),
                            mnist_test_batch, n=32)
    assert not any(k.startswith("mh_") for k in no_mh)


def test_element_granularity_accepts_per_pixel(mnist_test_batch):
    """Per-element test: within one example some pixels take the proposal and others stay at the start."""
    x, y = mnist_test_batch[0][:16], mnist_test_batch[1][:16]
    cfg = TrainConfig.of(eps=0.3, attack_step=0.1, atcd_T=1, atcd_K=1, cd_lambda=1.0, cd_rho=2.0,
                         mh_granularity="element", mh_temperature=0.5)  # a descent: acceptance in (0, 1)
    method, model = _run(cfg, x, y)
    (start, _, _), (end, _, _), (trained, _, _) = model.calls
    moved = start != end
    took_end, stayed = (trained == end) & moved, (trained == start) & moved
    assert torch.equal(took_end | stayed, moved)  # every pixel is one of the two
    mixed = (took_end.flatten(1).any(1) & stayed.flatten(1).any(1)).sum()
    assert mixed >= 8, "per-pixel acceptance should mix start and end pixels within most examples"
    assert method.mh_counts()[0, 1] == x.numel()


def test_checkpoint_state_without_or_with_other_mh_counts_is_a_checkpoint_error():
    cfg = TrainConfig.of(atcd_T=4)
    method = create_method("atcd", cfg)
    state = method.state_dict()
    with pytest.raises(CheckpointError, match="mh_counts"):  # not a KeyError
        create_method("atcd", cfg).load_state_dict({k: v for k, v in state.items() if k != "mh_counts"})
    assert state["mh_counts"].shape == (4, 2)  # (accepted, proposed) per replay
    with pytest.raises(CheckpointError, match="--atcd-T 4"):
        create_method("atcd", cfg).load_state_dict({**state, "mh_counts": torch.tensor([3, 4])})
    counts = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])
    restored = create_method("atcd", cfg)
    restored.load_state_dict({**state, "mh_counts": counts})
    assert torch.equal(restored.mh_counts(), counts)


def test_reuse_grad_is_labelled_and_refuses_a_kinetic_term():
    atcd = get_method_class("atcd")
    assert atcd.label(TrainConfig.of(reuse_grad=True).method_opts) == "atcd --reuse-grad"
    assert atcd.label({"method": "atcd", "reuse_grad": True, "mh": False}) == "atcd --reuse-grad --no-mh"
    assert atcd.label(TrainConfig.of().method_opts) == "atcd"
    with pytest.raises(ConfigError, match="--reuse-grad"):
        TrainConfig.of(reuse_grad=True, mh_kinetic=1.0).validate()


@pytest.mark.slow
def test_acceptance_is_summed_over_ranks(tmp_path):
    """Two gloo processes with different counts: both report the pooled rates, and both reset."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import json, torch\n"
        "from accelerate import Accelerator\n"
        "from atcd.config import TrainConfig\n"
        "from atcd.methods import create_method\n"
        "acc = Accelerator(cpu=True)\n"
        "r = acc.process_index\n"
        "m = create_method('atcd', TrainConfig.of(atcd_T=2))\n"
        "m.load_state_dict({**m.state_dict(), 'mh_counts': torch.tensor([[1 + r, 4], [2 * r, 4]])})\n"
        "out = m.epoch_metrics(acc)\n"
        f"open(r'{tmp_path}' + f'/rank{{r}}.json', 'w').write(json.dumps(\n"
        "    {'rank': r, 'n': acc.num_processes, 'left': int(m.mh_counts().sum()), **out}))\n")
    r = run_script("-m", "accelerate.commands.launch", "--config_file", "hfconfigs/cpu_2proc.yaml", str(script),
                   env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    outs = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [o["rank"] for o in outs] == [0, 1] and all(o["n"] == 2 for o in outs)
    for o in outs:  # rank 0 alone would give 1/8, 1/4 and 0
        assert (o["mh_accept"], o["mh_accept_r0"], o["mh_accept_r1"]) == (5 / 16, 3 / 8, 2 / 8)
        assert o["left"] == 0


def test_model_card_says_when_the_mh_test_never_rejected():
    """Issue 33 item 4: at the MNIST recipe's settings M-H accepts everything; the card says so from the run's own
    summary.csv, and says nothing more when the test did reject."""
    from atcd.publish.card import _training_section
    args = {"method": "atcd", "dataset": "mnist-mini", "batch_size": 128, "eval_samples": 200, "eval_attack_steps": 10}
    row = {"epoch": "0", "seconds": "1", "eval_top1": "98", "eval_pgd_top1": "80", "num_updates": "4"}
    inert = _training_section(args, "smallcnn_mnist", [{**row, "mh_accept": "1.0"}, {**row, "mh_accept": "0.99994"}],
                              None)
    assert "acceptance per epoch: 0.9999-1.0000" in inert and "never rejected" in inert
    acting = _training_section(args, "smallcnn_mnist", [{**row, "mh_accept": "0.74"}], None)
    assert "acceptance per epoch: 0.7400-0.7400" in acting and "never rejected" not in acting
    off = _training_section({**args, "mh": False}, "smallcnn_mnist", [row], None)  # the MNIST recipe now
    assert "acceptance per epoch" not in off and "Metropolis-Hastings test: off (`--no-mh`)" in off
    assert "test: off" not in _training_section({**args, "method": "free", "mh": False}, "smallcnn_mnist", [row], None)
