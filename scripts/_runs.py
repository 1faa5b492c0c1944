"""What the scripts that drive many trainings share (benchmark.py, equal_time.py, tune_recipes.py): a one-line
failure, a repo script run as a subprocess with its output logged, an atomic CSV, and the check that a finished run
folder holds the run asked for (so a re-run reads it instead of training again, and never reads another run)."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the atcd package of this checkout, imported by these helpers and their scripts, also
    sys.path.insert(0, ROOT)  # when the checkout is not pip-installed (or its editable install points elsewhere)


def fail(message: str):
    """A one-line error on stderr and exit status 2, as argparse's errors."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def run_logged(args: list[str], log: str, env: dict | None = None, ok: tuple = (0,)) -> subprocess.CompletedProcess:
    """`python *args` from the repo root, stdout and stderr written to `log`; an exit status not in `ok` ends the
    script with the failure's last stderr line (`ok` may add e.g. train_atcd.py's 4, a run that trained to the end at
    chance: a result to report). The upstream gloo teardown abort of a 2-process run after all its output
    (`atcd.launch`) is said and passed: the caller reads what the run wrote, as for any run."""
    from atcd.launch import teardown_abort
    env = dict(os.environ if env is None else env, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    with open(log, "w") as f:
        f.write(r.stdout + "\n--- stderr ---\n" + r.stderr)
    if teardown_abort(r.returncode, r.stderr):
        print(f"note: a rank aborted in teardown after its work (the upstream gloo defect, atcd/launch.py); see {log}",
              file=sys.stderr)
    elif r.returncode not in ok:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        fail(f"error: {' '.join(args[:3])} failed (exit {r.returncode}): {tail}; see {log}")
    return r


def write_csv(path: str, rows: list[dict], fields: list[str]) -> None:
    """`rows` as CSV with the columns `fields` (other keys left out), replaced atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def finished(run: str) -> bool:
    """Whether the run folder holds a finished training (its final weights)."""
    return os.path.isfile(os.path.join(run, "model.safetensors"))


def started(run: str) -> bool:
    """Whether a training began in the run folder (a checkpoint to resume from)."""
    return os.path.isdir(run) and any(d.startswith("checkpoint-") for d in os.listdir(run))


def stale_args(run: str, want: dict, ignore=()) -> dict:
    """{option: recorded value} of the options whose value in `run`/args.yaml differs from `want` (keys in `ignore`,
    e.g. where the run was written, are not compared; nor options args.yaml does not record: added by a later
    version, they did not exist when the run trained, so a grid or benchmark continued across versions still reads
    its finished runs); empty when the run is the one asked for."""
    with open(os.path.join(run, "args.yaml")) as f:
        had = yaml.safe_load(f)
    return {k: had.get(k) for k, v in want.items()
            if k not in ignore and k in had and had[k] != (list(v) if isinstance(v, tuple) else v)}


RUN_KEYS = {"output", "experiment", "overwrite", "resume", "no_progress", "mixed_precision",  # where/how, not what
            "workers", "pin_mem"}  # (resolved by the trainer per device: args.yaml records the value it chose)


def config_digest(args: list[str]) -> str:
    """What a training trains: a digest of train_atcd.py's resolved options `args` (where/how keys left out), as the
    recipes and the defaults resolve now; a finished row of another digest was trained with other options."""
    from atcd.config import parse_train_args
    flat = {k: v for k, v in parse_train_args(args).flat().items() if k not in RUN_KEYS}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]
