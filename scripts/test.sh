#!/usr/bin/env bash
# Quick start (2/2): set up and run the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -e .
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python -m pytest tests -q --durations=15 "$@"
