//! The Gaussian entropy estimator against float64 NumPy references.
//!
//! References come from `tools/make_entropy_fixtures.py`: the paper's formula
//! `U = 0.5 * sum_d log(clip(mean_k e^2 - (mean_k e)^2, 0) + sigma2) + 0.5 * D * (log(2 pi) + 1)`
//! evaluated in float64 on the same f32 features. The engine accumulates in f64 in the same
//! member order, so the only differences are the order of the sum over `d` and `ln` rounding:
//! tolerance `|got - want| <= 1e-12 * max(1, |want|)`.

use crate::common;

use common::npy;
use uqengine::uncertainty::{
    gaussian_entropy, order_ascending, rank_ascending, EntropyOptions, Estimator,
};
use uqengine::Error;

const TOL: f64 = 1e-12;

fn max_rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, |m: f64, e| if e.is_nan() || e > m { e } else { m })
}

fn features(name: &str) -> (Vec<f32>, usize, usize, usize) {
    let a = npy(&format!("entropy/{name}"));
    assert_eq!(a.shape.len(), 3, "{name}: {:?}", a.shape);
    (a.to_f32(), a.shape[0], a.shape[1], a.shape[2])
}

fn check(features_file: &str, reference: &str, sigma2: f64) -> f64 {
    let (f, b, k, d) = features(features_file);
    let want = npy(&format!("entropy/{reference}")).data;
    let got = gaussian_entropy(&f, b, k, d, &EntropyOptions { sigma2 }).unwrap();
    let err = max_rel_err(&got, &want);
    println!("{reference}: max rel err {err:.2e}");
    assert!(
        err <= TOL,
        "{reference}: max rel err {err:e}\n got  {got:?}\n want {want:?}"
    );
    err
}

#[test]
fn entropy_matches_numpy_f64_with_default_sigma2() {
    assert_eq!(EntropyOptions::default().sigma2, 1e-3);
    check(
        "features.npy",
        "entropy_sigma2_1e-3.npy",
        EntropyOptions::default().sigma2,
    );
}

#[test]
fn entropy_honours_sigma2() {
    check("features.npy", "entropy_sigma2_0.25.npy", 0.25);
    // Changing sigma2 changes every score (no dimension has a variance that dwarfs both).
    let (f, b, k, d) = features("features.npy");
    let a = gaussian_entropy(&f, b, k, d, &EntropyOptions { sigma2: 1e-3 }).unwrap();
    let c = gaussian_entropy(&f, b, k, d, &EntropyOptions { sigma2: 0.25 }).unwrap();
    assert!(a.iter().zip(&c).all(|(x, y)| x < y), "{a:?} vs {c:?}");
}

/// Sample 2, dimension 7 holds members equal to 1234.567 up to noise of 1e-4: in f32 arithmetic
/// the one-pass variance cancels to a negative number, in f64 it stays accurate.
#[test]
fn large_offset_dimension_is_accurate_in_f64() {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("entropy/meta.json")).unwrap(),
    )
    .unwrap();
    let neg = &meta["main"]["f32_negative"];
    assert!(neg["raw_variance_f32"].as_f64().unwrap() < 0.0, "{neg}");
    let (b, dim) = (
        neg["sample"].as_u64().unwrap() as usize,
        neg["dim"].as_u64().unwrap() as usize,
    );
    let (f, _, k, d) = features("features.npy");
    // Only that dimension, as a one-dimensional problem: the result must equal the entropy with
    // the two-pass (exact) variance of the column.
    let col: Vec<f32> = (0..k).map(|m| f[(b * k + m) * d + dim]).collect();
    let mean = col.iter().map(|&v| v as f64).sum::<f64>() / k as f64;
    let var = col.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / k as f64;
    assert!(var > 0.0);
    let sigma2 = 1e-3;
    let got = gaussian_entropy(&col, 1, k, 1, &EntropyOptions { sigma2 }).unwrap()[0];
    let want = 0.5 * (var + sigma2).ln() + 0.5 * ((2.0 * std::f64::consts::PI).ln() + 1.0);
    println!("large-offset column: variance {var:e}, entropy {got} vs two-pass {want}");
    assert!((got - want).abs() <= 1e-9, "{got} vs {want}");
}

/// With K = 100 identical members the f64 one-pass variance of sample 0, dimension 1 rounds to a
/// small negative number; with sigma2 = 1e-12 an unclipped variance would give log(negative).
#[test]
fn negative_raw_variance_is_clipped_at_zero() {
    let (f, b, k, d) = features("clip_features.npy");
    assert_eq!((b, k, d), (2, 100, 4));
    check("clip_features.npy", "clip_entropy_sigma2_1e-12.npy", 1e-12);
    let got = gaussian_entropy(&f, b, k, d, &EntropyOptions { sigma2: 1e-12 }).unwrap();
    assert!(got.iter().all(|u| u.is_finite()), "{got:?}");
}

#[test]
fn estimator_enum_scores_like_the_function() {
    let (f, b, k, d) = features("features.npy");
    let est = Estimator::default();
    assert_eq!(
        est,
        Estimator::GaussianEntropy(EntropyOptions { sigma2: 1e-3 })
    );
    assert_eq!(est.name(), "gaussian_entropy");
    let via_enum = est.score(&f, b, k, d).unwrap();
    let direct = gaussian_entropy(&f, b, k, d, &EntropyOptions::default()).unwrap();
    assert_eq!(via_enum, direct);
}

/// Each sample's score depends only on its own members: scoring a subset gives the same values.
#[test]
fn scores_do_not_depend_on_the_batch() {
    let (f, b, k, d) = features("features.npy");
    let all = gaussian_entropy(&f, b, k, d, &EntropyOptions::default()).unwrap();
    for i in 0..b {
        let one = gaussian_entropy(
            &f[i * k * d..(i + 1) * k * d],
            1,
            k,
            d,
            &EntropyOptions::default(),
        )
        .unwrap();
        assert_eq!(one[0], all[i], "sample {i}");
    }
}

#[test]
fn one_member_is_an_error() {
    let f = vec![0.5f32; 3 * 8];
    let e = gaussian_entropy(&f, 3, 1, 8, &EntropyOptions::default()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("K = 1"), "{e}");
    assert!(Estimator::default().score(&f, 3, 1, 8).is_err());
}

#[test]
fn bad_shapes_sigma2_and_non_finite_features_are_errors() {
    let f = vec![0.5f32; 2 * 3 * 4];
    let opts = EntropyOptions::default();
    assert!(gaussian_entropy(&f, 2, 3, 5, &opts)
        .unwrap_err()
        .to_string()
        .contains("N*K*D"));
    assert!(gaussian_entropy(&f[..0], 0, 3, 0, &opts).is_err());
    for sigma2 in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(
            gaussian_entropy(&f, 2, 3, 4, &EntropyOptions { sigma2 }).is_err(),
            "sigma2 {sigma2}"
        );
    }
    let mut g = f.clone();
    g[(3 + 2) * 4 + 1] = f32::NAN; // sample 1, member 2, dimension 1
    let e = gaussian_entropy(&g, 2, 3, 4, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sample 1, member 2, dimension 1"), "{e}");
    // Zero samples is not an error: nothing to score.
    assert_eq!(
        gaussian_entropy(&[], 0, 3, 4, &opts).unwrap(),
        Vec::<f64>::new()
    );
}

#[test]
fn ranks_are_the_inverse_of_a_stable_ascending_sort() {
    // The fixture's entropies plus one tie, checked against the definitions: `order` ascending
    // with ties by index, and rank[order[r]] = r.
    let want = npy("entropy/entropy_sigma2_1e-3.npy").data;
    let mut scores = want.clone();
    scores.push(want[2]); // a tie with sample 2: the lower index ranks first
    let order = order_ascending(&scores);
    let rank = rank_ascending(&scores);
    for r in 0..scores.len() {
        assert_eq!(rank[order[r]], r);
        if r > 0 {
            let (a, b) = (order[r - 1], order[r]);
            assert!(
                scores[a] < scores[b] || (scores[a] == scores[b] && a < b),
                "{order:?}"
            );
        }
    }
    assert!(rank[2] + 1 == rank[6]);
}
