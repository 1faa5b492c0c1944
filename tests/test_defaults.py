"""Defaults a newcomer can trust: step sizes that follow eps, examples that learn, quiet logs, a start header."""
import json
import re
import shlex

import pytest
import yaml
from conftest import ROOT, run_main, run_script

TINY = ("--epochs", "1", "--train-samples-per-epoch", "128", "--eval-samples", "20", "--eval-attack-steps", "1",
        "--no-progress")


@pytest.mark.parametrize("method,rule", [("atcd", lambda e: e / 4), ("pgd", lambda e: 2.5 * e / 10),
                                         ("fast", lambda e: 1.25 * e), ("free", lambda e: e)])
def test_eps_alone_trains_with_the_methods_step_rule(tmp_path, method, rule):
    """`--eps 8/255` alone used to stop at MNIST's default step (0.1 > 2 x eps)."""
    r = run_main("train_atcd.py", "--method", method, "--eps", "8/255", *TINY, "--output", str(tmp_path),
                 "--experiment", "x")
    assert r.returncode == 0, r.stderr[-2000:]
    args = yaml.safe_load((tmp_path / "x" / "args.yaml").read_text())
    assert args["attack_step"] == pytest.approx(rule(8 / 255))


@pytest.mark.slow  # subprocesses: the log lines a user sees
def test_one_line_per_checkpoint_and_a_start_header(tmp_path):
    base = ("train_atcd.py", "--method", "standard", "--epochs", "2", *TINY[2:], "--output", str(tmp_path))
    r = run_script(*base, "--experiment", "quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (r.stdout + r.stderr).splitlines()
    ckpt = [ln for ln in lines if "checkpoint" in ln.lower() and str(tmp_path) not in ln]  # (the path names one)
    assert len(ckpt) == 2 and all(re.fullmatch(r"checkpoint-000\d saved \(epoch \d, [\d.]+ MB\)", ln) for ln in ckpt)
    header = [ln for ln in lines if ln.startswith("train smallcnn_mnist")]
    assert len(header) == 1 and "at 1x28x28" in header[0] and "standard: 1 passes/minibatch" in header[0]
    assert "precision no" in header[0] and "128 images/epoch" in header[0]
    loud = run_script(*base, "--experiment", "loud", "--log-level", "DEBUG")
    assert "Saving current state" in loud.stdout + loud.stderr  # Accelerate's own lines are still there at DEBUG


@pytest.mark.slow
def test_model_far_from_its_pretrained_size_is_warned_about(tmp_path):
    r = run_main("train_atcd.py", "--model", "resnet18", "--in-chans", "1", "--method", "standard", *TINY,
                   "--output", str(tmp_path), "--experiment", "x")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pretrained at 224x224; the data is 28x28" in r.stderr and "--input-size" in r.stderr


def _readme_block(marker: str) -> list[list[str]]:
    """The commands of the training reference's bash block that contains `marker` (continuation lines joined)."""
    with open(f"{ROOT}/docs/train.md") as f:
        text = f.read()
    block = next(b for b in text.split("```bash")[1:] if marker in b.split("```")[0]).split("```")[0]
    return [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.strip()]


@pytest.mark.slow  # the streaming example of docs/train.md, as written, learns
@pytest.mark.longest
def test_readme_streaming_example_learns(tmp_path):
    cmds = _readme_block("wds-demo")
    for cmd in cmds:
        if cmd[0].startswith("ACCELERATE_USE_CPU"):
            continue  # the 2-process launch: tests/test_distributed.py
        assert cmd[0] == "python", cmd
        cmd = [a.replace("data/", f"{tmp_path}/data/").replace("output/", f"{tmp_path}/output/") for a in cmd[1:]]
        r = run_main(*cmd, "--no-progress") if cmd[0] != "scripts/make_shards.py" else run_main(*cmd)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    result = json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])
    assert result["clean"] > 50, result


@pytest.mark.parametrize("script", ["train_atcd.py", "validate.py"])
def test_input_size_on_a_builtin_dataset_is_refused_not_ignored(script, tmp_path):
    r = run_main(script, "--input-size", "1", "32", "32", "--output" if script == "train_atcd.py" else "--results-file",
                 str(tmp_path / "x"))
    assert r.returncode == 2 and "--input-size resizes image folders and shards" in r.stderr.splitlines()[-1]
