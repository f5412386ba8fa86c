//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use uqengine::io::npy;

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Read a fixture `.npy`.
pub fn npy(rel: &str) -> npy::NpyArray {
    npy::read(&fixture(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// Max absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Max absolute value.
pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Asserts `|a - b| <= atol + rtol * |b|` elementwise, printing the first mismatches.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let bad: Vec<(usize, f32, f32)> = got
        .iter()
        .zip(want)
        .enumerate()
        // Written as a negated `<=` so that NaN counts as a mismatch.
        .filter(|(_, (g, w))| {
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            let bad = !((*g - *w).abs() <= atol + rtol * w.abs());
            bad
        })
        .map(|(i, (g, w))| (i, *g, *w))
        .take(5)
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: max abs err {} (atol {atol}, rtol {rtol}); first mismatches (index, got, want): {bad:?}",
        max_abs_diff(got, want)
    );
}
