"""Training under fp16 through Accelerate's own fp16 machinery: autocast plus a GradScaler behind `accelerator.backward`
and the prepared optimizer (which skips an overflowing update and lowers the scale).

Accelerate turns fp16 off on a cpu (no autocast, no scaler: the run would be fp32), so these tests do what it does on
a GPU: after `Accelerator(mixed_precision="fp16")` they set `native_amp` and a cpu `torch.amp.GradScaler`, the two
attributes its fp16 branch sets on CUDA; `prepare`, `backward`, `autocast` and `clip_grad_norm_` then take their
fp16 paths unchanged. On a real cpu run `--mixed-precision fp16` is refused (tests/test_precision.py).
"""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import run_main
from safetensors.torch import load_file

from atcd.config import TrainConfig
from atcd.data import MnistMini
from atcd.methods import StepContext, create_method, list_methods

# method -> options: every method, each at a small budget (fp16 kernels on a cpu are slow)
CASES = {
    "pgd": {"attack_steps": 3},
    "fast": {},
    "trades": {"attack_steps": 3},
    "atcd": {"atcd_T": 2},
    "atcd_reuse": {"atcd_T": 2, "reuse_grad": True},
    "free": {"free_m": 2},
    "yopo": {"yopo_m": 2, "yopo_n": 2},
}


def _gpu_like_fp16(accelerator: Accelerator, init_scale: float = 2.0 ** 16):
    """What `Accelerator.__init__` does for fp16 on CUDA, on the cpu."""
    if accelerator.state.mixed_precision == "fp16" and accelerator.scaler is None:
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)


def _accelerator(precision: str) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(mixed_precision=precision, cpu=True)
    _gpu_like_fp16(acc, init_scale=2.0 ** 10)  # no overflow here: every update is applied (asserted below)
    return acc


@pytest.fixture(scope="module")
def mixed_batch(standard_model):
    """8 training images the trained model is surest of (the ones fp16 used to leave unattacked) and 8 it is least
    sure of."""
    ds = MnistMini("train")
    with torch.no_grad():
        logp = F.log_softmax(standard_model(ds.images).double(), 1)
    idx = (-logp.gather(1, ds.targets[:, None]).squeeze(1)).argsort()
    pick = torch.cat([idx[:8], idx[-8:]])
    yield ds.images[pick], ds.targets[pick]
    AcceleratorState._reset_state(reset_partial_state=True)


def _one_step(model, name: str, precision: str, x, y):
    """One minibatch of `name` from `model`'s weights; returns (new weights flat, pass counts, scale or None)."""
    acc = _accelerator(precision)
    model = copy.deepcopy(model)
    model, opt = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.05))
    ctx = StepContext(model=model, attack_model=acc.unwrap_model(model), optimizer=opt, backward=acc.backward,
                      after_update=lambda: None, autocast=acc.autocast)
    cfg = TrainConfig.of(method=name.removesuffix("_reuse"), eps=0.3, **CASES[name])
    method = create_method(cfg.method, cfg)
    method.step(ctx, x, y)
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    return w, method.passes.as_dict(), acc.scaler.get_scale() if acc.scaler is not None else None


def test_every_method_is_covered():
    from atcd.methods import get_method_class
    shipped = {n for n in list_methods() if get_method_class(n).__module__.startswith("atcd.")}  # not tests' toys
    assert {n.removesuffix("_reuse") for n in CASES} == shipped - {"standard"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fp16_update_under_the_grad_scaler_tracks_fp32(standard_model, mixed_batch, name):
    """Each method's fp16 minibatch (attack passes under autocast, weight updates through the GradScaler) applies
    every update and lands as close to the fp32 update as the bf16 one does (bf16: the precision the GPU recipes
    use). Measured (fp16 / bf16 distance from the fp32 update, relative to its size): pgd .029/.076, fast .014/.031,
    trades .35/1.1 (its KL attack starts at 0.001 noise, where both half precisions' rounding is of the signal's
    size), atcd .015/.021, atcd --reuse-grad .008/.019, free .019/.031, yopo .009/.019."""
    x, y = mixed_batch
    w0 = torch.cat([p.detach().flatten() for p in standard_model.parameters()])
    w32, _, _ = _one_step(standard_model, name, "no", x, y)
    wbf, _, _ = _one_step(standard_model, name, "bf16", x, y)
    w16, passes, scale = _one_step(standard_model, name, "fp16", x, y)
    assert scale == 2.0 ** 10  # the scaler never saw an overflow: no update was skipped
    assert torch.isfinite(w16).all() and passes["fp16_fallbacks"] == 0
    step = (w32 - w0).norm()
    assert step > 0
    d16, dbf = ((w16 - w32).norm() / step).item(), ((wbf - w32).norm() / step).item()
    assert d16 <= 1.5 * dbf, f"fp16 update {d16:.3f} from fp32's, bf16 {dbf:.3f}"
    # an fp16 step that moved nothing is 1.0 away (and passes the bound above for TRADES, whose bf16 is 1.1): the
    # fp16 update must be nearer the fp32 one than the starting weights are
    assert d16 < 0.5, f"fp16 update {d16:.3f} from fp32's"
    assert (w16 - w0).norm() > 0.5 * step


TINY = ("-c", "recipes/mnist_atcd.yaml", "--epochs", "1", "--train-samples-per-epoch", "64", "--batch-size", "32",
        "--atcd-T", "2", "--opt", "sgd", "--eval-samples", "16", "--eval-attack-steps", "1", "--no-progress",
        # the recipe as measured below (before the grids gave it kappa_H = 0, an eps warm-up, step 0.15 and no M-H)
        "--mh-kinetic", "1", "--mh-kinetic-v", "normalised", "--eps-warmup-epochs", "0", "--attack-step", "0.1", "--mh")


@pytest.mark.slow
def test_an_atcd_run_trains_through_accelerates_fp16_path(tmp_path, monkeypatch):
    """The whole trainer under fp16 (Accelerate's default GradScaler, the FiniteGuard deferring to it): the run
    completes, records fp16, needs no fp32 redo, and its 4 updates move the weights as the fp32 run's do (a run at
    --lr 1e-12 stays at the starting weights). Measured: 0.021 of the fp32 run's weight change apart (bf16: 0.028);
    one skipped update of the 4 would put it near 0.25. SGD: Adam's first steps are near sign(g) per weight, which
    turns rounding of near-zero gradients into whole steps (Adam: fp16 0.33, bf16 0.37)."""
    init = Accelerator.__init__

    def gpu_like_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _gpu_like_fp16(self)

    monkeypatch.setattr(Accelerator, "__init__", gpu_like_init)
    results, weights = {}, {}
    for name, extra in {"fp16": ("--mixed-precision", "fp16"), "fp32": ("--mixed-precision", "no"),
                        "start": ("--mixed-precision", "no", "--lr", "1e-12")}.items():
        r = run_main("train_atcd.py", *TINY, *extra, "--output", str(tmp_path), "--experiment", name)
        assert r.returncode == 0, r.stderr[-2000:]
        results[name] = json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])
        w = load_file(tmp_path / name / "model.safetensors")
        weights[name] = torch.cat([w[k].flatten().double() for k in sorted(w)])
    r16, r32 = results["fp16"], results["fp32"]
    assert r16["mixed_precision"] == "fp16" and r16["status"] == "completed" and r16["fp16_fallbacks"] == 0
    assert r16["num_updates"] == r32["num_updates"] == 4
    assert abs(r16["train_loss"] - r32["train_loss"]) < 1e-3, (r16["train_loss"], r32["train_loss"])
    w16, w32, w0 = weights["fp16"], weights["fp32"], weights["start"]
    assert torch.isfinite(w16).all()
    dist = ((w16 - w32).norm() / (w32 - w0).norm()).item()
    assert dist < 0.1, dist
