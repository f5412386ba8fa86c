"""Does keeping the most certain samples give a better set? Evidence on the MNIST demo model.

Runs `uqengine sample` once per seed (classes balanced, with uncertainty, `--keep keep
--keep-policy per-class --save-members`), then compares subsets of `keep` samples, each judged
by two independent judges that neither the sampler nor the extractor ever sees, in their 64-d
penultimate feature spaces against the 2,000 held-out digits:

  judges     cnn   the evaluation CNN (tools/mnist/common.DigitCNN, data/mnist/classifier.pt)
             mlp   an MLP on the 32x32 pixels (common.DigitMLP, data/mnist/judge_mlp.pt)

  subsets    global keep        the `keep` samples with the lowest uncertainty
             per-class keep     each class's lowest-uncertainty samples, as many as its share of
                                the run (largest remainders); computed here and checked against
                                the run's keep.txt (`--keep-policy per-class`)
             first N            samples 0..keep-1
             least certain      the `keep` samples with the highest uncertainty
             random stratified  --random-draws random subsets with the per-class keep's class
                                counts (mean and standard deviation over the draws)

Metrics per subset:
  FD         Frechet distance of Gaussians fitted to the judge's features, against all 2,000
             held-out digits
  accuracy   fraction of samples the judge assigns to their conditioning class
  precision  fraction of samples inside the union of k-NN balls (k = 3) of the real set
  recall     fraction of real digits inside the union of k-NN balls of the subset
             (Kynkaenniemi et al. 2019); the real set is an equal-size (`keep`) fixed-seed random
             subset of the held-out digits (--pr-real all: all 2,000)
and, over all `num` samples, the AUROC of the uncertainty as a detector of the samples the judge
gets wrong, the class histogram of every kept set, and how many of the judge's errors each policy
drops (against the number a random drop of the same size would drop).

Investigation (from features.npy, the members' extractor features [N, K, D]): the score is
recomputed for sigma^2 in --sigma2-sweep, U = 0.5 * sum_d log(v_d + sigma^2) + const (v_d the
biased variance over the K members, clipped at 0; at the run's sigma^2 it must reproduce
scores.csv), and the global and per-class keeps of each are evaluated; also a per-class z-scored
score ((U - class mean) / class std, global keep).

Over seeds: mean +- standard deviation (ddof 1) of every metric per subset per judge, and per
seed the per-class keep's FD minus the random-stratified mean in units of the random std (z).

Images enter the judges as they were trained: float [N,1,32,32] in [0,1]. Generated samples
(samples.npy, [-1,1]) are quantised to 8 bits first, as in the PNGs the sample job writes;
held-out digits are zero-padded 28->32 and divided by 255.

Outputs in --out: seed<S>/samples/ (the uqengine run of seed S; a finished run with the same
settings is reused, not resampled), seed<S>/extremes.png (the 32 most and 32 least certain
samples, labelled by the CNN), evidence.json, evidence.md. Deterministic given the seeds.

Run from the repository root:
  python3 tools/evidence_mnist.py [--seeds 0,1,2 --num 600 --keep 500 --steps 50 --draws 5
                                   --uqengine PATH --out data/evidence/run]
  --reuse           evaluate existing <out>/seed<S>/samples only (never sample)
  --model/--posterior/--extractor/--sigma2   passed to `uqengine sample` (default: the demo model
                    with its shipped posterior and extractor)
"""

import argparse
import csv
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "mnist"))
from common import load_classifier, load_judge_mlp, load_split, pad32  # noqa: E402

K_NN = 3
SETS = ("global keep", "per-class keep", "first N", "least certain")
RANDOM = "random stratified"
METRICS = ("fd", "accuracy", "precision", "recall")
JUDGES = ("cnn", "mlp")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=1200)
    p.add_argument("--keep", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="one seed (--seeds overrides)")
    p.add_argument("--seeds", help="comma-separated seeds, one sampling run each")
    p.add_argument("--random-draws", type=int, default=10,
                   help="random class-stratified subsets per seed")
    p.add_argument("--sigma2-sweep", default="1e-4,1e-3,1e-2,1e-1",
                   help="sigma^2 values the score is recomputed with (from features.npy)")
    p.add_argument("--batch", type=int, default=16, help="uqengine sample --batch")
    p.add_argument("--uqengine", default=os.path.join(ROOT, "target", "release", "uqengine"))
    p.add_argument("--out", default=os.path.join("data", "evidence", "run"))
    p.add_argument("--model")
    p.add_argument("--posterior")
    p.add_argument("--extractor")
    p.add_argument("--sigma2", type=float)
    p.add_argument("--threads", type=int)
    p.add_argument("--pr-real", default="keep", choices=("keep", "all"),
                   help="real set of precision/recall: an equal-size subset or all held-out")
    p.add_argument("--reuse", action="store_true", help="evaluate existing <out>/samples")
    a = p.parse_args()
    if not 0 < a.keep <= a.num:
        p.error("need 0 < keep <= num")
    if a.keep < K_NN + 1:
        p.error(f"keep must exceed k = {K_NN}")
    a.seed_list = [int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed]
    a.sweep = [float(x) for x in a.sigma2_sweep.split(",")] if a.sigma2_sweep else []
    return a


def sampler_cmd(a, seed, sample_dir):
    cmd = [a.uqengine, "sample", "--num", str(a.num), "--steps", str(a.steps),
           "--draws", str(a.draws), "--classes", "balanced", "--seed", str(seed),
           "--batch", str(a.batch), "--out", sample_dir, "--overwrite",
           "--keep", str(a.keep), "--keep-policy", "per-class", "--save-members"]
    for flag, val in (("--model", a.model), ("--posterior", a.posterior),
                      ("--extractor", a.extractor), ("--sigma2", a.sigma2),
                      ("--threads", a.threads)):
        if val is not None:
            cmd += [flag, str(val)]
    return cmd


def run_sampler(cmd):
    print("$ " + " ".join(cmd), flush=True)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return wall, cpu


def read_scores(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["index"]))
    idx = np.array([int(r["index"]) for r in rows])
    if not np.array_equal(idx, np.arange(len(rows))):
        raise SystemExit(f"{path}: indices are not 0..{len(rows) - 1}")
    cls = np.array([int(r["class"]) for r in rows])
    unc = np.array([float(r["uncertainty"]) for r in rows])
    rank = np.array([int(r["rank"]) for r in rows])
    return cls, unc, rank


def to_unit_u8(samples):
    """[-1,1] floats -> the 8-bit values the PNGs hold, as [0,1] floats."""
    u8 = np.clip(np.round((samples.astype(np.float64) + 1.0) * 127.5), 0, 255)
    return (u8 / 255.0).astype(np.float32)


@torch.no_grad()
def judge(model, x):
    """(64-d penultimate features, predicted class) of x float [N,1,32,32] in [0,1]."""
    feats, preds = [], []
    for i in range(0, len(x), 500):
        f = model.features(torch.from_numpy(x[i : i + 500]))
        feats.append(f.double().numpy())
        preds.append(model.head(f).argmax(1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


def sqrtm_psd(c):
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(f1, f2):
    """||mu1-mu2||^2 + tr C1 + tr C2 - 2 tr (C1^1/2 C2 C1^1/2)^1/2 (unbiased covariances)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    s1 = sqrtm_psd(c1)
    m = s1 @ c2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt)


def pairwise(a, b):
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def knn_radii(f, k):
    """Distance of every point to its k-th nearest neighbour in f (itself excluded)."""
    d = pairwise(f, f)
    return np.partition(d, k, axis=1)[:, k]


def coverage(query, ref, k):
    """Fraction of `query` points inside the union of k-NN balls of `ref`."""
    r = knn_radii(ref, k)
    return float((pairwise(query, ref) <= r[None, :]).any(1).mean())


def auroc(score, positive):
    """P(score of a positive > score of a negative), ties counted 1/2 (Mann-Whitney U)."""
    pos, neg = int(positive.sum()), int((~positive).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    s = score[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def contact_sheet(x01, idx, cls, pred, unc, path, title_best, title_worst):
    """Two labelled 8x4 grids: idx[0] (most certain) and idx[1] (least certain)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    scale, cols = 3, 8
    tile_w, tile_h = 32 * scale, 32 * scale + 24
    pad, head = 6, 22
    panels = []
    for title, sel in ((title_best, idx[0]), (title_worst, idx[1])):
        rows = math.ceil(len(sel) / cols)
        im = Image.new("L", (cols * (tile_w + pad) + pad, head + rows * (tile_h + pad) + pad), 255)
        dr = ImageDraw.Draw(im)
        dr.text((pad, 5), title, fill=0, font=font)
        for j, i in enumerate(sel):
            r, c = divmod(j, cols)
            x0, y0 = pad + c * (tile_w + pad), head + r * (tile_h + pad)
            digit = Image.fromarray(np.round(x01[i, 0] * 255).astype(np.uint8), mode="L")
            im.paste(digit.resize((32 * scale, 32 * scale), Image.NEAREST), (x0, y0))
            mark = "" if pred[i] == cls[i] else f" ->{pred[i]}"
            dr.text((x0, y0 + 32 * scale + 1), f"#{i} y={cls[i]}{mark}", fill=0, font=font)
            dr.text((x0, y0 + 32 * scale + 12), f"U={unc[i]:.1f}", fill=0, font=font)
        panels.append(im)
    gap = 12
    sheet = Image.new("L", (sum(p.width for p in panels) + gap, max(p.height for p in panels)), 255)
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (panels[0].width + gap, 0))
    sheet.save(path)


def order_by_score(u):
    """Sample indices by ascending score (most certain first); ties keep index order."""
    return np.argsort(u, kind="stable")


def class_quotas(cls, n):
    """Per-class counts of an `n`-sample keep in proportion to each class's share of the run:
    floor(n * count / total), the rest one each to the largest remainders (ties: smaller class).
    The same apportionment as `uqengine --keep-policy per-class`."""
    classes, counts = np.unique(cls, return_counts=True)
    total = int(counts.sum())
    n = min(n, total)
    share = n * counts
    q = share // total
    rem = share % total
    left = n - int(q.sum())
    by_rem = sorted(range(len(classes)), key=lambda i: (-int(rem[i]), int(classes[i])))
    for i in by_rem[:left]:
        q[i] += 1
    return {int(c): int(k) for c, k in zip(classes, q)}


def global_keep(u, n):
    return np.sort(order_by_score(u)[:n])


def per_class_keep(u, cls, n):
    """Each class's `quota` lowest scores (ties by index), as a sorted index array."""
    quotas = class_quotas(cls, n)
    order = order_by_score(u)
    kept = []
    for c, q in quotas.items():
        kept.extend(order[cls[order] == c][:q].tolist())
    return np.sort(np.array(kept, dtype=np.int64))


def random_stratified(cls, quotas, rng):
    kept = []
    for c, q in quotas.items():
        idx = np.flatnonzero(cls == c)
        kept.extend(rng.choice(idx, size=q, replace=False).tolist())
    return np.sort(np.array(kept, dtype=np.int64))


def gaussian_entropy(feat, sigma2):
    """U per sample from member features [N, K, D]: 0.5 * sum_d log(v_d + sigma2) + const,
    v_d the biased variance over the K members (clipped at 0); as `uqengine`."""
    f = feat.astype(np.float64)
    k, d = f.shape[1], f.shape[2]
    s1, s2 = f.sum(1), (f * f).sum(1)
    mean = s1 / k
    v = np.clip(s2 / k - mean * mean, 0, None)
    return 0.5 * np.log(v + sigma2).sum(1) + 0.5 * d * (math.log(2 * math.pi) + 1)


def class_zscore(u, cls):
    z = np.empty_like(u)
    for c in np.unique(cls):
        m = cls == c
        z[m] = (u[m] - u[m].mean()) / u[m].std()
    return z


def set_metrics(sel, feats, correct, real_f, real_pr, unc, cls):
    f = feats[sel]
    return {
        "fd": frechet_distance(f, real_f),
        "accuracy": float(correct[sel].mean()),
        "precision": coverage(f, real_pr, K_NN),
        "recall": coverage(real_pr, f, K_NN),
        "mean_uncertainty": float(unc[sel].mean()),
        "class_counts": np.bincount(cls[sel], minlength=10).tolist(),
    }


def zval(x, ms):
    """(x - mean) / std of a mean_std record; nan where the std is 0."""
    return float((x - ms["mean"]) / ms["std"]) if ms["std"] > 0 else float("nan")


def mean_std(values):
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v))}


def dropped_errors(sel, wrong, cls, quotas=None):
    """Judge errors among the samples a keep drops, and the number a random drop of the same
    size is expected to drop (uniform; `quotas`: class-stratified, same class counts)."""
    drop = np.ones(len(wrong), bool)
    drop[sel] = False
    n, n_drop = len(wrong), int(drop.sum())
    out = {"dropped": n_drop, "errors_dropped": int(wrong[drop].sum()),
           "errors_total": int(wrong.sum()),
           "expected_random_drop": float(wrong.sum() * n_drop / n)}
    if quotas is not None:
        exp = 0.0
        for c, q in quotas.items():
            m = cls == c
            exp += wrong[m].sum() * (m.sum() - q) / m.sum()
        out["expected_random_stratified_drop"] = float(exp)
    return out


def sample_run(a, seed):
    """The finished uqengine run of `seed` (reused when its settings match), else a new one."""
    sample_dir = os.path.join(a.out, f"seed{seed}", "samples")
    cmd = sampler_cmd(a, seed, sample_dir)
    summary_path = os.path.join(sample_dir, "summary.json")
    reused = os.path.exists(summary_path) and os.path.exists(
        os.path.join(sample_dir, "features.npy"))
    t_sample = cpu_sample = None
    if reused:
        print(f"seed {seed}: reusing {sample_dir}", flush=True)
    elif a.reuse:
        raise SystemExit(f"--reuse: {sample_dir} has no finished run (summary.json, features.npy)")
    else:
        posterior = a.posterior
        if posterior is None and a.model is None:
            posterior = os.path.join(ROOT, "assets", "demo", "posterior.safetensors")
        if posterior is None or not os.path.exists(posterior):
            raise SystemExit(f"no posterior ({posterior or 'pass --posterior'}): the scores need "
                             "one; tools/fit_demo_posterior.sh writes the demo model's")
        os.makedirs(os.path.dirname(sample_dir), exist_ok=True)
        t_sample, cpu_sample = run_sampler(cmd)
    return sample_dir, cmd, reused, t_sample, cpu_sample


def evaluate_seed(a, seed, judges, real):
    sample_dir, cmd, reused, t_sample, cpu_sample = sample_run(a, seed)
    t0 = time.time()
    summary = json.load(open(os.path.join(sample_dir, "summary.json")))
    if not summary.get("uncertainty"):
        raise SystemExit(f"{sample_dir}: no uncertainty scores (no posterior?)")
    cls, unc, rank = read_scores(os.path.join(sample_dir, "scores.csv"))
    samples = np.load(os.path.join(sample_dir, "samples.npy"))
    feat = np.load(os.path.join(sample_dir, "features.npy"))
    num = len(cls)
    if samples.shape != (num, 1, 32, 32) or num != a.num or feat.shape[:2] != (num, a.draws + 1):
        raise SystemExit(f"{sample_dir}: samples {samples.shape}, features {feat.shape}, "
                         f"scores {num}, --num {a.num}, K {a.draws + 1}")
    if summary.get("steps", a.steps) != a.steps:
        raise SystemExit(f"{sample_dir}: steps {summary.get('steps')} != --steps {a.steps}")

    # The engine's order (rank column) must be the order of its scores; the score must be the
    # Gaussian entropy of features.npy at the run's sigma^2.
    order = order_by_score(unc)
    if not np.array_equal(np.argsort(rank, kind="stable"), order):
        raise SystemExit(f"{sample_dir}: rank column disagrees with the uncertainty order")
    sigma2_run = float(summary["uncertainty"]["score"]["sigma2"])
    u_re = gaussian_entropy(feat, sigma2_run)
    max_dev = float(np.abs(u_re - unc).max())
    if max_dev > 1e-3 * max(1.0, float(np.abs(unc).max())):
        raise SystemExit(f"{sample_dir}: recomputed U differs from scores.csv by {max_dev}")

    quotas = class_quotas(cls, a.keep)
    keep_pc = per_class_keep(unc, cls, a.keep)
    keep_txt_path = os.path.join(sample_dir, "keep.txt")
    keep_txt = None
    if os.path.exists(keep_txt_path):
        with open(keep_txt_path) as f:  # one image name (NNNNN.png) a line
            keep_txt = np.array(sorted(int(t.split(".")[0]) for t in f.read().split()),
                                dtype=np.int64)
        policy = summary["uncertainty"].get("keep_policy")
        if summary["uncertainty"].get("keep") != a.keep:
            raise SystemExit(f"{sample_dir}: run kept {summary['uncertainty'].get('keep')}, "
                             f"--keep {a.keep}")
        if policy == "per-class":
            pc_engine = {int(c): int(k) for c, k in summary["uncertainty"]["kept_per_class"].items()}
            assert pc_engine == quotas, (pc_engine, quotas)
            assert np.array_equal(keep_txt, keep_pc), (
                f"{keep_txt_path}: the run's per-class keep differs from the one computed here")
        elif policy == "global":
            assert np.array_equal(keep_txt, global_keep(unc, a.keep)), keep_txt_path
        else:
            raise SystemExit(f"{sample_dir}: unknown keep policy {policy!r}")
    # A second finished run of the same samples with --keep-policy global (optional; e.g. made
    # with tools/mnist/prefix_run.py): its keep.txt must be the global keep computed here.
    gdir = os.path.join(a.out, f"seed{seed}", "samples_global")
    global_txt_checked = False
    if os.path.exists(os.path.join(gdir, "keep.txt")):
        gsum = json.load(open(os.path.join(gdir, "summary.json")))
        gcls, gunc, _ = read_scores(os.path.join(gdir, "scores.csv"))
        assert gsum["uncertainty"]["keep_policy"] == "global" and gsum["uncertainty"]["keep"] == a.keep
        assert np.array_equal(gcls, cls) and np.array_equal(gunc, unc), f"{gdir}: other samples"
        with open(os.path.join(gdir, "keep.txt")) as f:
            gtxt = np.array(sorted(int(t.split(".")[0]) for t in f.read().split()), dtype=np.int64)
        assert np.array_equal(gtxt, global_keep(unc, a.keep)), (
            f"{gdir}/keep.txt: the run's global keep differs from the one computed here")
        global_txt_checked = True
    subsets = {
        "global keep": global_keep(unc, a.keep),
        "per-class keep": keep_pc,
        "first N": np.arange(a.keep),
        "least certain": np.sort(order[-a.keep:]),
    }
    rng = np.random.default_rng([seed, 20251202])
    draws = [random_stratified(cls, quotas, rng) for _ in range(a.random_draws)]
    sweep_scores = {s2: gaussian_entropy(feat, s2) for s2 in a.sweep}
    uz = class_zscore(unc, cls)

    out = {"seed": seed, "num": num, "command": cmd, "reused_run": reused,
           "resumed_samples": summary.get("resumed_samples"),
           "keep_txt_policy": summary["uncertainty"].get("keep_policy"),
           "quotas": quotas, "keep_txt_checked": keep_txt is not None,
           "global_keep_txt_checked": global_txt_checked,
           "recomputed_u_max_abs_dev": max_dev, "sigma2_run": sigma2_run,
           "run_class_counts": np.bincount(cls, minlength=10).tolist(),
           "mean_uncertainty_per_class": [float(unc[cls == c].mean()) for c in range(10)],
           "judges": {}}
    extremes = None
    for jname, model in judges.items():
        real_f, real_pr = real[jname]["f"], real[jname]["pr"][seed]
        gen_f, pred = judge(model, to_unit_u8(samples))
        if jname == "cnn":
            extremes = pred
        correct = pred == cls
        wrong = ~correct
        table = {name: set_metrics(sel, gen_f, correct, real_f, real_pr, unc, cls)
                 for name, sel in subsets.items()}
        rd = [set_metrics(sel, gen_f, correct, real_f, real_pr, unc, cls) for sel in draws]
        table[RANDOM] = {m: mean_std([r[m] for r in rd]) for m in METRICS + ("mean_uncertainty",)}
        table[RANDOM]["class_counts"] = rd[0]["class_counts"]
        table[RANDOM]["draws"] = {m: [r[m] for r in rd] for m in METRICS}
        z = {m: zval(table["per-class keep"][m], table[RANDOM][m]) for m in METRICS}
        z_global = {m: zval(table["global keep"][m], table[RANDOM][m]) for m in METRICS}
        drops = {"global keep": dropped_errors(subsets["global keep"], wrong, cls),
                 "per-class keep": dropped_errors(subsets["per-class keep"], wrong, cls, quotas),
                 "random stratified (mean of draws)": float(np.mean(
                     [wrong.sum() - wrong[sel].sum() for sel in draws]))}
        sweep = {}
        for s2, u2 in sweep_scores.items():
            pc2 = per_class_keep(u2, cls, a.keep)
            g2 = global_keep(u2, a.keep)
            r_pc = set_metrics(pc2, gen_f, correct, real_f, real_pr, u2, cls)
            r_g = set_metrics(g2, gen_f, correct, real_f, real_pr, u2, cls)
            sweep[f"{s2:g}"] = {
                "per-class keep": r_pc, "global keep": r_g,
                "z_fd_per_class": zval(r_pc["fd"], table[RANDOM]["fd"]),
                "auroc": auroc(u2, wrong),
                "per_class_errors_dropped": dropped_errors(pc2, wrong, cls, quotas),
                "spearman_vs_run_score": float(np.corrcoef(
                    np.argsort(np.argsort(u2)), np.argsort(np.argsort(unc)))[0, 1]),
            }
        zsel = global_keep(uz, a.keep)
        r_z = set_metrics(zsel, gen_f, correct, real_f, real_pr, unc, cls)
        r_z["z_fd"] = zval(r_z["fd"], table[RANDOM]["fd"])
        r_z["errors_dropped"] = dropped_errors(zsel, wrong, cls)
        out["judges"][jname] = {
            "subsets": table,
            "z_per_class_vs_random": z,
            "z_global_vs_random": z_global,
            "auroc_uncertainty_vs_misclassified": auroc(unc, wrong),
            "auroc_class_zscored_vs_misclassified": auroc(uz, wrong),
            "auroc_within_class_mean": float(np.nanmean(
                [auroc(unc[cls == c], wrong[cls == c]) for c in range(10)])),
            "num_misclassified": int(wrong.sum()),
            "errors_per_class": [int(wrong[cls == c].sum()) for c in range(10)],
            "errors_dropped": drops,
            "sigma2_sweep": sweep,
            "class_zscored_global_keep": r_z,
            "fd_all_generated": frechet_distance(gen_f, real_f),
            "accuracy_all_generated": float(correct.mean()),
        }
    out["timing"] = {
        "sample_wall_s": t_sample, "sample_cpu_s": cpu_sample,
        "uqengine_seconds_total": summary.get("seconds_total"),
        "evaluation_wall_s": time.time() - t0,
    }
    n_show = min(32, num // 2)
    contact_sheet(to_unit_u8(samples), (order[:n_show], order[::-1][:n_show]), cls, extremes, unc,
                  os.path.join(a.out, f"seed{seed}", "extremes.png"),
                  f"{n_show} most certain (lowest U)", f"{n_show} least certain (highest U)")
    return out


def aggregate(per_seed, a):
    """Mean +- std over seeds of every metric per subset per judge."""
    agg = {}
    for j in JUDGES:
        rows = {}
        for name in SETS:
            rows[name] = {m: mean_std([s["judges"][j]["subsets"][name][m] for s in per_seed])
                          for m in METRICS}
        rows[RANDOM] = {m: mean_std([s["judges"][j]["subsets"][RANDOM][m]["mean"]
                                     for s in per_seed]) for m in METRICS}
        for m in METRICS:
            rows[RANDOM][m]["within_seed_std_mean"] = float(np.mean(
                [s["judges"][j]["subsets"][RANDOM][m]["std"] for s in per_seed]))
        rows["class-z-scored global keep"] = {
            m: mean_std([s["judges"][j]["class_zscored_global_keep"][m] for s in per_seed])
            for m in METRICS}
        sweep = {}
        for s2 in a.sweep:
            k = f"{s2:g}"
            sweep[k] = {pol: {m: mean_std([s["judges"][j]["sigma2_sweep"][k][pol][m]
                                           for s in per_seed]) for m in ("fd", "accuracy")}
                        for pol in ("per-class keep", "global keep")}
            sweep[k]["z_fd_per_class"] = [s["judges"][j]["sigma2_sweep"][k]["z_fd_per_class"]
                                          for s in per_seed]
            sweep[k]["auroc"] = mean_std([s["judges"][j]["sigma2_sweep"][k]["auroc"]
                                          for s in per_seed])
        agg[j] = {
            "subsets": rows,
            "z_fd_per_class_by_seed": {str(s["seed"]): s["judges"][j]["z_per_class_vs_random"]["fd"]
                                       for s in per_seed},
            "z_accuracy_per_class_by_seed": {
                str(s["seed"]): s["judges"][j]["z_per_class_vs_random"]["accuracy"]
                for s in per_seed},
            "z_fd_global_by_seed": {str(s["seed"]): s["judges"][j]["z_global_vs_random"]["fd"]
                                    for s in per_seed},
            "auroc": mean_std([s["judges"][j]["auroc_uncertainty_vs_misclassified"]
                               for s in per_seed]),
            "auroc_within_class_mean": mean_std([s["judges"][j]["auroc_within_class_mean"]
                                                 for s in per_seed]),
            "auroc_class_zscored": mean_std([s["judges"][j]["auroc_class_zscored_vs_misclassified"]
                                             for s in per_seed]),
            "sigma2_sweep": sweep,
        }
    return agg


def fmt(ms, nd):
    return f"{ms['mean']:.{nd}f} ± {ms['std']:.{nd}f}"


def write_markdown(a, per_seed, agg, ref):
    seeds = [s["seed"] for s in per_seed]
    L = [f"Seeds {', '.join(map(str, seeds))}: {a.num} samples each (DDIM {a.steps} steps, "
         f"K = {a.draws + 1} members, classes balanced), keep {a.keep}. Judges: cnn (evaluation "
         f"CNN, held-out accuracy {ref['cnn']:.4f}) and mlp (pixel MLP, {ref['mlp']:.4f}); FD on "
         f"their 64-d features against 2,000 held-out digits, precision/recall (k = {K_NN}) "
         f"against {a.keep if a.pr_real == 'keep' else 2000}. Mean ± std over the "
         f"{len(seeds)} seeds; random stratified = per seed the mean of {a.random_draws} random "
         "subsets with the per-class keep's class counts (its within-seed std in brackets).", ""]
    for j in JUDGES:
        L += [f"#### Judge: {j}", "", "| subset | FD | accuracy | precision | recall |",
              "|---|---:|---:|---:|---:|"]
        rows = agg[j]["subsets"]
        for name in SETS + (RANDOM, "class-z-scored global keep"):
            r = rows[name]
            cells = []
            for m, nd in (("fd", 3), ("accuracy", 4), ("precision", 4), ("recall", 4)):
                c = fmt(r[m], nd)
                if name == RANDOM:
                    c += f" [{r[m]['within_seed_std_mean']:.{nd}f}]"
                cells.append(c)
            L.append(f"| {name} | " + " | ".join(cells) + " |")
        zs = agg[j]["z_fd_per_class_by_seed"]
        zg = agg[j]["z_fd_global_by_seed"]
        L += ["", "Per-class keep FD vs random stratified, z = (FD - mean) / std per seed: "
              + ", ".join(f"seed {k}: {v:+.2f}" for k, v in zs.items())
              + "; global keep: " + ", ".join(f"seed {k}: {v:+.2f}" for k, v in zg.items()) + ".",
              f"AUROC of U for the judge's errors: {fmt(agg[j]['auroc'], 3)} (within class, "
              f"mean over classes: {fmt(agg[j]['auroc_within_class_mean'], 3)}).", ""]
        L += ["| seed | errors | dropped by global keep | by per-class keep | random drop "
              "(expected) |", "|---:|---:|---:|---:|---:|"]
        for s in per_seed:
            d = s["judges"][j]["errors_dropped"]
            L.append(f"| {s['seed']} | {d['global keep']['errors_total']} | "
                     f"{d['global keep']['errors_dropped']} | "
                     f"{d['per-class keep']['errors_dropped']} | "
                     f"{d['global keep']['expected_random_drop']:.1f} |")
        L += ["", "| sigma^2 | per-class FD | per-class accuracy | global FD | global accuracy "
              "| z (per-class FD) by seed | AUROC |", "|---:|---:|---:|---:|---:|---|---:|"]
        for k, v in agg[j]["sigma2_sweep"].items():
            L.append(f"| {k} | {fmt(v['per-class keep']['fd'], 3)} | "
                     f"{fmt(v['per-class keep']['accuracy'], 4)} | {fmt(v['global keep']['fd'], 3)}"
                     f" | {fmt(v['global keep']['accuracy'], 4)} | "
                     + ", ".join(f"{z:+.2f}" for z in v["z_fd_per_class"])
                     + f" | {fmt(v['auroc'], 3)} |")
        L.append("")
    L += ["#### Class counts (0..9) of the kept sets", "", "| seed | global keep | per-class keep "
          "| least certain |", "|---:|---|---|---|"]
    for s in per_seed:
        t = s["judges"]["cnn"]["subsets"]
        L.append(f"| {s['seed']} | " + " | ".join(" ".join(map(str, t[n]["class_counts"]))
                                                  for n in ("global keep", "per-class keep",
                                                            "least certain")) + " |")
    L += ["", "Mean U per class (0..9) by seed: " + "; ".join(
        f"seed {s['seed']}: " + " ".join(f"{u:.1f}" for u in s["mean_uncertainty_per_class"])
        for s in per_seed) + "."]
    return "\n".join(L) + "\n"


def main():
    a = parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    judges = {"cnn": load_classifier(), "mlp": load_judge_mlp()}
    ho_img, ho_lab = load_split("heldout")
    real01 = (pad32(ho_img).astype(np.float32) / 255.0)[:, None]
    real, ref = {}, {}
    for j, model in judges.items():
        real_f, real_pred = judge(model, real01)
        ref[j] = float((real_pred == ho_lab).mean())
        pr = {}
        for seed in a.seed_list:
            rng = np.random.default_rng(seed)
            pr[seed] = (real_f[np.sort(rng.permutation(len(real_f))[: a.keep])]
                        if a.pr_real == "keep" else real_f)
        real[j] = {"f": real_f, "pr": pr}

    per_seed = [evaluate_seed(a, seed, judges, real) for seed in a.seed_list]
    agg = aggregate(per_seed, a) if len(per_seed) > 0 else None
    result = {
        "settings": {
            "seeds": a.seed_list, "num": a.num, "keep": a.keep, "steps": a.steps,
            "draws": a.draws, "members": a.draws + 1, "batch": a.batch, "k_nn": K_NN,
            "pr_real": a.pr_real, "fd_real_size": int(len(ho_lab)),
            "random_draws": a.random_draws, "sigma2_sweep": a.sweep,
            "sampler_keep_policy": "per-class",
        },
        "judges_heldout_accuracy": ref,
        "aggregate": agg,
        "per_seed": per_seed,
    }
    with open(os.path.join(a.out, "evidence.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = write_markdown(a, per_seed, agg, ref)
    with open(os.path.join(a.out, "evidence.md"), "w") as f:
        f.write(md)
    print(md, end="")
    print(f"wrote {a.out}/evidence.json, evidence.md, seed*/extremes.png")

if __name__ == "__main__":
    main()
