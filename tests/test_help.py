"""--help a person can read: one default per option, the main options first, three examples at the end."""
import re
import subprocess
import sys

import pytest
from conftest import ROOT


def _help(script: str) -> str:
    return subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def _options(text: str) -> list[str]:
    """Each option's block of the help (its flag line and the help lines under it), joined."""
    blocks, cur = [], None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            cur = [line]
            blocks.append(cur)
        elif cur is not None and line.startswith("   "):
            cur.append(line)
        else:
            cur = None
    return [" ".join(b) for b in blocks if not b[0].lstrip().startswith("-h, --help")]


@pytest.mark.parametrize("script", ["train_atcd.py", "validate.py"])
def test_every_option_prints_exactly_one_default(script):
    text = _help(script)
    options = _options(text)
    assert len(options) > 40
    wrong = [o for o in options if len(re.findall(r"\bdefault\b", o, re.IGNORECASE)) != 1]
    assert not wrong, wrong


@pytest.mark.parametrize("script, first", [
    ("train_atcd.py", ["--model", "--method", "--dataset", "--data-dir", "--eps", "--epochs", "--batch-size", "--lr",
                       "--output", "--experiment"]),
    ("validate.py", ["--model", "--run", "--checkpoint", "--dataset", "--data-dir", "--attacks", "--num-samples",
                     "--batch-size", "--results-file", "--eps"])])
def test_main_options_come_first_and_examples_close_the_help(script, first):
    text = _help(script)
    flags = [re.match(r"\s*(-\S+?)[ ,]", o + " ").group(1) for o in _options(text)]
    assert flags[1:1 + len(first)] == first, flags[:12]  # after -c/--config
    examples = text.split("\nexamples:\n")[1].splitlines()
    commands = [ln for ln in examples if ln.startswith(("  python", "  accelerate"))]
    assert len(commands) == 3 and all(script in c for c in commands), examples
