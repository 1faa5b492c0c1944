"""The evaluation plan: fixed chunks of the global order shared out over processes, per-chunk attack seeds, and
RobustBench's explicit list of evaluated images (`validate.py --sample-ids FILE`) on folders and shards.
Real digits from mnist-mini throughout, evaluated by the suite's trained small CNN."""
import io
import json
import os

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import run_main
from PIL import Image

from atcd.attacks import AttackConfig
from atcd.attacks.pgd import pgd_attack
from atcd.checkpoint import save_weights
from atcd.data import EvalPlan, MnistMini, chunk_seed, create_eval_loader, create_wds_loader
from atcd.data.eval_plan import match_sample_ids
from atcd.data.factory import DataError
from atcd.data.shards import write_dataset_shards, write_info
from atcd.engine import evaluate_attacks

CLASSES = 3
PER_CLASS = 6


def test_chunks_are_shared_round_robin_and_cover_every_sample_once():
    plans = [EvalPlan(tuple(range(0, 40, 2)), 8, rank, 2) for rank in range(2)]
    assert [p.chunk_ids for p in plans] == [[0, 2], [1]]
    assert plans[0].chunk(2) == [32, 34, 36, 38] and plans[1].num_rank_samples == 8
    got = sorted(x for p in plans for c in p.chunk_ids for x in p.chunk(c))
    assert got == list(range(0, 40, 2))
    with pytest.raises(DataError, match="increasing"):
        EvalPlan((3, 1), 8)


def test_match_sample_ids_by_path_or_stem_and_unknown_ids_fail():
    names = ["n01/ILSVRC2012_val_00000007.JPEG", "n02/ILSVRC2012_val_00000003.JPEG", "n02/x.png"]
    assert match_sample_ids(["n02/ILSVRC2012_val_00000003.JPEG", "ILSVRC2012_val_00000007"], names, "d") == [0, 1]
    with pytest.raises(DataError, match="1 of 2 ids are not in d .*'nope.JPEG'"):
        match_sample_ids(["x", "nope.JPEG"], names, "d")
    with pytest.raises(DataError, match="ambiguous"):
        match_sample_ids(["a"], ["c1/a.png", "c2/a.png"], "d")


def test_a_chunk_is_attacked_with_its_own_seed_whatever_the_process_count(standard_model, mnist_test_batch,
                                                                          monkeypatch):
    """Chunks 0..2 in one loader, and chunk 1 alone as rank 1 of 2 gets it: the attack sees the same seed for chunk
    1 both times (a function of the run's seed and the chunk), another seed for every other chunk, and the same
    per-example PGD results."""
    x, y = mnist_test_batch[0][:24], mnist_test_batch[1][:24]
    cfg = AttackConfig(eps=0.15, steps=2, step_size=0.1, seed=3)
    seen = []

    def recorder(model, xb, yb, c):
        seen.append((c.seed, float(xb.sum())))
        return pgd_attack(model, xb, yb, c)

    monkeypatch.setattr("atcd.engine.get_attack", lambda name: recorder)

    class Rank1(list):
        chunk_ids = (1,)

    all3 = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]
    full = evaluate_attacks(standard_model, all3, ["pgd"], cfg)["pgd"]["_ok"]
    alone = evaluate_attacks(standard_model, Rank1([all3[1]]), ["pgd"], cfg)["pgd"]["_ok"]
    assert seen[3] == seen[1] and len({s for s, _ in seen}) == 3
    assert seen[1][0] == chunk_seed(3, 1) != chunk_seed(4, 1)
    assert torch.equal(full[8:16], alone)


@pytest.fixture(scope="module")
def digits(tmp_path_factory, standard_model):
    """A small ImageNet-like folder of real digits (`val/<class>/<stem>.png`), its shards with file-stem keys, and
    the suite's trained CNN as a checkpoint."""
    root = tmp_path_factory.mktemp("ids")
    ds = MnistMini("test")
    for c in range(CLASSES):
        idx = (ds.targets == c).nonzero().squeeze(1)[:PER_CLASS]
        os.makedirs(root / "folder" / "val" / f"c{c}")
        for i in idx.tolist():
            img = (ds.images[i, 0] * 255).round().to(torch.uint8).numpy()
            Image.fromarray(img, mode="L").save(root / "folder" / "val" / f"c{c}" / f"img_{i:05d}.png")
    write_dataset_shards("folder", str(root / "shards"), splits=("val",), data_dir=str(root / "folder"),
                         shard_size=5, key="filename")
    ckpt = str(root / "model.safetensors")
    save_weights(standard_model.model, ckpt)
    return root, ckpt


def _validate(root, ckpt, kind, data, *extra):
    out = root / f"res-{kind}.json"
    r = run_main("validate.py", "--model", "smallcnn_mnist", "--checkpoint", ckpt, "--dataset", kind, "--data-dir",
                 str(data), "--split", "val", "--in-chans", "1", "--input-size", "1", "28", "28", "--eps", "0.1",
                 "--attacks", "clean", "--sanity-samples", "0", "-b", "4", "--no-progress", "--results-file",
                 str(out), *extra)
    return r, (json.loads(out.read_text()) if r.returncode == 0 else None)


def test_sample_ids_select_exactly_the_listed_images_on_folder_and_shards(digits, standard_model, tmp_path):
    root, ckpt = digits
    names = sorted(f"c{c}/{f}" for c in range(CLASSES) for f in os.listdir(root / "folder" / "val" / f"c{c}"))
    listed = [names[9], names[1], os.path.splitext(os.path.basename(names[14]))[0], names[4], names[16]]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# RobustBench-style list\n" + "\n".join(listed) + "\n")
    picked = sorted([1, 4, 9, 14, 16])  # evaluated in the split's order
    with torch.no_grad():  # what the model says on exactly those files
        xs = torch.stack([torch.from_numpy(np.array(Image.open(root / "folder" / "val" / names[i]))).float()
                          .div(255).unsqueeze(0) for i in picked])
        want = "".join("1" if int(names[i][1]) == p else "0"
                       for i, p in zip(picked, standard_model(xs).argmax(1).tolist()))
    r, folder = _validate(root, ckpt, "folder", root / "folder", "--sample-ids", str(ids_file))
    assert r.returncode == 0, r.stderr
    assert folder["evaluated_ids"] == [names[i] for i in picked]
    assert folder["num_samples"] == 5 and folder["results"]["clean"]["correct"] == want
    r, shards = _validate(root, ckpt, "wds", root / "shards", "--sample-ids", str(ids_file))
    assert r.returncode == 0, r.stderr
    assert shards["evaluated_ids"] == [os.path.splitext(os.path.basename(names[i]))[0] for i in picked]
    assert shards["results"] == folder["results"]
    # --num-samples N keeps the first N ids of the list (RobustBench's n_examples), evaluated in the split's order
    r, first2 = _validate(root, ckpt, "wds", root / "shards", "--sample-ids", str(ids_file), "--num-samples", "2")
    assert first2["evaluated_ids"] == [os.path.splitext(os.path.basename(names[i]))[0] for i in (1, 9)]
    # no list: the whole split is "first N"
    r, whole = _validate(root, ckpt, "folder", root / "folder")
    assert whole["evaluated_ids"] == f"first {CLASSES * PER_CLASS}"


@pytest.mark.parametrize("kind", ["folder", "wds"])
def test_unknown_or_duplicate_sample_id_is_a_one_line_error(digits, tmp_path, kind):
    root, ckpt = digits
    data = root / ("folder" if kind == "folder" else "shards")
    for text, needle in (("c0/nope.png\n", "1 of 1 ids are not in"), ("a\na\n", "twice"), ("\n", "no sample ids")):
        (tmp_path / "ids.txt").write_text(text)
        r, _ = _validate(root, ckpt, kind, data, "--sample-ids", str(tmp_path / "ids.txt"))
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and needle in errors[0], r.stderr
    r, _ = _validate(root, ckpt, kind, data, "--sample-ids", str(tmp_path / "missing.txt"))
    assert r.returncode == 2 and "No such file" in r.stderr


def test_shard_eval_yields_one_batch_per_chunk_even_when_a_chunk_is_unreadable(tmp_path, standard_model):
    """Chunk 1 of 3 holds only undecodable members: it still comes out (empty), so batch i stays chunk i, and the
    evaluation counts the 8 readable digits once."""
    ds = MnistMini("test")
    path = tmp_path / "bad-val-0.tar"
    with wds.TarWriter(str(path)) as w:
        for i in range(12):
            img = (ds.images[i, 0] * 255).round().to(torch.uint8).numpy()
            buf = io.BytesIO()
            Image.fromarray(img, mode="L").save(buf, format="PNG")
            w.write({"__key__": f"{i:06d}", "png": buf.getvalue() if not 4 <= i < 8 else b"garbage",
                     "cls": str(int(ds.targets[i])).encode()})
    write_info(str(tmp_path), "bad", {"val": {"name": "val", "num_samples": 12, "filenames": [path.name],
                                              "shard_lengths": [12]}}, [str(c) for c in range(10)])
    for workers in (0, 2):
        loader = create_wds_loader(str(tmp_path), "val", 4, False, num_workers=workers, with_keys=True,
                                   input_size=(1, 28, 28))
        batches = list(loader)
        assert loader.chunk_ids == [0, 1, 2] and [len(k) for _, _, k in batches] == [4, 0, 4]
        assert batches[1][0].shape == (0, 1, 28, 28)
        res = evaluate_attacks(standard_model, loader, ["clean"], AttackConfig(eps=0.0))
        assert res["clean"]["n"] == 8
    folder_like = create_eval_loader(ds, 250, rank=0, world_size=3, num_samples=1000)
    assert folder_like.chunk_ids == [0, 3] and len(folder_like) == 2 and folder_like.num_samples == 500
