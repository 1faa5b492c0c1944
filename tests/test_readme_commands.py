"""Every `python SCRIPT ...` command in README.md's code blocks (an `accelerate launch` one included) is accepted by
its script's own argument parser: the flags exist and their values parse. The commands run in one subprocess with
`argparse.ArgumentParser.parse_args` replaced by one that stops the script once its final parse succeeded, so
nothing trains, downloads or pushes; a flag renamed in a script and not in the README fails here."""
import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUNNER = r"""
import argparse, json, os, runpy, sys
commands = json.loads(sys.argv[1])
orig = argparse.ArgumentParser.parse_args
class Parsed(BaseException):
    pass
def parse_args(self, args=None, namespace=None):
    orig(self, args, namespace)  # argparse's own errors exit 2: reported as a failure
    raise Parsed()
argparse.ArgumentParser.parse_args = parse_args
failed = []
for script, args in commands:
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name='__main__')
        failed.append([script, args, 'ran to the end without parsing its arguments'])
    except Parsed:
        pass
    except SystemExit as e:
        failed.append([script, args, f'exit {e.code}'])
print('FAILED ' + json.dumps(failed))
"""


def readme_commands() -> list[tuple[str, list[str]]]:
    """(script, arguments) of each `python X.py` / `accelerate launch ... X.py` command in README's bash blocks."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words or words[0] not in ("python", "accelerate"):
                continue
            script = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
            if script is None or words[1:3] == ["-m", "pip"]:
                continue
            out.append((words[script], words[script + 1:]))
    return out


def test_the_readme_commands_are_found():
    scripts = {s for s, _ in readme_commands()}
    assert {"train_atcd.py", "validate.py", "scripts/publish.py", "scripts/make_shards.py",
            "scripts/import_checkpoint.py"} <= scripts, scripts


def _checkout_after_the_demo(tmp_path) -> str:
    """A working directory with the checkout's files and the run folder `bash scripts/demo.sh` leaves
    (output/demo/atcd/args.yaml of recipes/mnist_atcd.yaml): the README's `validate.py --run` commands follow the
    demo, and `--run` reads args.yaml while parsing."""
    import yaml

    from atcd.config import TrainConfig
    for name in os.listdir(ROOT):
        if not name.startswith(".") and name != "output":
            os.symlink(os.path.join(ROOT, name), tmp_path / name)
    with open(os.path.join(ROOT, "recipes", "mnist_atcd.yaml")) as f:
        recipe = yaml.safe_load(f)
    run = tmp_path / "output" / "demo" / "atcd"
    run.mkdir(parents=True)
    flat = TrainConfig.of(**recipe).flat()
    (run / "args.yaml").write_text(yaml.safe_dump({**flat, "output": "output/demo", "experiment": "atcd"}))
    return str(tmp_path)


def test_every_readme_command_parses_with_its_scripts_parser(tmp_path):
    cmds = readme_commands()
    r = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(cmds)], cwd=_checkout_after_the_demo(tmp_path),
                       check=False, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("FAILED ")), None)
    assert line is not None, r.stderr[-3000:]
    failed = json.loads(line[len("FAILED "):])
    assert not failed, f"{failed}\n{r.stderr[-3000:]}"
