"""timm's train.py flags of issue 17 by their effect: experiment trackers (--log-with), --opt-eps/--opt-betas,
--layer-decay, --warmup-lr, --cooldown-epochs, --grad-checkpointing, --sync-bn, and no silent eps for data that
defines none. The training runs call train_atcd.py's `main` in-process on mnist-mini (seconds each)."""
import csv
import glob
import os

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import run_main

from atcd.config import ConfigError, parse_train_args
from atcd.models import build_model, convert_sync_bn, set_grad_checkpointing, unwrap_timm
from atcd.optim import create_run_optimizer, layer_groups
from atcd.schedule import UpdateCounter, create_lr_scheduler

# 256 images in batches of 64: 4 updates an epoch; a small evaluation
QUICK = ("--method", "standard", "--batch-size", "64", "--train-samples-per-epoch", "256", "--eval-samples", "64",
         "--eval-attack-steps", "1", "--no-progress")


def _ok(r):
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    return r


def _one_line_error(r, needle: str, run_dir=None):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and lines and lines[-1].startswith("error:"), (r.returncode, r.stderr[-2000:])
    assert needle in lines[-1], (needle, lines[-1])
    assert "Traceback" not in r.stderr
    if run_dir is not None:
        assert not os.path.exists(run_dir)  # bad input leaves no partial output


def _summary(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "summary.csv"), newline="") as f:
        return list(csv.DictReader(f))


# --- experiment trackers -------------------------------------------------------------------------------------------

def test_tensorboard_event_file_holds_the_logged_loss_and_the_optimizer_has_the_eps_and_betas(tmp_path):
    """--log-with tensorboard: the event file, read back with TensorBoard's own reader, holds the running train loss
    at each --log-interval point and every summary.csv column at the epoch end, with summary.csv's values. The same
    run's checkpoint holds an AdamW whose param groups carry --opt-eps / --opt-betas."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    _ok(run_main("train_atcd.py", *QUICK, "--epochs", "1", "--opt", "adamw", "--lr", "1e-3", "--opt-eps", "1e-5",
                 "--opt-betas", "0.8", "0.95", "--log-with", "tensorboard", "--log-interval", "2",
                 "--output", str(tmp_path), "--experiment", "tb"))
    run = tmp_path / "tb"
    (row,) = _summary(run)
    logdir = run / "tensorboard" / "tb"
    scalar_files = glob.glob(str(logdir / "events.out.tfevents.*"))
    assert len(scalar_files) == 1, os.listdir(logdir)
    ea = EventAccumulator(str(logdir))
    ea.Reload()
    scalars = {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
    # each numeric summary column once, at the update count of the epoch end (text columns such as eval_precision,
    # and a column left empty for this epoch, are not scalars)
    row = {c: v for c, v in row.items() if v.replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit()}
    assert {"train_loss", "eval_top1", "eval_pgd_top1", "lr", "num_updates"} <= set(row) <= set(scalars), row
    for col, value in row.items():
        assert scalars[col] == [(4, pytest.approx(float(value), rel=1e-6, abs=1e-6))], col
    assert float(row["train_loss"]) > 0.5  # a real loss, not a placeholder
    # the running loss at minibatches 2 and 4 (updates 2 and 4); at 4 (one process) it is the epoch's loss
    steps = scalars["step/train_loss"]
    assert [s for s, _ in steps] == [2, 4] and [s for s, _ in scalars["step/train_adv_top1"]] == [2, 4]
    assert steps[1][1] == pytest.approx(float(row["train_loss"]), abs=1e-5)
    assert steps[0][1] != steps[1][1]
    # hyper-parameters: the run's config (Accelerate writes them beside the events)
    (hparams,) = glob.glob(str(logdir / "*" / "hparams.yml"))
    with open(hparams) as f:
        assert "opt_eps: 1.0e-05" in f.read()
    state = torch.load(run / "checkpoint-0000" / "optimizer.bin", weights_only=True)
    groups = state["param_groups"]
    assert groups and all(g["eps"] == 1e-5 and tuple(g["betas"]) == (0.8, 0.95) for g in groups)


def test_a_tracker_that_is_not_installed_is_a_one_line_error(tmp_path, monkeypatch):
    from accelerate.utils import is_wandb_available

    import atcd.trackers
    args = (*QUICK, "--epochs", "1", "--output", str(tmp_path), "--experiment", "x")
    if not is_wandb_available():  # as on this machine: the real check
        _one_line_error(run_main("train_atcd.py", *args, "--log-with", "wandb"),
                        "--log-with wandb: the wandb package is not installed (pip install wandb)", tmp_path / "x")
    monkeypatch.setitem(atcd.trackers._INSTALLED, "tensorboard", lambda: False)
    _one_line_error(run_main("train_atcd.py", *args, "--log-with", "tensorboard"),
                    "the tensorboard package is not installed", tmp_path / "x")
    monkeypatch.setattr(atcd.trackers, "get_available_trackers", list)  # none
    _one_line_error(run_main("train_atcd.py", *args, "--log-with", "all"), "--log-with all: no experiment tracker",
                    tmp_path / "x")


def test_tracker_points_read_the_device_once_each_and_only_with_a_tracker(mnist_test_batch):
    """`on_log` (the trainer passes it on the main process with --log-with) costs one read per --log-interval point
    and none between them; without it the loop reads exactly as before (tests/test_syncs.py)."""
    from fakedevice import fake_device
    from syncs import count_host_syncs
    from test_syncs import _batches, _train_epoch

    logged = []
    with fake_device() as dev:
        after = []
        with count_host_syncs() as syncs:
            stats = _train_epoch(dev, _batches(mnist_test_batch), "standard", progress=False, log_interval=2,
                                 on_log=lambda b, s: logged.append((b, s)),
                                 after_batch=lambda b, snapshot: after.append(syncs.total))
    assert after == [0, 1, 1, 2], syncs.report()  # one read at minibatches 2 and 4, then the epoch end
    assert [b for b, _ in logged] == [2, 4]
    last = logged[-1][1]
    assert (last["n_loss"], last["count"]) == (4, 32)
    assert stats["train_loss"] == last["loss_sum"] / 4 and stats["train_adv_top1"] == 100.0 * last["correct"] / 32


# --- optimizer and schedule ----------------------------------------------------------------------------------------

def test_layer_decay_gives_timms_per_layer_lr_scales_on_resnet18():
    cfg = parse_train_args(["--model", "resnet18", "--opt", "adamw", "--lr", "0.1", "--layer-decay", "0.5"])
    model = timm.create_model("resnet18", num_classes=10)
    n = layer_groups(model)
    assert n == 10  # timm's resnet group_matcher: stem, 8 blocks, head
    opt = create_run_optimizer(cfg, model, cfg.model)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert scale[id(names["conv1.weight"])] == pytest.approx(0.5 ** (n - 1))  # the stem: smallest
    assert scale[id(names["fc.weight"])] == 1.0  # the head: the schedule's lr
    assert sorted({round(s, 12) for s in scale.values()}) == sorted(round(0.5 ** i, 12) for i in range(n))
    # the scheduler applies the scales: the lr each group runs with
    create_lr_scheduler(cfg, opt, 2, 5)
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr[id(names["conv1.weight"])] == pytest.approx(0.1 * 0.5 ** (n - 1))
    assert lr[id(names["layer4.1.conv2.weight"])] == pytest.approx(0.1 * 0.5)
    assert lr[id(names["fc.weight"])] == pytest.approx(0.1)
    # without --layer-decay: one lr for all
    plain = create_run_optimizer(parse_train_args(["--opt", "adamw", "--lr", "0.1"]), model, "resnet18")
    assert {g["lr"] for g in plain.param_groups} == {0.1} and all("lr_scale" not in g for g in plain.param_groups)


def test_layer_decay_on_a_model_of_one_layer_group_is_a_one_line_error(tmp_path):
    """A model timm cannot group (no group_matcher, no pretrained_cfg classifier): timm would only warn that the
    decay has no effect."""
    _one_line_error(run_main("train_atcd.py", *QUICK, "--layer-decay", "0.7", "--model-kwargs",
                             "pretrained_cfg_overlay={'classifier': None}", "--output", str(tmp_path),
                             "--experiment", "x"), "--layer-decay: model smallcnn_mnist has no layer groups",
                    tmp_path / "x")


@pytest.mark.parametrize("argv,needle", [
    (["--opt", "sgd", "--opt-betas", "0.9", "0.99"], "--opt sgd takes no betas"),
    (["--opt", "sgd", "--opt-eps", "1e-6"], "--opt sgd takes no epsilon"),
    (["--opt", "adamw", "--opt-betas", "0.9"], "--opt adamw takes 2 betas (got 1)"),
    (["--opt", "adamw", "--layer-decay", "0.7", "--sched", "none"], "--sched none would ignore it"),
    (["--layer-decay", "0"], "--layer-decay must be in (0, 1]"),
    (["--sched", "multistep", "--decay-milestones", "2", "--cooldown-epochs", "1"], "--sched multistep would ignore"),
    (["--warmup-lr", "-1"], "--warmup-lr must be >= 0"),
])
def test_optimizer_and_schedule_flags_timm_would_ignore_are_errors(argv, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_train_args(argv)


def test_warmup_lr_is_the_lr_of_the_first_update():
    cfg = parse_train_args(["--lr", "0.1", "--warmup-epochs", "1", "--warmup-lr", "0.002", "--epochs", "3"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler, passes = create_lr_scheduler(cfg, opt, 3, 10)
    counter = UpdateCounter(scheduler)  # as the trainer steps it: after each update
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        counter()
    assert passes == 3 and lrs[0] == pytest.approx(0.002)
    assert lrs[5] == pytest.approx(0.002 + 5 * (0.1 - 0.002) / 10)  # linear to --lr over the warm-up epoch
    # then timm's cosine over the whole run (warm-up not prefixed): at update 10 of 30, 0.1 * (1 + cos(pi/3)) / 2
    assert lrs[10] == pytest.approx(0.075) and lrs[29] < 0.01
    assert parse_train_args(["--warmup-epochs", "1"]).warmup_lr == 1e-5  # timm's default


def test_cooldown_epochs_train_at_min_lr(tmp_path):
    """--epochs 2 --cooldown-epochs 1: three epochs, the last at --min-lr (summary.csv's lr column), as timm's
    scheduler factory counts them. (The same run has --sync-bn: on one process a no-op with a note.)"""
    r = _ok(run_main("train_atcd.py", *QUICK, "--epochs", "2", "--cooldown-epochs", "1", "--min-lr", "1e-4", "--lr",
                     "0.05", "--sync-bn", "--output", str(tmp_path), "--experiment", "cd"))
    rows = _summary(tmp_path / "cd")
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert [int(row["num_updates"]) for row in rows] == [4, 8, 12]
    lrs = [float(row["lr"]) for row in rows]
    assert lrs[0] > 0.01 and lrs[1] == pytest.approx(1e-4) and lrs[2] == pytest.approx(1e-4)
    assert "--sync-bn: one process" in r.stderr


# --- model options ---------------------------------------------------------------------------------------------------

def test_grad_checkpointing_reaches_the_model_and_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = build_model("test_resnet", num_classes=10, in_chans=1)
    ckpt = build_model("test_resnet", num_classes=10, in_chans=1)
    ckpt.load_state_dict(plain.state_dict())
    set_grad_checkpointing(unwrap_timm(ckpt), "test_resnet")
    assert unwrap_timm(ckpt).grad_checkpointing and not unwrap_timm(plain).grad_checkpointing
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    for m in (plain, ckpt):
        m.train()
        F.cross_entropy(m(x), y).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.slow  # two training runs
def test_grad_checkpointing_runs_in_the_training_steps(tmp_path, monkeypatch):
    """--grad-checkpointing reaches the trained model: torch's checkpoint runs in every training step of test_resnet
    (timm's checkpoint_seq over its stages), and not at all without the flag."""
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = (*QUICK, "--model", "test_resnet", "--in-chans", "1", "--num-classes", "10", "--epochs", "1",
            "--batch-size", "16", "--train-samples-per-epoch", "32", "--eval-samples", "16", "--output", str(tmp_path))
    _ok(run_main("train_atcd.py", *args, "--experiment", "plain"))
    assert calls == []
    _ok(run_main("train_atcd.py", *args, "--grad-checkpointing", "--experiment", "ckpt"))
    assert len(calls) >= 2 * 4  # 2 steps x 4 checkpointed stages (the evaluation's forwards add theirs)


def test_grad_checkpointing_on_a_model_without_it_is_a_one_line_error(tmp_path):
    _one_line_error(run_main("train_atcd.py", *QUICK, "--grad-checkpointing", "--output", str(tmp_path),
                             "--experiment", "x"), "model smallcnn_mnist does not support --grad-checkpointing",
                    tmp_path / "x")


def test_sync_bn_converts_every_batchnorm_when_several_processes_train(caplog):
    torch.manual_seed(0)
    model = build_model("test_resnet", num_classes=10)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert len(bns) > 3
    with caplog.at_level("INFO"):
        assert convert_sync_bn(model, 1, "cpu") is model  # one process: nothing to synchronise
    assert "--sync-bn: one process" in caplog.text
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    converted = convert_sync_bn(model, 2, "cuda")
    synced = {n: m for n, m in converted.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)}
    assert set(synced) == set(bns)  # every BatchNorm, under its own name
    for n, m in synced.items():  # with its parameters and statistics
        assert m.weight is bns[n].weight and torch.equal(m.running_var, bns[n].running_var)
    with pytest.raises(ConfigError, match="SyncBatchNorm runs on cuda/xpu/hpu only, this run is on cpu"):
        convert_sync_bn(build_model("test_resnet", num_classes=10), 2, "cpu")


# --- eps: no silent default for data that defines none ---------------------------------------------------------------

def test_eps_is_required_for_an_image_folder_or_shards_and_mnist_mini_keeps_its_own(tmp_path):
    folder = tmp_path / "digits"
    for split in ("train", "val"):
        (folder / split / "0").mkdir(parents=True)
    _one_line_error(run_main("train_atcd.py", *QUICK, "--data-dir", str(folder), "--output", str(tmp_path),
                             "--experiment", "x"), "--eps is required: the folder dataset", tmp_path / "x")
    with pytest.raises(ConfigError, match="--eps is required: the wds dataset"):
        parse_train_args(["--dataset", "wds", "--data-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="--dataset folder needs --data-dir"):  # the data error comes first
        parse_train_args(["--dataset", "folder"])
    cfg = parse_train_args(["--data-dir", str(folder), "--eps", "8/255", "--method", "pgd"])
    assert cfg.eps == pytest.approx(8 / 255) and cfg.attack_step == pytest.approx(2.5 * 8 / 255 / 10)
    cfg = parse_train_args([])
    assert cfg.dataset == "mnist-mini" and cfg.eps == 0.3  # the dataset's own
    for recipe in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "recipes", "*.yaml"))):
        assert parse_train_args(["-c", recipe]).eps > 0, recipe
