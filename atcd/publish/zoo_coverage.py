"""Coverage of RobustBench's zoo: every single-model entry of a table built with seeded random weights, imported
and compared (`scripts/import_checkpoint.py --robustbench-coverage`), written as reports/robustbench_coverage.*."""
import csv
import importlib
import logging
import os
import shutil
import tempfile
import time

import timm
import torch

from ..checkpoint import atomic_write_text
from ..models.hub import HubError, one_line
from ..models.zoo_package import LOGIT_TOL, NUM_CLASSES, _entry, _is_ensemble, zoo_entries
from .zoo import _build, import_zoo, random_zoo_module, zoo_file_content
from .zoo_map import ZooUnsupported, create_mapped, map_to_timm

__all__ = ["coverage", "write_coverage"]

_logger = logging.getLogger(__name__)

def coverage(tables: list[tuple[str, str]], seed: int = 0, names: list[str] | None = None,
             on_row=None, structural: bool = False) -> list[dict]:
    """Every entry of the zoo tables: built by robustbench with seeded random weights, saved as a zoo file,
    loaded back by robustbench's `load_model`, imported into a hub folder (logits compared): one row each with
    the outcome (`imported` / `ensemble` / `custom module` / `architecture` / `key map` / `build` / `logits`)."""
    rows = []
    for dataset, threat in tables:
        for name in zoo_entries(dataset, threat):
            if names and name not in names and f"{dataset}/{threat}/{name}" not in names:
                continue
            rows.append(_structural_row(dataset, threat, name) if structural else
                        _coverage_row(dataset, threat, name, seed))
            _logger.warning("%s/%s/%s: %s %s", dataset, threat, name, rows[-1]["outcome"], rows[-1]["detail"])
            if on_row is not None:  # e.g. rewrite the table so far: a long run leaves a partial table, not none
                on_row(rows)
    return rows


def _coverage_row(dataset: str, threat: str, name: str, seed: int) -> dict:
    import gc
    spec = f"{dataset}/{threat}/{name}"
    row = {"table": f"{dataset}/{threat}", "entry": name, "outcome": "", "architecture": "", "max_abs_diff": "",
           "detail": "", "seconds": 0.0}
    t0 = time.time()
    entry = _entry(dataset, threat, name)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmp = tempfile.mkdtemp(prefix="atcd-zoo-coverage-", dir=shm)  # GB-sized files: in memory where possible
    try:
        if _is_ensemble(entry):
            row.update(outcome="ensemble", detail=f"ensemble of {len(entry['gdrive_id'])} models: not one timm model")
            return row
        try:
            zoo = random_zoo_module(dataset, threat, name, seed)
        except HubError as e:
            row.update(outcome="build", detail=str(e))
            return row
        try:
            mapping = map_to_timm(zoo, dataset, name)
        except ZooUnsupported as e:
            row.update(outcome=e.kind, detail=str(e))
            return row
        path = os.path.join(tmp, f"{name}.pt")
        torch.save(zoo_file_content(zoo, dataset, name), path)
        del zoo, mapping
        gc.collect()
        try:
            out = import_zoo(spec, os.path.join(tmp, "out"), "robustbench/" + name, file=path, verify_n=2)
            check = out["verified"]
            row.update(outcome="imported", architecture=out["architecture"] + "".join(
                f" {k}={v}" for k, v in out["model_kwargs"].items()), max_abs_diff=f"{check['max_abs_diff']:.2g}",
                detail=f"logits equal on {check['n']} inputs {tuple(check['input_size'])} (max |logit| "
                       f"{check['max_abs_logit']:.3g})")
        except ZooUnsupported as e:
            row.update(outcome=e.kind, detail=str(e))
        except HubError as e:
            row.update(outcome="logits" if "differ" in str(e) else "load", detail=str(e))
        return row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        row["seconds"] = round(time.time() - t0, 1)
        gc.collect()


def _structural_row(dataset: str, threat: str, name: str) -> dict:
    """The mapping of an entry checked without weights (modules on the meta device): which timm architecture and
    whether every key and shape fits it; logits are not compared (outcome `maps`, or why not)."""
    row = {"table": f"{dataset}/{threat}", "entry": name, "outcome": "", "architecture": "", "max_abs_diff": "",
           "detail": "", "seconds": 0.0}
    t0 = time.time()
    entry = _entry(dataset, threat, name)
    try:
        if _is_ensemble(entry):
            row.update(outcome="ensemble", detail=f"ensemble of {len(entry['gdrive_id'])} models: not one timm model")
            return row
        with torch.device("meta"):
            try:
                module = _build(dataset, threat, name)
            except Exception as e:  # noqa: BLE001  (its constructor computes on tensors: meta has no values)
                row.update(outcome="not checked", detail=f"its module cannot be built without weights "
                                                         f"({one_line(e)})")
                return row
            mapping = map_to_timm(module, dataset, name)
            create_mapped(mapping, NUM_CLASSES[dataset])
        row.update(outcome="maps", architecture=mapping.arch + "".join(
            f" {k}={v}" for k, v in mapping.model_kwargs.items()),
            detail="every key and shape fits (no weights: logits not compared in this run)")
    except ZooUnsupported as e:
        row.update(outcome=e.kind, detail=str(e))
    except Exception as e:  # noqa: BLE001  (a module that cannot live on the meta device)
        row.update(outcome="not checked", detail=f"structural check failed: {one_line(e)}")
    finally:
        row["seconds"] = round(time.time() - t0, 1)
    return row


def write_coverage(rows: list[dict], csv_path: str, md_path: str, command: str, total: int | None = None) -> dict:
    """The coverage table as CSV and Markdown; returns the per-table summary (imported / single-model entries)."""
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    summary = {}
    for table in dict.fromkeys(r["table"] for r in rows):
        mine = [r for r in rows if r["table"] == table]
        single = [r for r in mine if r["outcome"] != "ensemble"]
        ok = [r for r in single if r["outcome"] == "imported"]
        maps = [r for r in single if r["outcome"] == "maps"]
        in_scope = [r for r in single if r["outcome"] != "custom module"]
        summary[table] = {"entries": len(mine), "single_model": len(single), "imported": len(ok),
                          "pct_of_single": round(100 * len(ok) / max(len(single), 1), 1),
                          "maps_not_measured": len(maps),
                          "pct_imported_or_maps": round(100 * (len(ok) + len(maps)) / max(len(single), 1), 1),
                          "in_scope": len(in_scope), "pct_of_in_scope": round(100 * len(ok) / max(len(in_scope), 1), 1)}
    lines = ["# RobustBench model zoo: which entries import exactly as timm models", "",
             (f"Measured by `{command}` (robustbench {importlib.metadata.version('robustbench')}, timm "
              f"{timm.__version__}, torch {torch.__version__}). Each entry's module is built by the robustbench "
              "package with seeded random weights (BatchNorm statistics included), saved as a zoo file, loaded back "
              "by robustbench's `load_model`, imported by `scripts/import_checkpoint.py --robustbench`, and its "
              f"logits compared with the zoo module's (|Δlogit| <= {LOGIT_TOL:g} x (1 + |logit|))."), "",
             *([f"**Partial: {len(rows)} of {total} entries so far** (the run is still going or was stopped).", ""]
               if total and len(rows) < total else []),
             ("Outcome `maps`: the entry was checked without weights only (modules on the meta device: the timm "
              "architecture and every key and shape fit; logits not compared), because the weighted run did not "
              "reach it in the time it had."), "",
             ("| table | entries | single-model | imported exactly | % of single-model | maps (not measured) | "
              "% imported or maps | % of in-scope (no custom module) imported exactly |"),
             "|---|---|---|---|---|---|---|---|"]
    for t, s in summary.items():
        lines.append(f"| {t} | {s['entries']} | {s['single_model']} | {s['imported']} | {s['pct_of_single']} | "
                     f"{s['maps_not_measured']} | {s['pct_imported_or_maps']} | {s['pct_of_in_scope']} |")
    lines += ["", "| table | entry | outcome | timm architecture | max abs Δlogit | detail | s |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['table']} | {r['entry']} | {r['outcome']} | {r['architecture']} | {r['max_abs_diff']} | "
                     f"{r['detail'].replace('|', '/')} | {r['seconds']} |")
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return summary
