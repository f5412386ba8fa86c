"""Does keeping the most certain samples give a better set? Evidence on the MNIST demo model.

Runs `uqengine sample` once (classes balanced, with uncertainty), then compares three subsets of
`keep` samples, each judged by the independent evaluation CNN (tools/mnist/common.DigitCNN,
data/mnist/classifier.pt) in its 64-d penultimate feature space against the held-out digits:

  most certain   the `keep` samples with the lowest uncertainty
  first N        samples 0..keep-1 (the reference protocol's random subset)
  least certain  the `keep` samples with the highest uncertainty

Metrics per subset:
  FD         Frechet distance of Gaussians fitted to the classifier features, against all 2,000
             held-out digits
  accuracy   fraction of samples the classifier assigns to their conditioning class
  precision  fraction of samples inside the union of k-NN balls (k = 3) of the real set
  recall     fraction of real digits inside the union of k-NN balls of the subset
             (Kynkaenniemi et al. 2019); the real set is an equal-size (`keep`) fixed-seed random
             subset of the held-out digits (--pr-real all: all 2,000)
and, over all `num` samples, the AUROC of the uncertainty as a detector of the samples the
classifier gets wrong.

Images enter the classifier as it was trained: float [N,1,32,32] in [0,1]. Generated samples
(samples.npy, [-1,1]) are quantised to 8 bits first, as in the PNGs the sample job writes;
held-out digits are zero-padded 28->32 and divided by 255.

Outputs in --out: samples/ (the uqengine run), evidence.json, evidence.md, extremes.png (the 32
most and 32 least certain samples, labelled). Deterministic given the seed.

Run from the repository root:
  python3 tools/evidence_mnist.py [--num 1200 --keep 1000 --steps 50 --draws 5 --seed 0
                                   --uqengine PATH --out data/evidence/run]
  --reuse           evaluate an existing <out>/samples (no sampling)
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
from common import load_classifier, load_split, pad32  # noqa: E402

K_NN = 3
ROWS = ("most certain", "first N (random)", "least certain")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=1200)
    p.add_argument("--keep", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
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
    return a


def run_sampler(a, sample_dir):
    cmd = [a.uqengine, "sample", "--num", str(a.num), "--steps", str(a.steps),
           "--draws", str(a.draws), "--classes", "balanced", "--seed", str(a.seed),
           "--batch", str(a.batch), "--out", sample_dir, "--overwrite"]
    for flag, val in (("--model", a.model), ("--posterior", a.posterior),
                      ("--extractor", a.extractor), ("--sigma2", a.sigma2),
                      ("--threads", a.threads)):
        if val is not None:
            cmd += [flag, str(val)]
    print("$ " + " ".join(cmd), flush=True)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return cmd, wall, cpu


def read_scores(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["index"]))
    idx = np.array([int(r["index"]) for r in rows])
    if not np.array_equal(idx, np.arange(len(rows))):
        raise SystemExit(f"{path}: indices are not 0..{len(rows) - 1}")
    cls = np.array([int(r["class"]) for r in rows])
    unc = np.array([float(r["uncertainty"]) for r in rows])
    return cls, unc


def to_unit_u8(samples):
    """[-1,1] floats -> the 8-bit values the PNGs hold, as [0,1] floats."""
    u8 = np.clip(np.round((samples.astype(np.float64) + 1.0) * 127.5), 0, 255)
    return (u8 / 255.0).astype(np.float32)


@torch.no_grad()
def classify(model, x):
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


def main():
    a = parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    sample_dir = os.path.join(a.out, "samples")

    if a.reuse:
        cmd, t_sample, cpu_sample = None, None, None
    else:
        posterior = a.posterior
        if posterior is None and a.model is None:
            posterior = os.path.join(ROOT, "assets", "demo", "posterior.safetensors")
        if posterior is None or not os.path.exists(posterior):
            raise SystemExit(f"no posterior ({posterior or 'pass --posterior'}): the scores need "
                             "one; tools/fit_demo_posterior.sh writes the demo model's")
        cmd, t_sample, cpu_sample = run_sampler(a, sample_dir)
    t0 = time.time()
    summary = json.load(open(os.path.join(sample_dir, "summary.json")))
    if not summary.get("uncertainty"):
        raise SystemExit(f"{sample_dir}: no uncertainty scores (no posterior?)")
    cls, unc = read_scores(os.path.join(sample_dir, "scores.csv"))
    samples = np.load(os.path.join(sample_dir, "samples.npy"))
    num = len(cls)
    if samples.shape != (num, 1, 32, 32) or num != a.num:
        raise SystemExit(f"{sample_dir}: samples {samples.shape}, scores {num}, --num {a.num}")

    clf = load_classifier()
    gen01 = to_unit_u8(samples)
    gen_f, pred = classify(clf, gen01)
    ho_img, ho_lab = load_split("heldout")
    real01 = (pad32(ho_img).astype(np.float32) / 255.0)[:, None]
    real_f, real_pred = classify(clf, real01)
    real_acc = float((real_pred == ho_lab).mean())
    rng = np.random.default_rng(a.seed)
    if a.pr_real == "keep":
        real_pr = real_f[np.sort(rng.permutation(len(real_f))[: a.keep])]
    else:
        real_pr = real_f

    order = np.argsort(unc, kind="stable")  # ascending: most certain first
    subsets = {
        ROWS[0]: np.sort(order[: a.keep]),
        ROWS[1]: np.arange(a.keep),
        ROWS[2]: np.sort(order[-a.keep :]),
    }
    correct = pred == cls
    table = {}
    for name, sel in subsets.items():
        f = gen_f[sel]
        table[name] = {
            "fd": frechet_distance(f, real_f),
            "accuracy": float(correct[sel].mean()),
            "precision": coverage(f, real_pr, K_NN),
            "recall": coverage(real_pr, f, K_NN),
            "mean_uncertainty": float(unc[sel].mean()),
            "class_counts": np.bincount(cls[sel], minlength=10).tolist(),
        }
    wrong = ~correct
    auc = auroc(unc, wrong)
    # Reference points: all generated samples, and the real digits against themselves.
    ref = {
        "fd_all_generated": frechet_distance(gen_f, real_f),
        "accuracy_all_generated": float(correct.mean()),
        "heldout_classifier_accuracy": real_acc,
    }
    t_eval = time.time() - t0

    members = a.draws + 1
    timing = {
        "sample_wall_s": t_sample,
        "sample_s_per_sample": None if t_sample is None else t_sample / num,
        "sample_cpu_s": cpu_sample,
        "sample_cpu_s_per_sample": None if cpu_sample is None else cpu_sample / num,
        "uqengine_seconds_total": summary.get("seconds_total"),
        "evaluation_wall_s": t_eval,
        "members_per_sample": members,
    }
    result = {
        "settings": {
            "num": a.num, "keep": a.keep, "steps": a.steps, "draws": a.draws, "seed": a.seed,
            "batch": a.batch, "k_nn": K_NN, "pr_real": a.pr_real,
            "pr_real_size": len(real_pr), "fd_real_size": len(real_f),
            "command": cmd,
        },
        "uqengine_summary": {
            k: summary.get(k) for k in ("model", "model_fingerprint", "backend", "members")
        } | {"uncertainty": summary["uncertainty"]},
        "subsets": table,
        "auroc_uncertainty_vs_misclassified": auc,
        "num_misclassified": int(wrong.sum()),
        "reference": ref,
        "timing": timing,
    }
    with open(os.path.join(a.out, "evidence.json"), "w") as f:
        json.dump(result, f, indent=2)

    lines = [
        f"Samples: {num} (DDIM {a.steps} steps, K = {members} members, classes balanced, "
        f"seed {a.seed}); keep {a.keep}. Evaluation CNN features (64-d) vs held-out MNIST: FD "
        f"against {len(real_f)} digits, precision/recall (k = {K_NN}) against {len(real_pr)}.",
        "",
        "| subset | FD | accuracy | precision | recall |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ROWS:
        r = table[name]
        lines.append(f"| {name} | {r['fd']:.3f} | {r['accuracy']:.4f} | {r['precision']:.4f} "
                     f"| {r['recall']:.4f} |")
    lines += [
        "",
        f"AUROC of the uncertainty for detecting misclassified samples: {auc:.4f} "
        f"({int(wrong.sum())} of {num} misclassified).",
        f"All {num} samples: FD {ref['fd_all_generated']:.3f}, accuracy "
        f"{ref['accuracy_all_generated']:.4f}; classifier accuracy on held-out digits "
        f"{real_acc:.4f}.",
        "Class counts (0..9): " + "; ".join(
            f"{n}: {' '.join(map(str, table[n]['class_counts']))}" for n in ROWS),
    ]
    if t_sample is not None:
        lines.append(f"Wall time: sampling {t_sample:.1f} s ({t_sample / num:.3f} s/sample with "
                     f"K = {members}; CPU time {cpu_sample / num:.3f} s/sample), evaluation "
                     f"{t_eval:.1f} s.")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "evidence.md"), "w") as f:
        f.write(md)
    print(md, end="")

    n_show = min(32, num // 2)
    contact_sheet(gen01, (order[:n_show], order[::-1][:n_show]), cls, pred, unc,
                  os.path.join(a.out, "extremes.png"),
                  f"{n_show} most certain (lowest U)", f"{n_show} least certain (highest U)")
    print(f"wrote {a.out}/evidence.json, evidence.md, extremes.png")


if __name__ == "__main__":
    main()
