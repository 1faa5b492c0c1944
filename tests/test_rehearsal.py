"""`scripts/rehearse_imagenet.py --quick`: the ImageNet rehearsal at toy size, end to end (ImageNet-layout folder
-> timm-style shards -> 2-process bf16 ATCD training, SIGTERM to rank 1, resume -> validate.py with
`--sample-ids` on 1 and on 2 processes). The full-size run is `bash scripts/rehearse_imagenet.sh`."""
import json

import pytest
from conftest import run_script

pytestmark = [pytest.mark.slow, pytest.mark.longest]


def test_quick_rehearsal_preempts_resumes_and_evaluates_equally_on_one_and_two_processes(tmp_path):
    r = run_script("scripts/rehearse_imagenet.py", "--quick", "--out", str(tmp_path / "rehearsal"),
                   env={"OMP_NUM_THREADS": "1"}, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    res = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    assert res["passed"] and res["mixed_precision"] == "bf16"
    # the stop request is read two steps after the signal (no host sync per step): 6 minibatches leave room for it
    assert 0 < res["preempted_at_update"] < res["num_updates"] == 6 * 2  # 6 minibatches x T=2 updates
    assert len(res["evaluated_ids"]) == 8 and all(i.startswith("ILSVRC2012_val_") for i in res["evaluated_ids"])
    one, two = res["top1"]["1proc"], res["top1"]["2proc"]
    assert one == two and set(one) == {"clean", "pgd", "autoattack", "worst_case"}
    assert "images/s" in r.stdout and "1 process" in r.stdout and "2 processes" in r.stdout
