"""Resume is bit-identical for every baseline method, with and without an eps warm-up: a run resumed from a
mid-epoch checkpoint (mid-ramp with --eps-warmup-epochs) ends with the uninterrupted run's weights, bit for bit,
and the same summary rows. (ATCD's resume: tests/test_faults.py, test_distributed.py, test_ema_transfer.py.)

In-process runs of train_atcd.py on mnist-mini: 2 epochs x 4 minibatches of 32, Adam (optimizer state to restore),
a checkpoint every 3 minibatches. Test names carry the method (`pytest -k free`)."""
import csv
import json
import os

import pytest
import torch
from conftest import run_main
from safetensors.torch import load_file

METHODS = {  # method -> its own flags, as small as still exercises the method's state
    "standard": (),
    "pgd": ("--attack-steps", "2"),
    "trades": ("--attack-steps", "2"),
    "free": ("--free-m", "2"),
    "yopo": ("--yopo-m", "2", "--yopo-n", "2"),
    "fast": (),
}
COMMON = ("--eps", "0.3", "--epochs", "2", "--train-samples-per-epoch", "128", "-b", "32", "--opt", "adam", "--lr",
          "1e-3", "--eval-samples", "20", "--eval-attack-steps", "1", "--checkpoint-every-steps", "3",
          "--checkpoint-keep", "20", "--no-progress")


def _ok(r):
    """The RESULT line of a run that trained to the end. 8 updates leave the small CNN near chance, which the
    trainer flags as collapsed (exit 4); what is compared here is bit-identity, not accuracy."""
    assert r.returncode in (0, 4), (r.stdout[-2000:], r.stderr[-3000:])
    res = json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])
    assert res["status"] in ("completed", "collapsed"), res
    return res


def _rows(run_dir):
    with open(os.path.join(run_dir, "summary.csv")) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _args(method, warmup):
    return ("--method", method, *METHODS[method], *COMMON, "--eps-warmup-epochs", "1.5" if warmup else "0")


# standard training attacks nothing: --eps-warmup-epochs is refused for it (test_methods.py)
CASES = [(m, w) for m in sorted(METHODS) for w in (False, True) if not (m == "standard" and w)]


@pytest.mark.parametrize("method,warmup", CASES, ids=[f"{m}-{'eps-warmup' if w else 'no-warmup'}" for m, w in CASES])
def test_resume_is_bit_identical(method, warmup, tmp_path):
    args = _args(method, warmup)
    full = _ok(run_main("train_atcd.py", *args, "--output", str(tmp_path), "--experiment", "full"))
    mids = sorted(n for n in os.listdir(tmp_path / "full") if n.startswith("checkpoint-0000-step"))
    assert mids, os.listdir(tmp_path / "full")  # a checkpoint inside epoch 0 (mid-ramp with the warm-up)
    part = _ok(run_main("train_atcd.py", *args, "--output", str(tmp_path), "--experiment", "part",
                        "--resume", str(tmp_path / "full" / mids[0])))
    assert part["num_updates"] == full["num_updates"] and part["status"] == full["status"]
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = _rows(tmp_path / "part")
    assert rows == _rows(tmp_path / "full")[-len(rows):]
    if warmup:
        # train_eps is the last minibatch's: 0.75 of the 1.5-epoch ramp in epoch 0
        assert [float(r["train_eps"]) for r in _rows(tmp_path / "full")] == pytest.approx([0.15, 0.3])


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """mnist-mini as an image folder (what `--data-dir` reads), exported by the project's own script."""
    data = tmp_path_factory.mktemp("digits") / "digits"
    r = run_main("scripts/export_dataset.py", "mnist-mini", str(data), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    return data


@pytest.mark.parametrize("case", ["pgd-bf16", "standard-augmented-folder"])
def test_resume_is_bit_identical_in_bf16_and_with_augmented_folders(case, tmp_path, request):
    """The same mid-epoch resume under bf16 autocast (`--amp --amp-dtype bfloat16`), and on an image folder read
    as colour with the training augmentation (timm's random-resized crops and flips, drawn per epoch: their draws
    must resume too)."""
    if case == "pgd-bf16":
        args = _args("pgd", False) + ("--amp", "--amp-dtype", "bfloat16")
    else:
        folder = request.getfixturevalue("digit_folder")
        args = _args("standard", False) + ("--data-dir", str(folder), "--input-size", "3", "28", "28",
                                            "--in-chans", "3", "--num-classes", "10", "--hflip", "0.5")
    full = _ok(run_main("train_atcd.py", *args, "--output", str(tmp_path), "--experiment", "full"))
    assert full["mixed_precision"] == ("bf16" if case == "pgd-bf16" else "no")
    # inside epoch 1 (2 epochs of 4 minibatches, a checkpoint every 3): the resumed loader must draw epoch 1's
    # augmentation, not epoch 0's
    mids = sorted(n for n in os.listdir(tmp_path / "full") if n.startswith("checkpoint-0001-step"))
    assert mids, os.listdir(tmp_path / "full")
    part = _ok(run_main("train_atcd.py", *args, "--output", str(tmp_path), "--experiment", "part",
                        "--resume", str(tmp_path / "full" / mids[0])))
    assert part["num_updates"] == full["num_updates"]
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = _rows(tmp_path / "part")
    assert rows == _rows(tmp_path / "full")[-len(rows):]


def test_resume_refuses_options_that_differ_from_the_runs_own(tmp_path):
    """`--resume auto` with options that differ from the run's args.yaml (here: ATCD's eps warm-up, whose default
    changed from 0 to half the training, so the same command resumed an older run with a warm-up it never had) is
    refused in one line naming the option, and args.yaml is left as it was; options that only say how the run is
    watched (--workers, --log-interval) may differ; --resume-with-changes continues with the new values."""
    base = ("--method", "atcd", "--atcd-T", "1", "--atcd-K", "1", "--eps", "0.3", "--epochs", "1",
            "--train-samples-per-epoch", "64", "-b", "32", "--eval-samples", "20", "--eval-attack-steps", "1",
            "--no-progress", "--output", str(tmp_path), "--experiment", "run")
    _ok(run_main("train_atcd.py", *base, "--eps-warmup-epochs", "0"))  # a run of the old default
    recorded = (tmp_path / "run" / "args.yaml").read_text()
    r = run_main("train_atcd.py", *base, "--resume", "auto")  # the same command today: the warm-up by default
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: --resume:") and "eps_warmup_epochs 0.0 -> 0.5" in last, last
    assert "--resume-with-changes" in last and "Traceback" not in r.stderr
    assert (tmp_path / "run" / "args.yaml").read_text() == recorded
    _ok(run_main("train_atcd.py", *base, "--eps-warmup-epochs", "0", "--workers", "1", "--log-interval", "3",
                 "--resume", "auto"))
    _ok(run_main("train_atcd.py", *base, "--resume", "auto", "--resume-with-changes"))
    assert "eps_warmup_epochs: 0.5" in (tmp_path / "run" / "args.yaml").read_text()
