"""Model selection on a holdout carved from the training split: early stopping (model_best) and the
catastrophic-overfitting guard (restore the best weights and stop)."""
import json

import pytest
import timm
import torch
from accelerate import Accelerator
from conftest import run_main
from safetensors.torch import load_file

from atcd.config import TrainConfig
from atcd.data import MnistMini, split_holdout
from atcd.models import NormalizedModel
from atcd.trainer import _select


def test_holdout_is_disjoint_from_training_and_deterministic():
    ds = MnistMini("train")
    rest, hold = split_holdout(ds, 300, seed=1)
    assert len(hold) == 300 and len(rest) == len(ds) - 300
    assert not set(rest.indices) & set(hold.indices)
    assert split_holdout(ds, 300, seed=1)[1].indices == hold.indices != split_holdout(ds, 300, seed=2)[1].indices


def test_early_stop_keeps_best_and_co_guard_restores_it(tmp_path):
    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist"))
    cfg = TrainConfig.of(early_stop="robust", co_guard=True, co_drop=20.0)
    acc = Accelerator(cpu=True)
    best, path = {"metric": -1.0, "epoch": -1}, str(tmp_path / "model_best.safetensors")
    snapshots = []
    for epoch, metric in enumerate([50.0, 60.0, 55.0, 30.0]):
        snapshots.append({k: v.clone() for k, v in model.model.state_dict().items()})
        row = {"holdout_pgd_top1": metric}
        stopped = _select(cfg, row, epoch, best, path, model, acc)
        assert stopped == (epoch == 3) and row["co_stop"] == int(epoch == 3)
        assert best == {"metric": 60.0, "epoch": 1} or epoch == 0
        if stopped:
            break
        with torch.no_grad():  # "training" moves the weights between epochs
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    saved = load_file(path)
    for k, v in snapshots[1].items():
        assert torch.equal(saved[k], v), k
        assert torch.equal(model.model.state_dict()[k], v), k  # restored after the collapse at epoch 3


@pytest.mark.slow
def test_cli_early_stop_writes_model_best_and_holdout_columns(tmp_path):
    r = run_main("train_atcd.py", "--method", "fast", "--epochs", "2", "--train-samples-per-epoch", "512",
                   "--eval-samples", "100", "--early-stop", "robust", "--holdout", "200", "--opt", "adam",
                   "--lr", "1e-3", "--weight-decay", "0", "--output", str(tmp_path), "--experiment", "es",
                   "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])
    assert res["num_updates"] == 2 * (512 // 128)  # --train-samples-per-epoch sets the epoch length
    assert (tmp_path / "es" / "model_best.safetensors").is_file()
    header = (tmp_path / "es" / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"holdout_top1", "holdout_pgd_top1", "best_epoch", "co_stop"} <= set(header)


def test_selection_without_holdout_is_refused():
    r = run_main("train_atcd.py", "--early-stop", "robust", "--holdout", "0")
    assert r.returncode == 2 and "holdout" in r.stderr and "Traceback" not in r.stderr
