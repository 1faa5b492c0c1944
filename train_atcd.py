#!/usr/bin/env python3
"""Adversarial training of any timm model with ATCD or a baseline, through Accelerate.

    python train_atcd.py --model smallcnn_mnist --dataset mnist-mini --method atcd --eps 0.3
    accelerate launch --config_file hfconfigs/cpu_1proc.yaml train_atcd.py -c recipes/mnist_atcd.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --config_file hfconfigs/cpu_2proc.yaml train_atcd.py \
        --dataset wds --data-dir data/mnist-mini-wds --eps 0.3 --train-samples-per-epoch 2048

The last line printed (by the main process only) is `RESULT {json}`. Exit codes: 0 done, or stopped by
SIGTERM/SIGUSR1 after writing a checkpoint (`"status": "preempted"`; resume with --resume auto); 2 bad input;
3 stopped by --max-bad-steps non-finite updates (`"status": "bad_steps"`); 4 trained to the end with accuracy still
at chance after the eps warm-up (`"status": "collapsed"`, atcd/collapse.py). A repeated SIGTERM/SIGUSR1 is the
same request; SIGINT stops at once.
"""
import sys

from atcd.main import train_main as main  # also the `atcd-train` console script of the installed package

if __name__ == "__main__":
    sys.exit(main())
