"""Bad input through the real scripts: one `error:` line naming the problem, exit code 2, no traceback, no output.

The many option/checkpoint cases call the scripts' `main(argv)` in-process (what they print and return is the
point; an interpreter start-up per case cost minutes); the cases that need a real process (yaml, data folders,
worker processes, pickle loading) run the scripts as a user does.

Corrupt images are the exception to the exit code: by default they are skipped, counted and named in a warning
(the run succeeds); `--strict-data` turns them into the same one-line error.
"""
import os

import numpy as np
import pytest
import torch
from conftest import run_main, run_script
from PIL import Image

from atcd.checkpoint import CheckpointError, load_weights, save_weights
from atcd.data import create_atcd_dataset, create_atcd_loader, load_mnist_mini
from atcd.data.factory import DataError

# the cheapest runs that still reach the data, the model and the checkpoint
TRAIN = ("--method", "standard", "--epochs", "1", "--train-samples-per-epoch", "256", "--eval-samples", "50",
         "--no-progress")
VALIDATE = ("--num-samples", "20", "--attacks", "clean", "--sanity-samples", "0", "--no-progress")  # sanity: test_sanity
FOLDER = ("--eps", "0.3", "--no-pretrained")  # a folder defines no eps; random weights read the data as well


def _assert_one_line_error(r, needle: str):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert lines and lines[-1].startswith("error:"), r.stderr[-2000:]
    assert needle in lines[-1], (needle, lines[-1])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "RESULT" not in r.stdout


def _assert_no_weights(run_dir, config_error: bool = False):
    """No run dir at all after a config error; after a data error no weights, checkpoint or summary (at most the
    args record the trainer writes before it builds the loaders)."""
    if config_error:
        assert not os.path.exists(run_dir), os.listdir(run_dir)
    left = set(os.listdir(run_dir)) if os.path.isdir(run_dir) else set()
    assert left <= {"args.yaml"}, left


def _write_pngs(root, per_class: int, split: str = "test"):
    """`per_class` real mnist-mini digits of each class as `root/<class>/<i>.png`."""
    images, labels = load_mnist_mini(split)
    for c in range(10):
        os.makedirs(os.path.join(root, str(c)), exist_ok=True)
        for j, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            Image.fromarray(images[i]).save(os.path.join(root, str(c), f"{j}.png"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{'bad': train/ + val/ with a non-image .png (3/0.png) and a half-written one (5/1.png) in each; 'loose':
    train/ with images outside class folders; 'empty': an empty train/}. 2 digits per class: 20 images a split."""
    base = tmp_path_factory.mktemp("folders")
    bad = base / "bad"
    for split in ("train", "val"):
        _write_pngs(str(bad / split), 2)
        (bad / split / "3" / "0.png").write_bytes(b"this is not a png")
        png = (bad / split / "5" / "1.png").read_bytes()
        (bad / split / "5" / "1.png").write_bytes(png[:len(png) // 2])
    loose = base / "loose" / "train"
    loose.mkdir(parents=True)
    images, _ = load_mnist_mini("test")
    for i in range(3):
        Image.fromarray(images[i]).save(loose / f"{i}.png")
    (base / "empty" / "train").mkdir(parents=True)
    return {"bad": bad, "loose": base / "loose", "empty": base / "empty"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Files for `--checkpoint`: real smallcnn_mnist weights as safetensors / truncated / .pth, another architecture's
    safetensors, and a pickle whose `__reduce__` would write a canary file."""
    import timm

    from atcd import models  # noqa: F401  (registers smallcnn_mnist)
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    small = timm.create_model("smallcnn_mnist")
    save_weights(small, str(d / "small.safetensors"))
    blob = (d / "small.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(blob[:len(blob) // 2])
    torch.save({"model": small.state_dict()}, d / "small.pth")
    save_weights(timm.create_model("test_resnet", num_classes=10), str(d / "other_arch.safetensors"))
    canary = d / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    torch.save({"conv.weight": Evil()}, d / "evil.pth")
    return {"dir": d, "canary": canary, "model": small}


# (case id, extra train args, distinctive word of the error line); the --dataset cases fail at the data stage
TRAIN_CASES = [
    ("unknown-model", ["--model", "not_a_model_xyz"], "not_a_model_xyz"),
    ("unknown-method", ["--method", "nope"], "unknown method"),
    ("eps-negative", ["--eps", "-0.1"], "--eps"),
    ("eps-above-1", ["--eps", "8"], "[0,1] pixel units"),
    ("K-zero", ["--method", "atcd", "--atcd-K", "0"], "--atcd-K"),
    ("T-zero", ["--method", "atcd", "--atcd-T", "0"], "--atcd-T"),
    ("step-above-2eps", ["--method", "pgd", "--eps", "0.1", "--attack-step", "0.3"], "--attack-step 0.3 > 2 x"),
    ("batch-size-zero", ["--batch-size", "0"], "--batch-size"),
    ("checkpoint-keep-zero", ["--checkpoint-keep", "0"], "--checkpoint-hist"),
    ("checkpoint-every-negative", ["--checkpoint-every-steps", "-1"], "--checkpoint-every-steps"),
    ("max-bad-steps-zero", ["--max-bad-steps", "0"], "--max-bad-steps"),
    ("log-interval-zero", ["--log-interval", "0"], "--log-interval"),
    ("reuse-grad-not-atcd", ["--method", "free", "--reuse-grad"], "--reuse-grad"),
    ("reuse-grad-kinetic", ["--method", "atcd", "--reuse-grad", "--mh-kinetic", "1"], "--mh-kinetic > 0"),
    ("resume-missing", ["--resume", "/nonexistent/checkpoint-0003"], "/nonexistent/checkpoint-0003"),
    ("folder-without-data-dir", ["--dataset", "folder"], "--data-dir"),
    ("data-dir-missing", ["--dataset", "folder", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
]


@pytest.mark.parametrize("extra,needle", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_config(tmp_path, extra, needle):
    # the last occurrence of a flag wins in argparse, so the case's own values override TRAIN's
    r = run_main("train_atcd.py", *TRAIN, *extra, "--output", str(tmp_path), "--experiment", "x")
    _assert_one_line_error(r, needle)
    _assert_no_weights(tmp_path / "x", config_error="--dataset" not in extra)


def test_train_into_a_folder_holding_a_run_is_refused_or_replaced(tmp_path):
    """A second run into the same experiment folder would append its epochs to the first run's summary.csv and
    prune between two runs' checkpoints: refused, the earlier run untouched; --overwrite replaces it whole."""
    first = run_main("train_atcd.py", *TRAIN, "--output", str(tmp_path), "--experiment", "x")
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "x"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "args.yaml"}
    again = run_main("train_atcd.py", *TRAIN, "--lr", "0.5", "--output", str(tmp_path), "--experiment", "x")
    _assert_one_line_error(again, "--overwrite")
    assert "already holds a training run" in again.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "args.yaml"} == before
    both = run_main("train_atcd.py", *TRAIN, "--overwrite", "--resume", "auto", "--output", str(tmp_path),
                    "--experiment", "x")
    _assert_one_line_error(both, "--overwrite")
    fresh = run_main("train_atcd.py", *TRAIN, "--epochs", "2", "--overwrite", "--output", str(tmp_path),
                     "--experiment", "x")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    rows = (run / "summary.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]  # this run's epochs only, one header
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0000", "checkpoint-0001"]


def test_train_unknown_yaml_key(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("epsilon: 0.3\n")
    r = run_main("train_atcd.py", "-c", str(cfg), *TRAIN, "--output", str(tmp_path), "--experiment", "x")
    _assert_one_line_error(r, "epsilon")
    _assert_no_weights(tmp_path / "x", config_error=True)


@pytest.mark.slow  # a subprocess, as a user runs it (loader workers, real exit code)
@pytest.mark.parametrize("which,needle", [("empty", "Found 0 images"), ("loose", "outside class sub-folders")])
def test_train_data_dir_without_classes(tmp_path, folders, which, needle):
    r = run_script("train_atcd.py", *TRAIN, *FOLDER, "--dataset", "folder", "--data-dir", str(folders[which]),
                   "--output", str(tmp_path), "--experiment", "x")
    _assert_one_line_error(r, needle)
    _assert_no_weights(tmp_path / "x")


@pytest.mark.slow  # a subprocess, as a user runs it (loader workers, real exit code)
def test_train_strict_data_names_the_corrupt_file(tmp_path, folders):
    # 20 images in one batch: the first step reads the corrupt files
    r = run_script("train_atcd.py", "--method", "standard", "--epochs", "1", "--batch-size", "20", *FOLDER,
                   "--eval-samples", "20", "--no-progress", "--dataset", "folder", "--data-dir", str(folders["bad"]),
                   "--strict-data", "--output", str(tmp_path), "--experiment", "x")
    _assert_one_line_error(r, "corrupt image " + str(folders["bad"] / "train"))
    _assert_no_weights(tmp_path / "x")


# (case id, extra validate args, distinctive word); checkpoint paths are relative to the `checkpoints` dir
VALIDATE_CASES = [
    ("unknown-model", ["--model", "resnet_9000x"], "resnet_9000x"),
    ("unknown-attack", ["--attacks", "clean,nope"], "nope"),
    ("eps-above-1", ["--eps", "2"], "--eps"),
    ("num-samples-zero", ["--num-samples", "0"], "--num-samples"),
    ("batch-size-zero", ["--batch-size", "0"], "--batch-size"),
    ("step-above-2eps", ["--eps", "0.1", "--attack-step", "0.25"], "--attack-step 0.25 > 2 x"),
    ("checkpoint-missing", ["--checkpoint", "{d}/missing.safetensors"], "checkpoint not found"),
    ("other-architecture", ["--checkpoint", "{d}/other_arch.safetensors"], "does not fit model"),
    ("truncated-safetensors", ["--checkpoint", "{d}/truncated.safetensors"], "not a readable safetensors"),
    ("pth-without-allow-pickle", ["--checkpoint", "{d}/small.pth"], "--allow-pickle"),
    ("pickle-canary", ["--checkpoint", "{d}/evil.pth"], "--allow-pickle"),
    ("pickle-canary-allowed", ["--checkpoint", "{d}/evil.pth", "--allow-pickle"], "weights_only"),
]


@pytest.mark.parametrize("extra,needle", [c[1:] for c in VALIDATE_CASES], ids=[c[0] for c in VALIDATE_CASES])
def test_validate_bad_input(tmp_path, checkpoints, extra, needle):
    results = tmp_path / "results.json"
    extra = [a.format(d=checkpoints["dir"]) for a in extra]
    r = run_main("validate.py", *VALIDATE, *extra, "--results-file", str(results))
    _assert_one_line_error(r, needle)
    assert not results.exists()
    assert not checkpoints["canary"].exists()  # the pickle's code never ran


@pytest.mark.slow  # a subprocess, as a user runs it (loader workers, real exit code)
def test_validate_pth_with_allow_pickle_runs(tmp_path, checkpoints):
    results = tmp_path / "results.json"
    r = run_script("validate.py", *VALIDATE, "--checkpoint", str(checkpoints["dir"] / "small.pth"), "--allow-pickle",
                   "--results-file", str(results))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1].startswith("RESULT ") and results.exists()


def test_load_weights_pickle_layouts_bit_equal(tmp_path, checkpoints):
    """--allow-pickle accepts a plain state dict, one under 'state_dict'/'model', and DDP's 'module.' prefix."""
    import timm
    src = checkpoints["model"].state_dict()
    layouts = {"plain": src, "state_dict": {"state_dict": src}, "ddp": {f"module.{k}": v for k, v in src.items()}}
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match="--allow-pickle"):
            load_weights(timm.create_model("smallcnn_mnist"), str(tmp_path / f"{name}.pt"))
        got = load_weights(timm.create_model("smallcnn_mnist"), str(tmp_path / f"{name}.pt"), allow_pickle=True)
        for k, v in got.state_dict().items():
            assert torch.equal(v, src[k]), (name, k)
    torch.save({"weights": [torch.zeros(2)]}, tmp_path / "odd.pt")  # tensors, but not a state dict
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_weights(timm.create_model("smallcnn_mnist"), str(tmp_path / "odd.pt"), allow_pickle=True)


@pytest.mark.slow  # a subprocess, as a user runs it (loader workers, real exit code)
def test_validate_skips_and_names_corrupt_images(tmp_path, folders):
    """Default: both bad files are skipped (their neighbours stand in), each named once; the run succeeds."""
    results = tmp_path / "results.json"
    r = run_script("validate.py", *VALIDATE, *FOLDER, "--dataset", "folder", "--data-dir", str(folders["bad"]),
                   "--split", "val", "--results-file", str(results))
    assert r.returncode == 0, r.stderr[-2000:]
    val = folders["bad"] / "val"
    skips = [ln for ln in r.stderr.splitlines() if ln.startswith("skipped corrupt image")]
    assert len(skips) == 2, r.stderr[-2000:]
    assert str(val / "3" / "0.png") in skips[0] and "not an image file" in skips[0]
    assert str(val / "5" / "1.png") in skips[1] and "truncated" in skips[1] and "(2 skipped so far)" in skips[1]
    assert results.exists() and '"n": 20' in results.read_text()


@pytest.mark.slow  # a subprocess, as a user runs it (loader workers, real exit code)
@pytest.mark.parametrize("workers,bad_file", [("0", "3/0.png"), ("2", "5/1.png")], ids=["corrupt", "truncated"])
def test_validate_strict_data_names_the_file(tmp_path, folders, workers, bad_file):
    """--strict-data: the first bad file is an error, also when it is met in a loader worker (-j 2)."""
    val = folders["bad"] / "val"
    if bad_file == "5/1.png":  # a folder whose only bad file is the truncated one
        val = tmp_path / "data" / "val"
        _write_pngs(str(val), 2)
        png = (val / "5" / "1.png").read_bytes()
        (val / "5" / "1.png").write_bytes(png[:len(png) // 2])
    results = tmp_path / "results.json"
    r = run_script("validate.py", *VALIDATE, *FOLDER, "--dataset", "folder", "--data-dir", str(val.parent), "--split",
                   "val", "-j", workers, "--strict-data", "--results-file", str(results))
    _assert_one_line_error(r, f"corrupt image {val / bad_file}")
    assert not results.exists()


def test_folder_skip_count_is_shared_by_workers_and_once_per_file(folders):
    """Two epochs over 2 loader workers: 2 distinct bad files counted once each; a threshold aborts."""
    ds = create_atcd_dataset("folder", "val", data_dir=str(folders["bad"]), input_size=(1, 28, 28))
    for _ in range(2):
        n = sum(len(y) for _, y in create_atcd_loader(ds, 4, False, num_workers=2))
        assert n == 20
    assert ds.num_skipped == 2
    # the stand-in is the next readable index: 3/0.png (index 6) is replaced by 3/1.png (index 7)
    assert torch.equal(ds[6][0], ds[7][0]) and ds[6][1] == ds[7][1] == 3
    capped = create_atcd_dataset("folder", "val", data_dir=str(folders["bad"]), input_size=(1, 28, 28),
                                 max_skipped=1)
    with pytest.raises(DataError, match="more than 1 corrupt images"):
        list(create_atcd_loader(capped, 4, False))
