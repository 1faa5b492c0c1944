#!/usr/bin/env python3
"""Robustness per unit of compute: train several methods on one dataset/model, measure their cost and robustness.

    python scripts/benchmark.py --methods standard,fast,free,pgd,trades,atcd,atcd_reuse --seeds 0,1,2 --out output/bench

Each entry of --methods names a recipe, `recipes/mnist_<entry>.yaml`, whose `method` key is the training method it
runs: `atcd_reuse` is ATCD with --reuse-grad. Reports label an entry by its method and the recipe's flags that change
its cost (`atcd --reuse-grad`). Two parts, both measured on this machine in this run:
1. Cost (in-process): seconds per minibatch of every method, timed back to back on the same minibatches, next to
   its counted passes per minibatch. The seconds of one pass of each kind (weight pass = a standard training
   step, input-gradient pass, forward-only pass, YOPO first-layer pass) are measured in the same run;
   `predicted` = sum over kinds of (counted passes x seconds per pass) and `ratio` = measured / predicted: close
   to 1 when the pass counts explain the whole cost. `x standard` is the time relative to a standard step.
2. Robustness (subprocesses, as a user runs them): for each method and seed, `train_atcd.py -c
   recipes/mnist_<method>.yaml` then `validate.py` with `--attacks`; total training time from summary.csv.
   Mean +- std over seeds.
   With --equal-time 60,120,240 instead: every method trains for each budget of seconds (the budget turned into
   minibatches from the cost table's measured seconds per minibatch), see scripts/equal_time.py; writes
   equal_time.csv, equal_time.md and equal_time.png, and the evaluation may run on several processes
   (--eval-procs 2: validate.py under `accelerate launch`, results identical to one process).
Writes benchmark.csv (one row per method and seed), benchmark.md (tables) and benchmark.png (robust accuracy vs
training time, one point per method and seed); ends with a RESULT line.
"""
import argparse
import csv
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from _runs import fail, run_logged, write_csv
from equal_time import PLAN_FILE, run_equal_time


def split_entry(entry: str) -> tuple[str, list[str]]:
    """'atcd_reuse:--no-mh' -> ('atcd_reuse', ['--no-mh']): a recipe name, then train_atcd.py flags on top of it."""
    name, _, flags = entry.partition(":")
    return name, flags.split()


def recipe_config(entry: str):
    """The training config of entry `name[:flags]`: recipe `recipes/mnist_<name>.yaml`, then the flags."""
    from atcd.config import parse_train_args
    name, flags = split_entry(entry)
    return parse_train_args(["-c", os.path.join(ROOT, "recipes", f"mnist_{name}.yaml"), *flags])


def method_label(cfg) -> str:
    """The method a recipe runs, with the flags that change its cost: 'atcd --reuse-grad --no-mh'."""
    from atcd.methods import get_method_class
    return get_method_class(cfg.method).label(cfg.method_opts)


def measure_costs(methods: list[str], batch_size: int, batches: int, seed: int = 0, rounds: int = 3) -> list[dict]:
    """Seconds per minibatch and passes per minibatch of each recipe's method (smallcnn on mnist-mini).

    Timing is interleaved minibatch by minibatch: in each of `rounds` rounds, every minibatch is stepped by every
    method and run through every pass kind of `unit_passes` back to back, so a slow spell of the machine (a busy
    neighbour on a shared VM) hits all of them alike. Each (method or pass kind, minibatch) keeps its fastest round
    (as `timeit` does: the other rounds measure the same work plus interference); the seconds per minibatch are the
    mean of those over the minibatches.
    """
    import torch

    from atcd.data import MnistMini
    from atcd.methods import StepContext, create_method
    from atcd.models import build_model

    ds = MnistMini("train")
    g = torch.Generator().manual_seed(seed)
    idx = [torch.randperm(len(ds.targets), generator=g)[:batch_size] for _ in range(batches + 2)]
    data = [(ds.images[i], ds.targets[i]) for i in idx]
    runners = []
    for name in methods:
        cfg = replace(recipe_config(name), seed=seed)
        torch.manual_seed(seed)
        model = build_model(cfg.model)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        ctx = StepContext(model=model, attack_model=model, optimizer=opt, backward=lambda loss: loss.backward(),
                          after_update=lambda: None)
        method = create_method(cfg.method, cfg)  # the recipe's method: 'atcd_reuse' runs atcd
        for x, y in data[:2]:  # warm-up (allocator, first-call overheads)
            method.step(ctx, x, y)
        runners.append((name, cfg, method, ctx))
    units = unit_passes(seed)
    for fn in units.values():
        for x, y in data[:2]:
            fn(x, y)
    timed = [(name, lambda x, y, m=method, c=ctx: m.step(c, x, y)) for name, _cfg, method, ctx in runners]
    timed += [(f"unit:{k}", fn) for k, fn in units.items()]
    p0 = {name: method.passes.as_dict() for name, _cfg, method, _ctx in runners}
    fastest = {}
    for _ in range(rounds):
        for b, (x, y) in enumerate(data[2:]):
            for name, fn in timed:
                t0 = time.perf_counter()
                fn(x, y)
                dt = time.perf_counter() - t0
                fastest[name, b] = min(fastest.get((name, b), float("inf")), dt)
    sec = {name: sum(fastest[name, b] for b in range(batches)) / batches for name, _fn in timed}
    unit = {k: sec[f"unit:{k}"] for k in units}
    best = {name: sec[name] for name in methods}
    counted = {name: {k: (v - p0[name][k]) / (rounds * batches) for k, v in method.passes.as_dict().items()}
               for name, _cfg, method, _ctx in runners}
    rows = []
    for name, cfg, _method, _ctx in runners:
        passes = counted[name]
        full = passes["input_grad_passes"] + passes["weight_passes"] + passes["forward_passes"]
        rows.append({"method": name, "label": method_label(cfg), "sec_per_batch": best[name], "full_passes": full,
                     **passes})
    for r in rows:
        r["relative_time"] = r["sec_per_batch"] / unit["weight"]
        r["predicted_sec"] = predict_seconds(r, unit)
        r["ratio"] = r["sec_per_batch"] / r["predicted_sec"]
        r["forward_only_sec"] = r["forward_passes"] * unit["forward"]  # ATCD: its M-H forwards
        r.update({f"unit_{k}_sec": v for k, v in unit.items()})
    return rows


def predict_seconds(passes: dict, unit: dict) -> float:
    """Seconds per minibatch predicted from its counted passes and the seconds of one pass of each kind; a weight
    pass that also returned the input gradient costs a `weight_input` pass."""
    with_input = passes["weight_with_input_grad"]
    return (sum(passes[f"{k}_passes"] * unit[k] for k in ("input_grad", "forward", "stem"))
            + (passes["weight_passes"] - with_input) * unit["weight"] + with_input * unit["weight_input"])


def unit_passes(seed: int = 0) -> dict:
    """One pass of each kind, as functions of a minibatch (x, y): weight (a standard training step), weight_input
    (one that also returns the input gradient), input_grad, forward (no grad), stem (YOPO's first-layer pass)."""
    import torch
    import torch.nn.functional as F

    from atcd.attacks.core import input_grad
    from atcd.attacks.losses import ce_loss
    from atcd.config import TrainConfig
    from atcd.methods.yopo import YOPO, find_stem
    from atcd.models import build_model

    torch.manual_seed(seed)
    model = build_model("smallcnn_mnist")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stem, yopo = find_stem(model), YOPO(TrainConfig.of())

    def weight(x, y, with_input=False):  # with_input: the backward also returns the input gradient (Free's trick)
        model.train()
        opt.zero_grad()
        xin = x + torch.zeros_like(x).requires_grad_(True) if with_input else x
        F.cross_entropy(model(xin), y).backward()
        opt.step()

    def ig(x, y):
        model.eval()
        input_grad(model, x, torch.zeros_like(x), y, ce_loss)

    def fwd(x, y):
        model.eval()
        with torch.no_grad():
            model(x)

    def stem_pass(x, y):
        model.eval()
        p = torch.ones(1)
        yopo._stem_grad(model, stem, x, torch.zeros_like(x), p)

    return {"weight": weight, "weight_input": functools.partial(weight, with_input=True), "input_grad": ig, "forward": fwd, "stem": stem_pass}


def train_and_validate(method: str, seed: int, a) -> dict:
    recipe, flags = split_entry(method)
    exp = f"{method}-s{seed}".replace(":", "_").replace(" ", "").replace("--", "-")
    run_dir = os.path.join(a.out, "runs", exp)
    train = ["train_atcd.py", "-c", f"recipes/mnist_{recipe}.yaml", *flags, "--seed", str(seed), "--output",
             os.path.join(a.out, "runs"), "--experiment", exp, "--overwrite", "--no-progress"] + a.train_args.split()
    t0 = time.time()
    run_logged(train, os.path.join(a.out, f"{exp}.train.log"))
    wall = time.time() - t0
    with open(os.path.join(run_dir, "summary.csv")) as f:
        summary = list(csv.DictReader(f))
    res_file = os.path.join(run_dir, "results.json")
    run_logged(["validate.py", "--checkpoint", os.path.join(run_dir, "model.safetensors"), "--eps", str(a.eps),
          "--attacks", a.attacks, "--attack-loss", a.attack_loss, "--attack-steps", str(a.attack_steps),
          "--num-samples", str(a.num_samples), "--no-progress", "--results-file", res_file],
         os.path.join(a.out, f"{exp}.val.log"))
    with open(res_file) as f:
        res = json.load(f)["results"]
    return {"method": method, "label": method_label(recipe_config(method)), "seed": seed,
            "train_seconds": sum(float(r["seconds"]) for r in summary), "train_wall_seconds": wall,
            **{f"{k}_top1": v["top1"] for k, v in res.items()}}


def _name(row: dict) -> str:
    """'atcd --reuse-grad (atcd_reuse)': the method and its cost flags, then the recipe when the two differ."""
    return row["label"] if row["label"] == row["method"] else f"{row['label']} ({row['method']})"


def _ms(vals: list[float]) -> str:
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"


def hardware() -> str:
    """CPU model, cores, torch version and threads: what the timings were measured on."""
    import platform

    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"no GPU used")


def _mean(vals):
    return statistics.mean(vals) if vals else float("nan")


def findings(costs: list[dict], runs: list[dict], key: str) -> list[str]:
    """Plain statements computed from the tables: the cost model's accuracy, --reuse-grad against Free at
    m = T*K, and where ATCD is more or less robust than each baseline at what training time."""
    out = ["## Findings (computed from the tables above)", ""]
    ratios = [r["ratio"] for r in costs]
    worst = max(costs, key=lambda r: abs(r["ratio"] - 1))
    out.append(f"- Cost model: measured/predicted is {min(ratios):.2f}-{max(ratios):.2f} over {len(costs)} entries; "
               f"{'every entry is' if max(ratios) <= 1.10 else 'NOT every entry is'} <= 1.10 "
               f"(farthest from 1: {_name(worst)}, {worst['ratio']:.2f}).")
    cfgs = {r["method"]: recipe_config(r["method"]) for r in costs}
    for r in costs:
        c = cfgs[r["method"]]
        if c.method != "atcd" or not c.method_opts.reuse_grad:
            continue
        T, K = c.method_opts.atcd_T, c.method_opts.atcd_K
        for f in costs:
            if cfgs[f["method"]].method == "free" and cfgs[f["method"]].method_opts.free_m == T * K:
                x = r["sec_per_batch"] / f["sec_per_batch"]
                y = (r["sec_per_batch"] - r["forward_only_sec"]) / f["sec_per_batch"]
                out.append(f"- {_name(r)} (T={T}, K={K}) costs {x:.2f}x {_name(f)} (m = T*K = "
                           f"{T * K}) per minibatch: {'within' if x <= 1.05 else 'ABOVE'} the 1.05 "
                           f"target. Its {r['forward_passes']:.0f} forward-only M-H passes take "
                           f"{r['forward_only_sec']:.4f} s of its {r['sec_per_batch']:.4f} s (predicted from the "
                           f"measured forward time); without them it would cost {y:.2f}x.")
    if runs and key:
        by = {}
        for r in runs:
            by.setdefault(r["method"], []).append(r)
        name = key[:-5]
        for a_m in (m for m in by if recipe_config(m).method == "atcd"):
            a_acc = _mean([r[key] for r in by[a_m]])
            a_sec = _mean([r["train_seconds"] for r in by[a_m]])
            for b_m in (m for m in by if recipe_config(m).method != "atcd"):
                b_acc = _mean([r[key] for r in by[b_m]])
                b_sec = _mean([r["train_seconds"] for r in by[b_m]])
                verdict = "wins" if a_acc > b_acc else ("ties" if a_acc == b_acc else "does NOT win")
                out.append(f"- {_name(by[a_m][0])} {verdict} against {_name(by[b_m][0])} on {name}: "
                           f"{a_acc:.1f} vs {b_acc:.1f} % (mean over {len(by[a_m])} seeds), at {a_sec / b_sec:.2f}x "
                           f"its training time ({a_sec:.0f} s vs {b_sec:.0f} s).")
    return out


def write_report(costs: list[dict], runs: list[dict], a, extra: list[str] = ()):
    lines = [f"# Benchmark ({time.strftime('%Y-%m-%d')})", "", f"Hardware: {hardware()}.", "",
             f"Command: `python scripts/benchmark.py {' '.join(a.argv)}`", "",
             (f"## Cost per minibatch (one process, the same {a.cost_batches} minibatches of {a.batch_size}, fastest "
              f"of {a.rounds} rounds per minibatch, methods and pass kinds interleaved minibatch by minibatch)"), "",
             ("| method (recipe) | passes/minibatch (in-grad + weight + fwd; stem) | s/minibatch | × standard | "
              "predicted from passes (s) | measured/predicted |"), "|---|---|---|---|---|---|"]
    for r in costs:
        wi = f" ({r['weight_with_input_grad']:.0f} with input grad)" if r["weight_with_input_grad"] else ""
        lines.append(f"| {_name(r)} | {r['input_grad_passes']:.0f} + {r['weight_passes']:.0f}{wi} + "
                     f"{r['forward_passes']:.0f}; {r['stem_passes']:.0f} | {r['sec_per_batch']:.4f} | "
                     f"{r.get('relative_time', float('nan')):.2f} | {r.get('predicted_sec', float('nan')):.4f} | "
                     f"{r.get('ratio', float('nan')):.2f} |")
    if costs:
        u = costs[0]
        lines += ["", "Seconds of one pass of each kind on the same minibatches (fastest round), from which the prediction "
                  "is summed: " + ", ".join(f"{label} {u[f'unit_{k}_sec']:.4f} s" for k, label in (
                      ("weight", "weight"), ("weight_input", "weight with input grad"), ("input_grad", "input grad"),
                      ("forward", "forward"), ("stem", "stem"))) + "."]
    if runs:
        keys = [k for k in runs[0] if k.endswith("_top1")]
        lines += ["", (f"## Robustness (eps {a.eps}, {a.num_samples} test images, mean ± std over seeds "
                       f"{a.seeds})"), "", "| method (recipe) | train s | " + " | ".join(k[:-5] for k in keys) + " |",
                  "|---|---|" + "---|" * len(keys)]
        for m in dict.fromkeys(r["method"] for r in runs):
            sel = [r for r in runs if r["method"] == m]
            lines.append(f"| {_name(sel[0])} | {_ms([r['train_seconds'] for r in sel])} | "
                         + " | ".join(_ms([r[k] for r in sel]) for k in keys) + " |")
    key = ""
    if runs:
        key = "autoattack_top1" if "autoattack_top1" in runs[0] else [k for k in runs[0] if k.endswith("_top1")][-1]
        lines += ["", f"![{key[:-5]} accuracy vs training time](benchmark.png)"]
    lines += [""] + findings(costs, runs, key)
    if extra:
        lines += ["", *extra, "", "![AutoAttack accuracy vs training time at equal budgets](equal_time.png)"]
    with open(os.path.join(a.out, "benchmark.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if runs:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in dict.fromkeys(r["method"] for r in runs):
            sel = [r for r in runs if r["method"] == m]
            ax.scatter([r["train_seconds"] for r in sel], [r[key] for r in sel], label=sel[0]["label"])
        ax.set_xlabel("training time (s)")
        ax.set_ylabel(f"{key[:-5]} accuracy (%)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "benchmark.png"), dpi=120)
        plt.close(fig)


def read_costs(out: str, methods: list[str], why: str) -> list[dict]:
    """The cost table an earlier run of the benchmark wrote to `out`/costs.csv, for `methods` in their order."""
    path = os.path.join(out, "costs.csv")
    if not os.path.isfile(path):
        fail(f"error: {why} needs the cost table of an earlier run: no {path}")
    with open(path) as f:
        rows = {r["method"]: {k: v if k in ("method", "label") else float(v or "nan") for k, v in r.items()}
                for r in csv.DictReader(f)}
    missing = [m for m in methods if m not in rows]
    if missing:
        fail(f"error: {path} has no cost for {missing}: that run measured {list(rows)}; give those methods or "
             f"another --out")
    return [rows[m] for m in methods]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="standard,fast,free,pgd,trades,atcd,atcd_reuse",
                   help="recipe names: recipes/mnist_<name>.yaml each (atcd_reuse: ATCD with --reuse-grad)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", default="output/benchmark")
    p.add_argument("--cost-methods", default="",
                   help="entries timed in the cost table (default: --methods), e.g. adding free8 (Free at m = T*K); "
                        "an entry may add flags to its recipe: atcd_reuse:--no-mh")
    p.add_argument("--cost-batches", type=int, default=10, help="timed minibatches per method and round")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (per minibatch, the fastest counts)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cost-only", action="store_true", help="skip training and validation")
    p.add_argument("--train-args", default="", help="extra train_atcd.py flags, e.g. '--epochs 2'")
    p.add_argument("--attacks", default="clean,pgd,autoattack")
    p.add_argument("--attack-loss", default="margin")
    p.add_argument("--attack-steps", type=int, default=40)
    p.add_argument("--eps", default="0.3")
    p.add_argument("--num-samples", type=int, default=200)
    p.add_argument("--equal-time", default="", metavar="SECONDS",
                   help="comma list of training budgets in seconds: train every method for each (equal_time.csv)")
    p.add_argument("--aa-samples", type=int, default=0,
                   help="--equal-time: AutoAttack on the first N test images only (default: --num-samples)")
    p.add_argument("--eval-procs", type=int, default=1, help="processes per evaluation (--equal-time; 2 on 2 cores)")
    p.add_argument("--aa-methods", default="", metavar="ENTRIES",
                   help="--equal-time: run AutoAttack for these --methods entries only (e.g. atcd and the two best "
                        "baselines); the others stop at PGD, and the report says so (default: every entry)")
    p.add_argument("--aa-best", type=int, default=0, metavar="K",
                   help="--equal-time: AutoAttack also for the K baselines with the best mean PGD accuracy at each "
                        "budget, chosen once all its seeds have their PGD (with --aa-methods atcd: ATCD and the two "
                        "best baselines for K = 2); default 0")
    p.add_argument("--done", action="append", default=[], metavar="CSV",
                   help="--equal-time: an earlier run's equal_time.csv (e.g. rows committed in reports/); a (method, "
                        "budget, seed) in it is read, not trained again, when it was trained with the options and "
                        "plan of now and evaluated on the same images (else a one-line error); repeatable")
    p.add_argument("--report-only", action="store_true",
                   help="--equal-time: write the report from the finished rows in --out (its costs.csv and plan); "
                        "train, evaluate and time nothing, and list the rows not run yet")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    if not a.equal_time and (a.aa_samples or a.eval_procs != 1):
        p.error("--aa-samples and --eval-procs apply to --equal-time runs only")
    if a.equal_time and a.train_args:
        p.error("--train-args does not apply to --equal-time: the budget sets the epochs (recipe flags: METHOD:FLAGS)")
    if a.equal_time and not {"clean", "pgd", "autoattack"} & set(a.attacks.split(",")):
        p.error(f"--equal-time reports clean, pgd and autoattack accuracy: --attacks {a.attacks!r} has none of them")
    if a.done and (not a.equal_time or a.cost_only):
        p.error("--done gives finished rows of an --equal-time run")
    if a.report_only and (not a.equal_time or a.cost_only):
        p.error("--report-only reports an --equal-time run (and --cost-only has no rows to report)")
    if a.aa_methods and (not a.equal_time or "autoattack" not in a.attacks.split(",")
                         or set(a.aa_methods.split(",")) - set(a.methods.split(","))):
        p.error(f"--aa-methods {a.aa_methods!r}: entries of --methods, for an --equal-time run with autoattack")
    if a.aa_best and (a.aa_best < 0 or not a.equal_time or not {"pgd", "autoattack"} <= set(a.attacks.split(","))):
        p.error(f"--aa-best {a.aa_best}: a number of baselines >= 0, for an --equal-time run with pgd and autoattack "
                "(it ranks them by PGD)")
    if a.eval_procs < 1 or a.aa_samples < 0:
        p.error("--eval-procs must be >= 1 and --aa-samples >= 0")
    try:
        budgets = [float(b) for b in a.equal_time.split(",") if b]
    except ValueError:
        p.error(f"--equal-time {a.equal_time!r}: a comma list of seconds, e.g. 60,120,240")
    if any(b <= 0 for b in budgets):
        p.error("--equal-time budgets must be > 0 seconds")
    methods = [m for m in a.methods.split(",") if m]
    cost_methods = [m for m in (a.cost_methods or a.methods).split(",") if m]
    for m in dict.fromkeys(methods + cost_methods):
        if not os.path.isfile(os.path.join(ROOT, "recipes", f"mnist_{split_entry(m)[0]}.yaml")):
            print(f"error: no recipe recipes/mnist_{split_entry(m)[0]}.yaml for --methods entry {m!r}",
                  file=sys.stderr)
            return 2
    other = {m: recipe_config(m).batch_size for m in methods if recipe_config(m).batch_size != a.batch_size}
    if budgets and other:  # the cost table prices minibatches of --batch-size: another size would be priced wrong
        p.error(f"--equal-time prices minibatches of --batch-size {a.batch_size}, but recipes train with {other}")
    os.makedirs(a.out, exist_ok=True)
    # an --equal-time run that continues an earlier one keeps the cost table its plan was priced from: timed again,
    # the table would disagree with the plan it is reported beside
    plan = budgets and not a.cost_only and os.path.isfile(os.path.join(a.out, PLAN_FILE))
    if a.report_only or plan:
        costs = read_costs(a.out, cost_methods, "--report-only" if a.report_only else f"the plan in {a.out}")
        print(f"[costs] reusing the cost table of the earlier run: {os.path.join(a.out, 'costs.csv')}", flush=True)
    else:  # written before any training: a run killed after planning resumes from this table
        costs = measure_costs(cost_methods, a.batch_size, a.cost_batches, rounds=a.rounds)
        write_csv(os.path.join(a.out, "costs.csv"), costs, list(costs[0]))
    for r in costs:
        print(f"{_name(r):<32} {r['full_passes']:5.1f} passes ({r['input_grad_passes']:.0f} in-grad + "
              f"{r['weight_passes']:.0f} weight + {r['forward_passes']:.0f} fwd)  {r['sec_per_batch']:.4f} s/batch  "
              f"ratio {r.get('ratio', float('nan')):.2f}", flush=True)
    runs, equal = [], []
    seeds = [int(s) for s in a.seeds.split(",") if s]
    if a.equal_time and not a.cost_only:
        equal = run_equal_time(costs, methods, seeds, a, recipe_config)
    elif not a.cost_only:
        for seed in seeds:
            for m in methods:
                runs.append(train_and_validate(m, seed, a))
                print(json.dumps(runs[-1]), flush=True)
        with open(os.path.join(a.out, "benchmark.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(runs[0]))
            w.writeheader()
            w.writerows(runs)
    write_report(costs, runs, a, equal)
    print("RESULT " + json.dumps({"costs": {r["method"]: round(r.get("ratio", float("nan")), 3) for r in costs},
                                  "runs": len(runs), "equal_time": bool(equal),
                                  "report": os.path.join(a.out, "benchmark.md")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
