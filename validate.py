#!/usr/bin/env python3
"""Clean and robust accuracy (PGD, AutoAttack, ...) of a checkpoint, a timm model, or an hf-hub: model.

    python validate.py --model smallcnn_mnist --checkpoint output/demo/atcd/model.safetensors \
        --dataset mnist-mini --eps 0.3 --attacks clean,pgd,autoattack --num-samples 200
"""
import json
import logging
import sys

from atcd.checkpoint import CheckpointError
from atcd.config import ConfigError, die, parse_eval_args
from atcd.data.factory import DataError


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        cfg = parse_eval_args(argv)
        from atcd.evaluator import run
        out = run(cfg)
    except (ConfigError, DataError, CheckpointError) as e:
        die(str(e))
    except RuntimeError as e:
        if "Unknown model" in str(e):
            die(str(e))
        raise
    if out.get("is_main_process", True):  # one RESULT line under `accelerate launch` too
        print("RESULT " + json.dumps({k: v["top1"] for k, v in out["results"].items()}))


if __name__ == "__main__":
    sys.exit(main())
