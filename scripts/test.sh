#!/usr/bin/env bash
# Quick start (2/2): set up and run the whole test suite (slow end-to-end tests included).
# TEST_WORKERS=N runs it on N pytest-xdist workers with one thread each (for machines with more cores); the default 0
# is one process with 2 threads: on 2 cores two workers were slower (the demo test 535 s instead of 175 s).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -e .
WORKERS=${TEST_WORKERS:-0}
if [ "$WORKERS" -gt 0 ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    python -m pytest tests -q --durations=15 -n "$WORKERS" --dist worksteal "$@"
else
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
    python -m pytest tests -q --durations=15 "$@"
fi
