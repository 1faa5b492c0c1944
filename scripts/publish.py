#!/usr/bin/env python3
"""Publish a training run to the Hugging Face Hub: timm weights + config, args.yaml, results.json, model card.

    python validate.py --checkpoint RUN/model.safetensors --attacks clean,pgd,autoattack --results-file RUN/results.json
    python scripts/publish.py RUN --repo-id org/name            # writes RUN/hf-export/, nothing leaves the machine
    python scripts/publish.py RUN --repo-id org/name --push     # create_repo + upload_folder (token: HF_TOKEN / login)

The numbers in the card come from validate.py's results JSON, which is required (publish never runs attacks
itself: the protocol and its cost are yours to choose). The token is read by huggingface_hub (`get_token()`), never
taken as a flag, printed or written.
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
    p.add_argument("run_dir", help="train_atcd.py output folder (args.yaml, model.safetensors, summary.csv)")
    p.add_argument("--repo-id", required=True, help="org/name on the Hub")
    p.add_argument("--results", default=None, help="validate.py --results-file output (default RUN_DIR/results.json)")
    p.add_argument("--out", default=None, help="folder to write (default RUN_DIR/hf-export)")
    p.add_argument("--license", default="apache-2.0", help="license id of the weights")
    p.add_argument("--hardware", default=None, help="what training ran on, for the card (the run does not record it)")
    p.add_argument("--dataset-id", default=None, help="Hub dataset id for the card (default: from the dataset name)")
    p.add_argument("--push", action="store_true", help="upload to the Hub (create_repo + upload_folder)")
    p.add_argument("--private", action="store_true", help="create the repo as private (with --push)")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from atcd.publish import export_run, push_folder
    folder = user_errors(export_run, a.run_dir, a.repo_id, out_dir=a.out, results_path=a.results,
                         license=a.license, hardware=a.hardware, dataset_id=a.dataset_id)
    print(f"wrote {folder}: {', '.join(sorted(os.listdir(folder)))}")
    commit_url = user_errors(push_folder, folder, a.repo_id, private=a.private, revision=a.revision) if a.push else None
    if commit_url:
        print(f"pushed to https://huggingface.co/{a.repo_id} ({commit_url})")
    else:
        print(f"not pushed (dry run); to upload: python scripts/publish.py {a.run_dir} --repo-id {a.repo_id} --push")
    print("RESULT " + json.dumps({"folder": folder, "repo_id": a.repo_id, "pushed": bool(commit_url),
                                  "commit_url": commit_url}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
