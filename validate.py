#!/usr/bin/env python3
"""Clean and robust accuracy (PGD, AutoAttack, ...) of a checkpoint, a timm model, or an hf-hub: model.

    python validate.py --model smallcnn_mnist --checkpoint output/demo/atcd/model.safetensors \
        --dataset mnist-mini --eps 0.3 --attacks clean,pgd,autoattack --num-samples 200
    python validate.py --model 'local-dir:output/*/hf-export' --attacks clean,pgd --results-format csv \
        --results-file leaderboard.csv

The last line printed is `RESULT {json}`: {attack: top-1} of one model, {"leaderboard": [row, ...]} of several.
"""
import sys

from atcd.main import validate_main as main  # also the `atcd-validate` console script of the installed package

if __name__ == "__main__":
    sys.exit(main())
