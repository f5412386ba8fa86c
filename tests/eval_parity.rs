//! `uqengine eval`'s metrics against the reference implementations on fixture feature sets
//! (`tools/make_eval_fixtures.py`): the Fréchet distance against scipy's `sqrtm` (as pytorch-fid
//! computes it), precision, recall, density and coverage against the `prdc` package, for k = 3
//! and 5, to 1e-4 relative. The symmetric eigen-decomposition behind the Fréchet distance is
//! checked by reconstruction.

use crate::common;

use common::fixture;
use uqengine::eval::{evaluate, frechet_distance, load_features, prdc, FeatureSet};
use uqengine::linalg::symeig::sym_eig;

const CASES: [&str; 3] = ["small_shifted", "wide_scaled", "same_distribution"];

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

fn sets(case: &str) -> (FeatureSet, FeatureSet, serde_json::Value) {
    let dir = fixture(&format!("eval/{case}"));
    let real = load_features(&dir.join("real.npy")).unwrap();
    let fake = load_features(&dir.join("fake.npy")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    (real, fake, meta["metrics"].clone())
}

#[test]
fn frechet_distance_matches_scipy_sqrtm() {
    for case in CASES {
        let (real, fake, want) = sets(case);
        let fd = frechet_distance(&real, &fake).unwrap();
        let w = want["fd"].as_f64().unwrap();
        println!("{case}: fd {fd} vs scipy {w} (rel {:.2e})", rel(fd, w));
        assert!(rel(fd, w) <= 1e-4, "{case}: {fd} vs {w}");
    }
}

#[test]
fn prdc_matches_the_prdc_package() {
    for case in CASES {
        let (real, fake, want) = sets(case);
        for k in [3usize, 5] {
            let got = prdc(&real, &fake, k).unwrap();
            let w = &want[format!("k{k}")];
            for (name, g) in [
                ("precision", got.precision),
                ("recall", got.recall),
                ("density", got.density),
                ("coverage", got.coverage),
            ] {
                let wv = w[name].as_f64().unwrap();
                assert!(
                    rel(g, wv) <= 1e-4 || (g - wv).abs() <= 1e-12,
                    "{case} k={k} {name}: {g} vs {wv}"
                );
            }
        }
    }
}

#[test]
fn evaluate_reports_every_metric_and_the_sizes() {
    let (real, fake, want) = sets("small_shifted");
    let m = evaluate(&real, &fake, 3).unwrap();
    assert_eq!((m.n_real, m.n_fake, m.dim, m.k), (300, 250, 16, 3));
    assert!(rel(m.recall, want["k3"]["recall"].as_f64().unwrap()) <= 1e-4);
    let json = serde_json::to_value(&m).unwrap();
    for key in ["fd", "precision", "recall", "density", "coverage"] {
        assert!(json[key].is_f64(), "{key}");
    }
}

#[test]
fn symmetric_eigendecomposition_reconstructs_the_matrix() {
    let mut state = 3u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    for n in [1usize, 2, 5, 40] {
        let b: Vec<f64> = (0..n * n).map(|_| next()).collect();
        let a: Vec<f64> = (0..n * n).map(|i| b[i] + b[(i % n) * n + i / n]).collect();
        let e = sym_eig(&a, n).unwrap();
        assert!(e.values.windows(2).all(|w| w[0] <= w[1]), "ascending");
        for r in 0..n {
            for c in 0..n {
                let recon: f64 = (0..n)
                    .map(|j| e.vectors[r * n + j] * e.values[j] * e.vectors[c * n + j])
                    .sum();
                let ortho: f64 = (0..n)
                    .map(|j| e.vectors[j * n + r] * e.vectors[j * n + c])
                    .sum();
                assert!(
                    (recon - a[r * n + c]).abs() <= 1e-10 * n as f64,
                    "n={n} A[{r},{c}]"
                );
                assert!(
                    (ortho - if r == c { 1.0 } else { 0.0 }).abs() <= 1e-10,
                    "n={n} V^T V [{r},{c}]"
                );
            }
        }
    }
    // A known spectrum: [[2, 1], [1, 2]] has eigenvalues 1 and 3.
    let e = sym_eig(&[2.0, 1.0, 1.0, 2.0], 2).unwrap();
    assert!((e.values[0] - 1.0).abs() < 1e-14 && (e.values[1] - 3.0).abs() < 1e-14);
}

#[test]
fn bad_feature_sets_are_errors_naming_the_problem() {
    let ok = FeatureSet::new("real", 5, 2, vec![0.5; 10]).unwrap();
    let other = FeatureSet::new("fake", 5, 3, vec![0.5; 15]).unwrap();
    assert!(frechet_distance(&ok, &other)
        .unwrap_err()
        .to_string()
        .contains("dimension"));
    let e = FeatureSet::new("fake", 2, 2, vec![0.0, 1.0, f32::NAN, 0.0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("fake") && e.contains("row 1"), "{e}");
    assert!(FeatureSet::new("x", 3, 2, vec![0.0; 5]).is_err());
    let e = prdc(&ok, &ok, 5).unwrap_err().to_string();
    assert!(e.contains("k = 5"), "{e}");
}
