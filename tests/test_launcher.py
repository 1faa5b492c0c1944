"""What a real multi-GPU launch meets first, proven on CPU through the real `accelerate launch` (2 gloo processes, no
fake accelerator): evaluation precision that the launcher cannot change, preemption signals to the whole process
group, no host syncs in the training step, a process-group timeout shorter than a rank's wait, and node-local
output refused at start.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
import yaml
from conftest import ROOT, run_main, run_script, tolerate_teardown_abort
from safetensors.torch import load_file

from atcd.checkpoint import save_weights

pytestmark = pytest.mark.slow  # every test launches processes (~7 s of start-up per 2-process launch)
LAUNCH = ("-m", "accelerate.commands.launch")
LAUNCH_2PROC = (*LAUNCH, "--config_file", "hfconfigs/cpu_2proc.yaml")
ENV_2PROC = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, standard_model):
    path = str(tmp_path_factory.mktemp("ckpt") / "model.safetensors")
    save_weights(standard_model.model, path)
    return path


def _result(r) -> dict:
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, r.stdout[-2000:]
    return json.loads(lines[0][len("RESULT "):])


# ---- evaluation precision -----------------------------------------------------------------------------------------


def test_validate_under_a_bf16_launch_gives_the_fp32_results_per_image(tmp_path, trained_checkpoint):
    """`accelerate launch --mixed_precision bf16 validate.py` (2 processes: prepare() wraps forward in bf16
    autocast) gives the per-image results of the same command without a launcher (1 process, fp32; 1 and 2
    processes give the same per-image results by construction: test_distributed.py), bit for bit, and the results
    JSON names the evaluation precision (fp32) beside the launcher's. Asked for on purpose (--eval-precision bf16),
    bf16 gives other per-image results: the comparison can fail."""
    common = ("--model", "smallcnn_mnist", "--checkpoint", trained_checkpoint, "--dataset", "mnist-mini",
              "--num-samples", "500", "-b", "125", "--attacks", "clean,pgd", "--eps", "0.15", "--attack-steps", "20",
              "--sanity-samples", "0", "--no-progress")
    r = run_script(*LAUNCH_2PROC, "--mixed_precision", "bf16", "validate.py", *common, "--results-file",
                   str(tmp_path / "bf16.json"), env=ENV_2PROC, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, extra in (("no", ()), ("asked", ("--eval-precision", "bf16"))):
        r = run_main("validate.py", *common, "--results-file", str(tmp_path / f"{name}.json"), *extra, threads=1)
        assert r.returncode == 0, r.stderr[-3000:]
    out = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("bf16", "no", "asked")}
    assert out["bf16"]["launcher_mixed_precision"] == "bf16" and out["no"]["launcher_mixed_precision"] == "no"
    assert out["bf16"]["eval_precision"] == out["no"]["eval_precision"] == "fp32"
    assert out["asked"]["eval_precision"] == "bf16"
    ref = out["no"]["results"]
    assert out["bf16"]["results"] == ref  # every attack's top-1 and per-image "correct" string
    assert 5.0 < ref["pgd"]["top1"] < ref["clean"]["top1"]
    assert out["asked"]["results"]["pgd"]["correct"] != ref["pgd"]["correct"]  # bf16 really differs here


def test_training_eval_columns_under_a_bf16_launch_equal_a_no_launch(tmp_path, trained_checkpoint):
    """Per-epoch evaluation in training (eval_* and ema_* columns) runs in fp32 whatever the launcher says: with the
    same weights (the trained CNN as --initial-checkpoint, lr 1e-12) a 2-process bf16 launch and a run without a
    launcher (1 process, fp32, the same global batch of 64) write the same eval_top1 / eval_pgd_top1 / ema columns,
    and summary.csv records eval_precision."""
    rows = {}
    for mp in ("bf16", "no"):
        # lr 1e-12: updates far below the weights' float resolution, so both runs evaluate the same weights
        args = ("train_atcd.py", "--method", "standard", "--initial-checkpoint", trained_checkpoint, "--lr", "1e-12",
                "--epochs", "1", "--train-samples-per-epoch", "128", "--eps", "0.15", "--eval-samples", "500",
                "--eval-attack-steps", "20", "--model-ema", "--output", str(tmp_path), "--experiment", mp,
                "--no-progress")
        if mp == "bf16":
            r = tolerate_teardown_abort(run_script(*LAUNCH_2PROC, "--mixed_precision", mp, *args, "-b", "32",
                                                   env=ENV_2PROC, timeout=600))
        else:
            r = run_main(*args, "-b", "64", threads=1)
        res = _result(r)
        assert res["mixed_precision"] == mp and res["eval_precision"] == "fp32"
        assert res["num_processes"] == (2 if mp == "bf16" else 1) and res["num_updates"] == 2
        header, row = (tmp_path / mp / "summary.csv").read_text().splitlines()[:2]
        rows[mp] = dict(zip(header.split(","), row.split(",")))
    cols = ("eval_top1", "eval_pgd_top1", "ema_eval_top1", "ema_eval_pgd_top1", "eval_precision")
    assert {c: rows["bf16"][c] for c in cols} == {c: rows["no"][c] for c in cols}
    assert rows["no"]["eval_precision"] == "fp32" and 10.0 < float(rows["no"]["eval_pgd_top1"])


# ---- preemption ---------------------------------------------------------------------------------------------------

TRAIN = ("--dataset", "mnist-mini", "--eps", "0.3", "--method", "atcd", "--atcd-T", "2", "--atcd-K", "1",
         "--epochs", "2", "--train-samples-per-epoch", "768", "-b", "32", "--opt", "adam", "--lr", "1e-3",
         "--eval-samples", "100", "--eval-attack-steps", "1", "--no-progress")


def test_sigterm_to_the_whole_launch_always_checkpoints_and_resumes_bit_identically(tmp_path):
    """SIGTERM to every process of a 2-process `accelerate launch` (what SLURM does): the trainers get it from the
    scheduler and again from the launcher's agent, which forwards its own. Each run writes a checkpoint before the
    agent's grace period ends, and `--resume auto` then finishes with the uninterrupted run's weights, bit for bit,
    in two runs: all processes signalled at once early in the first epoch, with 2 loader workers per rank (they get
    the signal too); and ranks waiting in Python before every batch (tests/rank_run.py --data-wait) that get the
    scheduler's signal first and the agent's copy after handling it, as on a GPU, where a trainer is not blocked
    inside long C calls (on a busy CPU the two copies usually coalesce into one). The copy must not end the run."""
    full = _result(tolerate_teardown_abort(run_script(*LAUNCH_2PROC, "train_atcd.py", *TRAIN, "--output",
                                                      str(tmp_path), "--experiment", "full", env=ENV_2PROC,
                                                      timeout=600)))
    ref = load_file(tmp_path / "full" / "model.safetensors")
    env = dict(os.environ, PYTHONPATH=ROOT, **ENV_2PROC)
    waiting = ("tests/rank_run.py", "--data-wait", "0.3", "--")
    for name, delay, script, extra in (("workers", 0.5, ("train_atcd.py",), ("--workers", "2")),
                                       ("python", 2.0, waiting, ())):
        run_dir, log = tmp_path / name, tmp_path / f"{name}.err"
        with open(log, "w") as err_file:
            proc = subprocess.Popen([sys.executable, *LAUNCH_2PROC, *script, *TRAIN, *extra, "--output",
                                     str(tmp_path), "--experiment", name], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=err_file, text=True)
            deadline = time.time() + 300
            while not (run_dir / "args.yaml").exists():  # both ranks built model and data
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.01)
            time.sleep(delay)
            launcher = psutil.Process(proc.pid)
            trainers = launcher.children(recursive=True)  # the agent runs in the launcher; trainers, loader workers
            first = trainers if name == "python" else [launcher, *trainers]
            for p in first:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(signal.SIGTERM)
            if name == "python":  # the agent's copy after both trainers handled the scheduler's signal
                while log.read_text().count("SIGTERM received") < 2:
                    assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                    time.sleep(0.001)
                launcher.send_signal(signal.SIGTERM)
            proc.communicate(timeout=300)
        err = log.read_text()
        ckpts = sorted(p.name for p in run_dir.iterdir() if (p / "state.json").is_file())
        assert ckpts, f"{name}: no checkpoint written\n{err[-3000:]}"
        assert "Sending process" in err, err[-3000:]  # the agent did forward its SIGTERM to the trainers
        assert "exiting now" not in err and err.count("SIGTERM received") == 2, err[-3000:]  # once per trainer
        assert not (run_dir / "model.safetensors").exists() or "checkpoint-0001" in ckpts, name
        done = _result(tolerate_teardown_abort(run_script(*LAUNCH_2PROC, "train_atcd.py", *TRAIN, *extra,
                                                          "--output", str(tmp_path), "--experiment", name,
                                                          "--resume", "auto", env=ENV_2PROC, timeout=600)))
        assert done["num_updates"] == full["num_updates"] and done["num_processes"] == 2, name
        got = load_file(run_dir / "model.safetensors")
        assert all(torch.equal(ref[k], got[k]) for k in ref), f"{name}: resumed weights differ"


# ---- host syncs ---------------------------------------------------------------------------------------------------


def test_two_process_training_step_makes_no_host_sync_and_no_pageable_copy(tmp_path):
    """Real prepared loaders, 2 gloo processes, ATCD (random starts, M-H tests) and the preemption check every step:
    the host syncs (`.item()`, `.cpu()`, `.tolist()`, `float()`, `bool()`...) and the tensors made from host data
    on the device per epoch do not grow with the epoch's length (4 or 8 minibatches, log and checkpoint points
    outside them): 0 per step. Counted in each rank (tests/rank_run.py), the data path (loader, pinned batch
    transfer) excluded. (Whether a random draw is made on the device is a property of its generator, which a cpu
    run cannot show: `test_method_random_draws_use_the_generator_device`.)"""
    counts = {}
    for n in (4, 8):
        counter = tmp_path / f"syncs{n}"
        r = run_script(*LAUNCH_2PROC, "tests/rank_run.py", "--count-syncs", str(counter), "--",
                       "--dataset", "mnist-mini", "--eps", "0.3", "--method", "atcd", "--atcd-T", "2", "--atcd-K",
                       "2", "--epochs", "1", "--train-samples-per-epoch", str(n * 64), "-b", "32", "--opt", "sgd",
                       "--lr", "0.01", "--eval-samples", "20", "--eval-attack-steps", "1", "--log-interval", "1000",
                       "--output", str(tmp_path), "--experiment", f"n{n}", "--no-progress", env=ENV_2PROC,
                       timeout=600)
        assert _result(tolerate_teardown_abort(r))["num_processes"] == 2
        counts[n] = [json.loads((tmp_path / f"syncs{n}.rank{rank}").read_text())[0] for rank in (0, 1)]
    for rank in (0, 1):
        four, eight = counts[4][rank], counts[8][rank]
        assert eight["h2d"] == four["h2d"] and len(four["h2d"]) <= 3, eight["h2d"]  # the epoch's running sums
        assert eight["syncs"] == four["syncs"] and len(four["syncs"]) <= 8, (four["syncs"], eight["syncs"])


# ---- collectives and timeouts -------------------------------------------------------------------------------------


def test_validate_with_a_short_process_group_timeout_and_a_slower_rank_completes(tmp_path, trained_checkpoint):
    """--dist-timeout 3 s, 3 chunks on 2 ranks (rank 0 evaluates two, rank 1 one), and rank 0 reaching the
    evaluation 8 s late (tests/rank_run.py --eval-delay: a rank whose chunks take longer): rank 1 waits about 8 s
    for rank 0 before the results are gathered. It waits outside any collective, so the run completes with the
    1-process results; a gather that waited inside the collective would abort after 3 s."""
    common = ("--model", "smallcnn_mnist", "--checkpoint", trained_checkpoint, "--dataset", "mnist-mini",
              "--num-samples", "300", "-b", "100", "--attacks", "pgd", "--eps", "0.3", "--attack-steps", "5",
              "--sanity-samples", "0", "--no-progress")
    r = run_script(*LAUNCH_2PROC, "tests/rank_run.py", "--eval-delay", "8", "--", *common, "--dist-timeout", "3",
                   "--results-file", str(tmp_path / "two.json"), env=ENV_2PROC, timeout=600)
    r = tolerate_teardown_abort(r)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    one = run_main("validate.py", *common, "--results-file", str(tmp_path / "one.json"), threads=1)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two["num_samples"] == 300 and 0.0 < two["results"]["pgd"]["top1"] < 100.0
    assert two["results"] == json.loads((tmp_path / "one.json").read_text())["results"]  # per image


# ---- multi-node storage -------------------------------------------------------------------------------------------


def test_ranks_that_do_not_share_the_output_folder_stop_at_start(tmp_path):
    """Each rank in its own working directory with a relative --output (node-local storage, simulated): both ranks
    stop before training with one line naming --output and shared storage; no run folder is left behind."""
    r = run_script(*LAUNCH_2PROC, "tests/rank_run.py", "--chdir-per-rank", str(tmp_path), "--", "--method",
                   "standard", "--epochs", "1", "--train-samples-per-epoch", "64", "-b", "32", "--output", "out",
                   "--experiment", "x", "--no-progress", env=ENV_2PROC, timeout=600)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if "is not shared storage" in ln]
    assert lines and "--output out" in lines[0], r.stderr[-3000:]
    for rank in (0, 1):
        out = tmp_path / f"rank{rank}" / "out"
        assert not (out / "x").exists() and not [p for p in out.iterdir() if p.name.startswith(".storage")]


def test_the_storage_check_passes_on_shared_output(tmp_path, trained_checkpoint):
    """The same 2-process run with --output shared by both ranks trains, and leaves no marker folder."""
    res = _result(tolerate_teardown_abort(run_script(
        *LAUNCH_2PROC, "train_atcd.py", "--method", "standard", "--epochs", "1", "--train-samples-per-epoch", "64",
        "-b", "32", "--initial-checkpoint", trained_checkpoint,
        "--eval-samples", "20", "--eval-attack-steps", "1", "--output", str(tmp_path), "--experiment", "x",
        "--no-progress", env=ENV_2PROC, timeout=600)))
    assert res["num_processes"] == 2 and res["status"] == "completed"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".storage")]
    assert yaml.safe_load((tmp_path / "x" / "args.yaml").read_text())["dist_timeout"] == 1800.0
