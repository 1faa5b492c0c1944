"""Weight EMA (--model-ema) and starting from weights (--initial-checkpoint, a hub model fine-tuned to another
--num-classes), on real mnist-mini digits, in-process."""
import csv
import json
import logging
import os

import numpy as np
import pytest
import timm
import torch
from conftest import run_main
from PIL import Image
from safetensors.torch import load_file, save_file

from atcd.attacks import AttackConfig
from atcd.checkpoint import CheckpointError, load_weights
from atcd.data import MnistMini, create_atcd_dataset, create_atcd_loader
from atcd.engine import evaluate_attacks
from atcd.models import NormalizedModel, load_initial_checkpoint, unwrap_timm

# 2 epochs x 32 Adam updates, a checkpoint every 10 minibatches: an EMA that has to survive a mid-epoch resume
EMA = ("--method", "standard", "--epochs", "2", "--train-samples-per-epoch", "512", "-b", "16", "--opt", "adam",
       "--lr", "3e-3", "--weight-decay", "0", "--sched", "none", "--eval-samples", "100", "--eval-attack-steps", "1",
       "--model-ema", "--model-ema-decay", "0.9", "--checkpoint-every-steps", "10", "--checkpoint-keep", "20",
       "--no-progress")


def _result(r) -> dict:
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])


def _rows(run_dir) -> list[dict]:
    """summary.csv without the wall-clock column."""
    with open(os.path.join(run_dir, "summary.csv")) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _clean_top1(model, n: int) -> float:
    """Clean accuracy on the run's per-epoch eval images (the same class-mixed subset of the test split)."""
    loader = create_atcd_loader(create_atcd_dataset("mnist-mini", "val"), 250, False, num_samples=n)
    return evaluate_attacks(model, loader, ["clean"], AttackConfig(eps=0.0))["clean"]["top1"]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema")
    res = _result(run_main("train_atcd.py", *EMA, "--output", str(out), "--experiment", "full"))
    return out, res


def test_ema_is_trained_evaluated_and_written(ema_run):
    out, res = ema_run
    run = out / "full"
    raw, ema = load_file(run / "model.safetensors"), load_file(run / "model_ema.safetensors")
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # an average, not a copy of the last weights
    assert all(v.dtype == torch.float32 for v in ema.values())
    model = NormalizedModel.from_timm(load_weights(timm.create_model("smallcnn_mnist"),
                                                   str(run / "model_ema.safetensors")))
    rows = _rows(run)
    assert len(rows) == 2 and {"ema_eval_top1", "ema_eval_pgd_top1"} <= set(rows[0])
    # the summary's EMA column is the accuracy of the written EMA weights (not of the raw ones)
    assert float(rows[-1]["ema_eval_top1"]) == pytest.approx(_clean_top1(model.eval(), 100), abs=1e-4)
    assert float(rows[-1]["ema_eval_top1"]) > 50 and res["ema_eval_top1"] == float(rows[-1]["ema_eval_top1"])
    for name in ("checkpoint-0000", "checkpoint-0001-step0000010"):  # every checkpoint holds the EMA
        assert load_file(run / name / "model_ema.safetensors").keys() == raw.keys()


@pytest.mark.parametrize("ckpt", ["checkpoint-0001-step0000010", "checkpoint-0000"])
def test_ema_resumes_bit_identically(ema_run, ckpt):
    """Resumed from a mid-epoch / an epoch-end checkpoint of the run, it ends with the uninterrupted run's EMA."""
    out, _ = ema_run
    name = "from-" + ckpt
    _result(run_main("train_atcd.py", *EMA, "--output", str(out), "--experiment", name,
                     "--resume", str(out / "full" / ckpt)))
    for fname in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(out / "full" / fname), load_file(out / name / fname)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (fname, k)
    assert _rows(out / name) == _rows(out / "full")[-len(_rows(out / name)):]


def test_resume_refuses_a_checkpoint_without_ema(ema_run, tmp_path):
    out, _ = ema_run
    args = [a for a in EMA if a not in ("--model-ema", "--model-ema-decay", "0.9")]
    r = run_main("train_atcd.py", *args, "--output", str(tmp_path), "--experiment", "x",
                 "--resume", str(out / "full" / "checkpoint-0000"))
    last = r.stderr.strip().splitlines()[-1]  # after the run's start line: one error line, no traceback
    assert r.returncode == 2 and last.startswith("error:") and "resume it with --model-ema" in last
    assert "Traceback" not in r.stderr and r.stderr.count("error:") == 1


def test_initial_checkpoint_keeps_all_but_a_head_of_another_size(standard_model, tmp_path, caplog):
    src = tmp_path / "ten.safetensors"
    save_file(unwrap_timm(standard_model).state_dict(), src)
    trained = unwrap_timm(standard_model).state_dict()
    same = load_initial_checkpoint(timm.create_model("smallcnn_mnist"), str(src)).state_dict()
    assert all(torch.equal(same[k], trained[k]) for k in trained)
    torch.manual_seed(1)
    fresh_head = timm.create_model("smallcnn_mnist", num_classes=5).head.weight.clone()
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="atcd.models.transfer"):
        five = load_initial_checkpoint(timm.create_model("smallcnn_mnist", num_classes=5), str(src)).state_dict()
    assert "classifier (head.bias, head.weight) re-initialised: 10 classes there, 5 here" in caplog.text
    assert all(torch.equal(five[k], trained[k]) for k in trained if not k.startswith("head."))
    assert torch.equal(five["head.weight"], fresh_head)  # timm's fresh init, untouched
    with pytest.raises(CheckpointError, match=r"its classifier aside\): missing .*unexpected") as e:
        load_initial_checkpoint(timm.create_model("test_resnet", num_classes=5, in_chans=1), str(src))
    assert "\n" not in str(e.value)


def test_initial_checkpoint_reaches_training(standard_model, tmp_path):
    """A near-zero learning rate: the first epoch's accuracy is the initial weights', not a random model's."""
    src = tmp_path / "init.safetensors"
    save_file(unwrap_timm(standard_model).state_dict(), src)
    res = _result(run_main("train_atcd.py", "--method", "standard", "--epochs", "1", "--train-samples-per-epoch",
                           "64", "-b", "32", "--lr", "1e-9", "--eval-samples", "200", "--eval-attack-steps", "1",
                           "--initial-checkpoint", str(src), "--no-progress", "--output", str(tmp_path),
                           "--experiment", "init"))
    assert res["eval_top1"] == pytest.approx(_clean_top1(standard_model, 200), abs=1e-4)
    assert res["eval_top1"] > 80


def _five_digit_folder(root) -> str:
    """Digits 0-4 of mnist-mini as an image folder: 60 per class to train on, 20 to validate."""
    for split, src, per in (("train", "train", 60), ("val", "test", 20)):
        ds = MnistMini(src)
        for c in range(5):
            os.makedirs(os.path.join(root, split, str(c)))
            idx = torch.nonzero(ds.targets == c).flatten()[:per]
            for i in idx.tolist():
                img = (ds.images[i, 0] * 255).round().to(torch.uint8).numpy()
                Image.fromarray(np.asarray(img), mode="L").save(os.path.join(root, split, str(c), f"{i:05d}.png"))
    return str(root)


@pytest.mark.slow  # end to end: publish, fine-tune (Fast-AT), validate.py
def test_fine_tune_a_local_dir_model_to_five_classes_trains_and_validates(standard_model, tmp_path):
    """The published 10-class model (timm's save_for_hf, as scripts/publish.py writes it) fine-tuned on digits 0-4:
    the head is re-initialised, the features kept, and validate.py measures the result."""
    from timm.models import save_for_hf
    save_for_hf(unwrap_timm(standard_model), tmp_path / "pub", safe_serialization=True)
    data = _five_digit_folder(tmp_path / "five")
    common = ("--model", f"local-dir:{tmp_path / 'pub'}", "--num-classes", "5", "--dataset", "folder",
              "--data-dir", data, "--no-progress")
    res = _result(run_main("train_atcd.py", *common, "--method", "fast", "--eps", "0.1", "--epochs", "2", "-b", "10",
                           "--opt", "adam", "--lr", "1e-3", "--weight-decay", "0", "--eval-samples", "0",
                           "--eval-attack-steps", "2", "--output", str(tmp_path), "--experiment", "ft"))
    tuned = load_file(tmp_path / "ft" / "model.safetensors")
    assert tuned["head.weight"].shape == (5, 200)
    assert res["num_updates"] == 2 * 30 and res["eval_n"] == 100
    r = run_main("validate.py", *common, "--checkpoint", str(tmp_path / "ft"), "--split", "val", "--attacks",
                 "clean,pgd", "--eps", "0.1", "--attack-steps", "5", "--sanity-samples", "0",
                 "--results-file", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    measured = json.loads((tmp_path / "r.json").read_text())["results"]
    assert measured["clean"]["n"] == 100 and measured["clean"]["top1"] > 90  # 5-way digits from the kept features
    assert measured["clean"]["top1"] == pytest.approx(res["eval_top1"], abs=1e-4)


def test_drop_path_drop_and_model_kwargs_reach_the_model(tmp_path, monkeypatch):
    """timm's --drop-path / --drop / --model-kwargs go to timm.create_model; --checkpoint-keep is --checkpoint-hist."""
    import yaml
    from timm.layers import DropPath

    import atcd.trainer
    built, build = [], atcd.trainer.build_model

    def spy(*args, **kwargs):  # the model the run trains
        built.append(build(*args, **kwargs))
        return built[-1]
    monkeypatch.setattr(atcd.trainer, "build_model", spy)
    _result(run_main("train_atcd.py", "--model", "test_resnet", "--in-chans", "1", "--method", "standard", "--epochs",
                     "1", "--train-samples-per-epoch", "32", "-b", "32", "--eval-samples", "10", "--eval-attack-steps",
                     "1", "--drop-path", "0.2", "--drop", "0.3", "--model-kwargs", "global_pool='max'",
                     "--checkpoint-keep", "1", "--no-progress", "--output", str(tmp_path), "--experiment", "dp"))
    net = unwrap_timm(built[0])
    rates = [m.drop_prob for m in net.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.2)  # timm's linear rule over the blocks, up to --drop-path
    assert net.drop_rate == 0.3 and net.global_pool.pool_type == "max"
    args = yaml.safe_load((tmp_path / "dp" / "args.yaml").read_text())
    assert args["checkpoint_hist"] == 1 and "checkpoint_keep" not in args
    assert args["model_kwargs"] == ["global_pool='max'"]
    assert [n for n in os.listdir(tmp_path / "dp") if n.startswith("checkpoint-")] == ["checkpoint-0000"]


def test_model_option_errors_are_one_line(tmp_path):
    from atcd.config import parse_train_args
    (tmp_path / "old.yaml").write_text("checkpoint_keep: 3\nmodel_kwargs: [drop_rate=0.1]\n")  # an older args.yaml
    cfg = parse_train_args(["-c", str(tmp_path / "old.yaml")])
    assert cfg.checkpoint_hist == 3 and tuple(cfg.model_kwargs) == ("drop_rate=0.1",)
    common = ("--method", "standard", "--epochs", "1", "--no-progress", "--output", str(tmp_path))
    for extra, needle in ((("--drop-path", "0.1"), "has no drop-path (stochastic depth) blocks"),
                          (("--model", "test_resnet", "--in-chans", "1", "--model-kwargs", "no_such_arg=1"),
                           "does not take that argument"),
                          (("--initial-checkpoint", str(tmp_path / "none.safetensors")),
                           "--initial-checkpoint names no such file or run dir")):
        r = run_main("train_atcd.py", *common, *extra, "--experiment", "e")
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ema_of_atcd_is_updated_once_per_optimizer_update(tmp_path):
    """ATCD makes T=2 optimizer updates per minibatch: the EMA (decay 0.5, no warm-up: timm's first update copies)
    is e_1 = w_1, e_n = 0.5 e_{n-1} + 0.5 w_n over all 4 updates of 2 minibatches, recomputed from the weights
    after every optimizer step (recorded by a global optimizer hook); an EMA updated per minibatch is not."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    snaps = []
    handle = register_optimizer_step_post_hook(
        lambda opt, *_: snaps.append([p.detach().clone() for g in opt.param_groups for p in g["params"]]))
    try:
        r = run_main("train_atcd.py", "--method", "atcd", "--atcd-T", "2", "--atcd-K", "1", "--eps", "0.3",
                     "--eps-warmup-epochs", "0", "--epochs", "1", "--train-samples-per-epoch", "64", "-b", "32",
                     "--opt", "sgd", "--lr", "0.05", "--model-ema", "--model-ema-decay", "0.5", "--eval-samples",
                     "10", "--eval-attack-steps", "1", "--no-progress", "--output", str(tmp_path), "--experiment",
                     "e")
    finally:
        handle.remove()
    assert r.returncode in (0, 4), r.stderr[-3000:]  # 4: 4 updates leave the CNN at chance ("collapsed")
    assert len(snaps) == 4
    raw, ema = load_file(tmp_path / "e" / "model.safetensors"), load_file(tmp_path / "e" / "model_ema.safetensors")
    # name each optimizer tensor by the final weights it equals
    index = {k: next(i for i, p in enumerate(snaps[-1]) if p.shape == v.shape and torch.equal(p, v))
             for k, v in raw.items()}
    assert len(set(index.values())) == len(raw)

    def ema_of(steps):
        e = None
        for s in steps:
            e = [t.clone() for t in s] if e is None else [0.5 * a + 0.5 * b for a, b in zip(e, s)]
        return e
    want, per_minibatch = ema_of(snaps), ema_of(snaps[1::2])
    for k, i in index.items():
        torch.testing.assert_close(ema[k], want[i], rtol=1e-5, atol=1e-6, msg=k)
    assert any((ema[k] - per_minibatch[i]).abs().max() > 1e-4 for k, i in index.items())
