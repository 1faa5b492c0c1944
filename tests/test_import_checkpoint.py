"""scripts/import_checkpoint.py on checkpoints written here, in each format users have, from really trained weights:
the small CNN trained on mnist-mini (conftest's `standard_model`) and a resnet18 trained a few steps on the same
digits. The imported hub folder must give the very same logits (`torch.equal`) as the weights it came from."""
import json
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import run_main
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from atcd.models import build_model, unwrap_timm
from atcd.models.hub import HubError
from atcd.publish.importer import import_checkpoint, read_checkpoint

pytestmark = pytest.mark.slow  # trains two small models in-process and runs the scripts
REPO = "atcd-test/imported"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _save(path, obj):
    if str(path).endswith(".safetensors"):
        save_file(obj, path)
    else:
        torch.save(obj, path)
    return path


def _formats(sd: dict) -> dict:
    """The containers checkpoints come in, around one state dict."""
    return {
        "plain.pt": sd,
        "state_dict.pth": {"state_dict": sd, "epoch": 3},
        "model.pt": {"model": sd, "epoch": 3},
        "ddp.pt": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "weights.safetensors": {k: v.contiguous() for k, v in sd.items()},
    }


@pytest.fixture(scope="module")
def resnet_digits():
    """resnet18 (10 classes, 32 px) trained 30 SGD steps on mnist-mini digits, normalised with CIFAR's mean/std;
    returns (bare timm model, 32 px test images in [0, 1])."""
    from atcd.data import MnistMini
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    ds = MnistMini("train")
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def prep(x):
        return F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1).clamp(0, 1)

    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    perm = torch.randperm(len(ds.targets), generator=torch.Generator().manual_seed(0))  # the split is class-sorted
    model.train()
    for step in range(30):
        idx = perm[step * 32:step * 32 + 32]
        loss = F.cross_entropy(model((prep(ds.images[idx]) - mean) / std), ds.targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = MnistMini("test")
    return model.eval(), prep(test.images[::25])


def _imported_logits(folder, x):
    with torch.no_grad():
        return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x)


@pytest.mark.parametrize("name", list(_formats({})))
def test_each_format_round_trips_bit_for_bit(standard_model, mnist_test_batch, tmp_path, name):
    bare = unwrap_timm(standard_model).eval()
    path = _save(tmp_path / name, _formats(bare.state_dict())[name])
    out = import_checkpoint(str(path), "smallcnn_mnist", str(tmp_path / "out"), REPO)
    x, _ = mnist_test_batch
    with torch.no_grad():
        ref = bare(x)
    assert torch.equal(_imported_logits(tmp_path / "out", x), ref)
    assert out["num_classes"] == 10 and out["data_config"]["input_size"] == (1, 28, 28)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["architecture"] == "smallcnn_mnist" and cfg["pretrained_cfg"]["mean"] == [0.0]


def test_robustness_library_checkpoint_with_normaliser(resnet_digits, tmp_path):
    """`module.model.` weights, an `module.attacker.` copy, the normaliser's mean/std (shaped (3, 1, 1))."""
    model, x = resnet_digits
    sd = model.state_dict()
    ckpt = {f"module.model.{k}": v for k, v in sd.items()}
    ckpt.update({f"module.attacker.model.{k}": v for k, v in sd.items()})
    for pre in ("module.normalizer.", "module.attacker.normalize."):
        ckpt[pre + "new_mean"] = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        ckpt[pre + "new_std"] = torch.tensor(CIFAR_STD).view(3, 1, 1)
    path = _save(tmp_path / "robustness.pt", {"model": ckpt, "epoch": 150})
    read = read_checkpoint(str(path))
    assert read.mean == CIFAR_MEAN and read.std == CIFAR_STD and set(read.state_dict) == set(sd)
    r = run_main("scripts/import_checkpoint.py", str(path), "--model", "resnet18", "--out", str(tmp_path / "out"),
                   "--repo-id", REPO, "--input-size", "3", "32", "32", "--source-model", "torchvision.models:resnet18",
                   "--source-kwargs", "num_classes=10")
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["verified"]["max_abs_diff"] < 1e-4  # torchvision's own resnet18 code agrees
    pcfg = json.loads((tmp_path / "out" / "config.json").read_text())["pretrained_cfg"]
    assert tuple(pcfg["mean"]) == CIFAR_MEAN and tuple(pcfg["std"]) == CIFAR_STD and pcfg["input_size"] == [3, 32, 32]
    assert "test_input_size" not in pcfg
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model((x - mean) / std)
        wrapped = build_model(f"local-dir:{tmp_path / 'out'}").eval()(x)  # normalises with the published mean/std
    assert torch.equal(_imported_logits(tmp_path / "out", (x - mean) / std), ref) and torch.equal(wrapped, ref)
    assert len(set(ref.argmax(1).tolist())) > 3  # trained: not one constant prediction


def test_mismatched_architecture_is_one_line_error(standard_model, tmp_path):
    path = _save(tmp_path / "cnn.pt", unwrap_timm(standard_model).state_dict())
    r = run_main("scripts.import_checkpoint", str(path), "--model", "resnet18", "--out", str(tmp_path / "out"),
                 "--repo-id", REPO)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "does not fit timm architecture resnet18" in r.stderr and "missing" in r.stderr
    assert not (tmp_path / "out").exists()


def test_source_model_with_other_logits_is_refused(resnet_digits, tmp_path):
    """Keys that fit, logits that do not (the source code reads the classes in another order, as a wrong key
    mapping would): the import stops and writes nothing."""
    model, _ = resnet_digits
    sd = dict(model.state_dict())
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][[1, 0, *range(2, 10)]], sd["fc.bias"][[1, 0, *range(2, 10)]]
    path = _save(tmp_path / "swapped.pt", sd)
    with pytest.raises(HubError, match="logits differ"):
        import_checkpoint(str(path), "resnet18", str(tmp_path / "out"), REPO, input_size=(3, 32, 32),
                          source_model=f"{__name__}:_swapped_head_source",  # (robustbench installs a `tests`)
                          source_kwargs=("num_classes=10",))
    assert not (tmp_path / "out").exists()


class _SwappedHead(torch.nn.Module):
    """A 'source code' whose classifier reads its first two rows in the other order (a wrong mapping)."""

    def __init__(self, num_classes):
        super().__init__()
        self.net = timm.create_model("resnet18", num_classes=num_classes)

    def load_state_dict(self, sd, strict=True):
        return self.net.load_state_dict(sd, strict=strict)

    def forward(self, x):
        y = self.net(x)
        return y[:, [1, 0, *range(2, y.shape[1])]]


def _swapped_head_source(num_classes):
    return _SwappedHead(num_classes)


def test_pickle_with_code_is_refused_unopened(tmp_path):
    canary = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(HubError, match="weights_only"):
        read_checkpoint(str(path))
    assert not canary.exists()


def test_imported_folder_is_measured_then_ready_to_push(standard_model, tmp_path):
    """import -> publish refuses (no results) -> validate --update-card -> publish accepts the folder as it is."""
    path = _save(tmp_path / "cnn.safetensors", {k: v.contiguous() for k, v in
                                                unwrap_timm(standard_model).state_dict().items()})
    out = tmp_path / "hub"
    import_checkpoint(str(path), "smallcnn_mnist", str(out), REPO)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "atcd" and "timm" not in card.data.tags
    assert "import atcd" in card.text and "pip install -e ." in card.text
    r = run_main("scripts.publish", str(out), "--repo-id", REPO)
    assert r.returncode == 2 and "records no results" in r.stderr and "--update-card" in r.stderr
    r = run_main("validate.py", "--model", f"local-dir:{out}", "--attacks", "clean", "--num-samples", "100",
                   "--sanity-samples", "0", "--no-progress", "--update-card", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    (clean,) = ModelCard.load(out / "README.md").data.eval_results
    assert clean.metric_value > 80  # the trained CNN's accuracy, measured through the imported folder
    r = run_main("scripts.publish", str(out), "--repo-id", REPO)
    assert r.returncode == 0 and '"pushed": false' in r.stdout
