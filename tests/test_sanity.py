"""validate.py's sanity checks pass on a normal model and flag a gradient-masked one (Athalye et al. 2018 style:
input quantisation makes every input gradient zero, so PGD stalls while the black-box Square still succeeds)."""
import pytest
import torch
from torch import nn

from atcd.attacks import AttackConfig
from atcd.sanity import model_fingerprint, probe_checks, summarize


class Quantized(nn.Module):
    """A gradient-masking canary: rounds its input to 4 grey levels (zero gradient almost everywhere)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(torch.round(x * 3) / 3)


def _probe(mnist_test_batch):
    return mnist_test_batch[0][::4], mnist_test_batch[1][::4]  # 25 images


@pytest.mark.slow  # the full probe incl. Square
def test_checks_pass_on_a_normal_model(standard_model, mnist_test_batch):
    x, y = _probe(mnist_test_batch)
    before = model_fingerprint(standard_model)
    checks = probe_checks(standard_model, x, y, AttackConfig(eps=0.1, step_size=0.025, steps=10), square_queries=300)
    assert all(c["ok"] for c in checks.values()), checks
    assert summarize(checks) == []
    assert model_fingerprint(standard_model) == before


@pytest.mark.slow  # the full probe incl. Square
def test_checks_flag_gradient_masking(standard_model, mnist_test_batch):
    x, y = _probe(mnist_test_batch)
    masked = Quantized(standard_model).eval()
    checks = probe_checks(masked, x, y, AttackConfig(eps=0.15, step_size=0.0375, steps=10))
    assert not checks["whitebox_beats_square"]["ok"], checks
    assert any("masked" in m for m in summarize(checks))
    # with AutoAttack in the run the line says which row is the robust number (the demo's case, README)
    assert not any("report those" in m for m in summarize(checks, ["clean", "pgd"]))
    assert any("report those" in m for m in summarize(checks, ["clean", "pgd", "autoattack"]))


def test_fingerprint_sees_a_buffer_change(standard_model):
    import copy
    m = copy.deepcopy(standard_model)
    before = model_fingerprint(m)
    m.model.head.bias.data[0] += 1e-7
    assert model_fingerprint(m) != before


def test_eval_mode_check_catches_train_mode(standard_model, mnist_test_batch):
    x, y = _probe(mnist_test_batch)
    standard_model.train()
    try:
        checks = probe_checks(standard_model, x, y, AttackConfig(eps=0.1, step_size=0.025, steps=5), square=False)
    finally:
        standard_model.eval()
    assert not checks["eval_mode"]["ok"]
