"""Publishing that round-trips through plain timm: a stock timm architecture (resnet18 at 32 px) trained briefly on
the bundled MNIST digits exported as an image folder, validated, published; then a process that never imports atcd
loads it with `timm.create_model('local-dir:...')`, transforms the same images with timm's own
`resolve_data_config` + `create_transform`, and must measure the clean accuracy on the card.

Also: `--weights final|best|ema` (the results must have measured the chosen file), the RobustBench-grade card and
`--robustbench-info`.
"""
import json
from types import SimpleNamespace

import pytest
from conftest import run_main, run_script
from huggingface_hub import ModelCard
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # the module fixture trains, validates and publishes through the scripts
REPO = "atcd-test/resnet18-digits-32px"
LICENSE = ("--license", "apache-2.0")  # trained on an image folder: publish asks which license the weights carry


def _ok(r):
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r


def _validate(run, weights, results, attacks="clean", n="200"):
    return run_main("validate.py", "--model", "resnet18", "--num-classes", "10", "--checkpoint", str(weights),
                      "--data-dir",
                      str(run.data), "--input-size", "3", "32", "32", "--eps", "0.3", "--attacks", attacks,
                      "--num-samples", n, "--sanity-samples", "0", "--no-progress", "--results-file", str(results))


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """Export mnist-mini as a folder, train resnet18 at 32 px for one short epoch (EMA and best-holdout weights
    too), validate the final weights clean + AutoAttack (ε = 0.3: a standard model falls to APGD-CE at once) on 200
    strided test images, publish them."""
    root = tmp_path_factory.mktemp("r18")
    data, run = root / "digits", root / "run"
    _ok(run_main("scripts/export_dataset.py", "mnist-mini", str(data), "--no-progress"))
    _ok(run_main("train_atcd.py", "--model", "resnet18", "--data-dir", str(data), "--input-size", "3", "32", "32",
                   "--num-classes", "10", "--method", "standard", "--epochs", "1", "--train-samples-per-epoch",
                   "1024", "--batch-size", "32", "--no-aug", "--opt", "sgd", "--lr", "0.02", "--eps", "0.3",
                   "--eval-samples", "50",
                   "--model-ema", "--model-ema-decay", "0.9", "--early-stop", "robust", "--holdout", "50",
                   "--no-progress", "--output", str(root), "--experiment", "run"))
    ns = SimpleNamespace(root=root, data=data, run=run, export=root / "export")
    _ok(_validate(ns, run / "model.safetensors", run / "results.json", attacks="clean,autoattack"))
    _ok(run_main("scripts/publish.py", str(run), "--repo-id", REPO, *LICENSE, "--out", str(ns.export),
                 "--robustbench-info", "--rb-name", "digits r18", "--rb-authors", "A. Tester", "--rb-dataset", "mnist"))
    ns.results = json.loads((run / "results.json").read_text())
    ns.card = ModelCard.load(ns.export / "README.md")
    return ns


# runs in a fresh interpreter that never imports atcd: plain timm, as a user of the Hub model would
PLAIN_TIMM = r"""
import json, sys
import timm, torch
from timm.data import create_dataset, create_transform, resolve_data_config
export, images, indices = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = timm.create_model("local-dir:" + export, pretrained=True).eval()
cfg = resolve_data_config({}, model=model)
ds = create_dataset("", root=images, transform=create_transform(**cfg))
loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, indices), batch_size=64)
correct = 0
with torch.no_grad():
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
assert not any(m == "atcd" or m.startswith("atcd.") for m in sys.modules), "atcd was imported"
print(json.dumps({"input_size": list(cfg["input_size"]), "crop_pct": cfg["crop_pct"], "mean": list(cfg["mean"]),
                  "std": list(cfg["std"]), "interpolation": cfg["interpolation"], "correct": correct,
                  "n": len(indices)}))
"""


def test_plain_timm_measures_the_cards_clean_accuracy(r18):
    cfg = json.loads((r18.export / "config.json").read_text())["pretrained_cfg"]
    assert "test_input_size" not in cfg and "test_crop_pct" not in cfg  # resnet18's own cfg has both (288 px)
    dc = r18.results["data_config"]
    assert dc["input_size"] == [3, 32, 32] and dc["crop_pct"] == 1.0
    indices = r18.results["images"]["indices"]
    assert len(indices) == 200 and r18.results["images"]["split_size"] == 1000
    env = {"PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}  # nothing of this repository on the path
    r = _ok(run_script("-c", PLAIN_TIMM, str(r18.export), str(r18.data / "val"), json.dumps(indices), env=env))
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["input_size"] == dc["input_size"] and got["crop_pct"] == dc["crop_pct"]
    assert got["mean"] == dc["mean"] and got["std"] == dc["std"] and got["interpolation"] == dc["interpolation"]
    card_clean = next(e.metric_value for e in r18.card.data.eval_results if e.metric_args["attack"] == "clean")
    assert round(100 * got["correct"] / got["n"], 2) == card_clean
    assert 100 * got["correct"] / got["n"] == pytest.approx(r18.results["results"]["clean"]["top1"], abs=1e-4)
    assert 50 < card_clean < 100  # a trained model, not a constant prediction: the equality above means something


def test_stock_timm_card_promises_plain_timm(r18):
    assert r18.card.data.library_name == "timm" and "timm" in r18.card.data.tags
    assert "import atcd" not in r18.card.text and "`pip install timm`" in r18.card.text


def test_card_is_robustbench_grade(r18):
    text, res = r18.card.text, r18.results
    assert res["autoattack_package"]["package"] == "pyautoattack"
    import importlib.metadata
    version = importlib.metadata.version("pyautoattack")
    assert res["autoattack_package"]["version"] == version
    assert f"`pyautoattack` {version}, version `standard`" in text
    assert "200 of the 1000 images of" in text and "0, 5, 10, 15, 20" in text  # the strided ids
    assert "threat model: Linf, ε = 0.3" in text and "extra training data: no" in text
    assert "training recipe: standard; 1 epochs" in text
    assert f"sha256 `{res['weights_sha256']}`" in text


def test_robustbench_model_info(r18):
    info = json.loads((r18.export / "robustbench_model_info.json").read_text())
    assert set(info) == {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                         "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote"}
    res = r18.results["results"]
    assert info["clean_acc"] == f"{res['clean']['top1']:.2f}"
    assert info["autoattack_acc"] == info["reported"] == f"{res['autoattack']['top1']:.2f}"
    assert info["eps"] == "0.3" and info["additional_data"] is False and info["architecture"] == "resnet18"
    assert info["name"] == "digits r18" and info["authors"] == "A. Tester" and info["dataset"] == "mnist"
    assert "not the full test set" in info["footnote"] and "pyautoattack" in info["footnote"]


def test_robustbench_info_needs_autoattack(r18, tmp_path):
    _ok(_validate(r18, r18.run / "model.safetensors", tmp_path / "clean.json", n="50"))
    r = run_main("scripts/publish.py", str(r18.run), "--repo-id", REPO, *LICENSE, "--out", str(tmp_path / "x"),
                   "--results", str(tmp_path / "clean.json"), "--robustbench-info")
    assert r.returncode == 2 and "no autoattack" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("which,name", [("best", "model_best.safetensors"), ("ema", "model_ema.safetensors")])
def test_weights_choice_needs_results_of_that_file(r18, tmp_path, which, name):
    out = tmp_path / "export"
    r = run_main("scripts/publish.py", str(r18.run), "--repo-id", REPO, *LICENSE, "--out", str(out), "--weights", which)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert f"not on {r18.run / name}" in err
    assert f"python validate.py --model resnet18 --checkpoint {r18.run / name}" in err
    results = tmp_path / f"results_{which}.json"
    _ok(_validate(r18, r18.run / name, results, n="50"))
    _ok(run_main("scripts/publish.py", str(r18.run), "--repo-id", REPO, *LICENSE, "--out", str(out), "--weights", which,
                   "--results", str(results)))
    published, chosen = load_file(out / "model.safetensors"), load_file(r18.run / name)
    final = load_file(r18.run / "model.safetensors")
    assert published.keys() == chosen.keys() and all((published[k] == chosen[k]).all() for k in chosen)
    if which == "ema":  # (a one-epoch run's best epoch is its last: the same tensors, in another file)
        assert any(not (chosen[k] == final[k]).all() for k in final)  # the choice made a difference
    assert f"the run's `{name}`" in (out / "README.md").read_text()


def test_results_of_rewritten_weights_are_refused(r18, tmp_path):
    """Same path, other bytes: the sha256 recorded at evaluation time no longer matches."""
    results = json.loads((r18.run / "results.json").read_text())
    results["weights_sha256"] = "0" * 64
    (tmp_path / "stale.json").write_text(json.dumps(results))
    r = run_main("scripts/publish.py", str(r18.run), "--repo-id", REPO, *LICENSE, "--out", str(tmp_path / "x"),
                   "--results", str(tmp_path / "stale.json"))
    assert r.returncode == 2 and "was measured on" in r.stderr and "python validate.py" in r.stderr
