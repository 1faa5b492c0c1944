"""`validate.py --protocol robustbench` on an imported zoo model gives what RobustBench's own `benchmark()` gives on
the zoo module: same CIFAR-format folder (real digits), same first N test images, same AutoAttack seed.

The zoo module is robustbench's Wong2020Fast PreAct-ResNet-18 with seeded random weights and a linear head fitted on
its features of the training digits (so that it classifies: a random network would leave both numbers at chance);
it is saved as the zoo's file looks ({'state_dict': ...} with 'module.' keys) and imported. `benchmark()` seeds
AutoAttack with the time: here it gets the seed validate.py gives the chunk of these images (`chunk_seed`)."""
import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from cifar_folder import write_cifar_folder
from conftest import run_main

if importlib.util.find_spec("robustbench") is None:
    pytest.skip("the [zoo] extra: pip install --no-deps robustbench==1.1.1", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.longest]  # AutoAttack twice on a PreAct-ResNet-18

N = 10  # measured: both give clean 70.00 %, AutoAttack 0.00 % (8/255; 85 s for benchmark() on 2 busy cores)


def _fitted_wong(root: str) -> torch.nn.Module:
    import torchvision.transforms as T

    from atcd.data.cifar import TorchCifar
    from atcd.publish import zoo
    module = zoo.random_zoo_module("cifar10", "Linf", "Wong2020Fast", seed=0)
    train = TorchCifar("torch/cifar10", root, "train", T.ToTensor())
    x, y = torch.stack([train[i][0] for i in range(len(train))]), torch.tensor(train.targets)
    feats = []
    hook = module.linear.register_forward_hook(lambda mod, inp, out: feats.append(inp[0]))
    with torch.no_grad():
        for i in range(0, len(y), 100):
            module(x[i:i + 100])
    hook.remove()
    f = torch.cat(feats)
    mu, sd = f.mean(0), f.std(0) + 1e-6
    torch.manual_seed(0)
    head = torch.nn.Linear(f.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(300):
        loss = F.cross_entropy(head((f - mu) / sd), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # the standardisation folded into the zoo module's own head
        module.linear.weight.copy_(head.weight / sd)
        module.linear.bias.copy_(head.bias - (head.weight / sd) @ mu)
    return module.eval()


def test_validate_protocol_robustbench_equals_benchmark(tmp_path, monkeypatch):
    import torchvision

    from atcd.data.eval_plan import chunk_seed
    from atcd.publish import zoo
    root = write_cifar_folder(str(tmp_path / "cifar"), n_train=500, n_test=100)
    module = _fitted_wong(root)
    sd = zoo.zoo_file_state_dict(module, "cifar10", "Wong2020Fast")
    path = tmp_path / "Wong2020Fast.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    hub = tmp_path / "hub"
    r = run_main("scripts/import_checkpoint.py", "--robustbench", "cifar10/Linf/Wong2020Fast", str(path), "--out",
                 str(hub), "--repo-id", "atcd-test/wong")
    assert r.returncode == 0, r.stderr[-2000:]

    res = tmp_path / "res.json"
    r = run_main("validate.py", "--model", f"local-dir:{hub}", "--protocol", "robustbench", "--data-dir", root,
                 "--num-samples", str(N), "--batch-size", str(N), "--seed", "0", "--sanity-samples", "0",
                 "--no-progress", "--results-file", str(res))
    assert r.returncode == 0, r.stderr[-3000:]
    ours = json.loads(res.read_text())
    assert ours["split"] == f"test[:{N}]" and ours["evaluated_ids"] == f"first {N}"
    assert ours["attack_config"]["aa_version"] == "standard" and ours["eps"] == 8 / 255

    rb = zoo.robustbench()
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)  # not the published md5
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(rb.eval.AutoAttack, "seed_override", chunk_seed(0, 0))  # validate.py's seed, chunk 0
    zoo_module = zoo.load_zoo_module("cifar10", "Linf", "Wong2020Fast", file=str(path))
    clean, robust = rb.eval.benchmark(zoo_module, n_examples=N, dataset="cifar10", threat_model="Linf",
                                      data_dir=root, eps=8 / 255, batch_size=N)
    assert 0.3 <= clean  # the fitted head classifies the digits
    assert ours["results"]["clean"]["top1"] == pytest.approx(100 * clean, abs=1e-4)
    assert ours["results"]["autoattack"]["top1"] == pytest.approx(100 * robust, abs=1e-4)
