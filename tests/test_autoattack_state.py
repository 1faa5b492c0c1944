"""--aa-state-dir: a killed AutoAttack evaluation continues where it stopped and scores every example as the
uninterrupted run does; a state made for other inputs is never read; without the flag nothing changes.

The trained CNN of conftest at eps 0.2 on validate's 10 images (`--num-samples 10`, chunks of 5): APGD-CE fools
all but one image, Square gets that one (seconds on CPU)."""
import json
import os

import pytest
import torch
from conftest import run_main
from pyautoattack.autopgd_base import APGDAttack
from pyautoattack.square import SquareAttack

from atcd.attacks.autoattack import run_autoattack, state_path
from atcd.checkpoint import save_weights


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, standard_model):
    path = str(tmp_path_factory.mktemp("ckpt") / "model.safetensors")
    save_weights(standard_model.model, path)
    return path


@pytest.fixture
def calls(monkeypatch):
    """Counts the package's APGD-CE and Square runs; `calls["kill_square"] = True` makes the next Square run raise
    KeyboardInterrupt (a kill after APGD-CE finished)."""
    n = {"apgd-ce": 0, "square": 0, "kill_square": False}
    apgd, square = APGDAttack.perturb, SquareAttack.perturb

    def apgd_perturb(self, *a, **kw):
        n["apgd-ce"] += self.loss == "ce"
        return apgd(self, *a, **kw)

    def square_perturb(self, *a, **kw):
        n["square"] += 1
        if n["kill_square"]:
            n["kill_square"] = False
            raise KeyboardInterrupt
        return square(self, *a, **kw)

    monkeypatch.setattr(APGDAttack, "perturb", apgd_perturb)
    monkeypatch.setattr(SquareAttack, "perturb", square_perturb)
    return n


def _validate(checkpoint, results, *extra):
    r = run_main("validate.py", "--model", "smallcnn_mnist", "--checkpoint", checkpoint, "--dataset", "mnist-mini",
                 "--num-samples", "10", "-b", "5", "--eps", "0.2", "--attacks", "clean,autoattack", "--aa-version",
                 "custom", "--aa-attacks", "apgd-ce,square", "--sanity-samples", "0", "--no-progress",
                 "--results-file", str(results), *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(results.read_text())["results"]


@pytest.mark.slow  # four validate runs of AutoAttack (APGD-CE + Square) on 10 images
def test_killed_evaluation_resumes_to_the_uninterrupted_result(checkpoint, calls, tmp_path):
    plain = _validate(checkpoint, tmp_path / "plain.json")
    assert calls["apgd-ce"] == 2 and calls["square"] >= 1  # one APGD-CE per chunk; an image survived it
    assert 0 < plain["autoattack"]["top1"] < plain["clean"]["top1"]  # APGD-CE fooled some, not all

    state = tmp_path / "state"
    whole = _validate(checkpoint, tmp_path / "whole.json", "--aa-state-dir", str(state / "a"))
    assert whole == plain  # with a state directory, an uninterrupted run computes what a run without one does

    calls.update({"apgd-ce": 0, "square": 0, "kill_square": True})
    with pytest.raises(KeyboardInterrupt):  # killed in chunk 0 after its APGD-CE, chunk 1 not started
        _validate(checkpoint, tmp_path / "killed.json", "--aa-state-dir", str(state / "b"))
    assert calls == {"apgd-ce": 1, "square": 1, "kill_square": False}
    saved = [json.loads(p.read_text()) for p in (state / "b").iterdir()]
    assert [s["done"] for s in saved] == [["apgd-ce"]] and saved[0]["robust"].count("1") >= 1

    calls.update({"apgd-ce": 0, "square": 0})
    resumed = _validate(checkpoint, tmp_path / "resumed.json", "--aa-state-dir", str(state / "b"))
    assert calls["apgd-ce"] == 1  # chunk 1's only: chunk 0's APGD-CE is not run again
    assert calls["square"] >= 1
    # the examples APGD-CE fooled before the kill count as fooled: scored by the state's flags, not by the
    # resumed call's x_adv (which holds no adversarial image for them)
    assert resumed["autoattack"]["correct"] == plain["autoattack"]["correct"]
    assert resumed == plain
    assert sorted(os.listdir(state / "b")) == sorted(os.listdir(state / "a"))  # the same two files, by content

    calls.update({"apgd-ce": 0, "square": 0})
    again = _validate(checkpoint, tmp_path / "again.json", "--aa-state-dir", str(state / "b"))
    assert again == plain and calls == {"apgd-ce": 0, "square": 0, "kill_square": False}  # all done: nothing runs


def test_state_name_covers_every_input_of_the_result(standard_model, mnist_test_batch):
    x, y = mnist_test_batch[0][:4], mnist_test_batch[1][:4]
    base = {"model": standard_model, "x": x, "y": y, "eps": 0.2, "seed": 1, "version": "custom",
            "attacks": ["apgd-ce", "square"], "batch_size": 250, "square_queries": None}
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1 / 255
    y2 = y.clone()
    y2[0] = (y[0] + 1) % 10
    changes = [{"x": x2}, {"y": y2}, {"eps": 0.2 + 1e-9}, {"seed": 2}, {"version": "standard"},
               {"attacks": ["apgd-ce"]}, {"batch_size": 100}, {"square_queries": 1000}, {"x": x[:3], "y": y[:3]}]
    names = {state_path("d", **base)} | {state_path("d", **{**base, **c}) for c in changes}
    assert len(names) == 1 + len(changes)
    assert state_path("d", **base) == state_path("d", **{**base, "x": x.clone(), "y": y.clone()})
    weight = next(standard_model.parameters())
    keep = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.view(-1)[0] += 1e-4
        assert state_path("d", **base) not in names  # other weights
    finally:
        with torch.no_grad():
            weight.copy_(keep)
    assert state_path("d", **base) in names


def test_a_state_for_other_inputs_is_not_read(standard_model, mnist_test_batch, calls, tmp_path):
    x, y = mnist_test_batch[0][::40], mnist_test_batch[1][::40]
    _, a = run_autoattack(standard_model, x, y, 0.2, version="custom", attacks=["apgd-ce"], state_dir=str(tmp_path))
    assert calls["apgd-ce"] == 1 and len(os.listdir(tmp_path)) == 1
    run_autoattack(standard_model, x, y, 0.25, version="custom", attacks=["apgd-ce"],
                   state_dir=str(tmp_path))  # another eps: another file, APGD-CE runs
    assert calls["apgd-ce"] == 2 and len(os.listdir(tmp_path)) == 2
    x2 = x.clone()
    x2[0] = 1 - x2[0]
    run_autoattack(standard_model, x2, y, 0.2, version="custom", attacks=["apgd-ce"], state_dir=str(tmp_path))
    assert calls["apgd-ce"] == 3 and len(os.listdir(tmp_path)) == 3
    _, again = run_autoattack(standard_model, x, y, 0.2, version="custom", attacks=["apgd-ce"],
                              state_dir=str(tmp_path))  # the first inputs again: read back, nothing runs
    assert calls["apgd-ce"] == 3 and torch.equal(again["correct"], a["correct"])
    path = state_path(str(tmp_path), standard_model, x, y, 0.2, 0, "custom", ["apgd-ce"], 250, None)
    with open(path, "w") as f:
        f.write('{"attacks": ["apgd-ce"], "done": ["apgd-ce"], "robust": "1')  # a torn write: not JSON
    _, torn = run_autoattack(standard_model, x, y, 0.2, version="custom", attacks=["apgd-ce"],
                             state_dir=str(tmp_path))
    assert calls["apgd-ce"] == 4 and torch.equal(torn["correct"], a["correct"])  # started afresh
    with open(path) as f:
        assert json.load(f)["done"] == ["apgd-ce"]


def test_without_a_state_dir_nothing_changes(standard_model, mnist_test_batch, tmp_path):
    """No state: one call of the package, scored by re-classifying x_adv (no `correct` in the info), no file."""
    x, y = mnist_test_batch[0][::40], mnist_test_batch[1][::40]
    x_adv, info = run_autoattack(standard_model, x, y, 0.2, version="custom", attacks=["apgd-ce"])
    assert set(info) == {"flags"}
    _, with_state = run_autoattack(standard_model, x, y, 0.2, version="custom", attacks=["apgd-ce"],
                                   state_dir=str(tmp_path))
    with torch.no_grad():
        assert torch.equal(standard_model(x_adv).argmax(1) == y, with_state["correct"])


@pytest.mark.slow  # a 2-process launch
def test_two_processes_continue_the_states_of_one(checkpoint, tmp_path):
    """The state of a chunk is named by the chunk (its images, its seed), not by the process that ran it: states a
    1-process run wrote are read back by a 2-process run (rank 0: chunks 0 and 2, rank 1: chunk 1), untouched, and
    give the same per-example results."""
    from conftest import run_script
    state = tmp_path / "state"
    args = ["validate.py", "--model", "smallcnn_mnist", "--checkpoint", checkpoint, "--dataset", "mnist-mini",
            "--num-samples", "6", "-b", "2", "--eps", "0.2", "--attacks", "clean,autoattack", "--aa-version", "custom",
            "--aa-attacks", "apgd-ce", "--sanity-samples", "0", "--no-progress", "--aa-state-dir", str(state)]
    one = run_main(*args, "--results-file", str(tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr[-2000:]
    files = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in state.iterdir()}
    assert len(files) == 3  # one per chunk
    two = run_script("-m", "accelerate.commands.launch", "--config_file", "hfconfigs/cpu_2proc.yaml", *args,
                     "--results-file", str(tmp_path / "two.json"),
                     env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in state.iterdir()} == files
    res = [json.loads((tmp_path / f"{n}.json").read_text())["results"] for n in ("one", "two")]
    assert res[0] == res[1] and "0" in res[0]["autoattack"]["correct"]
