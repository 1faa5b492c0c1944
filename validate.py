#!/usr/bin/env python3
"""Clean and robust accuracy (PGD, AutoAttack, ...) of a checkpoint, a timm model, or an hf-hub: model.

    python validate.py --model smallcnn_mnist --checkpoint output/demo/atcd/model.safetensors \
        --dataset mnist-mini --eps 0.3 --attacks clean,pgd,autoattack --num-samples 200
    python validate.py --model 'local-dir:output/*/hf-export' --attacks clean,pgd --results-format csv \
        --results-file leaderboard.csv

The last line printed is `RESULT {json}`: {attack: top-1} of one model, {"leaderboard": [row, ...]} of several.
"""
import json
import logging
import sys

from atcd.cli import user_errors
from atcd.config import parse_eval_args
from atcd.protocols import resolve_protocol


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from atcd.evaluator import run
    cfg = user_errors(parse_eval_args, argv)
    cfg = user_errors(resolve_protocol, cfg)  # --protocol: its values, in place of the options they fix
    out = user_errors(run, cfg)
    if out.get("is_main_process", True):  # one RESULT line under `accelerate launch` too
        if cfg.update_card:
            from atcd.publish import update_card_with_results
            user_errors(update_card_with_results, cfg.update_card, out, push=cfg.push_card)
        if "leaderboard" in out:
            print("RESULT " + json.dumps({"leaderboard": out["leaderboard"]}))
        else:
            print("RESULT " + json.dumps({k: v["top1"] for k, v in out["results"].items()}))


if __name__ == "__main__":
    sys.exit(main())
