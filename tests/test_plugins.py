"""Adding a training method or an attack is one file plus one registry line (tests/toy_plugins.py): its options
reach --help, the CLI, args.yaml, results.json and the model card, and no other method's options do."""
import json

import pytest
import toy_plugins  # noqa: F401  (registers the method `toy` and the attack `toy_noise`)
import yaml
from conftest import run_main

from atcd.checkpoint import save_weights
from atcd.config import eval_parser, train_parser

TINY = ("--epochs", "1", "--train-samples-per-epoch", "128", "--eval-samples", "50", "--eval-attack-steps", "2",
        "--no-progress")


def test_plugin_options_are_listed_by_help():
    text = train_parser().format_help()
    assert "toy" in text and "--toy-sigma" in text and "[toy] fraction of eps" in text
    assert "--toy-strength" in eval_parser().format_help()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny training run per method (the plug-in `toy` and PGD-AT), each validated with results.json."""
    out = tmp_path_factory.mktemp("plugins")
    for method, extra in (("toy", ["--toy-sigma", "0.25"]), ("pgd", ["--attack-steps", "2"])):
        r = run_main("train_atcd.py", "--method", method, *extra, *TINY, "--output", str(out), "--experiment", method)
        assert r.returncode == 0, r.stderr[-2000:]
        v = run_main("validate.py", "--checkpoint", str(out / method / "model.safetensors"), "--attacks",
                     "clean,toy_noise", "--toy-strength", "0.5", "--num-samples", "50", "--sanity-samples", "0",
                     "--results-file", str(out / method / "results.json"), "--no-progress")
        assert v.returncode == 0, v.stderr[-2000:]
    return out


@pytest.mark.slow  # trains and validates two tiny runs
def test_plugin_method_trains_from_the_cli_with_its_own_flag(runs):
    args = yaml.safe_load((runs / "toy" / "args.yaml").read_text())
    assert args["method"] == "toy" and args["toy_sigma"] == 0.25
    assert "atcd_T" not in args and "attack_steps" not in args  # only the run's own method's options


@pytest.mark.slow  # trains and validates two tiny runs
def test_plugin_attack_runs_with_its_own_flag(runs, standard_model, tmp_path):
    """The attack's own flag reaches it: on an accurate CNN, --toy-strength 0 returns the clean images (the same
    per-image verdicts as clean, exactly) and 1 (noise of eps = 0.3 per pixel) changes some verdicts."""
    res = json.loads((runs / "toy" / "results.json").read_text())
    assert set(res["results"]) >= {"clean", "toy_noise"} and res["attack_config"]["toy_strength"] == 0.5
    ckpt = tmp_path / "cnn.safetensors"
    save_weights(standard_model.model, str(ckpt))
    got = {}
    for strength in ("0", "1"):
        v = run_main("validate.py", "--checkpoint", str(ckpt), "--eps", "0.3", "--attacks", "clean,toy_noise",
                     "--toy-strength", strength, "--num-samples", "100", "--sanity-samples", "0", "--no-progress",
                     "--results-file", str(tmp_path / f"{strength}.json"))
        assert v.returncode == 0, v.stderr[-2000:]
        got[strength] = json.loads((tmp_path / f"{strength}.json").read_text())
        assert got[strength]["attack_config"]["toy_strength"] == float(strength)
    clean = got["0"]["results"]["clean"]["correct"]
    assert got["0"]["results"]["toy_noise"]["correct"] == clean == got["1"]["results"]["clean"]["correct"]
    assert got["1"]["results"]["toy_noise"]["correct"] != clean


def test_an_option_of_another_method_or_attack_is_refused(tmp_path):
    r = run_main("train_atcd.py", "--method", "pgd", "--toy-sigma", "0.5", *TINY, "--output", str(tmp_path))
    assert r.returncode == 2 and "--toy-sigma is an option of --method toy" in r.stderr
    r = run_main("validate.py", "--attacks", "clean,pgd", "--toy-strength", "0.5")
    assert r.returncode == 2 and "--toy-strength is an option of attack toy_noise" in r.stderr


@pytest.mark.slow  # trains and validates two tiny runs
@pytest.mark.parametrize("method,own,foreign", [
    ("toy", ["--toy-sigma"], ["--attack-steps", "--atcd-T", "--cd-lambda", "--mh", "--reuse-grad", "--free-m"]),
    ("pgd", ["--attack-steps", "--eps", "--attack-step"],
     ["--cd-lambda", "--mh", "--reuse-grad", "--atcd-T", "--free-m", "--trades-beta", "--toy-sigma"]),
])
def test_model_card_lists_only_the_methods_own_and_run_wide_options(runs, method, own, foreign):
    from atcd.publish import export_run
    folder = export_run(str(runs / method), f"me/{method}", out_dir=str(runs / f"{method}-export"))
    with open(f"{folder}/README.md") as f:
        card = f.read()
    rows = [ln for ln in card.splitlines() if ln.startswith("| `--")]
    flags = {ln.split("`")[1] for ln in rows}
    assert set(own) <= flags, (own, flags)
    assert not set(foreign) & flags, (foreign, flags)
    assert {"--lr", "--opt"} <= flags  # run-wide optimisation options
