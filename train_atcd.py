#!/usr/bin/env python3
"""Adversarial training of any timm model with ATCD or a baseline, through Accelerate.

    python train_atcd.py --model smallcnn_mnist --dataset mnist-mini --method atcd --eps 0.3
    accelerate launch --config_file hfconfigs/cpu_1proc.yaml train_atcd.py -c recipes/mnist_atcd.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --config_file hfconfigs/cpu_2proc.yaml train_atcd.py \
        --dataset wds --data-dir data/mnist-mini-wds --eps 0.3 --train-samples-per-epoch 2048

The last line printed (by the main process only) is `RESULT {json}`. Exit codes: 0 done, or stopped by
SIGTERM/SIGUSR1 after writing a checkpoint (`"status": "preempted"`; resume with --resume auto); 2 bad input;
3 stopped by --max-bad-steps non-finite updates (`"status": "bad_steps"`); 4 trained to the end with accuracy still
at chance after the eps warm-up (`"status": "collapsed"`, atcd/collapse.py); 128+N a second signal N.
"""
import json
import logging
import sys

from atcd.cli import user_errors
from atcd.config import parse_train_args
from atcd.faults import EXIT_BAD_STEPS, EXIT_COLLAPSED


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from atcd.trainer import run
    result = user_errors(run, user_errors(parse_train_args, argv))
    from accelerate import PartialState
    if PartialState().is_main_process:  # every process returns the same (reduced) result
        print("RESULT " + json.dumps(result))
    return {"bad_steps": EXIT_BAD_STEPS, "collapsed": EXIT_COLLAPSED}.get(result["status"], 0)


if __name__ == "__main__":
    sys.exit(main())
