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

/// Run the `uqengine` binary: (success, stdout followed by stderr).
pub fn uqengine_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uqengine"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A path as a command-line argument.
pub fn arg(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// `root/data`: a class-folder image set (`<i % 10>/<i>.png`) of `n` random `size x size`
/// grayscale PNGs from a fixed-seed generator.
pub fn random_image_folder(root: &std::path::Path, n: usize, size: u32, seed: u64) -> PathBuf {
    let dir = root.join("data");
    let mut state = seed;
    for i in 0..n {
        let class = i % 10;
        std::fs::create_dir_all(dir.join(class.to_string())).unwrap();
        write_gray_png(
            &dir.join(class.to_string()).join(format!("{i:03}.png")),
            size,
            size,
            |_, _| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            },
        );
    }
    dir
}

/// `uqengine fit --model model --data data --out post --device cpu` (default Hessian and batch),
/// failing the test with the command's output if it fails.
pub fn fit_on_cpu(model: &std::path::Path, data: &std::path::Path, post: &std::path::Path) {
    let (ok, log) = uqengine_cli(&[
        "fit",
        "--model",
        arg(model),
        "--data",
        arg(data),
        "--out",
        arg(post),
        "--device",
        "cpu",
    ]);
    assert!(ok, "fit: {log}");
}

/// Write an 8-bit gray PNG of `w x h` pixels with values `f(x, y)` (rows top to bottom).
pub fn write_gray_png(path: &std::path::Path, w: u32, h: u32, mut f: impl FnMut(u32, u32) -> u8) {
    let mut px = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            px.push(f(x, y));
        }
    }
    uqengine::io::images_out::write_png(path, &px, h as usize, w as usize, 1)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// An image file's 8-bit pixels: `(pixels [h, w, c], h, w, c)`, c = 1 or 3.
pub fn read_image(path: &std::path::Path) -> (Vec<u8>, usize, usize, usize) {
    uqengine::io::members::load_png_u8(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
