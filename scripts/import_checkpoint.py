#!/usr/bin/env python3
"""Bring an existing robust checkpoint to the Hub as a timm model: a hub folder ready to measure and push.

    python scripts/import_checkpoint.py ckpt.pt --model resnet50 --out imported/r50 --repo-id org/r50-robust
    python scripts/import_checkpoint.py robustness_ckpt.pt --model resnet50 --out imported/r50 --repo-id org/r50 \
        --source-model robustness.imagenet_models.resnet:resnet50     # also compare logits with the source code
    python validate.py --model local-dir:imported/r50 --attacks clean,autoattack --eps 4/255 --update-card imported/r50
    python scripts/publish.py imported/r50 --repo-id org/r50-robust --push

RobustBench's model zoo (needs the `[zoo]` extra: pip install '.[zoo]' && pip install --no-deps robustbench==1.1.1):

    python scripts/import_checkpoint.py --robustbench cifar10/Linf/Carmon2019Unlabeled Carmon2019Unlabeled.pt \
        --out imported/carmon --repo-id org/carmon2019-wrn28-10     # FILE as downloaded from the zoo
    python scripts/import_checkpoint.py --robustbench imagenet/Linf/Salman2020Do_R50 --out imported/r50 \
        --repo-id org/r50      # online: robustbench downloads it into --model-dir
    python scripts/import_checkpoint.py --robustbench-coverage     # every zoo entry, random weights: the table

The zoo module is built and loaded by robustbench, mapped onto a timm architecture, and its logits compared with
the timm model's (max |diff| <= 1e-5, else the import is refused).

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
    p.add_argument("checkpoint", nargs="?", default=None,
                   help=".safetensors, or a torch checkpoint (.pt/.pth/.ckpt, read with weights_only)")
    p.add_argument("--model", default=None, help="timm architecture the weights belong to (e.g. resnet50)")
    p.add_argument("--out", default=None, help="hub folder to write (config.json, model.safetensors, README.md)")
    p.add_argument("--repo-id", default=None, help="org/name the folder is meant for (named in the card)")
    p.add_argument("--robustbench", default=None, metavar="DATASET/THREAT/NAME",
                   help="a RobustBench model zoo entry, e.g. cifar10/Linf/Carmon2019Unlabeled: the checkpoint is its "
                        "downloaded file (or, without it, robustbench downloads it into --model-dir)")
    p.add_argument("--model-dir", default=None, help="robustbench's model folder (default ~/.cache/atcd/robustbench)")
    p.add_argument("--robustbench-coverage", action="store_true",
                   help="import every entry of the CIFAR-10 and ImageNet Linf zoo tables with seeded random weights; "
                        "write the outcome table to --report (.md and .csv)")
    p.add_argument("--report", default="reports/robustbench_coverage.md", help="coverage table (with .csv beside)")
    p.add_argument("--entries", nargs="*", default=None,
                   help="coverage: only these entries (NAME or DATASET/THREAT/NAME)")
    p.add_argument("--structural", action="store_true",
                   help="coverage without weights (meta device): architecture and key/shape fit only, no logits")
    p.add_argument("--merge", nargs="*", default=(), metavar="CSV",
                   help="coverage: rows of earlier partial runs (their .csv) to keep; their entries are not run again")
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
    if a.robustbench_coverage:
        return _coverage(a)
    if not a.out or not a.repo_id:
        die("--out and --repo-id are required")
    if a.robustbench:
        return _zoo(a)
    if not a.checkpoint or not a.model:
        die("give a checkpoint file and --model ARCH (or --robustbench DATASET/THREAT/NAME)")
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


def _zoo(a) -> int:
    from atcd.publish.zoo import import_zoo
    out = user_errors(import_zoo, a.robustbench, a.out, a.repo_id, file=a.checkpoint, model_dir=a.model_dir,
                      license=a.license if a.license != "apache-2.0" else "other")
    v, rep = out["verified"], out["reported"]
    print(f"wrote {a.out}: {a.robustbench} as {out['architecture']}, logits equal to the zoo module's (max |diff| "
          f"{v['max_abs_diff']:.2g} on {v['n']} inputs), preprocessing {out['preprocessing'] or 'none'}"
          + (f"; RobustBench reports clean {rep['clean_acc']:.2f} %, AutoAttack {rep['autoattack_acc']:.2f} %"
             if rep else ""))
    print(f"next: python validate.py --model local-dir:{a.out} --protocol robustbench --data-dir DATA "
          f"--num-samples 1000 --update-card {a.out}")
    print("RESULT " + json.dumps(out, default=str))
    return 0


def _coverage(a) -> int:
    import time

    from atcd.publish.zoo_coverage import coverage, write_coverage
    t0 = time.time()
    from atcd.publish.zoo import zoo_entries
    tables = [("cifar10", "Linf"), ("imagenet", "Linf")]
    import csv
    kept = {}
    for path in a.merge:  # the first file naming an entry wins: give measured runs before --structural ones
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                kept.setdefault((r["table"], r["entry"]), r)
    done, kept = set(kept), list(kept.values())
    wanted = [n for t in tables for n in user_errors(zoo_entries, *t)
              if not a.entries or n in a.entries or "/".join(t) + "/" + n in a.entries]
    total = len(wanted)
    names = ["/".join(t) + "/" + n for t in tables for n in user_errors(zoo_entries, *t)
             if (not a.entries or n in a.entries or "/".join(t) + "/" + n in a.entries)
             and ("/".join(t), n) not in done]
    csv_path = os.path.splitext(a.report)[0] + ".csv"
    command = "python scripts/import_checkpoint.py --robustbench-coverage"

    def write(rows):
        order = {(("/".join(t)), n): i for i, (t, n) in enumerate((t, n) for t in tables for n in zoo_entries(*t))}
        merged = sorted(kept + rows, key=lambda r: order[r["table"], r["entry"]])
        return write_coverage(merged, csv_path, a.report, command, total)

    rows = user_errors(coverage, tables, names=names, on_row=write, structural=a.structural) if names else []
    summary = write(rows)
    for table, s in summary.items():
        print(f"{table}: {s['imported']} of {s['single_model']} single-model entries imported exactly "
              f"({s['pct_of_single']} %; {s['pct_of_in_scope']} % of the {s['in_scope']} without a custom module)")
    print(f"wrote {a.report} and {csv_path} in {time.time() - t0:.0f} s")
    print("RESULT " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
