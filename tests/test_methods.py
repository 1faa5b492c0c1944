"""Training methods: each one's forward/backward pass count per minibatch is what its formula says, measured by
counting real calls of the network, and each method's perturbation stays in the eps-ball and pixel box."""
from dataclasses import replace

import pytest
import timm
import torch
from torch import nn

from atcd.config import TrainConfig
from atcd.methods import StepContext, create_method, get_method_class, list_methods
from atcd.methods.yopo import find_stem
from atcd.models import NormalizedModel
from atcd.trainer import num_epochs

T, K, R, M, N = 2, 3, 3, 3, 2
# method -> (config overrides, expected {counter: passes per minibatch}, optimizer steps per minibatch)
CASES = {
    "standard": ({}, {"weight": 1}, 1),
    "pgd": ({"attack_steps": R}, {"input_grad": R, "weight": 1}, 1),                 # PGD-r: r + 1
    "fast": ({}, {"input_grad": 1, "weight": 1}, 1),                                  # Fast: 2
    "free": ({"free_m": M}, {"weight": M}, M),                                     # Free-m: 1 per replay
    "trades": ({"attack_steps": R}, {"input_grad": R, "forward": 1, "weight": 2}, 1),    # r + 1 fwd + 2 (nat, adv)
    "yopo": ({"yopo_m": M, "yopo_n": N}, {"weight": M, "stem": M * N}, 1),               # m full + m*n first-layer
    "atcd": ({"atcd_T": T, "atcd_K": K}, {"input_grad": T * K, "weight": T, "forward": T}, T),  # T*K + T (+ T M-H fwd)
}


def test_every_registered_method_is_covered():
    assert sorted(CASES) == list_methods()


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
    cfg = replace(TrainConfig(), method=name, eps=0.3, attack_step=0.1, **over)
    torch.manual_seed(0)
    model = Counting(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")))
    steps = []
    ctx = StepContext(model=model, attack_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                      backward=lambda loss: loss.backward(), after_update=lambda: steps.append(1))
    method = create_method(name, cfg)
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    for batch in range(2):
        model.full = model.stem = 0
        before = method.passes.as_dict()
        method.step(ctx, x, y)
        counted = {k.replace("_passes", ""): v - before[k] for k, v in method.passes.as_dict().items()}
        want = {k: expected.get(k, 0) for k in ("input_grad", "weight", "forward", "stem")}
        assert counted == want, (name, batch, counted)
        # the method's own count agrees with the network calls that really happened
        assert model.full == want["input_grad"] + want["weight"] + want["forward"]
        assert model.stem - model.full == want["stem"]
    assert len(steps) == 2 * updates == 2 * method.updates_per_batch()
    for xi in model.inputs:  # every input the network saw was in the eps-ball around x and in [0,1]
        if xi.shape == x.shape:
            assert (xi - x).abs().max() <= cfg.eps + 1e-6 and xi.min() >= 0 and xi.max() <= 1


def test_epochs_as_budget_divides_by_replays():
    base = replace(TrainConfig(), epochs=24, epochs_as_budget=True)
    assert num_epochs(replace(base, method="atcd", atcd_T=4, atcd_K=2)) == 3
    assert num_epochs(replace(base, method="free", free_m=8)) == 3
    assert num_epochs(replace(base, method="pgd")) == 24
    assert num_epochs(replace(base, method="atcd", epochs_as_budget=False)) == 24
    assert get_method_class("free").budget_divisor(replace(base, free_m=4)) == 4


def test_free_perturbation_carries_across_minibatches(mnist_test_batch):
    cfg = replace(TrainConfig(), method="free", free_m=2, eps=0.3)
    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist"))
    ctx = StepContext(model=model, attack_model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                      backward=lambda loss: loss.backward(), after_update=lambda: None)
    method = create_method("free", cfg)
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    method.step(ctx, x, y)
    carried = method.delta.clone()
    assert carried.abs().max() > 0  # after m replays the buffer holds the accumulated FGSM steps
    state = method.state_dict()
    fresh = create_method("free", cfg)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.delta, carried)


def test_fast_alpha_defaults_to_1_25_eps():
    assert create_method("fast", replace(TrainConfig(), eps=0.2)).alpha == pytest.approx(0.25)
    assert create_method("fast", replace(TrainConfig(), eps=0.2, fast_alpha=0.1)).alpha == 0.1


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
