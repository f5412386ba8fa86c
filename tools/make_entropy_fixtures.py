"""Fixtures for the uncertainty estimator and the image quantisation (tests/fixtures/entropy).

Writes:
  features.npy            f32 [B=6, K=6, D=32]   member features, member 0 = MAP
  entropy_sigma2_1e-3.npy f64 [6]                Gaussian entropy, sigma2 = 1e-3 (the default)
  entropy_sigma2_0.25.npy f64 [6]                the same with sigma2 = 0.25
  clip_features.npy       f32 [2, 100, 4]        K = 100 members; in sample 0, dimension 1 the
                                                 f64 one-pass variance is negative (all members
                                                 equal), so the clip at 0 decides the result
  clip_entropy_sigma2_1e-12.npy f64 [2]          entropy of those with sigma2 = 1e-12
  to_u8_inputs.npy        f32 [N]                pixel values in model space ([-1, 1] and beyond)
  to_u8_expected.npy      i32 [N]                8-bit values from torch `(x / 2 + 0.5).clamp(0, 1)`
                                                 followed by diffusers' `numpy_to_pil`
  meta.json               where the special dimensions are and the measured raw variances

The entropy reference follows the formula of the paper (Jazbec et al. 2025), eq. for the semantic
likelihood: v_d = mean_k(e^2) - mean_k(e)^2 (biased, all K members), clipped at 0,
U = 0.5 * sum_d log(v_d + sigma2) + 0.5 * D * (log(2 pi) + 1), evaluated in float64 with the
member sums accumulated one member after another (k = 0, 1, ...), the order the engine uses.

Run from the repository root:  python3 tools/make_entropy_fixtures.py
"""

import json
import os

import numpy as np
import torch
from diffusers.utils.pil_utils import numpy_to_pil

torch.set_num_threads(1)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "entropy")


def entropy_f64(features, sigma2):
    """One-pass Gaussian entropy in float64, members summed in order."""
    e = features.astype(np.float64)
    b, k, d = e.shape
    s1 = np.zeros((b, d))
    s2 = np.zeros((b, d))
    for m in range(k):
        s1 += e[:, m]
        s2 += e[:, m] * e[:, m]
    raw = s2 / k - (s1 / k) ** 2
    v = np.clip(raw, 0.0, None)
    return 0.5 * np.sum(np.log(v + sigma2), axis=1) + 0.5 * d * (np.log(2 * np.pi) + 1), raw


def entropy_reference_code(features, sigma2):
    """The formula written with np.mean in the features' own dtype (as the paper's code does)."""
    mu = features
    _, _, d = mu.shape
    v = np.clip(np.mean(mu**2, axis=1) - np.mean(mu, axis=1) ** 2, 0.0, None)
    return 0.5 * np.sum(np.log(v + mu.dtype.type(sigma2)), axis=1) + 0.5 * d * (np.log(2 * np.pi) + 1)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20250227)
    meta = {}

    # --- main case: B=6 samples, K=6 members, D=32 -------------------------------------------
    B, K, D = 6, 6, 32
    centre = rng.normal(0.0, 1.0, size=(B, 1, D))
    spread = np.array([0.01, 0.05, 0.1, 0.3, 1.0, 2.0]).reshape(B, 1, 1)
    feats = (centre + spread * rng.normal(0.0, 1.0, size=(B, K, D))).astype(np.float32)
    # Sample 3, dimension 5: every member identical -> variance exactly 0 -> log(sigma2).
    feats[3, :, 5] = np.float32(0.75)
    # Sample 2, dimension 7: members equal to a large constant up to tiny noise. In float32
    # arithmetic mean(e^2) - mean(e)^2 cancels catastrophically and comes out negative.
    special_b, special_d = 2, 7
    for seed in range(1000):
        noise = np.random.default_rng(seed).normal(0.0, 1e-4, size=K)
        col = (np.float32(1234.567) + noise.astype(np.float32)).astype(np.float32)
        raw32 = np.mean(col**2) - np.mean(col) ** 2
        if raw32 < 0:
            break
    else:
        raise SystemExit("no float32-negative column found")
    feats[special_b, :, special_d] = col
    raw32 = (np.mean(feats**2, axis=1) - np.mean(feats, axis=1) ** 2)[special_b, special_d]
    assert raw32.dtype == np.float32 and raw32 < 0, raw32

    np.save(os.path.join(OUT, "features.npy"), feats)
    for sigma2, name in [(1e-3, "entropy_sigma2_1e-3.npy"), (0.25, "entropy_sigma2_0.25.npy")]:
        ref, raw64 = entropy_f64(feats, sigma2)
        # Cross-check against the reference code's formula evaluated on float64 input.
        alt = entropy_reference_code(feats.astype(np.float64), sigma2)
        rel = np.max(np.abs(alt - ref) / np.abs(ref))
        assert rel < 1e-12, rel
        np.save(os.path.join(OUT, name), ref)
        print(f"sigma2={sigma2}: entropy {np.array2string(ref, precision=6)}; np.mean formula rel diff {rel:.2e}")
    ent32 = entropy_reference_code(feats, 1e-3).astype(np.float32)
    ref3, raw64 = entropy_f64(feats, 1e-3)
    two_pass = np.var(feats.astype(np.float64), axis=1)
    meta["main"] = {
        "shape": [B, K, D],
        "f32_negative": {"sample": special_b, "dim": special_d, "raw_variance_f32": float(raw32),
                         "raw_variance_f64_one_pass": float(raw64[special_b, special_d]),
                         "variance_f64_two_pass": float(two_pass[special_b, special_d])},
        "zero_variance": {"sample": 3, "dim": 5},
        "f32_arith_max_abs_diff": float(np.max(np.abs(ent32.astype(np.float64) - ref3))),
        "one_pass_vs_two_pass_max_rel": float(np.max(np.abs(
            (0.5 * np.sum(np.log(two_pass + 1e-3), axis=1) + 0.5 * D * (np.log(2 * np.pi) + 1) - ref3) / ref3))),
    }
    print("f32-negative column:", meta["main"]["f32_negative"])
    print("f32 arithmetic vs f64 max abs diff:", meta["main"]["f32_arith_max_abs_diff"])

    # --- clip case: K=100 members, f64 one-pass variance negative --------------------------------
    Bc, Kc, Dc = 2, 100, 4
    cf = rng.normal(0.0, 1.0, size=(Bc, Kc, Dc)).astype(np.float32)
    r = np.random.default_rng(7)
    for _ in range(10000):
        x = np.float32(r.uniform(1, 2) * 2.0 ** r.integers(0, 20))
        cf[0, :, 1] = x
        _, raw = entropy_f64(cf, 1e-12)
        if raw[0, 1] < 0:
            break
    else:
        raise SystemExit("no f64-negative constant column found")
    ref_c, raw_c = entropy_f64(cf, 1e-12)
    assert raw_c[0, 1] < 0 and np.all(np.isfinite(ref_c))
    np.save(os.path.join(OUT, "clip_features.npy"), cf)
    np.save(os.path.join(OUT, "clip_entropy_sigma2_1e-12.npy"), ref_c)
    meta["clip"] = {"shape": [Bc, Kc, Dc], "sample": 0, "dim": 1, "value": float(x),
                    "raw_variance_f64_one_pass": float(raw_c[0, 1]), "sigma2": 1e-12}
    print("f64-negative column:", meta["clip"])

    # --- to_u8: torch clamp + diffusers numpy_to_pil ---------------------------------------------
    vals = [-1.0, 1.0, 0.0, -1.5, 2.0, 1e30, -1e30, float("inf"), float("-inf"), 1e-30, -1e-30,
            0.999, -0.999, 0.5, -0.5]
    halves = []
    for k in range(255):
        y = np.float32((k + 0.5) / 255.0)
        if y * np.float32(255) != np.float32(k + 0.5):
            continue
        x = (y - np.float32(0.5)) * np.float32(2)
        if x / np.float32(2) + np.float32(0.5) == y:
            halves.append(float(x))
    assert len(halves) >= 4, halves
    vals += halves
    vals += list(rng.uniform(-1.2, 1.2, size=60))
    while len(vals) % 3:
        vals.append(0.25)
    x = np.array(vals, dtype=np.float32)
    img = (torch.from_numpy(x.reshape(1, -1, 3).copy()) / 2 + 0.5).clamp(0, 1)
    pil = numpy_to_pil(img.numpy()[None])[0]
    expected = np.asarray(pil).reshape(-1).astype(np.int32)
    np.save(os.path.join(OUT, "to_u8_inputs.npy"), x)
    np.save(os.path.join(OUT, "to_u8_expected.npy"), expected)
    meta["to_u8"] = {"count": int(x.size), "exact_half_inputs": halves[:40],
                     "exact_half_count": len(halves)}
    print(f"to_u8: {x.size} values, {len(halves)} land exactly on k + 0.5")

    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
