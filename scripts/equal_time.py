"""The equal-time part of scripts/benchmark.py (`--equal-time 60,120,240`): every method trained for the same
seconds, then attacked on the same test images.

A budget becomes a number of minibatches from each method's seconds per minibatch measured in the benchmark's cost
table (atcd.budget): one pricing for every method, measured in one interleaved run, so a slow spell of the machine
during one training does not decide the ranking. The plan is written to `equal_time_plan.json` on the first run and
reused after, with the cost table it was priced from (a killed benchmark resumes: the methods are not timed again,
finished trainings and evaluations are read, not redone). Each row reports
the measured training seconds (summary.csv) beside the planned ones and the cost model's (counted passes x seconds
per pass), the cross-checks.

Writes equal_time.csv (one row per method, budget and seed), equal_time.md (tables, and per budget ATCD's
AutoAttack accuracy minus the best baseline's with 95 % intervals) and equal_time.png.
"""
import csv
import functools
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _rows import FIELDS, read_done, reuse
from _runs import ROOT, RUN_KEYS, config_digest, fail, finished, run_logged, stale_args, started, write_csv

PLAN_FILE = "equal_time_plan.json"  # in --out: the minibatches of every (method, budget), made once per --out
SLOW = 1.25  # a training whose measured seconds exceed the plan by this factor is flagged in the report


def train_size(cfg) -> int:
    """Images a recipe trains on: the dataset's training split minus the recipe's holdout."""
    from atcd.data import create_atcd_dataset
    return len(create_atcd_dataset(cfg.dataset, "train", data_dir=cfg.data_dir)) - cfg.holdout_size


def make_plans(costs: list[dict], budgets: list[float], recipe_config, path: str) -> dict:
    """{entry: {budget: plan dict}} from the cost table, or the plans of an earlier run of the same benchmark (only
    if they are the plans the recipes and flags would get now: else a one-line error)."""
    if os.path.isfile(path):
        with open(path) as f:
            plans = json.load(f)
        missing = [(c["method"], b) for c in costs for b in budgets if f"{b:g}" not in plans.get(c["method"], {})]
        if missing:
            fail(f"error: {path} was planned for other methods or budgets (missing {missing[:3]}); give another "
                  f"--out or delete it")
        for c in costs:  # the saved plan and its cost table must price what the recipes and flags run now
            why = _repriced(c, recipe_config(c["method"]), {b: plans[c["method"]][f"{b:g}"] for b in budgets})
            if why:
                fail(f"error: {path} was priced for other flags of {c['method']} ({why}); give another --out or "
                     f"delete it and its costs.csv")
        print(f"[equal-time] reusing the plan of the earlier run: {path}", flush=True)
        return plans
    plans = {}
    for c in costs:
        cfg = recipe_config(c["method"])
        plans[c["method"]] = {f"{b:g}": _plan(c, cfg, b) for b in budgets}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(plans, f, indent=1)
    os.replace(tmp, path)
    return plans


PRICED = ("minibatches", "epochs", "samples_per_epoch", "eps_warmup_epochs", "label")  # what a plan fixes


def _plan(c: dict, cfg, budget: float) -> dict:
    """The plan of one entry (its cost-table row `c`, its recipe config) for `budget` seconds."""
    from dataclasses import asdict

    from atcd.budget import plan_budget
    p = plan_budget(budget, c["sec_per_batch"], train_size(cfg), cfg.batch_size, cfg.epochs, cfg.eps_warmup_epochs)
    return {**asdict(p), "cost_model_s": p.minibatches * c["predicted_sec"], "label": c["label"]}


def _repriced(c: dict, cfg, saved: dict) -> str:
    """Why a saved plan (`saved`: {budget: plan}) and its cost-table row `c` do not price the entry's recipe and
    flags as they are now ('' when they do): the method's label and passes per minibatch, and every planned number."""
    from atcd.methods import get_method_class
    method = get_method_class(cfg.method)
    label, passes = method.label(cfg.method_opts), method.passes_per_batch(cfg.method_opts)
    if label != c["label"] or ("full_passes" in c and float(c["full_passes"]) != passes):
        return (f"the cost table timed {c['label']!r} at {float(c.get('full_passes', 'nan')):g} passes per minibatch, "
                f"the recipe now runs {label!r} at {passes}")
    for b, plan in saved.items():
        now = _plan(c, cfg, b)
        diff = [f"{k} {plan.get(k)} -> {now[k]}" for k in PRICED if plan.get(k) != now[k]]
        if diff:
            return f"at {b:g} s: {', '.join(diff)}"
    return ""


def train_args(entry: str, plan: dict, seed: int) -> list[str]:
    """train_atcd.py's options of one point: the entry's recipe and flags, its plan, its seed (not where it runs)."""
    from atcd.budget import BudgetPlan
    bp = BudgetPlan(**{k: plan[k] for k in BudgetPlan.__dataclass_fields__})
    name, flags = entry.partition(":")[0], entry.partition(":")[2].split()
    return ["-c", os.path.join(ROOT, "recipes", f"mnist_{name}.yaml"), *flags, *bp.train_flags(), "--seed", str(seed)]


def _train(entry: str, plan: dict, seed: int, runs: str, exp: str, log: str):
    from atcd.config import parse_train_args
    run = os.path.join(runs, exp)
    args = train_args(entry, plan, seed)
    if finished(run):  # finished earlier: only if it ran this training
        stale = stale_args(run, parse_train_args(args).flat(), ignore=RUN_KEYS)
        if stale:
            fail(f"error: {run} holds a run trained with {stale}, not {entry}'s recipe and plan now; delete that "
                  "folder (or give another --out)")
        return
    run_logged(["train_atcd.py", *args, "--output", runs, "--experiment", exp, "--no-progress",
                *(["--resume", "auto"] if started(run) else ["--overwrite"])], log, ok=(0, 4))  # 4: at chance


def _validate(run: str, attacks: str, n: int, res_file: str, a, log: str):
    if os.path.isfile(res_file):
        return
    cmd = ["validate.py", "--checkpoint", os.path.join(run, "model.safetensors"), "--eps", str(a.eps),
           "--attacks", attacks, "--attack-loss", a.attack_loss, "--attack-steps", str(a.attack_steps),
           "--num-samples", str(n), "--sanity-samples", "0", "--no-progress", "--results-file", res_file,
           "-b", str(math.ceil(n / a.eval_procs))]  # one chunk per process: every process has work
    if "autoattack" in attacks.split(","):  # a killed evaluation continues after its last finished sub-attack
        cmd += ["--aa-state-dir", os.path.join(run, "aa-state")]
    env = None
    if a.eval_procs > 1:  # the launcher that really synchronises CPU processes (hfconfigs/cpu_2proc.yaml)
        cmd = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(a.eval_procs),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *cmd]
        threads = max(1, (os.cpu_count() or 2) // a.eval_procs)
        env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS=str(threads))
    run_logged(cmd, log, env)
    if not os.path.isfile(res_file):  # e.g. a teardown abort passed by run_logged must have come after the results
        fail(f"error: {' '.join(cmd[:3])} wrote no {res_file}; see {log}")


def gets_autoattack(entry: str | None, a, chosen=()) -> bool:
    """Whether a point of `entry` is attacked with AutoAttack: every entry without --aa-methods and --aa-best; else
    the entries of --aa-methods and those `chosen` at its budget by --aa-best (best_baselines)."""
    if "autoattack" not in a.attacks.split(","):
        return False
    fixed = [m for m in getattr(a, "aa_methods", "").split(",") if m]
    if entry is None or not (fixed or getattr(a, "aa_best", 0)):
        return True
    return entry in fixed or entry in chosen


def best_baselines(rows: list[dict], k: int) -> list[str]:
    """--aa-best: the k baselines (recipes that are not ATCD) with the best mean PGD accuracy over `rows` (the
    finished rows of one budget, every seed), best first."""
    pgd = {}
    for r in rows:
        if not r["method"].startswith("atcd") and r.get("pgd", "") != "":
            pgd.setdefault(r["recipe"], []).append(r["pgd"])
    return sorted(pgd, key=lambda m: -sum(pgd[m]) / len(pgd[m]))[:k]


def _evaluations(run: str, a, entry: str | None = None, chosen=()) -> list[tuple[str, int, str]]:
    """(attacks, images, results file) of each validate call of a run: AutoAttack on the first --aa-samples images
    (default: --num-samples), the other attacks on the first --num-samples; AutoAttack only where gets_autoattack
    (issue 33: for ATCD and the best baselines; the others stop at PGD)."""
    attacks = [x for x in a.attacks.split(",") if x]
    if not gets_autoattack(entry, a, chosen):
        attacks = [x for x in attacks if x != "autoattack"]
    n_aa = a.aa_samples or a.num_samples
    groups = [(",".join(attacks), a.num_samples)]
    if "autoattack" in attacks and n_aa != a.num_samples:
        groups = [(",".join(x for x in attacks if x != "autoattack"), a.num_samples), ("autoattack", n_aa)]
    return [(names, n, os.path.join(run, f"results-{names.replace(',', '+')}-n{n}.json")) for names, n in groups
            if names]


def evaluate(run: str, exp: str, runs: str, a, entry: str | None = None, chosen=()) -> dict:
    """{attack: results} of a trained run; each results file is kept, so a re-run reads it, and one an earlier run
    wrote beyond this run's evaluations (an AutoAttack --aa-best chose then) is read too, never dropped."""
    res, todo = {}, _evaluations(run, a, entry, chosen)
    kept = [g for g in _evaluations(run, a) if g not in todo and os.path.isfile(g[2])]  # e.g. an --aa-best AutoAttack
    for i, (names, n, f) in enumerate(todo + kept):
        if i < len(todo):
            _validate(run, names, n, f, a, os.path.join(runs, f"{exp}.val{i}.log"))
        with open(f) as fh:
            res.update({k: v for k, v in json.load(fh)["results"].items() if k != "worst_case" and k not in res})
    return res


def _point(entry: str, budget: float, seed: int, a) -> tuple[str, str, str]:
    """(runs folder, experiment name, run folder) of one (method, budget, seed)."""
    exp = f"{entry}-b{budget:g}-s{seed}".replace(":", "_").replace(" ", "").replace("--", "-")
    runs = os.path.join(a.out, "equal_time")
    return runs, exp, os.path.join(runs, exp)


def point_done(entry: str, budget: float, seed: int, a, chosen=()) -> bool:
    """Whether the point is trained and every evaluation of it wrote its results (a row costs nothing to read)."""
    run = _point(entry, budget, seed, a)[2]
    return finished(run) and all(os.path.isfile(f) for *_, f in _evaluations(run, a, entry, chosen))


def run_point(entry: str, budget: float, seed: int, plan: dict, a, chosen=()) -> dict:
    """Train `entry` on its plan for `budget`, validate it; one equal_time.csv row."""
    runs, exp, run = _point(entry, budget, seed, a)
    os.makedirs(runs, exist_ok=True)
    print(f"[equal-time] {exp}: {plan['epochs']} epochs x {plan['minibatches'] // plan['epochs']} minibatches",
          flush=True)
    _train(entry, plan, seed, runs, exp, os.path.join(runs, f"{exp}.train.log"))
    res = evaluate(run, exp, runs, a, entry, chosen)
    with open(os.path.join(run, "summary.csv")) as f:
        epochs = list(csv.DictReader(f))
    train_s = sum(float(r["seconds"]) for r in epochs)
    return {"method": plan["label"], "recipe": entry, "budget_s": budget, "seed": seed, "train_s": round(train_s, 1),
            **{k: round(res[k]["top1"], 2) if k in res else "" for k in ("clean", "pgd", "autoattack")},
            "n": res[next(iter(res))]["n"], "n_aa": res["autoattack"]["n"] if "autoattack" in res else "",
            "epochs": plan["epochs"], "minibatches": plan["minibatches"], "planned_s": round(plan["planned_s"], 1),
            "cost_model_s": round(plan["cost_model_s"], 1), **mh_acceptance(epochs),
            "updates": int(epochs[-1]["num_updates"]), "config": config_digest(train_args(entry, plan, seed)),
            "_correct": {k: v.get("correct", "") for k, v in res.items()}}


def done_row(done: dict, entry: str, budget: float, seed: int, plan: dict, a) -> dict | None:
    """The point's row from --done (an earlier run's equal_time.csv) if it is this training and evaluation, else
    None (see _rows.reuse); it has no per-image results, so the paired interval over images leaves its seed out.
    An entry --aa-best may choose counts with or without its AutoAttack (the choice follows all of the budget's
    rows: _autoattack_best adds it where missing)."""
    if not done:
        return None
    n_aa = a.aa_samples or a.num_samples
    ok = [n_aa] if gets_autoattack(entry, a) else ["", n_aa] if getattr(a, "aa_best", 0) else [""]
    row = reuse(done, entry, budget, seed, config_digest(train_args(entry, plan, seed)), a.num_samples, ok)
    if row is not None:
        print(f"[equal-time] {entry} {budget:g} s seed {seed}: finished earlier (--done)", flush=True)
    return row


def _autoattack_best(rows: list[dict], budget: float, plans: dict, a, not_run: list[str]):
    """--aa-best: AutoAttack for the rows of the best baselines at `budget` that lack it (trained again first when
    their run folder is gone: a training is deterministic for its seed and plan); `rows` is updated in place and
    equal_time.csv rewritten; with --report-only, a missing AutoAttack goes to `not_run`."""
    chosen = best_baselines([r for r in rows if r["budget_s"] == budget], a.aa_best)
    for i, r in enumerate(rows):
        if r["budget_s"] != budget or r["recipe"] not in chosen or r.get("autoattack", "") != "":
            continue
        m, seed = r["recipe"], r["seed"]
        if a.report_only and not point_done(m, budget, seed, a, chosen):
            not_run.append(f"AutoAttack of {m} {budget:g} s seed {seed}")
            continue
        rows[i] = run_point(m, budget, seed, plans[m][f"{budget:g}"], a, chosen)
        write_csv(os.path.join(a.out, "equal_time.csv"), rows, FIELDS)
        print(json.dumps({k: v for k, v in rows[i].items() if not k.startswith("_")}), flush=True)


def mh_acceptance(epochs: list[dict]) -> dict:
    """The M-H acceptance of a run (summary.csv rows), mean over its epochs: overall, and per replay as
    "r0/r1/..."; empty for methods without the test."""
    def mean(col):  # an untested replay ('' or, from older runs, nan) is no measurement
        vals = [float(r[col]) for r in epochs if r.get(col, "") not in ("", None)]
        vals = [v for v in vals if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else None
    overall = mean("mh_accept")
    if overall is None:
        return {"mh_accept": "", "mh_accept_replays": ""}
    cols = sorted((c for c in epochs[0] if c.startswith("mh_accept_r")), key=lambda c: int(c[11:]))
    replays = [mean(c) for c in cols]
    return {"mh_accept": round(overall, 3),
            "mh_accept_replays": "/".join("-" if v is None else f"{v:.3f}" for v in replays)}  # -: no test


def _paired(rows_a: list[dict], rows_b: list[dict], key: str) -> tuple[float, float, int]:
    """ATCD minus baseline over images: per seed, the same images of both; pooled over seeds (test-set noise only).
    Returns (difference, half-width, seeds pooled): a seed without per-image results of both is left out, and the
    caller says how many were pooled."""
    from atcd.stats import mean_interval
    d, pooled = [], 0
    for ra in rows_a:
        rb = next((r for r in rows_b if r["seed"] == ra["seed"]), None)
        ca, cb = ra.get("_correct", {}).get(key, ""), (rb or {}).get("_correct", {}).get(key, "")
        if rb is None or not ca or len(ca) != len(cb):
            continue
        d += [100.0 * (int(p) - int(q)) for p, q in zip(ca, cb)]
        pooled += 1
    return (*mean_interval(d), pooled) if d else (float("nan"), float("nan"), 0)


def _acceptance_cell(rs: list[dict]) -> str:
    if rs[0].get("mh_accept", "") == "":
        return "-"
    return f"{sum(r['mh_accept'] for r in rs) / len(rs):.3f} ({rs[0]['mh_accept_replays']}" + (
        ", seed " + str(rs[0]["seed"]) if len(rs) > 1 else "") + ")"


def _ablation_lines(sel: list[dict]) -> list[str]:
    """Each ATCD variant (another atcd* recipe) minus the recipe `atcd`, per attack, paired over the same images."""
    recipe = [r for r in sel if r["recipe"] == "atcd"]
    variants = [m for m in dict.fromkeys(r["recipe"] for r in sel) if m != "atcd"
                and next(r for r in sel if r["recipe"] == m)["method"].startswith("atcd")]
    if not recipe or not variants:
        return []
    keys = [k for k in ("clean", "pgd", "autoattack") if recipe[0].get(k, "") != ""]
    lines = [("Each variant minus the recipe (`atcd`), points, with the 95 % interval over the same images (paired, "
             "seeds pooled):"), "", "| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for m in variants:
        rs = [r for r in sel if r["recipe"] == m]
        cells = []
        for k in keys:
            d, hw, pooled = _paired(rs, recipe, k)
            cells.append("" if math.isnan(d) else f"{d:+.1f} ± {hw:.1f}"
                         + (f" ({pooled} of {len(rs)} seeds)" if pooled < len(rs) else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _rivals(atcd: list[dict], base: dict) -> list:
    """The baselines (base: {name: rows}) measured on every seed ATCD has, else all: a baseline attacked on fewer
    seeds (--aa-best before its AutoAttack) is no rival, its mean being over other seeds."""
    own = {r["seed"] for r in atcd}
    return [m for m in base if own <= {r["seed"] for r in base[m]}] or list(base)


def _verdict(atcd: list[dict], base: dict, key: str) -> str:
    """ATCD minus the best baseline (by mean) on `key`: per seed, then a t-interval over those seed differences; the
    paired interval over images (test-set noise only) beside it, naming how many seeds it pooled."""
    from atcd.stats import seed_paired_interval
    best = max(_rivals(atcd, base), key=lambda m: sum(r[key] for r in base[m]) / len(base[m]))
    d, hw, seeds = seed_paired_interval({r["seed"]: r[key] for r in atcd}, {r["seed"]: r[key] for r in base[best]})
    dp, hwp, pooled = _paired(atcd, base[best], key)
    if not seeds:
        return f"ATCD and the best baseline ({best}) share no seed on {key}: no paired verdict."
    if not math.isnan(hw):  # an interval over seeds
        verdict = "wins" if d - hw > 0 else "loses" if d + hw < 0 else "is not separated from it"
    elif not math.isnan(hwp):  # one seed: only the test images' noise is known, and the seed's is not
        verdict = ("is ahead over these images" if dp - hwp > 0 else "is behind over these images"
                   if dp + hwp < 0 else "is not separated from it") + " (one seed: no interval over seeds)"
    else:  # one seed and rows without per-image results (merged from equal_time.csv files)
        verdict = "cannot be called (one seed, no per-image results: no interval)"
    n_key = atcd[0]["n_aa"] if key == "autoattack" else atcd[0]["n"]
    a, b = {r["seed"]: r[key] for r in atcd}, {r["seed"]: r[key] for r in base[best]}
    per_seed = ", ".join(f"{a[s] - b[s]:+.1f}" for s in seeds)
    spans = ([f"95 % t-interval over the {len(seeds)} seed differences ± {hw:.1f}"] if not math.isnan(hw) else []) + (
        [(f"over the {n_key} images, paired, {pooled} of {len(seeds)} seeds pooled (test-set noise only): "
          f"{dp:+.1f} ± {hwp:.1f}")] if pooled else [])
    return (f"ATCD minus the best baseline ({best}) on {key}, seed-paired: **{d:+.1f} points** (per seed "
            f"{', '.join(map(str, seeds))}: {per_seed}" + (f"; {'; '.join(spans)}" if spans else "") + f"); ATCD "
            f"{verdict}.")


@functools.cache
def updates_per_batch(entry: str) -> int:
    """Weight updates per minibatch of an entry `name[:flags]` (its recipe recipes/mnist_<name>.yaml, then the
    flags): ATCD T, Free m, the others 1."""
    from atcd.config import parse_train_args
    from atcd.methods import get_method_class
    name, _, flags = entry.partition(":")
    cfg = parse_train_args(["-c", os.path.join(ROOT, "recipes", f"mnist_{name}.yaml"), *flags.split()])
    return get_method_class(cfg.method).updates_per_batch(cfg.method_opts)


def updates(row: dict) -> int:
    """The weight updates a row trained: the count its run recorded (summary.csv's num_updates); a row written before
    that column derives it from its recipe as it is now (minibatches x updates per minibatch), which is right only
    while the recipe keeps the T or m it trained with (the committed older rows carry the recorded count)."""
    if row.get("updates", "") != "":
        return int(row["updates"])
    return int(row["minibatches"]) * updates_per_batch(row["recipe"])


def _at(curve: list[tuple[float, float]], u: float) -> tuple[float | None, bool]:
    """Accuracy of a (updates, accuracy) curve at `u` updates, linear in log(updates) between measured budgets;
    beyond them by the nearest segment if within half a doubling (returned flagged True), else None."""
    by_u = {}
    for uu, acc in curve:  # budgets that gave the same updates (e.g. one epoch each) are one point
        by_u.setdefault(uu, []).append(acc)
    pts = sorted((uu, sum(v) / len(v)) for uu, v in by_u.items())
    if len(pts) < 2:
        return None, False
    lu = math.log(u)
    lo, hi = math.log(pts[0][0]), math.log(pts[-1][0])
    if lu < lo - 0.5 * math.log(2) or lu > hi + 0.5 * math.log(2):
        return None, False
    i = max(0, min(len(pts) - 2, sum(1 for p in pts if math.log(p[0]) <= lu) - 1))
    (u0, a0), (u1, a1) = pts[i], pts[i + 1]
    return a0 + (a1 - a0) * (lu - math.log(u0)) / (math.log(u1) - math.log(u0)), not lo <= lu <= hi


def update_split(rows: list[dict], key: str) -> list[str]:
    """Per budget, ATCD's gap to the best baseline split into "updates per second" (the accuracy a method gains or
    loses by making more or fewer weight updates in the budget) and "accuracy per update" (the gap at equal update
    counts), read off the methods' accuracy-vs-updates curves over the budgets (means over seeds)."""
    from atcd.stats import mean_interval
    budgets = sorted({r["budget_s"] for r in rows})
    mean = {}
    for r in rows:
        mean.setdefault((r["recipe"], r["budget_s"]), []).append(r)
    pt = {k: (updates(v[0]), mean_interval([r[key] for r in v])[0]) for k, v in mean.items()}
    out = [f"### The gap in weight updates ({key})", "",
           ("Weight updates = the optimizer steps each run recorded: minibatches × ATCD's T, Free's m, 1 for the "
            f"others. {key} accuracy (mean over seeds) against updates is read between the budgets linearly in "
            "log(updates) (~: up to half a doubling beyond the measured budgets). Split of ATCD minus the best "
            "baseline: *updates per second* = the baseline's accuracy at its own updates minus at ATCD's (or ATCD's "
            "at the baseline's updates minus at its own); *accuracy per update* = the gap at equal update counts."),
           "",
           ("| budget | ATCD updates (/s) | best baseline: updates (/s) | gap | from updates per second | "
            "from accuracy per update |"), "|---|---|---|---|---|---|"]
    for b in budgets:
        base = {m: pt[(m, bb)] for (m, bb) in pt if bb == b and not next(
            r for r in rows if r["recipe"] == m)["method"].startswith("atcd")}
        if ("atcd", b) not in pt or not base:
            continue
        best = max(_rivals(mean[("atcd", b)], {m: mean[(m, b)] for m in base}), key=lambda m: base[m][1])
        (ua, aa), (ub, ab) = pt[("atcd", b)], base[best]
        seeds = {m: sorted(r["seed"] for r in mean[(m, b)]) for m in ("atcd", best)}
        if seeds["atcd"] != seeds[best]:  # means over other seeds are no gap (e.g. --aa-best before its AutoAttack)
            out.append(f"| {b:g} s | {ua} ({ua / b:.1f}) | {best}: {ub} ({ub / b:.1f}) | not yet: {key} of seeds "
                       f"{seeds['atcd']} for ATCD, {seeds[best]} for {best} | | |")
            continue
        curve = {m: [pt[(m, bb)] for bb in budgets  # the budgets measured on these seeds (not one seed so far)
                     if (m, bb) in pt and sorted(r["seed"] for r in mean[(m, bb)]) == seeds[m]] for m in seeds}
        ab_at_ua, x1 = _at(curve[best], ua)
        if ab_at_ua is not None:  # the baseline's curve at ATCD's update count
            thr, per, mark = ab_at_ua - ab, aa - ab_at_ua, x1
        else:
            aa_at_ub, x2 = _at(curve["atcd"], ub)
            thr, per, mark = (None, None, False) if aa_at_ub is None else (aa - aa_at_ub, aa_at_ub - ab, x2)
        cells = ["outside the measured updates"] * 2 if thr is None else [
            f"{'~' if mark else ''}{thr:+.1f}", f"{'~' if mark else ''}{per:+.1f}"]
        out.append(f"| {b:g} s | {ua} ({ua / b:.1f}) | {best}: {ub} ({ub / b:.1f}) | {aa - ab:+.1f} | "
                   + " | ".join(cells) + " |")
    return [*out, ""]


def headline(rows: list[dict]) -> str:
    """The accuracy the report ranks by and the figure plots: the strongest attack any row has (rows without it,
    e.g. methods left out of --aa-methods, are left out of the verdict, the split and the figure)."""
    return next(k for k in ("autoattack", "pgd", "clean") if any(r.get(k, "") != "" for r in rows))


def _has(rows: list[dict], key: str) -> list[dict]:
    return [r for r in rows if r.get(key, "") != ""]


def report(rows: list[dict], a, costs: str = "cost table above") -> list[str]:
    """equal_time.md's lines: a table per budget and ATCD's margin over the best baseline; `costs` says where the
    cost table the plans were priced from is."""
    from atcd.stats import mean_interval
    key = headline(rows)
    keys = ["pgd", key] if key == "autoattack" else [key]  # PGD ranks every method; AutoAttack only those attacked
    budgets = sorted({r["budget_s"] for r in rows})
    attacks = {"clean": "clean", "pgd": f"PGD-{a.attack_steps} ({a.attack_loss} loss)",
               "autoattack": "AutoAttack (standard)"}
    named = [attacks.get(x, x) for x in a.attacks.split(",") if x]
    n_aa = a.aa_samples or a.num_samples
    some_aa = "autoattack" in a.attacks and 0 < len(_has(rows, "autoattack")) < len(rows)
    lines = ["## Equal training time", "",
             f"Every method trained for the same seconds ({', '.join(f'{b:g}' for b in budgets)} s): the budget is "
             f"turned into minibatches from the method's measured seconds per minibatch ({costs}). Then "
             f"{', '.join(named)} at eps {a.eps} on the first {a.num_samples} test images"
             + (f" (AutoAttack on the first {n_aa})" if "autoattack" in a.attacks and n_aa != a.num_samples else "")
             + ". Accuracies: mean ± 95 % t-interval over the seeds each budget names (none for one seed); train s: "
             "measured mean, (planned from the cost table; predicted by the cost model)."
             + (" AutoAttack was run for some methods only (--aa-methods, --aa-best), named under each budget's "
                "table beside the baselines' ranking by PGD; the others stop at PGD (empty AutoAttack cells)."
                if some_aa else ""), ""]
    for b in budgets:
        sel = [r for r in rows if r["budget_s"] == b]
        mh = any(r.get("mh_accept", "") != "" for r in sel)
        seeds = sorted({r["seed"] for r in sel})
        lines += [f"### {b:g} s", "", f"Seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}.", ""]
        lines += [("| method (recipe) | epochs × minibatches | train s (planned; cost model) | clean | pgd | "
                   "autoattack | n (AutoAttack) |" + (" M-H acceptance (per replay) |" if mh else "")),
                  "|---|---|---|---|---|---|---|" + ("---|" if mh else "")]
        for m in dict.fromkeys(r["recipe"] for r in sel):
            rs = [r for r in sel if r["recipe"] == m]
            cell = {}
            for k in ("clean", "pgd", "autoattack"):
                vals = [r[k] for r in _has(rs, k)]
                if vals:  # an attack some seeds lack yet (--aa-best with --report-only) says over how many it is
                    mean, hw = mean_interval(vals)
                    cell[k] = (f"{mean:.1f}" + ("" if math.isnan(hw) else f" ± {hw:.1f}")
                               + (f" ({len(vals)} of {len(rs)} seeds)" if len(vals) < len(rs) else ""))
            cell["train_s"] = f"{mean_interval([r['train_s'] for r in rs])[0]:.0f}"
            name = rs[0]["method"] if rs[0]["method"] == m else f"{rs[0]['method']} ({m})"
            own = sorted({r["seed"] for r in rs})
            if own != seeds:  # a method with fewer seeds than its budget: its mean is over those only
                name += f" [seed{'s' if len(own) > 1 else ''} {', '.join(map(str, own))} only]"
            lines.append(f"| {name} | {rs[0]['epochs']} × {rs[0]['minibatches'] // rs[0]['epochs']} | "
                         f"{cell['train_s']} ({rs[0]['planned_s']:.0f}; {rs[0]['cost_model_s']:.0f}) | "
                         f"{cell.get('clean', '')} | {cell.get('pgd', '')} | {cell.get('autoattack', '')} | "
                         f"{rs[0]['n']} ({rs[0]['n_aa'] or '-'}) |"
                         + (f" {_acceptance_cell(rs)} |" if mh else ""))
        lines.append("")
        if some_aa:
            pgd = {m: mean_interval([r["pgd"] for r in sel if r["recipe"] == m])[0]
                   for m in best_baselines(sel, len(sel))}
            attacked = ", ".join(dict.fromkeys(r["recipe"] for r in _has(sel, "autoattack"))) or "none yet"
            lines += [f"AutoAttack for {attacked}; the baselines by mean PGD: "
                      + ", ".join(f"{m} {v:.1f}" for m, v in pgd.items()) + ".", ""]
        lines += _ablation_lines(sel)
        for k in keys:
            atcd = _has([r for r in sel if r["recipe"] == "atcd"], k)  # the recipe; its ablations are the other atcd*
            base = {m: _has([r for r in sel if r["recipe"] == m], k) for m in dict.fromkeys(
                r["recipe"] for r in _has(sel, k) if not r["method"].startswith("atcd"))}
            if atcd and base:
                lines += [_verdict(atcd, base, k), ""]
    for k in keys:
        lines += update_split(_has(rows, k), k)
    slow = [r for r in rows if r["train_s"] > SLOW * r["planned_s"]]
    lines.append("Cross-check: measured training seconds / planned: "
                 f"{min(r['train_s'] / r['planned_s'] for r in rows):.2f}-"
                 f"{max(r['train_s'] / r['planned_s'] for r in rows):.2f}"
                 + (f"; above {SLOW} (a slow spell or per-minibatch overhead the cost table does not see): "
                    + ", ".join(f"{r['recipe']} {r['budget_s']:g} s seed {r['seed']}" for r in slow) if slow else "")
                 + ".")
    return lines


def plot(rows: list[dict], path: str, x: str = "budget"):
    """Headline accuracy (mean, 95 % over seeds) per method against the budget, or (`x="updates"`) against the
    weight updates the method made in it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atcd.stats import mean_interval
    key = headline(rows)
    rows = _has(rows, key)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in dict.fromkeys(r["recipe"] for r in rows):
        xs, ys, lo, hi = [], [], [], []
        for b in sorted({r["budget_s"] for r in rows if r["recipe"] == m}):
            rs = [r for r in rows if r["recipe"] == m and r["budget_s"] == b]
            # the budget: measured seconds are a cross-check (a shared machine inflates them)
            xs.append(b if x == "budget" else updates(rs[0]))
            mean, hw = mean_interval([r[key] for r in rs])
            hw = 0.0 if math.isnan(hw) else hw
            ys.append(mean)
            lo.append(min(hw, mean))  # an accuracy's interval ends at 0 and 100 %
            hi.append(min(hw, 100.0 - mean))
        label = next(r["method"] for r in rows if r["recipe"] == m)
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
    if x == "budget":
        ax.set_xlabel("training budget (s; minibatches priced by the measured cost per minibatch)")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("weight updates made in the budget (log scale)")
    ax.set_ylabel(f"{key} accuracy (%; mean, 95 % over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_equal_time(costs: list[dict], methods: list[str], seeds: list[int], a, recipe_config) -> list[str]:
    """Train and evaluate every (budget, seed, method); write equal_time.csv/.png; returns the report's lines."""
    budgets = [float(b) for b in a.equal_time.split(",") if b]
    by_entry = {c["method"]: c for c in costs}
    missing = [m for m in methods if m not in by_entry]
    if missing:
        fail(f"error: --equal-time needs the cost of every method; {missing} are not in --cost-methods")
    plan_path = os.path.join(a.out, PLAN_FILE)
    if a.report_only and not os.path.isfile(plan_path):  # reporting never plans (nor writes) a run of its own
        fail(f"error: --report-only needs the plan of an earlier run: no {plan_path}")
    plans = make_plans([by_entry[m] for m in methods], budgets, recipe_config, plan_path)
    rows, not_run, aa_not_run, done = [], [], [], read_done(getattr(a, "done", None) or [])
    for b in budgets:
        for seed in seeds:
            for m in methods:
                here = point_done(m, b, seed, a)  # its run folder is in --out: read (or finished) there
                row = None if here else done_row(done, m, b, seed, plans[m][f"{b:g}"], a)
                if row is None and not here and a.report_only:
                    not_run.append(f"{m} {b:g} s seed {seed}")
                    continue
                rows.append(row or run_point(m, b, seed, plans[m][f"{b:g}"], a))
                write_csv(os.path.join(a.out, "equal_time.csv"), rows, FIELDS)
                print(json.dumps({k: v for k, v in rows[-1].items() if not k.startswith("_")}), flush=True)
        if getattr(a, "aa_best", 0):  # once every seed of the budget has its PGD
            _autoattack_best(rows, b, plans, a, aa_not_run)
    if not rows:
        fail(f"error: --report-only found no finished (method, budget, seed) in {a.out}/equal_time")
    plot(rows, os.path.join(a.out, "equal_time.png"))
    plot(rows, os.path.join(a.out, "equal_time_updates.png"), x="updates")
    lines = report(rows, a)
    if not_run:
        lines += ["", f"Not run yet ({len(not_run)} of {len(not_run) + len(rows)} rows; --report-only reports the "
                      "finished ones): " + ", ".join(not_run) + "."]
    if aa_not_run:
        lines += ["", f"Not run yet for the baselines --aa-best chose: {', '.join(aa_not_run)}."]
    with open(os.path.join(a.out, "equal_time.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines
