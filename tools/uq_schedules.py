"""How much of the ranking does each member schedule keep, at what cost? (built-in demo model)

Runs `uqengine sample` once without uncertainty (plain sampling, the cost baseline) and once per
member schedule (`--uq-schedule`), all with the same seed, classes (balanced), sampler and steps,
one after another in this process, and compares every schedule with `full` (the paper's method):

  cost       wall seconds of sampling (summary.json `seconds_sampling`) and CPU seconds of the
             process, each as a ratio to plain sampling in the same run
  trunk      trunk rows per sample (summary.json), relative to full
  spearman   Spearman rank correlation of the scores with full's
  kendall    Kendall's tau-b with full's
  overlap    fraction of full's kept set (the `keep` most certain; global and per class) that
             the schedule keeps too
  ceiling    full again with other weight draws (--other-draw-seeds, `--draw-seed`; same noise,
             rows full@S): how far two rankings of the full method itself agree, and every
             schedule's mean Spearman with those runs
  evidence   (--evidence, needs torch) every schedule's per-class kept set judged by the
             independent CNN of tools/evidence_mnist.py: FD, accuracy, precision, recall, the
             FD gain over the first-N set as a share of full's, z against random
             class-stratified subsets, AUROC of the score for the CNN's errors

Outputs: <out>/<setting>/<schedule>/ (the runs, reused when finished), <out>/schedules.json and
<out>/schedules.md. Needs numpy (and torch for --evidence).

Run from the repository root:
  python3 tools/uq_schedules.py [--num 240 --keep 200 --steps 50 --sampler ddim --seed 0
      --schedules full,branch:0.5,branch:0.8,shared-trunk,shared-trunk:10
      --uqengine target/release/uqengine --out data/uq_schedules]
"""

import argparse
import csv
import json
import os
import resource
import subprocess
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=240)
    p.add_argument("--keep", type=int, default=200)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--schedules", default="full,branch:0.5,branch:0.8,shared-trunk,shared-trunk:10")
    p.add_argument("--other-draw-seeds", default="1,2",
                   help="also run full with these --draw-seed values (same noise, other draws): "
                        "how far two full rankings agree, the ceiling of every Spearman")
    p.add_argument("--evidence", action="store_true",
                   help="judge every schedule's kept set with tools/evidence_mnist.py's "
                        "independent CNN (needs torch and data/mnist)")
    p.add_argument("--random-draws", type=int, default=200,
                   help="random class-stratified subsets for the evidence baseline")
    p.add_argument("--uqengine", default=os.path.join(ROOT, "target", "release", "uqengine"))
    p.add_argument("--out", default=os.path.join("data", "uq_schedules"))
    a = p.parse_args()
    a.schedules = a.schedules.split(",")
    a.other_draw_seeds = [int(x) for x in a.other_draw_seeds.split(",") if x]
    if a.seed in a.other_draw_seeds:
        p.error("--other-draw-seeds must differ from --seed (the draw seed of full)")
    if a.schedules[0] != "full":
        a.schedules.insert(0, "full")
    if not 0 < a.keep <= a.num:
        p.error("need 0 < keep <= num")
    return a


def run(a, out, extra):
    """Run one sample job (reusing a finished folder): (summary, wall s, CPU s or None)."""
    if not os.path.exists(os.path.join(out, "summary.json")):
        cmd = [a.uqengine, "sample", "--num", str(a.num), "--steps", str(a.steps),
               "--sampler", a.sampler, "--draws", str(a.draws), "--classes", "balanced",
               "--seed", str(a.seed), "--batch", str(a.batch), "--out", out, "--overwrite"] + extra
        print("$ " + " ".join(cmd), flush=True)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        wall = time.time() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        with open(os.path.join(out, "cpu_seconds.json"), "w") as f:
            json.dump({"wall": wall, "cpu": cpu}, f)
    summary = json.load(open(os.path.join(out, "summary.json")))
    times = json.load(open(os.path.join(out, "cpu_seconds.json")))
    return summary, times["wall"], times["cpu"]


def read_scores(path):
    with open(path, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
    return (np.array([int(r["class"]) for r in rows]),
            np.array([float(r["uncertainty"]) for r in rows]))


def ranks(x):
    """Ranks 1..n with ties averaged."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    s = x[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        r[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall_tau_b(a, b):
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    num = (da * db).sum()
    den = np.sqrt((da != 0).sum() * (db != 0).sum())
    return float(num / den)


def keep_global(u, n):
    return set(np.argsort(u, kind="stable")[:n].tolist())


def keep_per_class(u, cls, n):
    """Largest-remainder quotas per class, each class's most certain (the engine's per-class)."""
    classes, counts = np.unique(cls, return_counts=True)
    total = counts.sum()
    share = n * counts
    quota = share // total
    rem = share % total
    left = n - quota.sum()
    for j in sorted(range(len(classes)), key=lambda j: (-rem[j], classes[j]))[:left]:
        quota[j] += 1
    kept = set()
    for c, q in zip(classes, quota):
        idx = np.where(cls == c)[0]
        kept |= set(idx[np.argsort(u[idx], kind="stable")[:q]].tolist())
    return kept


def evidence(a, plain_dir, results):
    """Every schedule's per-class kept set judged by the independent CNN (tools/evidence_mnist):
    FD against the 2,000 held-out digits, accuracy, precision, recall (k = 3, against an
    equal-size fixed-seed subset of the held-out digits), and over all samples the AUROC of
    the score for the CNN's errors; baselines first-N and random class-stratified subsets. The
    MAP samples are the same in every run (member 0 follows the MAP trajectory whatever the
    schedule; equal to f32 rounding), so only the kept sets differ."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import evidence_mnist as ev
    samples = np.load(os.path.join(plain_dir, "samples.npy"))
    cls_plain, _ = read_scores_or_classes(plain_dir)
    for s, r in results.items():
        x = np.load(os.path.join(r["folder"], "samples.npy"))
        # Equal up to f32 rounding (the trunk runs on other batch shapes).
        if np.abs(x - samples).max() > 1e-3 or not np.array_equal(r["cls"], cls_plain):
            raise SystemExit(f"{r['folder']}: other samples than the plain run's")
    model = ev.load_classifier()
    ho_img, _ = ev.load_split("heldout")
    real_f, _ = ev.judge(model, (ev.pad32(ho_img).astype(np.float32) / 255.0)[:, None])
    rng = np.random.default_rng([a.seed, 20251202])
    real_pr = real_f[np.sort(rng.permutation(len(real_f))[: a.keep])]
    gen_f, pred = ev.judge(model, ev.to_unit_u8(samples))
    correct = pred == cls_plain
    cls = cls_plain

    def metrics(sel, u=None):
        f = gen_f[sel]
        return {"fd": ev.frechet_distance(f, real_f), "accuracy": float(correct[sel].mean()),
                "precision": ev.coverage(f, real_pr, ev.K_NN),
                "recall": ev.coverage(real_pr, f, ev.K_NN)}

    quotas = ev.class_quotas(cls, a.keep)
    first = metrics(np.arange(a.keep))
    draws = [metrics(ev.random_stratified(cls, quotas, rng)) for _ in range(a.random_draws)]
    random = {m: ev.mean_std([d[m] for d in draws]) for m in ("fd", "accuracy", "precision", "recall")}
    table = {}
    for s, r in results.items():
        row = metrics(ev.per_class_keep(r["u"], cls, a.keep))
        row["auroc_errors"] = ev.auroc(r["u"], ~correct)
        row["fd_gain_over_first_n"] = first["fd"] - row["fd"]
        row["fd_z_vs_random"] = ev.zval(row["fd"], random["fd"])
        table[s] = row
    full_gain = table["full"]["fd_gain_over_first_n"]
    for row in table.values():
        row["fd_gain_share_of_full"] = (row["fd_gain_over_first_n"] / full_gain
                                        if full_gain != 0 else None)
    return {"judge": "cnn (tools/mnist/common.DigitCNN, data/mnist/classifier.pt)",
            "policy": "per-class keep", "errors": int((~correct).sum()),
            "first_n": first, "random_stratified": random, "random_draws": a.random_draws,
            "schedules": table}


def read_scores_or_classes(folder):
    """Classes of a run (scores.csv with uncertainty; summary.json's classes without)."""
    path = os.path.join(folder, "scores.csv")
    if os.path.exists(path):
        return read_scores(path)
    summary = json.load(open(os.path.join(folder, "summary.json")))
    return np.array(summary["classes"]), None


def fmt(x):
    return "-" if x is None else f"{x:.3f}"


def main():
    a = parse_args()
    setting = f"{a.sampler}{a.steps}-n{a.num}-seed{a.seed}"
    base = os.path.join(a.out, setting)
    os.makedirs(base, exist_ok=True)
    plain, plain_wall, plain_cpu = run(a, os.path.join(base, "plain"), ["--no-uncertainty"])
    plain_s = plain["seconds_sampling"]
    results = {}
    for s in a.schedules + [f"full@{d}" for d in a.other_draw_seeds]:
        name, _, draw_seed = s.partition("@")
        extra = ["--uq-schedule", name] + (["--draw-seed", draw_seed] if draw_seed else [])
        folder = os.path.join(base, s.replace(":", "_").replace("@", "_draws"))
        summary, wall, cpu = run(a, folder, extra)
        cls, u = read_scores(os.path.join(folder, "scores.csv"))
        results[s] = {"summary": summary, "wall": wall, "cpu": cpu, "cls": cls, "u": u,
                      "folder": folder}
    full = results["full"]
    others = [results[f"full@{d}"] for d in a.other_draw_seeds]
    rows = []
    for s, r in results.items():
        unc = r["summary"]["uncertainty"]
        row = {
            "schedule": s,
            "seconds_sampling": r["summary"]["seconds_sampling"],
            "time_ratio_to_plain": r["summary"]["seconds_sampling"] / plain_s,
            "cpu_ratio_to_plain": r["cpu"] / plain_cpu,
            "trunk_rows_per_sample": unc["trunk_rows_per_sample"],
            "trunk_vs_full": unc["trunk_rows_per_sample"] / full["summary"]["uncertainty"]["trunk_rows_per_sample"],
            "spearman_vs_full": spearman(r["u"], full["u"]),
            "kendall_vs_full": kendall_tau_b(r["u"], full["u"]),
            # Against full with other weight draws (same noise): what full itself keeps of a
            # full ranking is the ceiling of this column (the rows full@S).
            "spearman_vs_full_other_draws": (
                float(np.mean([spearman(r["u"], o["u"]) for o in others if o is not r]))
                if [o for o in others if o is not r] else None),
            "keep_overlap_global": len(keep_global(r["u"], a.keep) & keep_global(full["u"], a.keep)) / a.keep,
            "keep_overlap_per_class": len(keep_per_class(r["u"], r["cls"], a.keep)
                                          & keep_per_class(full["u"], full["cls"], a.keep)) / a.keep,
        }
        rows.append(row)
    ev = evidence(a, os.path.join(base, "plain"), results) if a.evidence else None
    doc = {
        "settings": {"num": a.num, "keep": a.keep, "steps": a.steps, "sampler": a.sampler,
                     "draws": a.draws, "seed": a.seed, "batch": a.batch,
                     "backend": plain["backend"]},
        "plain": {"seconds_sampling": plain_s, "cpu_seconds": plain_cpu, "wall": plain_wall},
        "schedules": rows,
        "evidence": ev,
    }
    with open(os.path.join(base, "schedules.json"), "w") as f:
        json.dump(doc, f, indent=2)
    lines = [
        f"{a.num} demo digits, {a.sampler.upper()} {a.steps} steps, M = {a.draws}, seed {a.seed}, "
        f"keep {a.keep}; plain sampling {plain_s:.1f} s.",
        "",
        "| schedule | time / plain | CPU / plain | trunk vs full | Spearman | Kendall | Spearman vs full at other draws | kept overlap (global) | kept overlap (per class) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| `{r['schedule']}` | {r['time_ratio_to_plain']:.2f} | {r['cpu_ratio_to_plain']:.2f} "
                     f"| {r['trunk_vs_full']:.2f} | {r['spearman_vs_full']:.3f} | {r['kendall_vs_full']:.3f} "
                     f"| {fmt(r['spearman_vs_full_other_draws'])} "
                     f"| {r['keep_overlap_global']:.3f} | {r['keep_overlap_per_class']:.3f} |")
    if ev:
        rf = ev["random_stratified"]["fd"]
        lines += [
            "",
            f"Kept {a.keep} per class, judged by the independent CNN ({ev['errors']} of {a.num} "
            f"samples misclassified): first {a.keep} FD {ev['first_n']['fd']:.3f}; random "
            f"class-stratified FD {rf['mean']:.3f} +- {rf['std']:.3f} ({a.random_draws} draws).",
            "",
            "| schedule | FD | FD gain over first N | share of full's gain | z vs random | accuracy | precision | recall | AUROC (errors) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s, r in ev["schedules"].items():
            share = r["fd_gain_share_of_full"]
            lines.append(f"| `{s}` | {r['fd']:.3f} | {r['fd_gain_over_first_n']:.3f} | "
                         f"{share:.2f} | {r['fd_z_vs_random']:.2f} | {r['accuracy']:.3f} | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} | {r['auroc_errors']:.3f} |"
                         if share is not None else f"| `{s}` | {r['fd']:.3f} | - | - | - | - | - | - | - |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(base, "schedules.md"), "w") as f:
        f.write(md)
    print(md, end="")


if __name__ == "__main__":
    main()
