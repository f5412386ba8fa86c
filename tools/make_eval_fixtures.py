"""Fixtures for `uqengine eval`: feature sets and their metrics by the reference implementations.

Fréchet distance: scipy.linalg.sqrtm of the covariance product, as pytorch-fid computes it
(means and unbiased covariances in float64). Precision, recall, density and coverage: the `prdc`
package (Naeem et al. 2020; precision/recall of Kynkäänniemi et al. 2019) for k = 3 and 5.

Writes tests/fixtures/eval/<case>/{real,fake}.npy (float32 [N, D]) and metrics.json.
Needs numpy, scipy, prdc (pip install numpy scipy prdc).
Run from the repository root: python3 tools/make_eval_fixtures.py
"""

import json
import os

import numpy as np
import prdc
import scipy
from scipy import linalg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "eval")


def frechet_distance(real, fake):
    mu1, mu2 = real.astype(np.float64).mean(0), fake.astype(np.float64).mean(0)
    s1 = np.cov(real.astype(np.float64), rowvar=False)
    s2 = np.cov(fake.astype(np.float64), rowvar=False)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def case(name, n_real, n_fake, dim, seed, shift, scale):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    real = (rng.normal(size=(n_real, dim)) @ mix).astype(np.float32)
    fake = (rng.normal(size=(n_fake, dim)) @ (mix * scale) + shift).astype(np.float32)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "real.npy"), real)
    np.save(os.path.join(d, "fake.npy"), fake)
    metrics = {"fd": frechet_distance(real, fake)}
    for k in (3, 5):
        m = prdc.compute_prdc(real, fake, nearest_k=k)
        metrics[f"k{k}"] = {key: float(v) for key, v in m.items()}
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump({"n_real": n_real, "n_fake": n_fake, "dim": dim, "seed": seed,
                   "reference": f"scipy {scipy.__version__} sqrtm, prdc", "metrics": metrics},
                  f, indent=2)
    print(name, metrics)


def main():
    case("small_shifted", 300, 250, 16, 1, 0.3, 1.1)
    case("wide_scaled", 400, 350, 96, 2, 0.05, 0.8)
    case("same_distribution", 320, 320, 32, 3, 0.0, 1.0)


if __name__ == "__main__":
    main()
