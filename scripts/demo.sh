#!/usr/bin/env bash
# Quick start (1/2): set up, train the small CNN with ATCD on the bundled real MNIST digits, validate it
# (clean, PGD-40, AutoAttack at eps=0.3 on 200 test images) and print the table. Each stage prints its wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
stage() { local t0=$SECONDS; "${@:2}"; echo "[demo] $1: $((SECONDS - t0)) s"; }
stage setup python -m pip install -q -r requirements.txt -e .
OUT=${OUT:-output/demo}
stage train python train_atcd.py -c recipes/mnist_atcd.yaml --output "$OUT" --experiment atcd --overwrite
stage validate python validate.py --model smallcnn_mnist --checkpoint "$OUT/atcd/model.safetensors" \
    --dataset mnist-mini --eps 0.3 --attacks clean,pgd,autoattack --num-samples 200 \
    --results-file "$OUT/atcd/results.json"
