#!/usr/bin/env bash
# Quick start (2/2): set up and run the whole test suite (slow end-to-end tests included).
# Two pytest-xdist workers with one thread each (TEST_WORKERS=N to change, 0 for one process): most slow tests start
# interpreters and launchers whose imports are single-threaded, so two workers keep both cores busy.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -e .
WORKERS=${TEST_WORKERS:-2}
if [ "$WORKERS" -gt 0 ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    python -m pytest tests -q --durations=15 -n "$WORKERS" --dist worksteal "$@"
else
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
    python -m pytest tests -q --durations=15 "$@"
fi
