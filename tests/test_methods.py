"""Training methods: each one's forward/backward pass count per minibatch is what its formula says, measured by
counting real calls of the network, and each method's perturbation stays in the eps-ball and pixel box."""
import copy
import os
import tempfile

import pytest
import timm
import torch
from conftest import Recorder
from torch import nn

from atcd.attacks.core import project
from atcd.config import ConfigError, TrainConfig
from atcd.methods import StepContext, create_method, get_method_class, list_methods
from atcd.methods.yopo import find_stem
from atcd.models import NormalizedModel
from atcd.trainer import num_epochs

T, K, R, M, N = 2, 3, 3, 3, 2
# case -> (config overrides, expected {counter: passes per minibatch}, optimizer steps per minibatch); the case
# name is the method unless the overrides give one
CASES = {
    "standard": ({}, {"weight": 1}, 1),
    "pgd": ({"attack_steps": R}, {"input_grad": R, "weight": 1}, 1),                 # PGD-r: r + 1
    "fast": ({}, {"input_grad": 1, "weight": 1}, 1),                                  # Fast: 2
    "free": ({"free_m": M}, {"weight": M, "weight_with_input_grad": M}, M),                                     # Free-m: 1 per replay
    "trades": ({"attack_steps": R}, {"input_grad": R, "forward": 1, "weight": 2}, 1),    # r + 1 fwd + 2 (nat, adv)
    "yopo": ({"yopo_m": M, "yopo_n": N}, {"weight": M, "stem": M * N}, 1),               # m full + m*n first-layer
    "atcd": ({"atcd_T": T, "atcd_K": K}, {"input_grad": T * K, "weight": T, "forward": T}, T),  # T*K + T (+ T M-H fwd)
    # --reuse-grad: each weight pass also gives the next replay's first step: T*K (+ T M-H fwd + T-1 start fwd)
    "atcd-reuse": ({"method": "atcd", "atcd_T": T, "atcd_K": K, "reuse_grad": True},
                   {"input_grad": T * (K - 1), "weight": T, "forward": 2 * T - 1, "weight_with_input_grad": T - 1}, T),
    # --mh-kinetic > 0 (eq. 10's v = g): the M-H pass at each end is an input-gradient pass
    "atcd-kinetic": ({"method": "atcd", "atcd_T": T, "atcd_K": K, "mh_kinetic": 1.0},
                     {"input_grad": T * K + T, "weight": T}, T),
}


def test_every_registered_method_is_covered():
    ours = [m for m in list_methods() if get_method_class(m).__module__.startswith("atcd.")]  # not tests' plug-ins
    assert sorted({over.get("method", name) for name, (over, _, _) in CASES.items()}) == ours


class Counting(nn.Module):
    """The real model; counts complete forwards (head reached) and first-layer forwards, records inputs."""

    def __init__(self, inner: NormalizedModel):
        super().__init__()
        self.inner = inner
        self.full = self.stem = 0
        self.inputs = []
        find_stem(inner).register_forward_hook(lambda *_: setattr(self, "stem", self.stem + 1))
        inner.model.head.register_forward_hook(lambda *_: setattr(self, "full", self.full + 1))

    @property
    def pretrained_cfg(self):
        return self.inner.model.pretrained_cfg

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pass_count_per_minibatch_matches_formula(name, mnist_test_batch):
    over, expected, updates = CASES[name]
    over = {"method": name, **over}
    cfg = TrainConfig.of(eps=0.3, attack_step=0.1, **over)
    torch.manual_seed(0)
    model = Counting(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")))
    steps = []
    ctx = StepContext(model=model, attack_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                      backward=lambda loss: loss.backward(), after_update=lambda: steps.append(1))
    method = create_method(cfg.method, cfg)
    for batch in range(2):  # two different minibatches: a carried perturbation must fit the new images
        x, y = mnist_test_batch[0][32 * batch:32 * (batch + 1)], mnist_test_batch[1][32 * batch:32 * (batch + 1)]
        model.full = model.stem = 0
        model.inputs = []
        before = method.passes.as_dict()
        method.step(ctx, x, y)
        counted = {k.replace("_passes", ""): v - before[k] for k, v in method.passes.as_dict().items()}
        want = {k: expected.get(k, 0)
                for k in ("input_grad", "weight", "forward", "stem", "weight_with_input_grad", "fp16_fallbacks")}
        assert counted == want, (name, batch, counted)
        # the method's own count agrees with the network calls that really happened
        assert model.full == want["input_grad"] + want["weight"] + want["forward"]
        assert model.stem - model.full == want["stem"]
        assert model.inputs
        for xi in model.inputs:  # every input the network saw was in the eps-ball around x and in [0,1]
            if xi.shape == x.shape:
                assert (xi - x).abs().max() <= cfg.eps + 1e-6 and xi.min() >= 0 and xi.max() <= 1
    assert len(steps) == 2 * updates == 2 * type(method).updates_per_batch(cfg.method_opts)
    # the formula the run's start header prints is the count of network calls that really happened
    assert type(method).passes_per_batch(cfg.method_opts) == want["input_grad"] + want["weight"] + want["forward"]


def test_epochs_as_budget_divides_by_replays():
    base = {"epochs": 24, "epochs_as_budget": True}
    assert num_epochs(TrainConfig.of(**base, method="atcd", atcd_T=4, atcd_K=2)) == 3
    assert num_epochs(TrainConfig.of(**base, method="free", free_m=8)) == 3
    assert num_epochs(TrainConfig.of(**base, method="pgd")) == 24
    assert num_epochs(TrainConfig.of(**{**base, "epochs_as_budget": False}, method="atcd")) == 24
    assert get_method_class("free").budget_divisor(TrainConfig.of(method="free", free_m=4).method_opts) == 4


def test_free_perturbation_carries_across_minibatches(mnist_test_batch):
    """The second minibatch starts from the first one's final delta (projected onto the new images' ball and box),
    not from zero; the saved state restores it."""
    cfg = TrainConfig.of(method="free", free_m=2, eps=0.3)
    torch.manual_seed(0)
    model = Recorder(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")))
    ctx = StepContext(model=model, attack_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                      backward=lambda loss: loss.backward(), after_update=lambda: None)
    method = create_method("free", cfg)
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    x2, y2 = mnist_test_batch[0][32:64], mnist_test_batch[1][32:64]
    method.step(ctx, x, y)
    carried = method.delta.clone()
    assert carried.abs().max() > 0  # after m replays the buffer holds the accumulated FGSM steps
    assert torch.equal(model.calls[0][0], x)  # the original starts from zero noise
    state = method.state_dict()
    fresh = create_method("free", cfg)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.delta, carried)
    method.step(ctx, x2, y2)
    first = model.calls[2][0]  # the second minibatch's first replay
    assert torch.equal(first, x2 + project(x2, carried, 0.3))
    assert (first - x2).abs().max() > 0.25  # really carried: far from a zero start


def test_fast_alpha_defaults_to_1_25_eps():
    assert create_method("fast", TrainConfig.of(method="fast", eps=0.2)).attack_step == pytest.approx(0.25)
    assert create_method("fast", TrainConfig.of(method="fast", eps=0.2, fast_alpha=0.1)).attack_step == 0.1


def test_yopo_finds_the_stem_of_any_timm_model():
    m = timm.create_model("smallcnn_mnist")
    assert find_stem(m) is m.features[0]
    r = timm.create_model("resnet18", num_classes=10)
    assert find_stem(NormalizedModel.from_timm(r)) is r.conv1
    e = timm.create_model("efficientnet_b0", num_classes=10)
    assert find_stem(e) is e.conv_stem


def test_yopo_costate_is_the_gradient_at_the_first_layer_output(mnist_test_batch):
    """p tapped during the weight pass (through an in-place ReLU) equals dLoss/d(stem output) computed directly."""
    from atcd.methods.yopo import _Tap
    torch.manual_seed(0)
    net = timm.create_model("smallcnn_mnist")
    x, y = mnist_test_batch[0][:16], mnist_test_batch[1][:16]
    holder = {}
    h = net.features[0].register_forward_hook(lambda _m, _i, o: _Tap.apply(o, holder))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    h.remove()
    s = net.features[0](x).detach().requires_grad_(True)
    out = net.forward_head(net.features[2:](torch.relu(s)))
    (want,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), s)
    torch.testing.assert_close(holder["p"], want)


def _ctx(model, momentum=0.0):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    return StepContext(model=model, attack_model=model, optimizer=opt, backward=lambda loss: loss.backward(),
                       after_update=lambda: None)


def test_atcd_reuse_grad_k1_is_free_within_a_minibatch(mnist_test_batch):
    """K=1, no M-H, rho=0, alpha=eps: every replay's only step is the sign of the previous weight pass's input
    gradient, i.e. Free-m. From the same start the weight updates are bit-identical; ATCD carries the last state the
    network trained on (Free takes one more step after its last weight pass, so the methods differ from there)."""
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    x2 = mnist_test_batch[0][32:64]
    free = create_method("free", TrainConfig.of(method="free", free_m=3, eps=0.3))
    cfg = TrainConfig.of(method="atcd", atcd_T=3, atcd_K=1, mh=False, cd_rho=0.0, eps=0.3, attack_step=0.3,
                  reuse_grad=True)
    atcd = create_method("atcd", cfg)
    atcd.load_state_dict({**atcd.state_dict(), "delta": torch.zeros_like(x)})  # Free's start: zero noise
    torch.manual_seed(0)
    m_free = Counting(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")))
    m_atcd = copy.deepcopy(m_free)
    free.step(_ctx(m_free, 0.9), x, y)
    atcd.step(_ctx(m_atcd, 0.9), x, y)
    # 3 weight passes, nothing else; Free's last one also returns the input gradient (its step after the last update)
    assert atcd.passes.as_dict() == {**free.passes.as_dict(), "weight_with_input_grad": 2}
    assert len(m_atcd.inputs) == 3 and all(torch.equal(a, b) for a, b in zip(m_atcd.inputs, m_free.inputs))
    assert not torch.equal(m_atcd.inputs[1], m_atcd.inputs[0])  # the reused gradient really moved delta
    for a, b in zip(m_atcd.parameters(), m_free.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(x + atcd.delta, m_atcd.inputs[-1])  # carried on: the last state trained on, no extra step
    assert not torch.equal(atcd.delta, free.delta)
    carried = atcd.delta.clone()
    atcd.step(_ctx(m_atcd), x2, y)  # the next minibatch starts from it, projected onto the new images' ball
    assert torch.equal(m_atcd.inputs[3], x2 + project(x2, carried, 0.3))


def test_atcd_reuse_grad_state_round_trip_reproduces_the_next_step(mnist_test_batch):
    """The carried chain state (and generator, M-H counts) saved as the trainer does, restored into a fresh method:
    the next minibatch makes bit-identical updates; without the carried delta it does not."""
    from safetensors.torch import load_file, save_file
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    x2, y2 = mnist_test_batch[0][32:64], mnist_test_batch[1][32:64]
    cfg = TrainConfig.of(method="atcd", atcd_T=2, atcd_K=2, eps=0.3, attack_step=0.1, reuse_grad=True,
                  mh_temperature=0.05, mh_kinetic=1.0, mh_kinetic_v="normalised")  # some rejections
    first = create_method("atcd", cfg)
    torch.manual_seed(0)
    model = Counting(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")))
    ctx = _ctx(model, 0.9)
    first.step(ctx, x, y)
    assert torch.equal(x + first.delta, model.inputs[-1])  # the last accepted state, the weight pass's input
    with tempfile.TemporaryDirectory() as d:
        save_file(first.state_dict(), os.path.join(d, "method_0.safetensors"))
        state = load_file(os.path.join(d, "method_0.safetensors"))
    restored, no_delta = create_method("atcd", cfg), create_method("atcd", cfg)
    restored.load_state_dict(state)
    no_delta.load_state_dict({k: v for k, v in state.items() if k != "delta"})
    runs = {}
    for name, method in (("first", first), ("restored", restored), ("no_delta", no_delta)):
        m = copy.deepcopy(model)
        c = _ctx(m, 0.9)
        c.optimizer.load_state_dict(copy.deepcopy(ctx.optimizer.state_dict()))  # SGD updates buffers in place
        method.step(c, x2, y2)
        runs[name] = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert torch.equal(runs["restored"], runs["first"])
    assert torch.equal(restored.delta, first.delta)
    assert torch.equal(restored.mh_counts(), first.mh_counts())
    accepted, proposed = first.mh_counts().sum(0).tolist()
    assert 0 < accepted < proposed  # M-H really rejected some (tau 0.05), so the draws mattered
    assert not torch.equal(runs["no_delta"], runs["first"])


def test_atcd_reuse_grad_mh_tests_against_the_start_under_the_updated_weights(mnist_test_batch):
    """K=1: replay 0 takes no step (no move, no test); replay t's only step is the reused one, and M-H compares its
    end with the CE of its start (the state replay t-1 trained on) measured by one forward after that weight update,
    not with replay t-1's M-H output from before it (which made the start look better and biased toward rejection).
    The decisions are recomputed here from the recorded outputs and the generator's draws."""
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    tau = 0.02
    cfg = TrainConfig.of(method="atcd", atcd_T=3, atcd_K=1, eps=0.3, attack_step=0.1, reuse_grad=True,
                         mh_temperature=tau, cd_lambda=1.0, cd_rho=2.0)  # rho > lam: the step descends, some rejected
    method = create_method("atcd", cfg)
    draws = torch.Generator().manual_seed(0)
    draws.set_state(method.gen.get_state())
    torch.manual_seed(0)
    model = Counting(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")))
    outs = []
    model.inner.model.head.register_forward_hook(lambda _m, _i, o: outs.append(o.detach().float()))
    method.step(_ctx(model), x, y)
    assert method.passes.as_dict() == {"input_grad_passes": 0, "weight_passes": 3, "forward_passes": 4,
                                       "stem_passes": 0, "weight_with_input_grad": 2, "fp16_fallbacks": 0}
    assert get_method_class("atcd").passes_per_batch(cfg.method_opts) == 3 + 4
    torch.rand(x.shape, generator=draws)  # the first minibatch's random start
    rejected = 0
    for t in (1, 2):  # calls: weight | start forward, M-H forward, weight | start forward, M-H forward, weight
        i = 3 * t - 2
        start, end, trained = model.inputs[i], model.inputs[i + 1], model.inputs[i + 2]
        assert torch.equal(start, model.inputs[i - 1])  # the state the previous weight pass trained on
        ce_start, ce_end = (torch.nn.functional.cross_entropy(outs[j], y, reduction="none") for j in (i, i + 1))
        u = torch.rand(32, generator=draws)
        want = u < torch.exp(((ce_end - ce_start) / tau).clamp(max=0.0))
        got = (trained == end).flatten(1).all(1)
        assert torch.equal(got, want), t
        assert torch.equal(trained[~got], start[~got])
        rejected += int((~got).sum())
    assert 0 < rejected
    assert method.mh_counts()[:, 1].tolist() == [0, 32, 32] and int(method.mh_counts()[:, 0].sum()) == 64 - rejected


@pytest.mark.parametrize("lam,rho", [(2.0, 1.0), (1.0, 2.0)])
def test_atcd_reuse_grad_first_step_is_the_weight_pass_gradient_times_lam_minus_rho(lam, rho, mnist_test_batch):
    """At a trajectory's start J_cd's logit gradient is (lam - rho)(p - y): the reused step is the sign of
    (lam - rho) x the CE input gradient of the previous weight pass (train mode, weights before its update);
    with rho > lam it descends CE."""
    from atcd.attacks.core import sign_step
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    cfg = TrainConfig.of(method="atcd", atcd_T=2, atcd_K=1, mh=False, cd_lambda=lam, cd_rho=rho, eps=0.3,
                  attack_step=0.1, reuse_grad=True)
    method = create_method("atcd", cfg)
    method.load_state_dict({**method.state_dict(), "delta": torch.zeros_like(x)})
    torch.manual_seed(0)
    model = Counting(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")))
    before = copy.deepcopy(model.inner).train()
    method.step(_ctx(model), x, y)
    d = torch.zeros_like(x).requires_grad_(True)
    torch.nn.functional.cross_entropy(before(x + d), y).backward()
    want, _ = sign_step(x, torch.zeros_like(x), torch.zeros_like(x), (lam - rho) * d.grad, 0.3, 0.1, 0.0)
    assert len(model.inputs) == 2 and torch.equal(model.inputs[1], x + want)
    ce = [torch.nn.functional.cross_entropy(before(xi), y).item() for xi in model.inputs]
    assert (ce[1] > ce[0]) == (lam > rho)


@pytest.mark.parametrize("mh", [True, False])
def test_atcd_reuse_grad_q0_is_the_start_output_under_the_current_weights(mh, mnist_test_batch, monkeypatch):
    """Replay 1's attack steps use p_ref = the output at its start: with M-H from one forward there after replay 0's
    weight update (the same forward gives M-H its start CE); with --no-mh, the weight pass's output."""
    import atcd.methods.atcd as atcd_module
    seen = []
    real = atcd_module.jcd_loss
    monkeypatch.setattr(atcd_module, "jcd_loss", lambda z, yy, p_ref, *a: seen.append(p_ref) or real(z, yy, p_ref, *a))
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    cfg = TrainConfig.of(method="atcd", atcd_T=2, atcd_K=2, mh=mh, eps=0.3, attack_step=0.1, reuse_grad=True)
    torch.manual_seed(0)
    model = Counting(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")))
    outs = []
    model.inner.model.head.register_forward_hook(lambda _m, _i, o: outs.append(o.detach().float()))
    create_method("atcd", cfg).step(_ctx(model), x, y)
    sm = [torch.softmax(o, 1) for o in outs]
    assert len(seen) == 2 and torch.equal(seen[0], sm[0])  # replay 0: its first pass is at its start
    if mh:  # calls: attack, M-H end, weight | start forward, attack, M-H end, weight
        assert len(outs) == 7 and torch.equal(model.inputs[3], model.inputs[2])
        assert torch.equal(seen[1], sm[3])
    else:  # calls: attack, weight | attack, weight
        assert len(outs) == 4 and torch.equal(seen[1], sm[1])

@pytest.mark.parametrize("name", sorted(set(CASES) - {"standard"}))
def test_eps_warmup_ramps_every_methods_ball(name, mnist_test_batch):
    """--eps-warmup-epochs 2: after 0 epochs every input the network sees is the clean image, after half an epoch
    the ball is eps/4 and the attack reaches well into it, from 2 epochs on it is --eps; the step keeps its ratio."""
    over = {"method": name, **CASES[name][0], "eps_warmup_epochs": 2.0}
    cfg = TrainConfig.of(eps=0.3, attack_step=0.1, **over)
    torch.manual_seed(0)
    model = Counting(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")))
    ctx = StepContext(model=model, attack_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                      backward=lambda loss: loss.backward(), after_update=lambda: None)
    method = create_method(cfg.method, cfg)
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    for done, radius in ((0.0, 0.0), (0.5, 0.075), (1.0, 0.15), (3.0, 0.3)):
        method.set_progress(done)
        assert method.eps == pytest.approx(radius) and method.attack_step == pytest.approx(radius / 3)
        model.inputs = []
        method.step(ctx, x, y)
        moved = max(float((xi - x).abs().max()) for xi in model.inputs if xi.shape == x.shape)
        assert moved <= radius + 1e-6, (name, done, moved)
        assert moved >= 0.5 * radius, (name, done, moved)


def test_eps_warmup_of_a_method_without_attack_is_refused():
    """Standard training attacks nothing: a warm-up flag there would be a silent no-op, so it is a one-line error."""
    with pytest.raises(ConfigError, match="--method standard attacks nothing"):
        TrainConfig.of(method="standard", eps=0.3, eps_warmup_epochs=2.0).validate()


def test_eps_warmup_from_the_cli_is_recorded_per_epoch(tmp_path):
    """The trainer sets the ramp per minibatch from (epoch, batch): 2 batches per epoch, warm-up over 2 epochs, so
    the last step of epoch 0 trains at eps/4 and of epoch 1 at 3 eps/4 (summary.csv's train_eps); args.yaml keeps it."""
    import csv

    import yaml
    from conftest import run_main
    r = run_main("train_atcd.py", "--method", "pgd", "--attack-steps", "2", "--eps", "0.3", "--eps-warmup-epochs", "2",
                 "--epochs", "2", "--batch-size", "128", "--train-samples-per-epoch", "256", "--eval-samples", "20",
                 "--no-progress", "--output", str(tmp_path), "--experiment", "w")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "w" / "summary.csv").read_text().splitlines()))
    assert [float(row["train_eps"]) for row in rows] == pytest.approx([0.075, 0.225])
    assert yaml.safe_load((tmp_path / "w" / "args.yaml").read_text())["eps_warmup_epochs"] == 2.0
