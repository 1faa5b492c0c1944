"""fp16 attack gradients: for confidently classified images the input gradient underflows to all zeros under fp16
autocast (sign(0) = 0: the example never moves), where fp32 gives a usable gradient.

Measured on cpu autocast (torch 2.14.1), the 32 most confident mnist-mini training images of the `standard_model`
fixture (1 - p_y 1.3e-6..7.8e-6): all-zero in fp32 0 %, in fp16 75 % (24 of 32), in bf16 0 %; 98 % of the pixel
gradients nonzero in fp32 are 0 in fp16 (over all 4,000 training images: 0.6 % all-zero, 5 % of pixels). The losses
cast the logits to fp32 (`.float()`), so softmax and p - y (1e-6..1e-5) do not underflow; the backward of that cast
hands dL/dz to the fp16 head as fp16, and each fp16 linear/conv backward multiplies it by weights well below 1 until
it falls under fp16's smallest subnormal (6e-8) and flushes to 0, mostly in the conv layers. Under Accelerate's fp16
the weight passes' loss goes through its GradScaler (`accelerator.backward`); the attack passes (`input_grad`) are
not scaled. A fixed scale is no fix: 2**16 removes the zeros but overflows fp16 on images the model is unsure of.

The fix (`atcd.attacks.core.input_grad` under fp16 autocast): dL/dz is taken in fp32, each example's row is divided
by its largest |.| before the backward through the network (so the fp16 backward carries values up to 1), and the
input gradient is multiplied back in fp32: the true-scale gradient, 0 % all-zero here as in fp32. An fp16 pass whose
gradient or loss is still not finite is redone in fp32 and counted. fp32 and bf16 passes are unchanged.
"""
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atcd.attacks.core import PassCounter, input_grad, sign_step
from atcd.attacks.losses import ce_loss, jcd_loss

N_CONFIDENT = 32


def _jcd_at_start(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ATCD's attack loss at a trajectory's start (p_ref = p, as `ATCD._trajectory` computes it)."""
    p = F.softmax(logits.float(), 1).detach()
    return jcd_loss(logits.float(), y, p, 2.0, 1.0)


# case -> (input-gradient function with `input_grad`'s signature, attack loss): point a case at a fixed function
GRADS: dict[str, tuple[Callable, Callable]] = {
    "pgd_ce": (input_grad, ce_loss),
    "atcd_jcd": (input_grad, _jcd_at_start),
}


def zero_grad_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype,
                       grad_fn: Callable = input_grad, loss_fn: Callable = ce_loss) -> float:
    """Fraction of examples whose input gradient at delta = 0 is exactly zero in every pixel.

    Args:
        model: the network (eval mode is the caller's choice).
        x: images, y: labels.
        dtype: `torch.float32` (no autocast) or the autocast dtype (`torch.float16`, `torch.bfloat16`).
        grad_fn: `grad_fn(model, x, delta, y, loss_fn) -> (grad, loss, logits)`, as `atcd.attacks.core.input_grad`.
        loss_fn: per-example attack loss of (logits, y).

    Returns:
        The fraction in [0, 1].
    """
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        g, _, _ = grad_fn(model, x, torch.zeros_like(x), y, loss_fn)
    return (g.flatten(1).abs().amax(1) == 0).float().mean().item()


@pytest.fixture(scope="module")
def ranked(standard_model):
    """The trained model and the mnist-mini training images, most confidently classified first, with 1 - p_y."""
    from atcd.data import MnistMini
    ds = MnistMini("train")
    with torch.no_grad():
        logp = F.log_softmax(standard_model(ds.images).double(), 1)
    gap = -torch.expm1(logp.gather(1, ds.targets[:, None]).squeeze(1))  # 1 - p_y without cancellation
    idx = gap.argsort()
    return standard_model, ds.images[idx], ds.targets[idx], gap[idx]


@pytest.fixture(scope="module")
def confident(ranked):
    """The `N_CONFIDENT` training images the trained model classifies most confidently (real digits)."""
    model, x, y, gap = ranked
    return model, x[:N_CONFIDENT], y[:N_CONFIDENT], gap[:N_CONFIDENT]


def test_confident_images_are_classified_and_have_fp32_gradients(confident):
    model, x, y, gap = confident
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()
    assert gap.max() < 1e-4, gap.max()
    for name, (grad_fn, loss_fn) in GRADS.items():
        assert zero_grad_fraction(model, x, y, torch.float32, grad_fn, loss_fn) == 0.0, name


def test_bf16_gradients_do_not_underflow(confident):
    """bf16 has fp32's exponent range: what vanishes in fp16 is range (underflow), not precision."""
    model, x, y, _ = confident
    assert zero_grad_fraction(model, x, y, torch.bfloat16) == zero_grad_fraction(model, x, y, torch.float32) == 0.0


def _unscaled_input_grad(model, x, delta, y, loss_fn):
    """The plain input gradient (what `input_grad` computes today), kept here so the instrument's self-test does not
    change when `input_grad` is fixed."""
    d = delta.detach().requires_grad_(True)
    logits = model(x + d)
    loss = loss_fn(logits, y)
    (g,) = torch.autograd.grad(loss.sum(), d)
    return g, loss.detach(), logits.detach()


def test_zero_grad_fraction_sees_underflow_of_an_unscaled_fp16_gradient():
    """The instrument: rows whose loss is scaled by 1e-6 get an input gradient of 4 x 1e-3 x 1e-6 = 4e-9 (below
    half fp16's smallest subnormal, 6e-8) through a linear layer of weights 1e-3, so in fp16 exactly those rows
    read all-zero."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    nn.init.constant_(lin.weight, 1e-3)
    x, y = torch.rand(6, 8), torch.zeros(6, dtype=torch.long)
    scale = torch.tensor([1e-6, 1e-6, 1e-6, 1.0, 1.0, 1.0])

    def loss_fn(z, _y):
        return z.float().sum(1) * scale

    assert zero_grad_fraction(lin, x, y, torch.float32, _unscaled_input_grad, loss_fn) == 0.0
    assert zero_grad_fraction(lin, x, y, torch.float16, _unscaled_input_grad, loss_fn) == pytest.approx(0.5)
    assert zero_grad_fraction(lin, x, y, torch.bfloat16, _unscaled_input_grad, loss_fn) == 0.0


@pytest.mark.parametrize("case", sorted(GRADS))
def test_fp16_input_gradients_are_finite_on_confident_and_unsure_images(ranked, case):
    """Guards a fix: a loss scale large enough for the confident images must not overflow fp16 (max 65504) on
    images the model is unsure of (dL/dz near 1)."""
    model, x, y, gap = ranked
    both = torch.cat([torch.arange(N_CONFIDENT), torch.arange(len(y) - N_CONFIDENT, len(y))])
    assert gap[both[-1]] > 0.5  # the unsure end is really unsure
    grad_fn, loss_fn = GRADS[case]
    with torch.autocast("cpu", dtype=torch.float16):
        g, _, _ = grad_fn(model, x[both], torch.zeros_like(x[both]), y[both], loss_fn)
    bad = ~torch.isfinite(g).flatten(1).all(1)
    assert not bad.any(), f"inf/nan input gradients on {int(bad.sum())} of {len(bad)} images (fp16 overflow)"
    assert bool((g[N_CONFIDENT:].flatten(1).abs().amax(1) > 0).all())  # unsure images: never an underflow


@pytest.mark.parametrize("case", sorted(GRADS))
def test_fp16_zero_gradient_fraction_matches_fp32(confident, case):
    model, x, y, _ = confident
    grad_fn, loss_fn = GRADS[case]
    f32 = zero_grad_fraction(model, x, y, torch.float32, grad_fn, loss_fn)
    f16 = zero_grad_fraction(model, x, y, torch.float16, grad_fn, loss_fn)
    assert abs(f16 - f32) <= 0.02, f"all-zero input gradients: fp16 {f16:.1%} vs fp32 {f32:.1%} of {len(y)} images"


@pytest.mark.parametrize("case", sorted(GRADS))
def test_fp16_input_gradient_is_the_fp32_gradient_scale_included(ranked, case):
    """What `input_grad` returns under fp16 is the true gradient, not a rescaled one (callers that use its size get
    it): per image, direction and norm within fp16's precision of fp32's, on the confident and the unsure images."""
    model, x, y, _ = ranked
    both = torch.cat([torch.arange(N_CONFIDENT), torch.arange(len(y) - N_CONFIDENT, len(y))])
    x, y = x[both], y[both]
    grad_fn, loss_fn = GRADS[case]
    g32, _, _ = grad_fn(model, x, torch.zeros_like(x), y, loss_fn)
    with torch.autocast("cpu", dtype=torch.float16):
        g16, _, _ = grad_fn(model, x, torch.zeros_like(x), y, loss_fn)
    cos = F.cosine_similarity(g16.flatten(1), g32.flatten(1))
    ratio = g16.flatten(1).norm(dim=1) / g32.flatten(1).norm(dim=1)
    assert cos.min() > 0.99, cos.min()  # measured 0.997
    # measured 0.99..1.09: fp16's rounding of the logits moves p - y ~ 1e-6 by some per cent (bf16: 0.94..1.06); a
    # gradient left at the normalised scale would be off by 1 / max|p - y|, 1e5 on the confident images
    assert (ratio - 1).abs().max() < 0.2, ratio


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp32_and_bf16_input_gradients_are_unchanged(confident, dtype):
    """Only fp16 takes the per-example seeded backward: fp32 and bf16 give the plain gradient bit for bit (so fp32
    training results are those from before the fix)."""
    model, x, y, _ = confident
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        got = input_grad(model, x, torch.zeros_like(x), y, ce_loss)
        want = _unscaled_input_grad(model, x, torch.zeros_like(x), y, ce_loss)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_a_non_finite_fp16_pass_is_redone_in_fp32_and_counted():
    """Rows whose fp16 forward overflows (logits past fp16's 65504) have a NaN loss and gradient: `input_grad` redoes
    the batch in fp32 and returns exactly the fp32 result, counted as a fallback and as one more pass."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    x, y = torch.rand(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    x[:2] *= 1e6
    with torch.autocast("cpu", dtype=torch.float16):
        plain, _, _ = _unscaled_input_grad(lin, x, torch.zeros_like(x), y, ce_loss)
        counter = PassCounter()
        g, loss, logits = input_grad(lin, x, torch.zeros_like(x), y, ce_loss, counter)
    assert not torch.isfinite(plain).all()  # the case is real: fp16 overflows on the first two rows
    assert (counter.fp16_fallbacks, counter.input_grad) == (1, 2)
    for a, b in zip((g, loss, logits), input_grad(lin, x, torch.zeros_like(x), y, ce_loss)):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_a_non_finite_gradient_row_adds_nothing_to_v_and_the_chain_moves_on():
    """A NaN/inf in an example's gradient (an fp16 weight pass that overflowed, reused by ATCD --reuse-grad) must not
    enter v: with it, sign(v) = sign(NaN) = 0 would hold the example still for the rest of the chain."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 6, 6)
    delta, v = torch.zeros_like(x), torch.zeros_like(x)
    g = torch.randn_like(x)
    g[1, 0, 0, 0], g[2, 0, 2, 2] = float("nan"), float("inf")
    d1, v1 = sign_step(x, delta, v, g, 0.3, 0.05, 1.0)
    assert torch.isfinite(v1).all()
    assert v1[1:].abs().sum() == 0 and torch.equal(d1[1:], delta[1:])  # the bad rows sit this step out
    ref = sign_step(x[:1], delta[:1], v[:1], g[:1], 0.3, 0.05, 1.0)  # a finite row is as without the bad ones
    assert torch.equal(d1[:1], ref[0]) and torch.equal(v1[:1], ref[1])
    d2, _ = sign_step(x, d1, v1, torch.randn_like(x), 0.3, 0.05, 1.0)
    assert (d2 != d1).flatten(1).any(1).all()  # the next finite gradient moves every example
