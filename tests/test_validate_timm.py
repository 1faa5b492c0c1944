"""validate.py (and train_atcd.py's --data-dir) read as timm's scripts read them, on the trained small CNN.

A bare timm name without --checkpoint means its pretrained weights; --data-dir without --dataset is an image folder;
eps comes from --eps, the models' cards or the dataset, never from a silent default; several models make one
leaderboard (--results-format json|csv); --use-ema evaluates the EMA weights beside a checkpoint. All in-process.
"""
import csv
import json
import os

import numpy as np
import pytest
import timm
from conftest import run_main
from PIL import Image

from atcd.checkpoint import save_weights
from atcd.config import ConfigError, parse_eval_args, parse_train_args
from atcd.data import load_mnist_mini
from atcd.models import unwrap_timm

VALIDATE = ("--num-samples", "100", "--attack-steps", "5", "--sanity-samples", "0", "--no-progress")


def _one_line_error(r, *needles):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "RESULT" not in r.stdout
    return lines[0]


def _result(r) -> dict:
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])


def _all_zero(sd: dict) -> dict:
    """The same weights with the head's class-0 bias raised so far that every prediction is 0."""
    sd = {k: v.clone() for k, v in sd.items()}
    sd["head.bias"][0] += 1e4
    return sd


@pytest.fixture(scope="module")
def weights(standard_model, tmp_path_factory):
    """A run folder with the trained weights (`model.safetensors`), a second copy that always answers 0, and the
    share of class 0 in the 100 evaluated test digits (what that copy scores)."""
    d = tmp_path_factory.mktemp("run")
    net = unwrap_timm(standard_model)
    save_weights(net, str(d / "model.safetensors"))
    zero = timm.create_model("smallcnn_mnist")
    zero.load_state_dict(_all_zero(net.state_dict()))
    save_weights(zero, str(d / "zero.safetensors"))
    _, labels = load_mnist_mini("test")
    share0 = 100.0 * float(np.mean(labels[[int(i * len(labels) / 100) for i in range(100)]] == 0))
    return {"run": d, "net": net, "zero": zero, "share0": share0}


# --- a bare timm name means pretrained weights -------------------------------------------------------------------

def test_bare_name_without_checkpoint_is_refused_when_it_has_no_pretrained_weights(weights):
    line = _one_line_error(run_main("validate.py", "--model", "smallcnn_mnist", *VALIDATE),
                           "smallcnn_mnist has no pretrained weights", "--checkpoint", "--no-pretrained")
    assert "random" in line
    # on purpose, random weights are evaluated: chance level on real digits
    assert _result(run_main("validate.py", "--no-pretrained", "--attacks", "clean", *VALIDATE))["clean"] < 40


def test_bare_timm_name_loads_its_pretrained_weights_or_says_why_not_offline(monkeypatch, tmp_path):
    """test_resnet has timm pretrained weights (timm/test_resnet.r160_in1k); offline and not cached they cannot load:
    one line naming the model and the ways out, instead of an evaluation of random weights."""
    import huggingface_hub.constants as hf
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    _one_line_error(run_main("validate.py", "--model", "test_resnet", *VALIDATE),
                    "test_resnet", "pretrained weights cannot be fetched", "--checkpoint", "local-dir:",
                    "HF_HUB_OFFLINE=1", "download.py hf-hub:timm/test_resnet.r160_in1k")


# --- --data-dir without --dataset is an image folder ------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ with 3 real test digits per class (30 images each)."""
    root = tmp_path_factory.mktemp("digits")
    images, labels = load_mnist_mini("test")
    for split in ("train", "val"):
        for c in range(10):
            os.makedirs(root / split / str(c))
            for j, i in enumerate(np.flatnonzero(labels == c)[:3]):
                Image.fromarray(images[i]).save(root / split / str(c) / f"{j}.png")
    return root


@pytest.mark.parametrize("script", ["train_atcd.py", "validate.py"])
def test_missing_data_dir_is_an_error_not_mnist(script, tmp_path, weights):
    extra = (("--method", "standard", "--epochs", "1", "--output", str(tmp_path), "--experiment", "x")
             if script == "train_atcd.py" else ("--checkpoint", str(weights["run"]), "--eps", "0.3"))
    _one_line_error(run_main(script, "--data-dir", "/nonexistent/data", "--no-progress", *extra),
                    "--data-dir '/nonexistent/data': no such directory")
    assert not (tmp_path / "x").exists()
    _one_line_error(run_main(script, "--dataset", "mnist-mini", "--data-dir", str(tmp_path), "--no-progress", *extra),
                    "is not read by the built-in dataset mnist-mini")


def test_data_dir_alone_reads_the_image_folder(folder, weights, tmp_path):
    res = tmp_path / "r.json"
    r = run_main("validate.py", "--data-dir", str(folder), "--split", "val", "--checkpoint", str(weights["run"]),
                 "--eps", "0.3", *VALIDATE, "--results-file", str(res))
    assert _result(r)["clean"] > 80
    out = json.loads(res.read_text())
    assert out["dataset"] == "folder" and out["num_samples"] == 30  # the folder's 30 digits, not mnist-mini's 1000
    assert parse_train_args(["--data-dir", str(folder), "--eps", "0.3"]).dataset == "folder"
    r = run_main("train_atcd.py", "--data-dir", str(folder), "--eps", "0.3", "--method", "standard", "--epochs", "1",
                 "-b", "10",
                 "--eval-samples", "30", "--no-progress", "--output", str(tmp_path), "--experiment", "t")
    trained = _result(r)
    assert trained["num_updates"] == 3 and trained["eval_n"] == 30  # the folder's 30 digits, in batches of 10
    assert "dataset: folder" in (tmp_path / "t" / "args.yaml").read_text()


# --- no silent eps -----------------------------------------------------------------------------------------------

def _local_dir(net, path, eps=None):
    from timm.models import save_for_hf
    save_for_hf(net, str(path), safe_serialization=True)
    if eps is not None:
        (path / "results.json").write_text(json.dumps({"eps": eps, "results": {}}))
    return f"local-dir:{path}"


def test_eps_comes_from_the_dataset_or_the_card_or_is_required(folder, weights, tmp_path):
    _one_line_error(run_main("validate.py", "--data-dir", str(folder), "--split", "val", "--checkpoint",
                             str(weights["run"]), *VALIDATE), "--eps is required", "folder")
    cfg = parse_eval_args(["--checkpoint", str(weights["run"]), "--attack-steps", "5"])
    assert cfg.attack.eps == 0.3 and cfg.attack.step_size == pytest.approx(2.5 * 0.3 / 5)  # mnist-mini's
    carded = _local_dir(weights["net"], tmp_path / "carded", eps=0.1)
    cfg = parse_eval_args(["--model", carded, "--data-dir", str(folder), "--attack-steps", "5"])
    assert cfg.attack.eps == 0.1 and cfg.attack.step_size == pytest.approx(2.5 * 0.1 / 5)  # the card's
    assert parse_eval_args(["--model", carded, "--eps", "8/255"]).attack.eps == pytest.approx(8 / 255)
    other = _local_dir(weights["net"], tmp_path / "other", eps=0.2)
    with pytest.raises(ConfigError, match="record different eps"):
        parse_eval_args(["--model", f"{carded},{other}"])


# --- several models: one leaderboard ------------------------------------------------------------------------------

def test_two_local_dir_models_make_a_two_row_csv_leaderboard(weights, tmp_path):
    a = _local_dir(weights["net"], tmp_path / "models" / "a")
    b = _local_dir(weights["zero"], tmp_path / "models" / "b")
    lb = tmp_path / "lb.csv"
    r = run_main("validate.py", "--model", f"{a},{b}", "--attacks", "clean,pgd", "--results-format", "csv",
                 "--results-file", str(lb), *VALIDATE)
    printed = _result(r)["leaderboard"]
    with open(lb, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["model"] for row in rows] == [a, b]
    assert list(rows[0]) == ["model", "checkpoint", "clean", "pgd", "worst_case", "n", "eps", "seconds"]
    assert all(row["n"] == "100" and float(row["eps"]) == 0.3 and float(row["seconds"]) > 0 for row in rows)
    assert float(rows[1]["clean"]) == pytest.approx(weights["share0"])  # b always answers 0
    assert float(rows[0]["clean"]) > 90 and float(rows[0]["pgd"]) <= float(rows[0]["clean"])
    assert [float(row["pgd"]) for row in rows] == [p["pgd"] for p in printed]
    table = r.stdout.splitlines()[-5:-1]  # printed before RESULT: header, rule, a row per model
    assert table[0].split() == [c for c in rows[0] if c != "checkpoint"]  # (no checkpoint column: none given)
    assert table[2].startswith(a) and table[3].startswith(b)
    # each row is what a single-model run measures
    single = tmp_path / "a.json"
    _result(run_main("validate.py", "--model", a, "--attacks", "clean,pgd", "--results-file", str(single), *VALIDATE))
    alone = json.loads(single.read_text())
    assert "results" in alone and "leaderboard" not in alone  # one model: the results JSON --update-card reads
    assert {k: v["top1"] for k, v in alone["results"].items()} == pytest.approx(
        {k: float(rows[0][k]) for k in alone["results"]}, abs=1e-4)  # (the rows keep 4 decimals)
    # the same two models from a glob and from a --model-list file; json holds the leaderboard and each run
    listing = tmp_path / "models.txt"
    listing.write_text(f"# two models\n{a}\n\n{b}\n")
    for how in (["--model", f"local-dir:{tmp_path / 'models'}/*"], ["--model-list", str(listing)]):
        lbj = tmp_path / "lb.json"
        _result(run_main("validate.py", *how, "--attacks", "clean", "--results-file", str(lbj), *VALIDATE))
        got = json.loads(lbj.read_text())
        assert [row["model"] for row in got["leaderboard"]] == [a, b], how
        assert [run["results"]["clean"]["top1"] for run in got["runs"]] == pytest.approx(
            [float(row["clean"]) for row in rows], abs=1e-4)
    _one_line_error(run_main("validate.py", "--model", f"{a},{b}", "--checkpoint", str(weights["run"]), *VALIDATE),
                    "--checkpoint is for one model")


# --- --use-ema ----------------------------------------------------------------------------------------------------

def test_use_ema_evaluates_the_ema_weights_beside_the_checkpoint(weights, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_weights(weights["net"], str(run / "model.safetensors"))
    _one_line_error(run_main("validate.py", "--checkpoint", str(run), "--use-ema", *VALIDATE),
                    f"no EMA weights {run / 'model_ema.safetensors'}")
    _one_line_error(run_main("validate.py", "--use-ema", *VALIDATE), "--use-ema needs --checkpoint")
    save_weights(weights["zero"], str(run / "model_ema.safetensors"))  # an EMA that always answers 0
    raw = _result(run_main("validate.py", "--checkpoint", str(run / "model.safetensors"), "--attacks", "clean",
                           *VALIDATE))
    for ckpt in (run, run / "model.safetensors"):
        res = tmp_path / "ema.json"
        ema = _result(run_main("validate.py", "--checkpoint", str(ckpt), "--use-ema", "--attacks", "clean",
                               *VALIDATE, "--results-file", str(res)))
        assert ema["clean"] == pytest.approx(weights["share0"]) and raw["clean"] > 90
        assert json.loads(res.read_text())["checkpoint"] == str(run / "model_ema.safetensors")
