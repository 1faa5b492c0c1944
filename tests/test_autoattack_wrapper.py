"""AutoAttack goes through the official package and its own sanity flags reach our results."""
import logging

import pytest
import timm
import torch
from torch import nn

from atcd.attacks.autoattack import run_autoattack
from atcd.models import NormalizedModel


class SoftmaxOut(nn.Module):
    """A canary: returns probabilities instead of logits (a classic source of wrong AutoAttack numbers)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return torch.softmax(self.m(x), 1)


def test_autoattack_flags_softmax_output_and_respects_eps(mnist_test_batch):
    torch.manual_seed(0)
    x, y = mnist_test_batch[0][:8], mnist_test_batch[1][:8]
    model = SoftmaxOut(NormalizedModel.from_timm(timm.create_model("smallcnn_mnist"))).eval()
    x_adv, info = run_autoattack(model, x, y, eps=0.1, attacks=["apgd-ce"])  # the package's checks run first
    flags = info["flags"]
    assert any("softmax" in f.lower() or "sum to 1" in f.lower() or "probab" in f.lower() for f in flags), flags
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.slow  # the official package's APGD-CE and Square on 4 images
def test_a_progress_line_per_sub_attack(standard_model, mnist_test_batch, caplog):
    """Square and FAB-T run for minutes on a robust model: each sub-attack announces itself, the images it gets
    and the time so far (issue: the first demo was 5 silent minutes of AutoAttack)."""
    x, y = mnist_test_batch[0][:4], mnist_test_batch[1][:4]
    with caplog.at_level(logging.INFO, logger="atcd.attacks.autoattack"):
        run_autoattack(standard_model, x, y, eps=0.01, version="custom", attacks=["apgd-ce", "square"],
                       square_queries=50)
    lines = [r.getMessage() for r in caplog.records if r.name == "atcd.attacks.autoattack"]
    assert [ln.split()[1].rstrip(":") for ln in lines] == ["apgd-ce", "square"], lines
    assert all("images left" in ln and " s elapsed" in ln for ln in lines), lines
