"""ImageNet rehearsal on CPU: the ImageNet-layout folder built from real bundled images (scripts/make_imagenet_like.py),
its oddities, sharding it into the timm/imagenet-1k-wds layout, reading the shards back with timm's reader and the
project's loader, and the SLURM template (syntax, accelerate flags, the SIGUSR1 -> checkpoint -> requeue path run
against stand-ins for srun/scancel/scontrol/accelerate)."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter

import numpy as np
import pytest
import timm
import torch
from conftest import ROOT
from PIL import Image

from atcd.data import create_atcd_dataset, create_wds_loader
from atcd.data.factory import DataError
from atcd.data.shards import shard_index_digits, write_dataset_shards

SYNSETS = ["n01440764", "n01443537", "n01484850", "n01491361"]  # ImageNet-1k labels 0..3
PNG_SIG = b"\x89PNG\r\n\x1a\n"
SBATCH = os.path.join(ROOT, "scripts", "slurm_train.sbatch")


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def maker():
    return _script("make_imagenet_like")  # one module: its parsed MNIST/photos are cached across builds


@pytest.fixture(scope="module")
def folder(maker, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("inet") / "imagenet-like")
    return root, maker.make_imagenet_like(root, classes=4, per_class=6, val_per_class=2, seed=0)


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    """The published names: train shard index 4 digits (1,024 shards), validation 2 (64); two calls, one _info.json."""
    out = str(tmp_path_factory.mktemp("inet_wds"))
    common = {"data_dir": folder[0], "name": "imagenet1k", "shard_size": 5, "key": "filename"}
    write_dataset_shards("folder", out, splits=("train",), shard_digits=4, **common)
    write_dataset_shards("folder", out, splits=("validation",), shard_digits=2, **common)
    return out


def _files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out


def _kind(path):
    """What the bytes of an image file are, whatever its name says."""
    with open(path, "rb") as f:
        head = f.read(8)
    with Image.open(path) as im:  # the header of every file parses, the truncated one included
        fmt, mode = im.format, im.mode
        try:
            im.load()
        except OSError:
            return "truncated"
    if head == PNG_SIG:
        return "png"
    assert fmt == "JPEG" and head[:2] == b"\xff\xd8", path
    return {"CMYK": "cmyk", "L": "grayscale", "RGB": "rgb"}[mode]


def test_layout_and_oddities(folder):
    root, res = folder
    for split, per_class, pattern in (("train", 6, r"{syn}_\d+\.JPEG"), ("val", 2, r"ILSVRC2012_val_\d{{8}}\.JPEG")):
        assert sorted(os.listdir(os.path.join(root, split))) == SYNSETS
        for syn in SYNSETS:
            names = os.listdir(os.path.join(root, split, syn))
            assert len(names) == per_class
            assert all(re.fullmatch(pattern.format(syn=syn), n) for n in names), names
    val_numbers = sorted(int(n[-13:-5]) for syn in SYNSETS for n in os.listdir(os.path.join(root, "val", syn)))
    assert val_numbers == list(range(1, 9))  # numbered across classes, as ILSVRC2012_val_00000001..50000
    assert (res["train"], res["val"], res["synsets"]) == (24, 8, SYNSETS)

    kinds = {rel: _kind(os.path.join(root, rel)) for rel in _files(root)}
    count = Counter(kinds.values())
    assert count["png"] == 1 and count["truncated"] == 1 and count["cmyk"] >= 2 and count["grayscale"] >= 1
    odd = {k: sorted(v) for k, v in res["oddities"].items()}
    assert odd == {k: sorted(r for r, kd in kinds.items() if kd == k) for k in ("grayscale", "cmyk", "png",
                                                                                  "truncated")}
    assert all(r.startswith("train") and r.endswith(".JPEG") for k in ("cmyk", "png", "truncated") for r in odd[k])
    # colour photos stored as grayscale too (class 0 is the astronaut, class 2 coffee), not only grey sources
    assert any(r.split(os.sep)[1] in (SYNSETS[0], SYNSETS[2]) for r in odd["grayscale"])
    with Image.open(os.path.join(root, odd["truncated"][0])) as im, pytest.raises(OSError, match="truncated"):
        im.load()
    for rel in odd["cmyk"] + odd["png"]:  # both decode to RGB
        with Image.open(os.path.join(root, rel)) as im:
            assert im.convert("RGB").getextrema() != ((0, 0), (0, 0), (0, 0))
    sizes = []
    for rel in kinds:
        with Image.open(os.path.join(root, rel)) as im:
            sizes.append(im.size)
    aspects = [w / h for w, h in sizes]
    assert len(set(sizes)) >= 28 and min(aspects) < 0.8 and max(aspects) > 1.25
    assert 64 <= min(min(s) for s in sizes) and max(min(s) for s in sizes) <= 192


def test_classes_are_learnable(folder):
    """Nearest class mean of 16x16 thumbnails, fitted on train, classifies val well above chance (2 of 8)."""
    root, _ = folder

    def load(split):
        xs, ys = [], []
        for c, syn in enumerate(SYNSETS):
            for n in sorted(os.listdir(os.path.join(root, split, syn))):
                try:
                    with Image.open(os.path.join(root, split, syn, n)) as im:
                        xs.append(np.asarray(im.convert("RGB").resize((16, 16)), np.float32).ravel() / 255)
                except OSError:
                    continue  # the truncated file
                ys.append(c)
        return np.stack(xs), np.array(ys)

    xt, yt = load("train")
    xv, yv = load("val")
    means = np.stack([xt[yt == c].mean(0) for c in range(4)])
    pred = ((xv[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert len(yt) == 23 and (pred == yv).sum() >= 6


def test_deterministic_given_the_seed(maker, folder, tmp_path):
    again = str(tmp_path / "again")
    other = str(tmp_path / "other")
    maker.make_imagenet_like(again, classes=4, per_class=6, val_per_class=2, seed=0)
    maker.make_imagenet_like(other, classes=4, per_class=6, val_per_class=2, seed=1)
    ref = _files(folder[0])
    assert _files(again) == ref
    assert _files(other) != ref
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary folder left behind


def test_bad_input_one_error_line_exit_2(maker, folder, tmp_path, capsys):
    cases = [([folder[0]], "not an empty directory"), ([str(tmp_path / "a"), "--classes", "1"], "--classes"),
             ([str(tmp_path / "b"), "--classes", "99"], "--classes"), ([str(tmp_path / "c"), "--per-class", "2"],
                                                                       "--per-class")]
    for argv, needle in cases:
        assert maker.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert sorted(os.listdir(tmp_path)) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert maker.main([str(empty), "--classes", "2", "--per-class", "3"]) == 0  # an empty folder is fine
    assert "2 classes" in capsys.readouterr().out and sorted(os.listdir(empty)) == ["train", "val"]


def test_shards_have_the_published_layout(folder, shards):
    root, _ = folder
    with open(os.path.join(shards, "_info.json")) as f:
        info = json.load(f)
    assert info["classes"] == SYNSETS and set(info["splits"]) == {"train", "validation"}
    tr, va = info["splits"]["train"], info["splits"]["validation"]
    assert tr["filenames"] == [f"imagenet1k-train-{i:04d}.tar" for i in range(5)]
    assert tr["shard_lengths"] == [5, 5, 5, 5, 4]
    assert va["filenames"] == ["imagenet1k-validation-00.tar", "imagenet1k-validation-01.tar"]
    assert (tr["num_samples"], va["num_samples"], va["shard_lengths"]) == (24, 8, [5, 3])
    assert sorted(os.listdir(shards)) == sorted(["_info.json"] + tr["filenames"] + va["filenames"])
    # the published shard counts give the published index widths: 0000..1023 and 00..63
    assert [shard_index_digits(n, "auto") for n in (1024, 64, 5)] == [4, 2, 1]

    for split, folder_split, e in (("train", "train", tr), ("validation", "val", va)):
        keys, pairs = [], []
        for fname, length in zip(e["filenames"], e["shard_lengths"]):
            with tarfile.open(os.path.join(shards, fname)) as t:
                members = [m.name for m in t.getmembers()]
                data = {m: t.extractfile(m).read() for m in members}
            stems = list(dict.fromkeys(m.split(".")[0] for m in members))
            assert len(stems) == length and members == [f"{s}.{x}" for s in stems for x in ("cls", "jpg", "json")]
            for s in stems:
                meta = json.loads(data[f"{s}.json"])
                syn = meta["class_name"]
                path = os.path.join(root, folder_split, syn, f"{s}.JPEG")
                with open(path, "rb") as f:
                    assert data[f"{s}.jpg"] == f.read()  # the original bytes, oddities included
                assert int(data[f"{s}.cls"]) == meta["label"] == SYNSETS.index(syn)
                assert meta["filename"] == f"{s}.JPEG"
                pairs.append((meta["label"], s))
            keys += stems
        on_disk = sorted(n[:-5] for syn in SYNSETS for n in os.listdir(os.path.join(root, folder_split, syn)))
        assert sorted(keys) == on_disk
        # evaluation splits keep the folder's order (class by class), training splits are shuffled once
        assert (pairs == sorted(pairs)) == (split == "validation")


def _folder_labels(root, split):
    return {n[:-5]: SYNSETS.index(syn) for syn in SYNSETS for n in os.listdir(os.path.join(root, split, syn))}


def test_timm_reader_reads_the_shards(folder, shards, caplog):
    root, res = folder
    truncated = os.path.basename(res["oddities"]["truncated"][0])[:-5]
    labels = _folder_labels(root, "train")
    ds = timm.data.create_dataset("wds/imagenet1k", root=shards, split="train")
    assert ds.reader.num_samples == 24 and len(ds.reader.split_info.filenames) == 5  # from our _info.json
    got = list(ds)
    assert len(got) == 23 and all(img.mode == "RGB" for img, _ in got)  # PNG and CMYK decoded, truncated dropped
    expect = Counter(v for k, v in labels.items() if k != truncated)
    assert Counter(t for _, t in got) == expect
    assert any("truncated" in r.getMessage() for r in caplog.records)
    val = list(timm.data.create_dataset("wds/imagenet1k", root=shards, split="validation"))
    assert [t for _, t in val] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_project_loader_reads_the_shards(folder, shards):
    root, res = folder
    truncated = os.path.basename(res["oddities"]["truncated"][0])[:-5]
    tf = {"input_size": (3, 64, 64)}
    for split, folder_split in (("train", "train"), ("val", "val")):  # val: alias of validation
        labels = _folder_labels(root, folder_split)
        loader = create_wds_loader(shards, split, 5, False, num_workers=0, with_keys=True, **tf)
        keys = []
        for x, y, k in loader:
            assert x.dtype == torch.float32 and x.shape[1:] == (3, 64, 64)
            assert 0.0 <= x.min().item() and x.max().item() <= 1.0 and x.std().item() > 0.05
            assert y.tolist() == [labels[key] for key in k]
            keys += list(k)
        assert sorted(keys) == sorted(k for k in labels if k != truncated)  # every good image exactly once
        assert loader.num_skipped == (1 if split == "train" else 0)
    with pytest.raises(DataError, match="strict"):
        list(create_wds_loader(shards, "train", 5, False, strict=True, **tf))
    # the folder itself through CheckedImageFolder: same images, the same one skipped and counted
    ds = create_atcd_dataset("folder", "train", data_dir=root, **tf)
    xs = [ds[i][0] for i in range(len(ds))]
    assert len(xs) == 24 and ds.num_skipped == 1 and all(x.shape == (3, 64, 64) for x in xs)
    with pytest.raises(DataError, match="strict-data"):
        bad = create_atcd_dataset("folder", "train", data_dir=root, strict=True, **tf)
        [bad[i] for i in range(len(bad))]


def test_make_shards_cli_reencode_strict_and_bad_keys(folder, tmp_path, capsys):
    main = _script("make_shards").main
    root, res = folder
    assert main(["--source", "folder", "--data-dir", root, "--out", str(tmp_path / "jpg"), "--image-format", "jpg",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["skipped"] == {"train": 1, "val": 0} and out["splits"]["train"]["num_samples"] == 23
    truncated = os.path.basename(res["oddities"]["truncated"][0])
    for argv, needle in (
            (["--image-format", "jpg", "--strict-data"], truncated),
            (["--source", "mnist-mini", "--key", "filename"], "needs a source with file names"),
            (["--shard-digits", "0"], "--shard-digits")):
        argv = ["--source", "folder", "--data-dir", root, *argv] if argv[0] != "--source" else argv
        assert main([*argv, "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error:") and needle in err[-1], err


def _accelerate_flags(text):
    launch = text[text.index("accelerate launch"):text.index("train_atcd.py")]
    return re.findall(r"(--[a-z_]+)", launch)


def test_slurm_template_syntax_and_accelerate_flags():
    with open(SBATCH) as f:
        text = f.read()
    assert subprocess.run(["bash", "-n", SBATCH], capture_output=True, text=True, check=False).returncode == 0
    lines = text.splitlines()
    first_cmd = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#"))
    directives = [ln.split("#", 2)[1].split()[1] for ln in lines if ln.startswith("#SBATCH")]
    assert all(i < first_cmd for i, ln in enumerate(lines) if ln.startswith("#SBATCH"))  # sbatch stops reading there
    for d in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--signal=B:USR1@180", "--requeue"):
        assert d in directives, d
    flags = _accelerate_flags(text)
    assert flags == ["--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port", "--num_processes",
                     "--multi_gpu", "--mixed_precision"]
    # `accelerate launch --help` through the console script's module (the same parser, whatever PATH holds)
    help_text = subprocess.run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--help"],
                               capture_output=True, text=True, timeout=300, check=False).stdout
    missing = [f for f in flags if not re.search(rf"(^|[\s,]){re.escape(f)}([\s,=]|$)", help_text, re.MULTILINE)]
    assert not missing and "usage" in help_text.lower(), missing


STUBS = {  # stand-ins for the SLURM commands and the launcher, recording what they were asked to do
    "srun": """#!/bin/bash
# run the step's command once, here, as node 0, in its own process group (a SLURM step)
while [[ "$1" == -* ]]; do shift; done
SLURM_NODEID=0 setsid "$@" &
echo $! > "$STATE/step_pgid"
wait $!
""",
    "scancel": """#!/bin/bash
echo "scancel $*" >> "$STATE/calls"
kill -USR1 -- "-$(cat "$STATE/step_pgid")"  # every process of the step, as SLURM signals a step
""",
    "scontrol": """#!/bin/bash
echo "scontrol $*" >> "$STATE/calls"
if [[ "$1 $2" == "show hostnames" ]]; then printf 'gpu-a01\\ngpu-a02\\n'; fi
""",
    "accelerate": """#!/bin/bash
# the launcher (torch's elastic agent) has no SIGUSR1 handler: unless SIGUSR1 is ignored, one kills it
echo "accelerate $*" >> "$STATE/calls"
"$PYTHON" "$STATE/trainer.py" &
wait $!
rc=$?
echo "agent exit $rc" >> "$STATE/calls"
exit $rc
""",
}
TRAINER = """import os, signal, sys, time
state = os.environ["STATE"]
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))  # as atcd/faults.py: finish the step, checkpoint, exit 0
open(os.path.join(state, "trainer.ready"), "w").close()
end = time.time() + 60
while not got and time.time() < end:
    time.sleep(0.05)
time.sleep(0.5)  # writing the checkpoint: nobody may requeue (and so kill) the job before this is done
with open(os.path.join(state, "calls"), "a") as f:
    f.write(f"trainer checkpointed after {len(got)} signal(s)\\n")
sys.exit(0 if got else 1)
"""


def test_slurm_usr1_checkpoints_then_requeues(tmp_path):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    (state / "trainer.py").write_text(TRAINER)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STATE=str(state), PYTHON=sys.executable,
               SLURM_JOB_ID="4242", SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu-a[01-02]", DATA="/d/in1k-wds", OUT="/o/r")
    p = subprocess.Popen(["bash", SBATCH], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        end = time.time() + 60
        while not (state / "trainer.ready").exists() and time.time() < end and p.poll() is None:
            time.sleep(0.05)
        assert (state / "trainer.ready").exists(), p.stdout.read() if p.poll() is not None else "trainer not started"
        os.kill(p.pid, signal.SIGUSR1)  # what --signal=B:USR1@180 does 180 s before the time limit
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    calls = (state / "calls").read_text().splitlines()
    assert p.returncode == 0, out
    assert calls[0] == "scontrol show hostnames gpu-a[01-02]"
    assert calls[1] == ("accelerate launch --num_machines 2 --machine_rank 0 --main_process_ip gpu-a01 "
                        "--main_process_port 29500 --num_processes 16 --multi_gpu --mixed_precision bf16 train_atcd.py "
                        "-c recipes/imagenet_resnet50_atcd.yaml --data-dir /d/in1k-wds --output /o/r --resume auto")
    # one signal reached the trainer, it checkpointed, the launcher survived and exited 0, and only then: requeue
    assert calls[2:] == ["scancel --signal=USR1 4242", "trainer checkpointed after 1 signal(s)", "agent exit 0",
                         "scontrol requeue 4242"]


def test_crops_that_fill_the_source_exactly_do_not_fail(maker, tmp_path):
    """10 classes x 40 (the rehearsal's default size) draws a crop whose rescaled height exceeds the photo's by a
    rounding error: the crop's offset range must be clamped at 0 (it was a numpy 'high - low < 0' error)."""
    res = maker.make_imagenet_like(str(tmp_path / "big"), classes=10, per_class=40, seed=0)
    assert sum(1 for _ in (tmp_path / "big" / "train").rglob("*.JPEG")) == 400, res
