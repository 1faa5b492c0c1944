"""The wheel installs and runs outside the checkout: built from the sources, installed into a fresh venv that
reuses this machine's torch (--system-site-packages), then `import atcd`, `atcd-train --help` and one training
minibatch from another directory, with the venv's copy of atcd (not the checkout's editable install) imported."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

from atcd.faults import EXIT_COLLAPSED


def _run(*cmd, cwd, env=None, timeout=900):
    r = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode in (0, EXIT_COLLAPSED), (cmd, r.stdout[-2000:], r.stderr[-3000:])
    return r


@pytest.mark.slow
def test_the_wheel_trains_a_minibatch_in_a_fresh_venv(tmp_path):
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ there
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), src)
    shutil.copytree(os.path.join(ROOT, "atcd"), src / "atcd", ignore=shutil.ignore_patterns("__pycache__"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(src), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("atcd-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
        entry = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    assert all(f"Requires-Dist: {d}" in meta for d in ("torch", "timm", "accelerate", "pyautoattack", "webdataset"))
    assert "atcd-train = atcd.main:train_main" in entry and "atcd-validate = atcd.main:validate_main" in entry

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--system-site-packages", str(venv), cwd=tmp_path)
    bin_ = venv / "bin"
    _run(str(bin_ / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    out = tmp_path / "elsewhere"
    out.mkdir()
    where = _run(str(bin_ / "python"), "-c", "import atcd, timm; print(atcd.__file__); print(timm.__file__)",
                 cwd=out, env=env).stdout.split()
    assert where[0].startswith(str(venv)) and not where[1].startswith(str(venv)), where  # its atcd, the host's timm
    assert "main options" in _run(str(bin_ / "atcd-train"), "--help", cwd=out, env=env).stdout
    r = _run(str(bin_ / "atcd-train"), "--method", "standard", "--epochs", "1", "--train-samples-per-epoch", "32",
             "-b", "32", "--eval-samples", "10", "--eval-attack-steps", "1", "--no-progress", "--output", "runs",
             "--experiment", "one", cwd=out, env=env)
    result = json.loads(r.stdout.strip().splitlines()[-1][len("RESULT "):])
    assert result["num_updates"] == 1 and result["weight_passes"] == 1, result  # one minibatch trained
    assert (out / "runs" / "one" / "model.safetensors").is_file()
