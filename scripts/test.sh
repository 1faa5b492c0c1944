#!/usr/bin/env bash
# Quick start (2/2): set up and run the whole test suite (slow end-to-end tests included).
# Two pytest-xdist workers with one thread each (TEST_WORKERS=N for another number; 0 runs one process with 2
# threads). On this 2-core machine the 572 tests took 1240 s on 2 workers, both cores busy throughout: most of it is
# the scripts run as subprocesses (about 5 s of interpreter start-up each: torch, timm) and AutoAttack on the
# digits that survive APGD-CE. The minutes-long tests are collected first (marker `longest`).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -e . && python -m pip install -q --no-deps robustbench==1.1.1  # [zoo]
WORKERS=${TEST_WORKERS:-2}
if [ "$WORKERS" -gt 0 ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    python -m pytest tests -q --durations=15 -n "$WORKERS" --dist worksteal "$@"
else
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
    python -m pytest tests -q --durations=15 "$@"
fi
