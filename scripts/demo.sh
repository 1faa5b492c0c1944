#!/usr/bin/env bash
# Quick start (1/2): set up, train the small CNN with ATCD on the bundled real MNIST digits, validate it
# (clean, PGD-40, AutoAttack at eps=0.3 on 200 test images) and print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -e .
OUT=${OUT:-output/demo}
python train_atcd.py -c recipes/mnist_atcd.yaml --output "$OUT" --experiment atcd --overwrite
python validate.py --model smallcnn_mnist --checkpoint "$OUT/atcd/model.safetensors" --dataset mnist-mini \
    --eps 0.3 --attacks clean,pgd,autoattack --num-samples 200 --results-file "$OUT/atcd/results.json"
