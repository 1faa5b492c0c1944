#!/usr/bin/env python3
"""Fetch a model repository into the Hugging Face cache, for offline use afterwards.

    python scripts/download.py hf-hub:org/name [--revision main] [--cache-dir DIR]
    HF_HUB_OFFLINE=1 python validate.py --model hf-hub:org/name ...

Uses `huggingface_hub.snapshot_download` (token, if the repo is private: HF_TOKEN or the saved login).
"""
import argparse
import json
import logging
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from atcd.cli import user_errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="hf-hub:org/name[@revision] (or org/name)")
    p.add_argument("--revision", default=None, help="branch, tag or commit")
    p.add_argument("--cache-dir", default=None, help="cache folder (default: HF_HUB_CACHE)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from atcd.models.hub import download_model
    path = user_errors(download_model, a.model, revision=a.revision, cache_dir=a.cache_dir)
    repo_id, _, rev = a.model.split(":", 1)[-1].partition("@")
    name = f"hf-hub:{repo_id}" + (f"@{a.revision or rev}" if (a.revision or rev) else "")
    env = "HF_HUB_OFFLINE=1" + (f" HF_HUB_CACHE={shlex.quote(os.path.abspath(a.cache_dir))}" if a.cache_dir else "")
    print(path)
    print(f"offline from now on: export {env}")
    print(f"e.g. {env} python validate.py --model {name} --attacks clean,autoattack")
    print("RESULT " + json.dumps({"path": path, "model": name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
