#!/usr/bin/env bash
# ImageNet rehearsal on CPU (<= 10 min on 2 cores): ImageNet-layout folder -> timm/imagenet-1k-wds-style shards ->
# 2-process bf16 resnet18 ATCD training at 224 px, SIGTERM to rank 1, resume -> clean/PGD/AutoAttack on 1 and 2
# processes, which must agree. Extra arguments go to scripts/rehearse_imagenet.py (e.g. --quick, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt -e .
python scripts/rehearse_imagenet.py "$@"
