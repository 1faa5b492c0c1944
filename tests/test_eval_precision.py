"""Evaluation precision is a decision of the evaluation (`atcd.precision.eval_precision`), not of the launcher: a
model prepared by a bf16 Accelerator evaluates in fp32 inside the context and in bf16 again after it. Random draws
of the training methods are made on their generator's device (the trainer builds it on the accelerator's)."""
import pytest
import timm
import torch
from accelerate import Accelerator

from atcd.attacks.core import device_generator
from atcd.config import TrainConfig
from atcd.methods import StepContext, create_method
from atcd.models import NormalizedModel
from atcd.precision import eval_precision


@pytest.fixture
def fresh_accelerate():
    """Accelerate's process-wide state made afresh for the test and after it (another test of this pytest process
    may have made an Accelerator with other settings)."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def bf16_prepared(mnist_test_batch, fresh_accelerate):
    """The small CNN prepared by an Accelerator in bf16 (on cpu: autocast wraps forward), and a plain fp32 copy."""
    torch.manual_seed(0)
    plain = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")).eval()
    twin = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")).eval()
    twin.load_state_dict(plain.state_dict())
    acc = Accelerator(mixed_precision="bf16", cpu=True)
    prepared = acc.unwrap_model(acc.prepare(twin))  # keeps Accelerate's autocast wrapper, as the scripts did
    return plain, prepared, mnist_test_batch[0][:64]


def test_eval_precision_bypasses_the_launchers_autocast_and_puts_it_back(bf16_prepared):
    plain, prepared, x = bf16_prepared
    with torch.no_grad():
        ref = plain(x)
        wrapped = prepared(x)  # the launcher's bf16 (its outputs converted back to fp32)
        with eval_precision("fp32", prepared):
            inside = prepared(x)
        after = prepared(x)
        with eval_precision("bf16", plain):
            asked = plain(x)
    assert not torch.equal(wrapped, ref)  # the wrapper really computes in bf16 here
    assert torch.equal(inside, ref)  # fp32, bit for bit
    assert torch.equal(after, wrapped)  # the training precision is back after the block
    assert asked.dtype == torch.bfloat16 and not torch.equal(asked.float(), ref)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), eval_precision("fp32", plain):
        closed = plain(x)  # an autocast the caller left open is closed for the block
    assert torch.equal(closed, ref)


def test_eval_precision_turns_tf32_off_and_restores_it():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with eval_precision("fp32"):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with eval_precision("tf32"):
            assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    with pytest.raises(ValueError, match="fp32"), eval_precision("fp8"):
        pass


class _GpuGenerator(torch.Generator):
    """A cpu generator that says it lives on a GPU: code that draws "where the generator lives" asks for cuda:0."""

    @property
    def device(self):
        return torch.device("cuda", 0)


@pytest.mark.parametrize("method", ["atcd", "pgd", "trades", "fast", "yopo"])  # (Free starts from 0)
def test_method_random_draws_use_the_generator_device(method, mnist_test_batch, monkeypatch):
    """Every random draw of a training step is made with the method's generator and on that generator's device
    (on a GPU: no host draw followed by a pageable copy, which waits for the device). The generator says it lives
    on cuda:0; each draw's requested device is recorded (then made on cpu, where this machine computes). The old
    code asked for "cpu" whatever the generator, and fails here."""
    draws = []
    for name in ("rand", "randn"):
        real = getattr(torch, name)

        def recorded(*args, _real=real, **kwargs):
            if kwargs.get("generator") is not None:
                draws.append((kwargs["generator"], kwargs.get("device")))
                kwargs["device"] = "cpu"
            return _real(*args, **kwargs)
        monkeypatch.setattr(torch, name, recorded)
    own = {"atcd_T": 2, "atcd_K": 2} if method == "atcd" else {}
    cfg = TrainConfig.of(method=method, eps=0.3, **own)
    gen = _GpuGenerator()
    gen.manual_seed(0)
    m = create_method(method, cfg, generator=gen)
    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctx = StepContext(model=model, attack_model=model, optimizer=opt, backward=lambda loss: loss.backward(),
                      after_update=lambda: None)
    x, y = mnist_test_batch[0][:16], mnist_test_batch[1][:16]
    m.set_progress(10.0)  # past any eps warm-up
    m.step(ctx, x, y)
    assert draws, "the step drew no random numbers"
    assert all(g is gen and d is not None and torch.device(d) == gen.device for g, d in draws), draws


def test_the_trainer_and_eval_attacks_draw_on_the_device():
    """The trainer's method generator and the eval attacks' come from `device_generator`, which makes a generator
    of the given device (a cpu one only where the backend has none)."""
    assert device_generator(3, "cpu").device == torch.device("cpu")
    assert torch.equal(torch.rand(4, generator=device_generator(3, "cpu")),
                       torch.rand(4, generator=torch.Generator().manual_seed(3)))


def test_loader_defaults_pin_and_use_workers_on_a_gpu_only(monkeypatch):
    """Not given, --workers is 0 on a cpu (it computes the steps) and this process's share of the CPUs (at most 8)
    on a GPU, --pin-mem is on for CUDA; given values are kept. args.yaml records what was resolved."""
    from types import SimpleNamespace

    from atcd.cluster import loader_defaults

    cfg = TrainConfig.of(method="standard")
    assert cfg.workers is None and not cfg.pin_mem
    cpu, gpu = SimpleNamespace(device=torch.device("cpu")), SimpleNamespace(device=torch.device("cuda", 0))
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_defaults(cfg, cpu) == {"workers": 0, "pin_mem": False}
    assert loader_defaults(cfg, gpu) == {"workers": 4, "pin_mem": True}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_defaults(cfg, gpu) == {"workers": 8, "pin_mem": True}
    assert loader_defaults(TrainConfig.of(method="standard", workers=2), gpu)["workers"] == 2


@pytest.mark.parametrize("mode", ["norm", "value", "agc"])
def test_clip_modes_act_like_timms(mode, mnist_test_batch, fresh_accelerate):
    """--clip-grad with each of timm's --clip-mode values gives the gradient timm's own dispatch_clip_grad gives."""
    from timm.utils import dispatch_clip_grad

    from atcd.trainer import _Training

    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist"))
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    want = [p.grad.clone() for p in model.parameters()]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    for r, g in zip(ref, want):
        r.grad = g.clone()
    dispatch_clip_grad(ref, 0.05, mode=mode)
    fake = _Training.__new__(_Training)
    fake.cfg = TrainConfig.of(method="standard", clip_grad=0.05, clip_mode=mode)
    fake.accelerator, fake.model = Accelerator(cpu=True), model
    fake._clip()
    assert all(torch.allclose(p.grad, r.grad) for p, r in zip(model.parameters(), ref))
    assert not all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), want))  # the clip acted


def test_autoattack_on_fewer_than_ten_classes_is_a_one_line_error(mnist_test_batch):
    from atcd.attacks.autoattack import run_autoattack
    from atcd.errors import ConfigError

    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist", num_classes=5)).eval()
    with pytest.raises(ConfigError, match="at least 10 classes; this one has 5"):
        run_autoattack(model, mnist_test_batch[0][:4], mnist_test_batch[1][:4] % 5, eps=0.3)


def test_validate_channels_last_gives_the_same_per_image_results(tmp_path, standard_model):
    """validate.py --channels-last (timm's flag) runs model and inputs channels-last, with the same verdicts."""
    from atcd.checkpoint import save_weights
    from atcd.config import parse_eval_args
    from atcd.evaluator import run

    ckpt = str(tmp_path / "model.safetensors")
    save_weights(standard_model.model, ckpt)
    common = ["--model", "smallcnn_mnist", "--checkpoint", ckpt, "--dataset", "mnist-mini", "--num-samples", "64",
              "--attacks", "clean,pgd", "--eps", "0.1", "--attack-steps", "5", "--sanity-samples", "0", "--no-progress"]
    plain, cl = run(parse_eval_args(common)), run(parse_eval_args([*common, "--channels-last"]))
    assert plain["results"] == cl["results"] and plain["results"]["clean"]["top1"] > 80


def test_process_group_timeout_and_ddp_options_reach_accelerate():
    """--dist-timeout and --find-unused-parameters become Accelerate's InitProcessGroupKwargs / DDP kwargs."""
    from datetime import timedelta

    from atcd.cluster import accelerator_handlers

    init, ddp = accelerator_handlers(7.5, find_unused_parameters=True)
    assert init.timeout == timedelta(seconds=7.5) and ddp.find_unused_parameters
    assert len(accelerator_handlers(1800.0)) == 1
    cfg = TrainConfig.of(method="standard", dist_timeout=7.5, find_unused_parameters=True)
    assert (cfg.dist_timeout, cfg.find_unused_parameters) == (7.5, True)
