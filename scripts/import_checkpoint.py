#!/usr/bin/env python3
"""Bring an existing robust checkpoint to the Hub as a timm model: a hub folder ready to measure and push.

    python scripts/import_checkpoint.py ckpt.pt --model resnet50 --out imported/r50 --repo-id org/r50-robust
    python scripts/import_checkpoint.py robustness_ckpt.pt --model resnet50 --out imported/r50 --repo-id org/r50 \
        --source-model robustness.imagenet_models.resnet:resnet50     # also compare logits with the source code
    python validate.py --model local-dir:imported/r50 --attacks clean,autoattack --eps 4/255 --update-card imported/r50
    python scripts/publish.py imported/r50 --repo-id org/r50-robust --push

Formats: a plain state dict, {'state_dict': ...}, {'model': ...}, robustness-library checkpoints (`module.model.`
weights, `module.attacker.` dropped, mean/std from `module.normalizer.new_mean/new_std`), safetensors. Pickle files
are read only through torch.load(weights_only=True): a file holding anything but tensors is refused unopened.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from atcd.cli import die, user_errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help=".safetensors, or a torch checkpoint (.pt/.pth/.ckpt, read with weights_only)")
    p.add_argument("--model", required=True, help="timm architecture the weights belong to (e.g. resnet50)")
    p.add_argument("--out", required=True, help="hub folder to write (config.json, model.safetensors, README.md)")
    p.add_argument("--repo-id", required=True, help="org/name the folder is meant for (named in the card)")
    p.add_argument("--rename", nargs="*", default=(), metavar="OLD=NEW", help="map key prefixes (e.g. linear.=fc.)")
    p.add_argument("--model-kwargs", nargs="*", default=(), metavar="K=V", help="timm.create_model arguments")
    p.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                   help="input size of the data config (default: the architecture's)")
    p.add_argument("--crop-pct", type=float, default=None, help="eval centre-crop fraction (default: the arch's, "
                                                                  "1.0 at <= 32 px)")
    p.add_argument("--interpolation", default=None, help="resize interpolation (default: the architecture's)")
    p.add_argument("--mean", type=float, nargs="+", default=None,
                   help="normalisation mean of the weights (default: the checkpoint's normaliser, else the arch's)")
    p.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std (as --mean)")
    p.add_argument("--source-model", default=None, metavar="MODULE:FACTORY",
                   help="the source code's model factory; its logits are compared with the timm model's")
    p.add_argument("--source-kwargs", nargs="*", default=(), metavar="K=V", help="arguments of --source-model")
    p.add_argument("--license", default="apache-2.0", help="license id of the weights")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from atcd.publish.importer import import_checkpoint
    bad = [r for r in a.rename if "=" not in r]
    if bad:
        die(f"--rename takes OLD=NEW (got {bad[0]!r})")
    out = user_errors(import_checkpoint, a.checkpoint, a.model, a.out, a.repo_id,
                      rename=dict(r.split("=", 1) for r in a.rename), model_kwargs=a.model_kwargs,
                      input_size=a.input_size, crop_pct=a.crop_pct, interpolation=a.interpolation, mean=a.mean,
                      std=a.std, source_model=a.source_model, source_kwargs=a.source_kwargs, license=a.license)
    verified = out.get("verified")
    print(f"wrote {a.out}: {a.model}, {out['num_classes']} classes, read as {out['format']}; logits "
          + (f"checked against {a.source_model} (exact: {verified['exact']})" if verified else "not checked "
             "(no --source-model)"))
    print(f"next: python validate.py --model local-dir:{a.out} --attacks clean,autoattack --eps EPS "
          f"--update-card {a.out}")
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
