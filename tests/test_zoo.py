"""scripts/import_checkpoint.py --robustbench on zoo modules built by the robustbench package itself with seeded random
weights (BatchNorm statistics included), saved as the zoo's files look (a plain state dict, {'state_dict': ...},
'module.' / 'model.' prefixes) and loaded back by robustbench's own `load_model`. The hub folder must give the zoo
module's logits; timm architectures must load with plain timm in a process that never imports this project."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from conftest import run_main, run_script

if importlib.util.find_spec("robustbench") is None:  # imported through atcd.publish.zoo.robustbench() (its alias)
    pytest.skip("the [zoo] extra: pip install --no-deps robustbench==1.1.1", allow_module_level=True)

from atcd.models.hub import HubError
from atcd.publish import zoo, zoo_coverage

REPO = "atcd-test/zoo"
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "import_checkpoint.py")


def _zoo_file(tmp_path, dataset: str, name: str, style: str):
    """(zoo module with seeded random weights, the path of its file written in `style`)."""
    module = zoo.random_zoo_module(dataset, "Linf", name, seed=3)
    sd = zoo.zoo_file_state_dict(module, dataset, name)
    obj = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 99},
           "module": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
           "model": {f"model.{k}": v for k, v in sd.items()}}[style]
    path = tmp_path / f"{name}-{style}.pt"
    torch.save(obj, path)
    return module, str(path)


def _folder_logits(folder: str, x: torch.Tensor) -> torch.Tensor:
    """The hub folder's logits on [0, 1] pixels, normalised with its own data config (timm's pipeline)."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    cfg = model.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, -1, 1, 1), torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std)


@pytest.mark.parametrize("name,style,arch", [
    ("Wong2020Fast", "module", "preact_resnet18_wong_cifar"),          # mu/sigma inside the zoo module
    ("Sehwag2021Proxy_R18", "plain", "resnet18_cifar"),                 # the standard CIFAR ResNet-18
    ("Rebuffi2021Fixing_R18_ddpm", "state_dict", "dm_preact_resnet18_cifar"),  # DeepMind's, Swish
    pytest.param("Chen2020Efficient", "model", "wrn34_10_cifar",         # TRADES WRN, 'model.' prefix, sub_block1
                 marks=pytest.mark.slow),
])
def test_cifar_zoo_file_imports_with_the_zoo_modules_logits(tmp_path, name, style, arch):
    module, path = _zoo_file(tmp_path, "cifar10", name, style)
    out = zoo.import_zoo(f"cifar10/Linf/{name}", str(tmp_path / "out"), REPO, file=path)
    assert out["architecture"] == arch
    assert out["verified"]["max_abs_diff"] <= zoo.LOGIT_TOL
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = module(x)
    import atcd.models  # noqa: F401  (registers the CIFAR architectures)
    ours = _folder_logits(str(tmp_path / "out"), x)
    assert (ours - theirs).abs().max().item() <= zoo.LOGIT_TOL * (1 + theirs.abs().max().item())
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Accuracy reported by RobustBench (not measured here)" in card and "8/255" in card
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["robustbench"]["entry"] == f"cifar10/Linf/{name}" and cfg["pretrained_cfg"]["crop_pct"] == 1.0


@pytest.mark.parametrize("name,style,arch", [
    ("Singh2023Revisiting_ViT-S-ConvStem", "model", "vit_small_convstem_patch16_224"),  # normalised, 'model.' keys
    ("Singh2023Revisiting_ConvNeXt-T-ConvStem", "plain", "convnext_tiny_convstem"),      # raw pixels, stem.stem.*
    ("Standard_R50", "plain", "resnet50"),  # torchvision's own weights file (what pretrained=True downloads)
])
def test_imagenet_convstem_and_standard_files_import_with_the_zoo_modules_logits(tmp_path, name, style, arch):
    """Singh et al.'s ConvStem ViT/ConvNeXt (timm models whose stem robustbench replaced: registered here under
    `*_convstem*`) and Standard_R50 (torchvision's ResNet-50, built without its download) import exactly."""
    module, path = _zoo_file(tmp_path, "imagenet", name, style)
    out = zoo.import_zoo(f"imagenet/Linf/{name}", str(tmp_path / "out"), REPO, file=path, verify_n=1)
    assert out["architecture"] == arch and out["verified"]["max_abs_diff"] <= zoo.LOGIT_TOL
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = module(x)
    import atcd.models  # noqa: F401  (registers the ConvStem architectures)
    ours = _folder_logits(str(tmp_path / "out"), x)
    assert (ours - theirs).abs().max().item() <= zoo.LOGIT_TOL * (1 + theirs.abs().max().item())
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["pretrained_cfg"]["interpolation"] == ("bilinear" if name == "Standard_R50" else "bicubic")


@pytest.mark.slow
def test_imagenet_resnet_loads_with_plain_timm_in_a_fresh_process(tmp_path):
    """torchvision ResNet-18 of Salman et al. (Res256Crop224): the folder is timm's resnet18 with the zoo's
    normalisation and crop; a subprocess that never imports atcd gets the zoo module's logits."""
    module, path = _zoo_file(tmp_path, "imagenet", "Salman2020Do_R18", "plain")
    out_dir = tmp_path / "r18"
    out = zoo.import_zoo("imagenet/Linf/Salman2020Do_R18", str(out_dir), REPO, file=path)
    assert out["architecture"] == "resnet18" and out["preprocessing"] == "Res256Crop224"
    assert out["data_config"]["crop_pct"] == 0.875 and out["data_config"]["interpolation"] == "bilinear"
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        theirs = module(x)
    code = f"""
import sys, timm, torch
m = timm.create_model('local-dir:{out_dir}', pretrained=True).eval()
c = m.pretrained_cfg
x = torch.load('{tmp_path / 'x.pt'}')
with torch.no_grad():
    y = m((x - torch.tensor(c['mean']).view(1, 3, 1, 1)) / torch.tensor(c['std']).view(1, 3, 1, 1))
torch.save(y, '{tmp_path / 'y.pt'}')
assert not any(k == 'atcd' or k.startswith('atcd.') for k in sys.modules), 'the project was imported'
print(c['crop_pct'], c['interpolation'])
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["0.875", "bilinear"]
    ours = torch.load(tmp_path / "y.pt")
    assert (ours - theirs).abs().max().item() <= zoo.LOGIT_TOL * (1 + theirs.abs().max().item())


def test_wrong_logits_refuse_the_import_and_write_nothing(tmp_path, monkeypatch):
    _, path = _zoo_file(tmp_path, "cifar10", "Sehwag2021Proxy_R18", "plain")
    real = zoo.map_to_timm

    def swapped(module, dataset, name):  # a key map that puts two BatchNorms' statistics in each other's place
        m = real(module, dataset, name)
        a, b = "layer1.0.bn1.running_mean", "layer1.0.bn2.running_mean"
        m.state_dict[a], m.state_dict[b] = m.state_dict[b], m.state_dict[a]
        return m
    monkeypatch.setattr(zoo, "map_to_timm", swapped)
    with pytest.raises(HubError, match="differ from the zoo module's"):
        zoo.import_zoo("cifar10/Linf/Sehwag2021Proxy_R18", str(tmp_path / "out"), REPO, file=path)
    assert not (tmp_path / "out").exists()


def test_out_of_scope_entries_say_why():
    rows = {r["entry"]: r for r in zoo_coverage.coverage([("cifar10", "Linf")], names=[
        "Chen2020Adversarial", "Ding2020MMA", "Andriushchenko2020Understanding"])}
    assert rows["Chen2020Adversarial"]["outcome"] == "ensemble"
    assert rows["Ding2020MMA"]["outcome"] == "custom module" and "Ding2020MMANet" in rows["Ding2020MMA"]["detail"]
    assert rows["Andriushchenko2020Understanding"]["outcome"] == "imported"  # its file keeps 'last' and 'best'


def test_reported_numbers_come_from_the_package():
    rep = zoo.reported("cifar10", "Linf", "Carmon2019Unlabeled")
    assert rep["clean_acc"] == 89.69 and rep["autoattack_acc"] == 59.53 and "arxiv.org" in rep["link"]
    assert zoo.reported("imagenet", "Linf", "Salman2020Do_R18")["autoattack_acc"] == 25.32


def test_bad_specs_are_one_line_errors(tmp_path):
    for spec, msg in [("cifar10/Linf/Carmon2019Unlabelled", "did you mean Carmon2019Unlabeled"),
                      ("cifar10/Linf", "expected DATASET/THREAT/NAME"), ("mnist/Linf/X", "no zoo table")]:
        r = run_main(SCRIPT, "--robustbench", spec, str(tmp_path / "f.pt"), "--out", str(tmp_path / "o"),
                     "--repo-id", REPO)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0, r.stderr


@pytest.mark.parametrize("dataset,prep", [("imagenet", "Res256Crop224"), ("cifar10", None)])
def test_protocol_robustbench_resolves_to_benchmarks_settings(tmp_path, dataset, prep):
    """--protocol robustbench on a zoo import (its config.json's `robustbench` block): RobustBench's images, order,
    preprocessing and AutoAttack at the threat model's eps, as plain options of the results file."""
    from atcd.config import parse_eval_args
    from atcd.protocols import resolve_protocol
    hub = tmp_path / "hub"
    hub.mkdir()
    (tmp_path / "data" / "val" / "n01440764").mkdir(parents=True)
    (hub / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 10, "robustbench": {
        "entry": f"{dataset}/Linf/X", "preprocessing": prep, "threat_model": "Linf", "dataset": dataset}}))
    cfg = resolve_protocol(parse_eval_args(["--model", f"local-dir:{hub}", "--protocol", "robustbench",
                                            "--data-dir", str(tmp_path / "data"), "--num-samples", "100"]))
    assert cfg.attacks == ("clean", "autoattack") and cfg.attack.options_for("autoattack").aa_version == "standard"
    if dataset == "imagenet":
        assert cfg.attack.eps == 4 / 255 and cfg.dataset == "folder" and cfg.split == "val"
        assert cfg.num_samples == 100 and cfg.sample_ids.endswith("imagenet_test_image_ids.txt")
        assert (cfg.img_size, cfg.crop_pct, cfg.interpolation) == (224, 0.875, "bilinear")
    else:
        assert cfg.attack.eps == 8 / 255 and cfg.dataset == "torch/cifar10" and cfg.split == "test[:100]"
        assert cfg.num_samples is None and cfg.sample_ids is None and cfg.img_size == 32


def test_robustbench_source_imports_on_first_use_into_the_hf_cache(tmp_path):
    """`validate.py --model robustbench:cifar10/Linf/NAME` with the entry's file in robustbench's model folder and
    HF_HUB_OFFLINE=1: the first run imports it into the Hugging Face cache (robustbench/cifar10-Linf-NAME), the
    second reads that cache entry without importing again, and both give the per-image verdicts of the hub folder
    `import_checkpoint.py --robustbench` writes from the same file."""
    from cifar_folder import write_cifar_folder
    name = "Sehwag2021Proxy_R18"
    module = zoo.random_zoo_module("cifar10", "Linf", name, seed=3)
    home = tmp_path / "home"
    rb_dir = home / ".cache" / "atcd" / "robustbench" / "cifar10" / "Linf"  # load_zoo_module's default model_dir
    rb_dir.mkdir(parents=True)
    torch.save(zoo.zoo_file_state_dict(module, "cifar10", name), rb_dir / f"{name}.pt")
    zoo.import_zoo(f"cifar10/Linf/{name}", str(tmp_path / "folder"), REPO, file=str(rb_dir / f"{name}.pt"))
    root = write_cifar_folder(str(tmp_path / "cifar"), n_train=10, n_test=40)
    env = {"HOME": str(home), "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1"}
    common = ("--dataset", "torch/cifar10", "--data-dir", root, "--attacks", "clean", "--num-samples", "40",
              "--sanity-samples", "0", "--no-progress")
    runs = {}
    for run, model in (("first", f"robustbench:cifar10/Linf/{name}"), ("second", f"robustbench:cifar10/Linf/{name}"),
                       ("folder", f"local-dir:{tmp_path / 'folder'}")):
        r = run_script("validate.py", "--model", model, *common, "--results-file", str(tmp_path / f"{run}.json"),
                       env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[run] = (r.stderr, json.loads((tmp_path / f"{run}.json").read_text())["results"]["clean"])
    assert "imported into the Hugging Face cache as robustbench/cifar10-Linf-" in runs["first"][0]
    assert "imported into" not in runs["second"][0]
    assert (tmp_path / "hf-cache" / f"models--robustbench--cifar10-Linf-{name}" / "snapshots").is_dir()
    assert runs["first"][1]["correct"] == runs["second"][1]["correct"] == runs["folder"][1]["correct"]
    assert len(runs["folder"][1]["correct"]) == 40
    r = run_script("validate.py", "--model", "robustbench:cifar10/Linf/NoSuchEntry2099", *common, env=env)
    assert r.returncode != 0 and "NoSuchEntry2099" in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr
