"""Errors that say what to do, in one line (issue 34), and validate.py's channel check."""

import pytest
import torch
from conftest import run_main

from atcd.config import parse_train_args
from atcd.errors import CheckpointError, ConfigError, DataError


def test_validate_refuses_digits_for_an_rgb_model_in_one_line():
    r = run_main("validate.py", "--model", "resnet18", "--no-pretrained", "--num-samples", "4", "--attacks", "clean",
                 "--sanity-samples", "0", "--no-progress")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.splitlines()[-1] == ("error: the model takes 3-channel input but the images have 1 channel(s): "
                                         "give --in-chans 1 (a model trained on such images), or data with 3 "
                                         "channels (e.g. --data-dir IMAGE_FOLDER)")


def test_reuse_grad_with_a_gradient_kinetic_term_says_what_to_change():
    with pytest.raises(ConfigError, match="drop --reuse-grad, or give --mh-kinetic-v normalised, --mh-kinetic 0 or "
                                          "--no-mh$"):
        parse_train_args(["--reuse-grad", "--mh-kinetic", "1", "--mh-kinetic-v", "gradient"])


def test_an_atcd_state_of_another_version_says_how_to_go_on():
    from atcd.methods import get_method_class
    cfg = parse_train_args(["--method", "atcd"])
    with pytest.raises(CheckpointError, match="--initial-checkpoint RUN/model.safetensors --overwrite$"):
        get_method_class("atcd")(cfg).load_state_dict({"generator": torch.Generator().get_state()})


def test_shards_of_unknown_size_name_the_flag(tmp_path):
    import webdataset as wds

    from atcd.data.wds import create_wds_loader
    with wds.TarWriter(str(tmp_path / "s-0.tar")) as w:
        w.write({"__key__": "a", "cls": b"1", "png": b"x"})
    with pytest.raises(DataError, match="give --train-samples-per-epoch N, an _info.json"):
        create_wds_loader(str(tmp_path / "s-{0..0}.tar"), "train", 2, True, input_size=(1, 28, 28))


def test_an_unknown_optimizer_names_close_ones():
    with pytest.raises(ConfigError, match=r"unknown --opt 'adamx': give one of timm's \d+ optimizer names, e.g. "
                                          r"adamax"):
        parse_train_args(["--opt", "adamx"])


def test_a_pickle_checkpoint_names_the_importer(tmp_path):
    from atcd.checkpoint import read_weights
    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=f"convert it with python scripts/import_checkpoint.py {path} --model "
                                              f"ARCH --out DIR, or pass --allow-pickle"):
        read_weights(str(path))


def test_publish_asks_for_a_license_for_weights_not_trained_on_the_bundled_digits(tmp_path):
    import yaml

    from atcd.models.hub import HubError
    from atcd.publish import export_run
    with open(tmp_path / "args.yaml", "w") as f:
        yaml.safe_dump({"model": "resnet50", "dataset": "wds", "data_dir": "data/imagenet-wds", "eps": 4 / 255}, f)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(HubError, match="--license is required: .* was trained on wds data, whose terms may bind the "
                                       "weights"):
        export_run(str(tmp_path), "org/name")
