"""Hub publishing and loading, offline, on a real (briefly) trained model and real MNIST digits.

The Hub itself is out of reach here, so `hf-hub:` names are served from a Hugging Face cache laid out exactly as
`snapshot_download` leaves it (blobs / snapshots / refs), with HF_HUB_OFFLINE=1: the code paths of timm and
huggingface_hub are the real ones.
"""
import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import yaml
from conftest import run_script
from huggingface_hub import ModelCard, scan_cache_dir
from huggingface_hub.utils.sha import git_hash
from safetensors.torch import load_file, save_file

from atcd.checkpoint import load_weights
from atcd.config import parse_eval_args, parse_train_args
from atcd.models import NormalizedModel, build_model, unwrap_timm
from atcd.models.hub import HubError, add_folder_to_hf_cache
from atcd.publish import build_model_card, push_folder, update_card_with_results

pytestmark = pytest.mark.slow  # the module fixture trains, validates and publishes through the scripts
REPO = "atcd-test/smallcnn-mnist-standard"
TOKEN = "hf_FAKEtoken123abcDEF456ghiJKL789"
EXPORT_FILES = {"README.md", "config.json", "model.safetensors", "args.yaml", "results.json", "summary.csv"}


def _ok(r):
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r


def _publish_once(root: Path) -> None:
    """Train 1 epoch, validate (clean + PGD-10 on 100 test digits), publish, lay the folder out as a Hub cache, in
    `root`; the three scripts' output is kept in root/outputs.json (the token test reads it)."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf-home"), "HF_HUB_CACHE": str(root / "hf-cache")}
    token_env = {**env, "HF_TOKEN": TOKEN}
    run, folder = root / "run", root / "export"
    outputs = [_ok(run_script("train_atcd.py", "--method", "standard", "--epochs", "1", "--eval-samples", "100",
                              "--opt", "adam", "--lr", "1e-3", "--weight-decay", "0", "--no-progress",
                              "--output", str(root), "--experiment", "run", env=token_env))]
    outputs.append(_ok(run_script("validate.py", "--checkpoint", str(run / "model.safetensors"), "--attacks",
                                  "clean,pgd", "--attack-steps", "10", "--num-samples", "100", "--no-progress",
                                  "--results-file", str(run / "results.json"), env=token_env)))
    outputs.append(_ok(run_script("scripts/publish.py", str(run), "--repo-id", REPO, "--out", str(folder),
                                  env=token_env)))
    snapshot = add_folder_to_hf_cache(str(folder), REPO, cache_dir=env["HF_HUB_CACHE"])
    (root / "outputs.json").write_text(json.dumps({"env": env, "snapshot": snapshot, "outputs": [
        {"stdout": r.stdout, "stderr": r.stderr} for r in outputs]}))


@pytest.fixture(scope="session")
def pub(tmp_path_factory, worker_id):
    """The published run of `_publish_once`, made once per session: under pytest-xdist the first worker to ask makes
    it in the workers' shared base folder (behind a file lock) and the others read it (a module fixture was
    remade by each worker, and again whenever a worker came back to this module: three times per suite).

    All three scripts run with a (fake) HF_TOKEN in the environment, as a logged-in user's would.
    """
    from filelock import FileLock
    if worker_id == "master":  # no xdist: this session's own folder
        root = tmp_path_factory.mktemp("hub")
        _publish_once(root)
    else:  # the base folder of this run's workers (getbasetemp() is per worker, its parent per run)
        shared = tmp_path_factory.getbasetemp().parent
        root = shared / "hub-fixture"
        with FileLock(str(shared / "hub-fixture.lock")):
            if not (root / "outputs.json").is_file():
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir()
                _publish_once(root)
    made = json.loads((root / "outputs.json").read_text())
    run, env = root / "run", made["env"]
    return SimpleNamespace(root=root, run=run, folder=root / "export", env=env, snapshot=Path(made["snapshot"]),
                           outputs=[SimpleNamespace(**o) for o in made["outputs"]], cache=Path(env["HF_HUB_CACHE"]),
                           results=json.loads((run / "results.json").read_text()))


def _trained_model(pub) -> torch.nn.Module:
    model = timm.create_model("smallcnn_mnist")
    return load_weights(model, str(pub.run / "model.safetensors")).eval()


def _card_results(card: ModelCard) -> dict[tuple, object]:
    return {(e.metric_args["attack"], e.metric_args["eps"]): e for e in card.data.eval_results}


def test_export_holds_timm_config_weights_and_run_files(pub):
    assert {p.name for p in pub.folder.iterdir()} == EXPORT_FILES  # no pickle, no checkpoint state
    cfg = json.loads((pub.folder / "config.json").read_text())
    assert cfg["architecture"] == "smallcnn_mnist" and cfg["num_classes"] == 10
    assert cfg["label_names"] == [str(i) for i in range(10)]
    p = cfg["pretrained_cfg"]
    assert p["mean"] == [0.0] and p["std"] == [1.0] and p["input_size"] == [1, 28, 28] and p["crop_pct"] == 1.0
    assert (pub.folder / "args.yaml").read_bytes() == (pub.run / "args.yaml").read_bytes()
    assert json.loads((pub.folder / "results.json").read_text()) == pub.results
    published, trained = load_file(pub.folder / "model.safetensors"), load_file(pub.run / "model.safetensors")
    assert published.keys() == trained.keys() and all(torch.equal(published[k], trained[k]) for k in trained)


def test_local_dir_and_hf_hub_give_identical_logits(pub, mnist_test_batch, tmp_path):
    x, _ = mnist_test_batch
    with torch.no_grad():
        ref = _trained_model(pub)(x)
        local = timm.create_model(f"local-dir:{pub.folder}", pretrained=True).eval()
        assert torch.equal(local(x), ref)
        wrapped = build_model(f"local-dir:{pub.folder}").eval()  # no pretrained flag: the name implies the weights
        assert torch.equal(wrapped(x), ref)
    save_file({"x": x.contiguous()}, tmp_path / "x.safetensors")
    code = (
        "import sys, torch, timm, atcd\n"
        "from safetensors.torch import load_file, save_file\n"
        f"m = timm.create_model('hf-hub:{REPO}', pretrained=True).eval()\n"
        "assert m.pretrained_cfg['source'] == 'hf-hub', m.pretrained_cfg\n"
        "with torch.no_grad():\n"
        "    y = m(load_file(sys.argv[1])['x'])\n"
        "save_file({'y': y}, sys.argv[2])\n"
    )
    _ok(run_script("-c", code, str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors"), env=pub.env))
    assert torch.equal(load_file(tmp_path / "y.safetensors")["y"], ref)


def _card_snippet(folder: Path) -> str:
    text = (folder / "README.md").read_text()
    return text.split("## How to use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_card_snippet_loads_the_model_and_needs_import_atcd(pub):
    """The card's usage snippet, run as printed (from the offline Hub cache), gives logits; without its
    `import atcd` line plain timm cannot build the architecture, which is why the card says to install the suite."""
    snippet = _card_snippet(pub.folder)
    assert "import atcd" in snippet and "pip install -e ." in (pub.folder / "README.md").read_text()
    code = "from PIL import Image\nimg = Image.new('L', (28, 28))\n" + snippet + "\nprint(tuple(logits.shape))\n"
    r = _ok(run_script("-c", code, env=pub.env))
    assert r.stdout.strip().splitlines()[-1] == "(1, 10)"
    plain = code.replace("import atcd", "pass  # import atcd")
    r = run_script("-c", plain, env={**pub.env, "PYTHONPATH": ""})
    assert r.returncode != 0 and "smallcnn_mnist" in r.stderr


def test_cache_is_laid_out_like_huggingface_hub(pub):
    info = scan_cache_dir(pub.cache)
    (repo,) = info.repos
    assert not info.warnings and repo.repo_id == REPO
    (rev,) = repo.revisions
    assert rev.refs == frozenset({"main"}) and rev.snapshot_path == pub.snapshot
    blobs = {f.file_name: f.blob_path.name for f in rev.files}
    assert set(blobs) == EXPORT_FILES
    weights = (pub.folder / "model.safetensors").read_bytes()
    assert blobs["model.safetensors"] == hashlib.sha256(weights).hexdigest()  # LFS file: sha256
    assert blobs["config.json"] == git_hash((pub.folder / "config.json").read_bytes())  # git blob sha1
    link = pub.snapshot / "config.json"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    r = _ok(run_script("scripts/download.py", f"hf-hub:{REPO}", env=pub.env))
    assert r.stdout.splitlines()[0] == str(pub.snapshot)
    assert "HF_HUB_OFFLINE=1" in r.stdout


def test_card_parses_and_holds_the_measured_numbers(pub):
    card = ModelCard.load(pub.folder / "README.md")
    d = card.data
    # smallcnn_mnist is registered by this package: the card must not promise a plain-timm load (which fails)
    assert d.library_name == "atcd" and "timm" not in d.tags
    assert d.license == "apache-2.0" and d.pipeline_tag == "image-classification"
    assert {"adversarial-robustness", "atcd", "standard"} <= set(d.tags) and d.datasets == ["ylecun/mnist"]
    got = _card_results(card)
    assert len(got) == len(pub.results["results"]) == 3  # clean, pgd, worst_case
    for attack, r in pub.results["results"].items():
        e = got[(attack, pub.results["eps"])]
        assert e.metric_value == round(r["top1"], 2)
        assert e.metric_args["norm"] == "Linf" and e.metric_args["num_samples"] == r["n"] == 100
        assert e.dataset_type == "ylecun/mnist" and e.dataset_split == "test"
    assert got[("pgd", 0.3)].metric_args["steps"] == 10 and got[("pgd", 0.3)].metric_value < 50  # a standard model
    text = card.text
    summary = (pub.run / "summary.csv").read_text().splitlines()
    seconds = float(summary[1].split(",")[summary[0].split(",").index("seconds")])
    for needle in ("## Robustness", "## How to use", "## Training", "## Limitations", "## Citation",
                   "Adversarial Training Using Contrastive Divergence", f'timm.create_model("hf-hub:{REPO}"',
                   "import atcd", "mean = (0.0,), std = (1.0,)", f"wall time of the training loop: {seconds:.1f} s",
                   "No AutoAttack evaluation is recorded", "on 100 images", "evaluated in fp32 (TF32 off)"):
        assert needle in text, needle
    assert "None%" not in text and "nan" not in text.lower().split()


def test_card_method_table_comes_from_the_train_parser(pub):
    """An ATCD run's args.yaml (as the trainer writes it) gives a table of ATCD options, not other methods'."""
    args = parse_train_args(["--method", "atcd", "--atcd-T", "3", "--atcd-K", "2", "--eps", "0.3"]).flat()
    args = yaml.safe_load(yaml.safe_dump(args, sort_keys=False))
    config = json.loads((pub.folder / "config.json").read_text())
    card = build_model_card(REPO, args, pub.results, config, hardware="test CPU")
    text = ModelCard(str(card)).text
    assert "| `--atcd-T` | `3` | T: replays per minibatch |" in text
    assert "| `--cd-lambda` | `2.0` |" in text and "hardware: test CPU" in text
    assert "--trades-beta" not in text and "--free-m" not in text and "--yopo-m" not in text
    assert "atcd" in card.data.tags and "the run folder had no `summary.csv`" in text
    assert "(`--method atcd`)" in text and "with `--reuse-grad`" not in text
    # a --reuse-grad run is never presented as plain ATCD
    reuse = yaml.safe_load(yaml.safe_dump(parse_train_args(["--method", "atcd", "--reuse-grad"]).flat()))
    text = ModelCard(str(build_model_card(REPO, reuse, pub.results, config, hardware="test CPU"))).text
    assert "(`--method atcd --reuse-grad`)" in text and "**ATCD (Adversarial Training using Contrastive Divergence) " \
        "with `--reuse-grad`**" in text


def test_validate_from_hub_reproduces_the_card(pub, tmp_path):
    card = ModelCard.load(pub.folder / "README.md")
    (cmd,) = [ln for ln in card.text.splitlines() if ln.startswith("python validate.py")]
    argv = shlex.split(cmd)[1:] + ["--no-progress", "--results-file", str(tmp_path / "r.json")]
    assert f"hf-hub:{REPO}" in argv
    _ok(run_script(*argv, env=pub.env))
    again = json.loads((tmp_path / "r.json").read_text())
    got = _card_results(card)
    for attack, r in again["results"].items():
        assert round(r["top1"], 2) == got[(attack, again["eps"])].metric_value, attack
        assert r["top1"] == pub.results["results"][attack]["top1"]


@pytest.mark.parametrize("case", ["missing-repo", "no-config", "num-classes-hub", "num-classes-checkpoint",
                                  "download-missing", "publish-no-results", "push-offline"])
def test_errors_are_one_line(pub, tmp_path, case):
    if case == "missing-repo":
        args, needle = ["validate.py", "--model", "hf-hub:atcd-test/no-such-model"], "not in the local Hugging Face"
    elif case == "no-config":
        (tmp_path / "m").mkdir()
        shutil.copy(pub.folder / "model.safetensors", tmp_path / "m")
        args, needle = ["validate.py", "--model", f"local-dir:{tmp_path / 'm'}"], "no config.json"
    elif case == "num-classes-hub":
        args, needle = ["validate.py", "--model", f"hf-hub:{REPO}", "--num-classes", "5"], "has 10 classes"
    elif case == "num-classes-checkpoint":
        args = ["validate.py", "--checkpoint", str(pub.run / "model.safetensors"), "--num-classes", "5"]
        needle = "shape mismatch"
    elif case == "download-missing":
        args, needle = ["scripts/download.py", "hf-hub:atcd-test/no-such-model"], "not in the local Hugging Face"
    elif case == "publish-no-results":
        shutil.copytree(pub.run, tmp_path / "run", ignore=shutil.ignore_patterns("results.json", "checkpoint-*"))
        args, needle = ["scripts/publish.py", str(tmp_path / "run"), "--repo-id", REPO], "python validate.py"
    else:
        args = ["scripts/publish.py", str(pub.run), "--repo-id", REPO, "--out", str(tmp_path / "o"), "--push"]
        needle = "HF_HUB_OFFLINE=1"
    if args[0] == "validate.py":
        args += ["--attacks", "clean", "--num-samples", "10", "--no-progress"]
    r = run_script(*args, env={**pub.env, "HF_TOKEN": TOKEN})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr[-3000:]
    assert TOKEN not in r.stdout + r.stderr


def test_weights_that_do_not_fit_the_config_are_a_one_line_error(pub, tmp_path):
    """timm loads strictly once the class count matches; the size mismatch becomes one HubError line."""
    d = tmp_path / "mismatch"
    d.mkdir()
    shutil.copy(pub.folder / "config.json", d)
    save_file(timm.create_model("smallcnn_mnist", num_classes=5).state_dict(), d / "model.safetensors")
    with pytest.raises(HubError, match="size mismatch for head.weight") as e:
        build_model(f"local-dir:{d}")
    assert "\n" not in str(e.value)


def test_pickle_weights_are_refused_without_being_opened(pub, tmp_path):
    canary = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    d = tmp_path / "pickle"
    d.mkdir()
    shutil.copy(pub.folder / "config.json", d)
    torch.save({"x": Evil()}, d / "pytorch_model.bin")  # timm's own local-dir loader would try this file
    with pytest.raises(HubError, match="only safetensors weights are loaded"):
        build_model(f"local-dir:{d}")
    assert not canary.exists()


def test_token_appears_in_no_output_and_no_file(pub):
    """Train, validate and a publish dry run ran with HF_TOKEN set: not in their output, run dir, export or cache."""
    for r in pub.outputs:
        assert TOKEN not in r.stdout + r.stderr
    files = [f for f in pub.root.rglob("*") if f.is_file()]
    names = {f.name for f in files}
    assert EXPORT_FILES | {"args.yaml", "summary.csv", "results.json"} <= names and "model.safetensors" in names
    assert any(f.parent.name.startswith("checkpoint-") for f in files)  # resumable state is scanned too
    assert not [f for f in files if TOKEN.encode() in _bytes_if_still_there(f)]


def _bytes_if_still_there(f: Path) -> bytes:
    """A file's bytes, or none when it went away since it was listed (the fixture's folder is shared by the
    session's workers: a lock file of huggingface_hub in the cache can come and go while another test reads)."""
    try:
        return f.read_bytes()
    except FileNotFoundError:
        return b""


def test_push_refuses_a_folder_holding_the_token(pub, tmp_path, monkeypatch):
    folder = tmp_path / "export"
    shutil.copytree(pub.folder, folder)
    (folder / "notes.txt").write_text(f"token={TOKEN}\n")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(HubError, match="notes.txt contains your Hugging Face token") as e:
        push_folder(str(folder), REPO)  # refused before any network call
    assert TOKEN not in str(e.value)


def test_update_card_appends_new_results_and_replaces_same_ones(pub, tmp_path):
    from atcd.evaluator import run
    cfg = parse_eval_args(["--model", f"local-dir:{pub.folder}", "--eps", "0.1", "--attacks", "clean,fgsm",
                           "--num-samples", "50", "--no-progress"])
    new = run(cfg)  # a real measurement at another eps, on the published weights
    src = pub.folder / "README.md"
    before = src.read_text()
    out = tmp_path / "README.md"
    update_card_with_results(str(pub.folder), new, push=False, out_path=str(out))
    assert src.read_text() == before  # out_path given: the published card is untouched
    card = ModelCard.load(out)
    got = _card_results(card)
    assert len(got) == 3 + 3  # clean/pgd/worst at 0.3, clean/fgsm/worst at 0.1
    assert got[("fgsm", 0.1)].metric_value == round(new["results"]["fgsm"]["top1"], 2)
    assert got[("pgd", 0.3)].metric_value == round(pub.results["results"]["pgd"]["top1"], 2)
    assert "| FGSM | " in card.text and card.text.count("<!-- atcd:results:begin -->") == 1
    # the same measurement again replaces instead of duplicating; a re-measured number overwrites the old one
    remeasured = json.loads(json.dumps(pub.results))
    remeasured["results"]["pgd"]["top1"] = 1.0
    update_card_with_results(str(out), remeasured)
    update_card_with_results(str(out), remeasured)
    got = _card_results(ModelCard.load(out))
    assert len(got) == 6 and got[("pgd", 0.3)].metric_value == 1.0


def test_validate_update_card_flag_writes_the_measurement_into_a_card(pub, tmp_path):
    card_path = tmp_path / "README.md"
    shutil.copy(pub.folder / "README.md", card_path)
    _ok(run_script("validate.py", "--model", f"local-dir:{pub.folder}", "--eps", "0.2", "--attacks", "clean",
                   "--num-samples", "20", "--sanity-samples", "0", "--no-progress", "--update-card", str(card_path),
                   "--results-file", str(tmp_path / "r.json"), env=pub.env))
    measured = json.loads((tmp_path / "r.json").read_text())["results"]["clean"]["top1"]
    assert _card_results(ModelCard.load(card_path))[("clean", 0.2)].metric_value == round(measured, 2)


def test_pixel_space_eps_with_imagenet_normalisation(tmp_path):
    """A model with ImageNet mean/std (published through timm's save_for_hf) is attacked in [0,1] pixel space."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
    from timm.models import save_for_hf

    from atcd.attacks import AttackConfig, get_attack
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=10, pretrained_cfg_overlay={
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "input_size": (3, 32, 32)})
    save_for_hf(net, tmp_path / "resnet", safe_serialization=True)
    model = build_model(f"local-dir:{tmp_path / 'resnet'}").eval()
    assert torch.allclose(model.mean.flatten(), torch.tensor(IMAGENET_DEFAULT_MEAN))
    assert torch.allclose(model.std.flatten(), torch.tensor(IMAGENET_DEFAULT_STD))
    x = torch.rand(16, 3, 32, 32)
    dc = resolve_data_config(model=unwrap_timm(model))  # timm's own normalisation of the same pixels
    mean, std = torch.tensor(dc["mean"]).view(1, 3, 1, 1), torch.tensor(dc["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), unwrap_timm(model)((x - mean) / std), atol=1e-5)
    eps = 8 / 255
    x_adv = get_attack("pgd")(model, x, torch.randint(0, 10, (16,)), AttackConfig(eps=eps, step_size=2 / 255, steps=5))
    d_pix = (x_adv - x).abs().max().item()
    d_norm = ((x_adv - mean) / std - (x - mean) / std).abs().max().item()
    assert eps * 0.99 <= d_pix <= eps + 1e-6  # the attack uses its budget, in pixels, and no more
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert d_norm > 4 * eps  # the same perturbation measured after normalisation is eps / std: ~4.4x larger
    assert isinstance(model, NormalizedModel)


@pytest.mark.slow
def test_autoattack_on_hub_model_lands_in_the_card(pub, tmp_path):
    res = tmp_path / "aa.json"
    _ok(run_script("validate.py", "--model", f"hf-hub:{REPO}", "--attacks", "clean,autoattack", "--num-samples", "20",
                   "--no-progress", "--results-file", str(res), env=pub.env))
    results = json.loads(res.read_text())
    code = ("import json, sys\nfrom atcd.publish import update_card_with_results\n"
            "update_card_with_results(sys.argv[1], json.load(open(sys.argv[2])), out_path=sys.argv[3])\n")
    # the card of the repo itself, read through the (offline) Hugging Face cache
    _ok(run_script("-c", code, REPO, str(res), str(tmp_path / "README.md"), env=pub.env))
    card = ModelCard.load(tmp_path / "README.md")
    got = _card_results(card)
    aa = got[("autoattack", 0.3)]
    assert aa.metric_value == round(results["results"]["autoattack"]["top1"], 2) <= got[("clean", 0.3)].metric_value
    assert aa.metric_args["version"] == "standard" and aa.metric_args["num_samples"] == 20
    assert aa.metric_args["checks"] == results["results"]["autoattack"].get("flags", [])
    assert "AutoAttack (standard)" in card.text and "No AutoAttack evaluation is recorded" not in card.text
