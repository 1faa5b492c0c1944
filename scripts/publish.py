#!/usr/bin/env python3
"""Publish a training run to the Hugging Face Hub: timm weights + config, args.yaml, results.json, model card.

    python validate.py --checkpoint RUN/model.safetensors --attacks clean,pgd,autoattack --results-file RUN/results.json
    python scripts/publish.py RUN --repo-id org/name            # writes RUN/hf-export/, nothing leaves the machine
    python scripts/publish.py RUN --repo-id org/name --push     # create_repo + upload_folder (token: HF_TOKEN / login)
    python scripts/publish.py RUN --repo-id org/name --weights best --results RUN/results_best.json --robustbench-info

The numbers in the card come from validate.py's results JSON, which is required (publish never runs attacks
itself: the protocol and its cost are yours to choose) and must have measured the published weights file (its
sha256 is compared). config.json carries the data config those numbers were measured with, so plain timm
(`resolve_data_config` + `create_transform`) reproduces them. The token is read by huggingface_hub (`get_token()`),
never taken as a flag, printed or written.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from atcd.cli import user_errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="train_atcd.py output folder (args.yaml, model.safetensors, summary.csv), or a "
                                   "measured hub folder (scripts/import_checkpoint.py + validate.py --update-card)")
    p.add_argument("--repo-id", required=True, help="org/name on the Hub")
    p.add_argument("--results", default=None, help="validate.py --results-file output (default RUN_DIR/results.json)")
    p.add_argument("--out", default=None, help="folder to write (default RUN_DIR/hf-export)")
    p.add_argument("--license", default=None, help="license id of the weights (Hub ids: apache-2.0, mit, other, ...); "
                                                   "required unless the run trained on the bundled mnist-mini, whose "
                                                   "weights default to apache-2.0")
    p.add_argument("--hardware", default=None, help="what training ran on, for the card (the run does not record it)")
    p.add_argument("--dataset-id", default=None, help="Hub dataset id for the card (default: from the dataset name)")
    p.add_argument("--weights", default="final", choices=["final", "best", "ema"],
                   help="which weights of the run: final (model.safetensors), best (model_best.safetensors, "
                        "--early-stop robust) or ema (model_ema.safetensors, --model-ema)")
    rb = p.add_argument_group("RobustBench")
    rb.add_argument("--robustbench-info", action="store_true",
                    help="also write RobustBench's model_info JSON (robustbench_model_info.json) into the folder; "
                         "needs clean and AutoAttack results")
    rb.add_argument("--rb-name", default=None, help="model_info 'name': the paper or model title (default: repo name)")
    rb.add_argument("--rb-authors", default="", help="model_info 'authors'")
    rb.add_argument("--rb-venue", default="", help="model_info 'venue'")
    rb.add_argument("--rb-link", default="", help="model_info 'link' (paper URL)")
    rb.add_argument("--rb-dataset", default=None, help="model_info 'dataset', e.g. cifar10 (default: the results')")
    p.add_argument("--push", action="store_true", help="upload to the Hub (create_repo + upload_folder)")
    p.add_argument("--private", action="store_true", help="create the repo as private (with --push)")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from atcd.publish import export_run, measured_hub_folder, push_folder
    if not os.path.isfile(os.path.join(a.run_dir, "args.yaml")) and os.path.isfile(os.path.join(a.run_dir,
                                                                                               "config.json")):
        folder = user_errors(measured_hub_folder, a.run_dir)  # an imported model: push the folder as it is
    else:
        info = {"name": a.rb_name or a.repo_id.split("/")[-1], "authors": a.rb_authors, "venue": a.rb_venue,
                "link": a.rb_link, "dataset": a.rb_dataset} if a.robustbench_info else None
        folder = user_errors(export_run, a.run_dir, a.repo_id, out_dir=a.out, results_path=a.results,
                             license=a.license, hardware=a.hardware, dataset_id=a.dataset_id, weights=a.weights,
                             robustbench_info=info)
        print(f"wrote {folder}: {', '.join(sorted(os.listdir(folder)))}")
    commit_url = user_errors(push_folder, folder, a.repo_id, private=a.private, revision=a.revision) if a.push else None
    if commit_url:
        print(f"pushed to https://huggingface.co/{a.repo_id} ({commit_url})")
    else:
        print(f"not pushed (dry run); to upload: python scripts/publish.py {a.run_dir} --repo-id {a.repo_id} --push")
    print("RESULT " + json.dumps({"folder": folder, "repo_id": a.repo_id, "weights": a.weights,
                                  "pushed": bool(commit_url), "commit_url": commit_url}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
