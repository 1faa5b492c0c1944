"""Kill-safe training: SIGKILL at three points (mid-epoch, during a checkpoint write, at an epoch boundary), SIGTERM
preemption, a second signal, and non-finite steps. Every resumed run must end bit-identical to an uninterrupted one,
and no complete checkpoint on disk may ever be unreadable."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, THREADS
from safetensors.torch import load_file

# ATCD (per-rank generator + M-H counts in the method state), Adam state, cosine LR: everything a resume restores.
# 2 epochs x 8 minibatches, a periodic checkpoint every 3 minibatches. The normalised kinetic charge makes M-H reject
# a good share of first moves, so its draws and its per-replay counts (summary.csv) really depend on the resume.
ARGS = ("--method", "atcd", "--atcd-T", "2", "--atcd-K", "1", "--mh-kinetic", "1", "--mh-kinetic-v", "normalised",
        "--epochs", "2", "--train-samples-per-epoch", "256",
        "-b", "32", "--opt", "adam", "--lr", "1e-3", "--eval-samples", "50", "--eval-attack-steps", "1",
        "--checkpoint-every-steps", "3", "--checkpoint-keep", "2", "--no-progress")


def _start(out, name, *extra, log=None):
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "train_atcd.py", *ARGS, "--output", str(out), "--experiment", name,
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL,
                            text=True)


def _finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _kill_when(proc, cond, timeout=300.0) -> bool:
    """SIGKILL `proc` as soon as `cond()` holds (polled every ms); False if the run ended first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            proc.kill()
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    raise AssertionError("kill condition never met")


def _complete_checkpoints(run_dir):
    return sorted(n for n in os.listdir(run_dir)
                  if n.startswith("checkpoint-") and os.path.isfile(os.path.join(run_dir, n, "state.json")))


def _assert_readable(run_dir):
    """Every complete checkpoint loads: its marker, every safetensors file, the optimizer and RNG files."""
    names = _complete_checkpoints(run_dir)
    assert names, f"no complete checkpoint in {run_dir}: {os.listdir(run_dir)}"
    for n in names:
        d = os.path.join(run_dir, n)
        with open(os.path.join(d, "state.json")) as f:
            json.load(f)
        for fn in os.listdir(d):
            if fn.endswith(".safetensors"):
                load_file(os.path.join(d, fn))
            elif fn.endswith((".bin", ".pkl")):
                torch.load(os.path.join(d, fn), weights_only=False)  # our own test's files (Accelerate's format)
    for n in os.listdir(run_dir):  # nothing else that claims to be a checkpoint
        assert n.startswith((".tmp-", "checkpoint-")) or n in {"args.yaml", "summary.csv"}, n
    return names


def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.csv")) as f:
        return [{k: r[k] for k in ("epoch", "train_loss", "train_adv_top1", "eval_top1", "eval_pgd_top1",
                                   "num_updates", "mh_accept", "mh_accept_r0", "mh_accept_r1")}
                for r in csv.DictReader(f)]


def _assert_same_final(a_dir, b_dir):
    a, b = load_file(os.path.join(a_dir, "model.safetensors")), load_file(os.path.join(b_dir, "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _summary(a_dir) == _summary(b_dir)  # per-epoch losses, accuracies, M-H rates, update counts


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    rc, stdout = _finish(_start(out, "full"))
    assert rc == 0, stdout[-2000:]
    return os.path.join(out, "full")


@pytest.mark.slow
def test_sigkill_at_three_points_then_resume_auto_is_bit_identical(reference, tmp_path):
    run = os.path.join(tmp_path, "killed")

    def exists(name):
        return lambda: os.path.isfile(os.path.join(run, name, "state.json"))

    def writing():  # a checkpoint being written right now (its temporary dir exists, the marker is not in yet)
        return os.path.isdir(run) and any(n.startswith(".tmp-checkpoint") for n in os.listdir(run))

    points = [
        ("mid-epoch, just after a periodic checkpoint", exists("checkpoint-0000-step0000003"), []),
        ("during a checkpoint write", writing, ["--resume", "auto"]),
        ("at an epoch boundary", exists("checkpoint-0000"), ["--resume", "auto"]),
    ]
    for what, cond, extra in points:
        before = _complete_checkpoints(run) if os.path.isdir(run) else []
        assert _kill_when(_start(tmp_path, "killed", *extra), cond), f"run finished before the kill {what}"
        after = _assert_readable(run)
        if cond is writing:  # the cut write never completed, so nothing was pruned for it
            assert set(before) <= set(after)
            assert any(n.startswith(".tmp-checkpoint") for n in os.listdir(run))
    rc, stdout = _finish(_start(tmp_path, "killed", "--resume", "auto"))
    assert rc == 0, stdout[-2000:]
    assert not any(n.startswith(".tmp-") for n in os.listdir(run))  # leftovers of the cut write were cleared
    _assert_same_final(reference, run)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_zero_and_resumes_bit_identical(reference, tmp_path):
    run = os.path.join(tmp_path, "term")
    # with 2 loader workers (the reference used none): the same minibatches, so the same weights
    proc = _start(tmp_path, "term", "--workers", "2")
    deadline = time.time() + 300
    while not os.path.isfile(os.path.join(run, "checkpoint-0000-step0000003", "state.json")):
        assert proc.poll() is None and time.time() < deadline, "run ended before the signal"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    rc, stdout = _finish(proc)
    assert rc == 0, stdout[-2000:]
    res = json.loads(stdout.strip().splitlines()[-1][len("RESULT "):])
    assert res["status"] == "preempted" and "SIGTERM" in stdout and "--resume auto" in stdout
    ckpt = res["checkpoint"]
    with open(os.path.join(ckpt, "state.json")) as f:
        meta = json.load(f)
    assert not meta["epoch_done"] and meta["batches_done"] >= 3  # written at the step the signal interrupted
    assert not os.path.exists(os.path.join(run, "model.safetensors"))  # the run did not pretend to finish
    rc, stdout = _finish(_start(tmp_path, "term", "--workers", "2", "--resume", "auto"))
    assert rc == 0, stdout[-2000:]
    _assert_same_final(reference, run)


@pytest.mark.slow
def test_a_repeated_signal_is_the_same_request_and_still_checkpoints(tmp_path):
    """SLURM signals every process of the step and the launcher's agent forwards its own SIGTERM: one preemption
    arrives twice. The second SIGTERM, sent while the first step still runs, changes nothing: the run finishes the
    step, checkpoints and exits 0 (before, it exited at once without a checkpoint)."""
    log = tmp_path / "stderr.txt"
    with open(log, "w") as f:  # slow steps (T*K = 16 passes of 256 images) leave time for the second signal
        proc = _start(tmp_path, "twice", "--atcd-T", "4", "--atcd-K", "4", "-b", "256", "--checkpoint-every-steps",
                      "0", log=f)
        deadline = time.time() + 300
        while not (tmp_path / "twice" / "args.yaml").exists():  # model and data are loaded
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.01)
        time.sleep(1.0)  # inside the first minibatch
        proc.send_signal(signal.SIGTERM)
        while "SIGTERM received" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        rc, stdout = _finish(proc)
    assert rc == 0, log.read_text()[-2000:]
    res = json.loads(stdout.strip().splitlines()[-1][len("RESULT "):])
    assert res["status"] == "preempted" and log.read_text().count("SIGTERM received") == 1
    assert _complete_checkpoints(tmp_path / "twice") == [os.path.basename(res["checkpoint"])]


def test_non_finite_steps_are_skipped_then_the_run_stops_keeping_the_checkpoint_before(tmp_path, capsys):
    """A model whose training forward turns NaN from its 5th call: updates 4, 5, 6 are skipped (weights untouched),
    the third stops the run (exit 3), and the newest checkpoint from before the first NaN survives pruning. The
    guard's count is read every --log-interval batches and before each checkpoint: with 1, at every batch (with
    the default the run stops at the next read, here the step-8 checkpoint's: see
    test_trainer_reads_the_guard_at_log_points_and_before_checkpoints)."""
    import timm
    from timm.models import register_model

    import train_atcd
    from atcd.models.smallcnn import smallcnn_mnist

    if not timm.is_model("nan_after_4_smallcnn"):
        @register_model
        def nan_after_4_smallcnn(pretrained=False, **kwargs):
            model = smallcnn_mnist(pretrained=pretrained, **kwargs)
            calls = [0]

            def hook(mod, inp, out):
                if mod.training:
                    calls[0] += 1
                    if calls[0] > 4:
                        return out * float("nan")
                return out
            model.register_forward_hook(hook)
            return model

    rc = train_atcd.main(["--model", "nan_after_4_smallcnn", "--method", "standard", "--epochs", "1",
                          "--train-samples-per-epoch", "320", "-b", "32", "--opt", "adam", "--lr", "1e-3",
                          "--checkpoint-every-steps", "2", "--checkpoint-keep", "1", "--max-bad-steps", "3",
                          "--log-interval", "1",
                          "--eval-samples", "20", "--eval-attack-steps", "1", "--output", str(tmp_path),
                          "--experiment", "nan", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 3, out.out[-2000:]
    res = json.loads(out.out.strip().splitlines()[-1][len("RESULT "):])
    run = tmp_path / "nan"
    assert res["status"] == "bad_steps" and res["bad_steps"] == 3 and res["first_bad"] == 4
    pinned = res["checkpoint"]
    assert os.path.basename(pinned) == "checkpoint-0000-step0000004"  # 4 good updates, written before the NaN
    assert "non-finite" in out.err and "update 4" in out.out
    names = _assert_readable(run)
    assert "checkpoint-0000-step0000004" in names and "checkpoint-0000-step0000006" in names  # pinned + newest
    w_pinned = load_file(os.path.join(pinned, "model.safetensors"))
    w_later = load_file(os.path.join(run, "checkpoint-0000-step0000006", "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w_pinned.values())
    assert all(torch.equal(w_pinned[k], w_later[k]) for k in w_pinned)  # the NaN updates were never applied
    assert not os.path.exists(run / "model.safetensors")


# ---- the non-finite guard without host syncs (in-process) --------------------------------------------------------

def _guarded_run(device, opt: str, nan_at: set, n: int, mnist_test_batch, guard: bool = True):
    """`n` updates of the small CNN on 8-image batches; the loss of the updates in `nan_at` is NaN. Returns the
    model, the torch optimizer and the guard (None without)."""
    import timm
    import torch.nn.functional as F
    from fakedevice import FakeAccelerator

    from atcd.faults import FiniteGuard
    from atcd.models import NormalizedModel

    torch.manual_seed(0)
    model = NormalizedModel.from_timm(timm.create_model("smallcnn_mnist")).to(device)
    inner = (torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4) if opt == "adam" else
             torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4))
    done = [0]
    g = FiniteGuard(inner, FakeAccelerator(torch.device(device)), num_updates=lambda: done[0]) if guard else None
    x, y = mnist_test_batch
    for i in range(n):
        xb, yb = x[8 * i:8 * i + 8].to(device), y[8 * i:8 * i + 8].to(device)
        loss = F.cross_entropy(model(xb), yb) * (float("nan") if i in nan_at else 1.0)
        (g or inner).zero_grad()
        loss.backward()
        (g or inner).step()
        done[0] += 1
    return model, inner, g


def _flat(model, opt) -> list:
    state = [v for p in model.parameters() for v in opt.state[p].values()]
    return [t.detach().cpu().clone() for t in (*model.parameters(), *state)]


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_guard_skips_non_finite_updates_exactly_as_if_never_taken(opt, mnist_test_batch):
    """On cpu (all optimizer state restorable) a run whose updates 0 and 3 are NaN ends with the weights and the
    optimizer state (Adam's moments and step, SGD's momentum) bit-identical to a run without those two batches;
    the skips are counted on the device and read by poll()."""
    model, inner, guard = _guarded_run("cpu", opt, {0, 3}, 6, mnist_test_batch)
    torch.manual_seed(0)
    ref_model, ref_inner, _ = _guarded_run("cpu", opt, set(), 0, mnist_test_batch, guard=False)
    import torch.nn.functional as F
    x, y = mnist_test_batch
    for i in (1, 2, 4, 5):  # the same batches, without the NaN ones
        ref_inner.zero_grad()
        F.cross_entropy(ref_model(x[8 * i:8 * i + 8]), y[8 * i:8 * i + 8]).backward()
        ref_inner.step()
    got, want = _flat(model, inner), _flat(ref_model, ref_inner)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
    assert (guard.bad_steps, guard.first_bad) == (0, None)  # not read yet
    assert guard.poll() == 2 and (guard.bad_steps, guard.first_bad) == (2, 0)
    assert guard.poll() == 0 and guard.bad_steps == 2


def test_guard_on_a_device_makes_no_host_sync_and_leaves_the_weights(mnist_test_batch):
    """On an accelerator (the fake device) the guarded updates make no host sync, a NaN update leaves weights and
    Adam's moments as they were (its host-side `step` counter advances, as documented), and poll() reads the count
    once."""
    import torch.nn.functional as F
    from fakedevice import fake_device
    from syncs import count_host_syncs

    with fake_device() as dev:
        with count_host_syncs() as syncs:
            model, inner, guard = _guarded_run(dev, "adam", {2}, 3, mnist_test_batch)  # the third update is NaN
        assert syncs.total == 0, syncs.report()
        ref, ref_inner, _ = _guarded_run(dev, "adam", set(), 2, mnist_test_batch, guard=False)
        got, want = _flat(model, inner), _flat(ref, ref_inner)  # after the NaN one vs never taken
        steps = [i for i, t in enumerate(want) if t.dim() == 0]  # Adam's step counters (cpu tensors)
        assert steps and all(torch.equal(a, b) for i, (a, b) in enumerate(zip(got, want)) if i not in steps)
        assert all(got[i] == want[i] + 1 for i in steps)
        x, y = mnist_test_batch[0][:16].to(dev), mnist_test_batch[1][:16].to(dev)
        with count_host_syncs() as syncs:
            guard.zero_grad()
            F.cross_entropy(model(x), y).backward()
            guard.step()  # a finite update is applied
            assert guard.poll() == 1 and guard.bad_steps == 1 and guard.first_bad == 2
        assert [c.kind for c in syncs.calls] == ["tolist"], syncs.report()
        assert not torch.equal(_flat(model, inner)[0], got[0])


@pytest.mark.parametrize("log_interval,stop_at,polled", [(4, 8, [3, 4, 6, 8]), (1, 7, [1, 2, 3, 4, 5, 6, 7])])
def test_trainer_reads_the_guard_at_log_points_and_before_checkpoints(tmp_path, log_interval, stop_at, polled):
    """The trainer's per-batch hook reads the guard's count every --log-interval batches, at the epoch's last one and
    before each checkpoint (so the checkpoint from before the first skip is pinned before any pruning), and asks
    the engine for the running sums only when it writes a checkpoint. Skips at batches 5, 6, 7 with
    --max-bad-steps 3: the run stops at the first read that sees the third (per batch with --log-interval 1)."""
    from types import SimpleNamespace

    from atcd.config import TrainConfig
    from atcd.faults import FiniteGuard
    from atcd.trainer import _Training

    done = [0]
    param = torch.nn.Parameter(torch.zeros(3))
    acc = SimpleNamespace(sync_gradients=True, is_main_process=True, num_processes=1)
    guard = FiniteGuard(torch.optim.SGD([param], lr=0.1), acc, num_updates=lambda: done[0])
    t = object.__new__(_Training)
    t.cfg = TrainConfig.of(method="standard", log_interval=log_interval, checkpoint_every_steps=3, max_bad_steps=3)
    t.accelerator, t.guard, t.train_loader, t.out_dir = acc, guard, [None] * 10, str(tmp_path)
    t.preemption = SimpleNamespace(requested=lambda _acc, now=False: False)
    t.faults = {"bad_steps": 0, "first_bad": None, "pinned": None}
    t.status, t.status_ckpt = "completed", None
    polls, snapshots, saves = [], [], []
    poll = guard.poll
    guard.poll = lambda: polls.append(done[0]) or poll()
    t._meta = lambda epoch, done_, batches, snap=None: {"batches": batches, "totals": snap}
    t._save = lambda name, meta: saves.append(meta["batches"]) or name
    for b in range(1, 11):
        param.grad = torch.full((3,), float("nan") if b in (5, 6, 7) else 1.0)
        guard.step()
        done[0] += 1
        if t._after_batch(0, b, lambda b=b: snapshots.append(b) or {"loss_sum": 0.0}):
            break
    assert b == stop_at and polls == polled and t.status == "bad_steps"
    assert saves == snapshots == [3, 6]  # the step-6 checkpoint is written (2 skips), step 9 never reached
    assert t.faults["bad_steps"] == 3 and t.faults["first_bad"] == 4  # updates 4, 5, 6 (0-based) were skipped
    assert torch.equal(param.detach(), torch.full((3,), -0.1 * (stop_at - 3)))  # only the finite ones applied
