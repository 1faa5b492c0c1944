#!/usr/bin/env python3
"""What validate.py's AutoAttack costs next to the official package called directly, on the same model and images.

    python scripts/bench_autoattack.py --checkpoint output/demo/atcd/model.safetensors --num-samples 100 --rounds 2

The images are the ones `validate.py --num-samples N` evaluates, read through validate's own loader. Each round
times, back to back (rounds interleave them, so a busy neighbour on a shared machine slows all alike):
  direct             pyautoattack.AutoAttack(model, eps=..., version=..., device=..., seed=...)
                     .run_standard_evaluation(x, y, batch_size=--aa-batch-size), the model and images in memory;
  validate           what validate.py runs (`atcd.evaluator.run`) with --attacks clean,autoattack and its defaults
                     (the sanity probe on --sanity-samples 32 images), timed from the parsed config to the results:
                     model loading, data, the probe, clean and AutoAttack;
  validate_nosanity  the same with --sanity-samples 0.
The direct call uses the seed validate gives the first chunk of images, so with one chunk (N <= -b) both compute the
same thing: the robust accuracy and the per-example results must agree (`same_accuracy`, `same_examples`). With
`--aa-version custom --aa-attacks apgd-ce,square` both run those sub-attacks with the standard version's settings
(what validate's --aa-version custom does). Writes bench_autoattack.json and bench_autoattack.md to --out; the last
line is `RESULT {json}`.
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VARIANTS = ("direct", "validate", "validate_nosanity")


def validate_argv(a, sanity: bool) -> list[str]:
    """The validate.py flags of one variant (a user's command line for this measurement)."""
    argv = ["--model", a.model, "--dataset", a.dataset, "--eps", a.eps, "--num-samples", str(a.num_samples),
            "--attacks", "clean,autoattack", "--seed", str(a.seed), "-b", str(a.batch_size),
            "--aa-version", a.aa_version]
    argv += ["--checkpoint", a.checkpoint] if a.checkpoint else []
    argv += ["--aa-attacks", a.aa_attacks] if a.aa_attacks else []
    return argv + ([] if sanity else ["--sanity-samples", "0"]) + a.validate_args.split()


def images_and_model(cfg):
    """The model validate loads and the images and labels it evaluates (all chunks, in evaluation order)."""
    import torch

    from atcd.data import create_atcd_dataset, create_eval_loader, transform_kwargs
    from atcd.evaluator import load_model_for_eval
    from atcd.models import unwrap_timm
    model = load_model_for_eval(cfg)
    ds = create_atcd_dataset(cfg.dataset, cfg.split, data_dir=cfg.data_dir, strict=cfg.strict_data,
                             **transform_kwargs(cfg, unwrap_timm(model).pretrained_cfg))
    batches = list(create_eval_loader(ds, cfg.batch_size, num_samples=cfg.num_samples))
    return model, torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def run_direct(model, x, y, cfg, aa_batch_size: int) -> tuple[float, str]:
    """(seconds, per-example correctness '0101...') of the official package called directly."""
    from pyautoattack import AutoAttack

    from atcd.data import chunk_seed
    o = cfg.attack.options_for("autoattack")
    seed = chunk_seed(cfg.attack.seed, 0)  # validate's seed for the first chunk
    t0 = time.perf_counter()
    if o.aa_version == "custom":  # the standard version's settings, these sub-attacks only (as validate does)
        adversary = AutoAttack(model, eps=cfg.attack.eps, version="standard", device=x.device, seed=seed)
        adversary.attacks_to_run = list(o.aa_attacks)
    else:
        adversary = AutoAttack(model, eps=cfg.attack.eps, version=o.aa_version, device=x.device, seed=seed)
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=aa_batch_size)
    seconds = time.perf_counter() - t0
    return seconds, "".join("1" if v else "0" for v in (y_adv == y).tolist())


def run_validate(cfg) -> tuple[float, str, float]:
    """(seconds, per-example correctness, validate's own `seconds`: probe and attacks) of validate's evaluation."""
    from atcd.evaluator import run
    t0 = time.perf_counter()
    out = run(cfg)
    seconds = time.perf_counter() - t0
    return seconds, out["results"]["autoattack"]["correct"], out["seconds"]


def summarize(rows: list[dict]) -> dict:
    """Per variant: median seconds over rounds, robust accuracy; ratios to the direct call."""
    out = {}
    for v in VARIANTS:
        mine = [r for r in rows if r["variant"] == v]
        out[v] = {"seconds": statistics.median(r["seconds"] for r in mine),
                  "seconds_rounds": [round(r["seconds"], 2) for r in mine],
                  "robust_acc": 100.0 * mine[0]["correct"].count("1") / len(mine[0]["correct"])}
    for v in VARIANTS[1:]:
        out[v]["ratio_to_direct"] = out[v]["seconds"] / out["direct"]["seconds"]
    return out


def write_report(out_dir: str, result: dict):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench_autoattack.json"), "w") as f:
        json.dump(result, f, indent=2)
    s = result["summary"]
    title = (f"# AutoAttack: validate.py vs the package called directly ({result['num_samples']} images, eps "
             f"{result['eps']}, version {result['aa_version']}, {result['rounds']} round(s))")
    lines = [title, "", "| path | seconds (median) | rounds | / direct | robust acc (%) |", "|---|---:|---|---:|---:|"]
    for v in VARIANTS:
        ratio = f"{s[v]['ratio_to_direct']:.3f}" if "ratio_to_direct" in s[v] else "1"
        lines.append(f"| {v} | {s[v]['seconds']:.2f} | {s[v]['seconds_rounds']} | {ratio} | "
                     f"{s[v]['robust_acc']:.2f} |")
    same = f"same robust accuracy: {result['same_accuracy']}; same per-example results: {result['same_examples']}"
    lines += ["", same, "", f"validate flags: `{' '.join(result['validate_argv'])}`"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "bench_autoattack.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="weights (.safetensors) or a training run dir")
    p.add_argument("--model", default="smallcnn_mnist")
    p.add_argument("--dataset", default="mnist-mini")
    p.add_argument("--eps", default="0.3")
    p.add_argument("--num-samples", type=int, default=100)
    p.add_argument("-b", "--batch-size", type=int, default=200, help="validate.py's -b (images per chunk)")
    p.add_argument("--aa-batch-size", type=int, default=250, help="batch_size of the direct call (the package's)")
    p.add_argument("--aa-version", default="standard")
    p.add_argument("--aa-attacks", default="", help="with --aa-version custom, e.g. apgd-ce,square")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--validate-args", default="", help="more validate.py flags for both validate variants")
    p.add_argument("--out", default="output/bench_autoattack")
    a = p.parse_args(argv)
    if a.checkpoint and not os.path.exists(a.checkpoint):
        print(f"error: --checkpoint {a.checkpoint!r}: no such file or run dir", file=sys.stderr)
        return 2
    if a.rounds < 1 or a.num_samples < 1:
        print("error: --rounds and --num-samples must be >= 1", file=sys.stderr)
        return 2
    import logging

    from atcd.config import parse_eval_args
    from atcd.errors import USER_ERRORS
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        cfgs = {True: parse_eval_args(validate_argv(a, True)), False: parse_eval_args(validate_argv(a, False))}
        model, x, y = images_and_model(cfgs[True])
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = []
    for r in range(a.rounds):
        for v in VARIANTS:
            if v == "direct":
                seconds, correct = run_direct(model, x, y, cfgs[True], a.aa_batch_size)
                extra = {}
            else:
                seconds, correct, inner = run_validate(cfgs[v == "validate"])
                extra = {"evaluation_seconds": inner}  # validate's own timer: probe + attacks
            rows.append({"round": r, "variant": v, "seconds": seconds, "correct": correct, **extra})
            print(f"round {r} {v:<18} {seconds:8.2f} s  robust {100.0 * correct.count('1') / len(correct):6.2f} %",
                  flush=True)
    summary = summarize(rows)
    accs = {s["robust_acc"] for s in summary.values()}
    result = {"checkpoint": a.checkpoint, "model": a.model, "dataset": a.dataset, "eps": a.eps,
              "num_samples": len(y), "batch_size": a.batch_size, "aa_batch_size": a.aa_batch_size,
              "aa_version": a.aa_version, "aa_attacks": a.aa_attacks, "seed": a.seed, "rounds": a.rounds,
              "validate_argv": validate_argv(a, True), "summary": summary, "same_accuracy": len(accs) == 1,
              "same_examples": len({r["correct"] for r in rows}) == 1, "rows": rows,
              "torch_threads": __import__("torch").get_num_threads()}
    print(write_report(a.out, result))
    print("RESULT " + json.dumps({"direct_s": round(summary["direct"]["seconds"], 2),
                                  "validate_s": round(summary["validate"]["seconds"], 2),
                                  "validate_nosanity_s": round(summary["validate_nosanity"]["seconds"], 2),
                                  "ratio": round(summary["validate"]["ratio_to_direct"], 3),
                                  "ratio_nosanity": round(summary["validate_nosanity"]["ratio_to_direct"], 3),
                                  "robust_acc": summary["direct"]["robust_acc"],
                                  "same_accuracy": result["same_accuracy"], "same_examples": result["same_examples"],
                                  "report": os.path.join(a.out, "bench_autoattack.md")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
