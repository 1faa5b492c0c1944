"""timm's train.py / validate.py spellings and flags: accepted, recorded in args.yaml, and acting on real numbers."""
import csv

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import run_main

from atcd.config import parse_eval_args, parse_train_args
from atcd.errors import ConfigError
from atcd.faults import EXIT_COLLAPSED

TINY = ("--method", "standard", "--opt", "sgd", "--epochs", "1", "--train-samples-per-epoch", "64", "-b", "32",
        "--eval-samples", "16", "--eval-attack-steps", "1", "--no-progress")
TIMM = ("--amp", "--amp-dtype", "bfloat16", "--lr-base", "0.1", "--smoothing", "0.1", "--clip-grad", "1.0")


def _train(tmp_path, name, *flags):
    r = run_main("train_atcd.py", *TINY, *flags, "--output", str(tmp_path), "--experiment", name)
    assert r.returncode in (0, EXIT_COLLAPSED), r.stderr[-2000:]  # 2 minibatches may end at chance: still written
    with open(tmp_path / name / "args.yaml") as f:
        args = yaml.safe_load(f)
    with open(tmp_path / name / "summary.csv") as f:
        return args, float(next(csv.DictReader(f))["train_loss"])


@pytest.mark.slow
def test_a_timm_command_line_is_accepted_recorded_and_changes_the_run(tmp_path):
    args, loss = _train(tmp_path, "timm", *TIMM)
    assert (args["mixed_precision"], args["lr_base"], args["smoothing"], args["clip_grad"]) == ("bf16", 0.1, 0.1, 1.0)
    assert args["lr"] == pytest.approx(0.1 * 32 / 256)  # timm's rule: lr-base x global batch / 256 (sgd: linear)
    # the same run without label smoothing: another loss (near-uniform logits after 2 updates: a small change;
    # test_smoothing_is_the_weight_update_loss pins the formula)
    _, plain = _train(tmp_path, "plain", "--amp", "--amp-dtype", "bfloat16", "--lr", str(args["lr"]),
                      "--clip-grad", "1.0")
    assert abs(loss - plain) > 1e-5, (loss, plain)


@pytest.mark.slow
def test_clip_grad_changes_the_weights(tmp_path):
    from safetensors.torch import load_file
    _train(tmp_path, "free")
    _train(tmp_path, "clipped", "--clip-grad", "1e-3")
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("free", "clipped"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) > 1e-4


def test_smoothing_is_the_weight_update_loss(mnist_test_batch, standard_model):
    import copy

    from atcd.methods import get_method_class
    from atcd.methods.base import StepContext
    x, y = mnist_test_batch[0][:32], mnist_test_batch[1][:32]
    losses = {}
    for s in (0.0, 0.1):
        model = copy.deepcopy(standard_model)  # trained: confident logits, where smoothing matters
        cfg = parse_train_args(["--method", "standard", "--smoothing", str(s)])
        with torch.no_grad():
            want = F.cross_entropy(model.train()(x), y, label_smoothing=s).item()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ctx = StepContext(model=model, attack_model=model, optimizer=opt, backward=lambda loss: loss.backward(),
                          after_update=lambda: None)
        losses[s] = get_method_class("standard")(cfg).step(ctx, x, y).losses[0].item()
        assert losses[s] == pytest.approx(want, rel=1e-5)
    assert losses[0.1] > losses[0.0] + 0.1, losses


def test_lr_base_follows_timms_rule(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    lr = lambda *a: parse_train_args(["--method", "standard", "--lr-base", "0.1", "-b", "32", *a]).lr
    assert lr() == pytest.approx(0.1)                                       # 8 x 32 = 256: the quoted batch
    assert lr("--grad-accum-steps", "2") == pytest.approx(0.2)              # linear for sgd
    assert lr("--opt", "adamw") == pytest.approx(0.1)
    assert lr("--opt", "adamw", "-b", "128") == pytest.approx(0.2)          # sqrt(4) for adam-family
    assert lr("--lr-base-scale", "linear", "--opt", "adamw", "-b", "128") == pytest.approx(0.4)
    assert lr("--lr-base-size", "512") == pytest.approx(0.05)
    assert lr("--lr", "0.3") == 0.3                                          # --lr wins, as in timm
    assert parse_train_args([]).lr == 0.05                                   # no --lr-base: the old default


def test_timm_spellings_map_to_the_options():
    assert parse_train_args(["--torchcompile"]).torch_compile == "inductor"
    assert parse_train_args(["--amp", "--amp-dtype", "bfloat16"]).mixed_precision == "bf16"
    assert parse_train_args(["--amp-dtype", "bfloat16"]).mixed_precision is None  # alone it does nothing (timm)
    with pytest.raises(ConfigError, match="--amp --amp-dtype float16 means --mixed-precision fp16, but"):
        parse_train_args(["--amp", "--mixed-precision", "no"])
    with pytest.raises(ConfigError, match="--log-with wandb"):  # mapped (then refused here: wandb not installed)
        parse_train_args(["--log-wandb", "--log-with", "tensorboard"])
    assert parse_train_args(["--pin-mem"]).pin_mem and parse_train_args(["--clip-mode", "norm"]).clip_mode == "norm"


def test_pin_mem_reaches_the_loader():
    from atcd.data.train_loaders import create_train_loaders
    cfg = parse_train_args(["--pin-mem", "--method", "standard"])
    train, _, _ = create_train_loaders(cfg, 0, 1, {"input_size": (1, 28, 28)})
    assert train.pin_memory is True


def test_validate_takes_timms_m_wildcards_and_channels_last():
    cfg = parse_eval_args(["-m", "resnet18*", "--channels-last", "--data-dir", "/", "--eps", "4/255"])
    assert cfg.channels_last and "resnet18.a1_in1k" in cfg.models and "resnet18d.ra2_in1k" in cfg.models
    assert all("." in m for m in cfg.models)  # pretrained tags only: a bare timm name means its weights
    assert set(parse_eval_args(["-m", "resnet18*", "--no-pretrained", "--data-dir", "/", "--eps", "0.1"]).models) \
        == {"resnet18", "resnet18d", "resnet18_cifar"} & set(__import__("timm").list_models("resnet18*"))
