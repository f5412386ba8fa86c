//! Row-major f32 matrix products on the f32 kernels of the `gemm` family (`gemm-f32`), and the row-parallel driver shared by
//! 1x1 convolutions, im2col-tiled convolutions and linear layers.

use gemm_common::Parallelism;
use rayon::prelude::*;

/// `c[m, n] (+)= a[m, k] * b[k, n]` with explicit strides (elements). `accumulate` keeps the
/// current contents of `c`. Single-threaded unless `par` says otherwise.
///
/// # Safety
/// The pointers must address matrices of the given sizes and strides.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_strided(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    c_rs: isize,
    accumulate: bool,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *c.offset(i as isize * c_rs + j as isize) = 0.0;
                }
            }
        }
        return;
    }
    debug_assert!(a_rs >= 0 && a_cs >= 0 && b_rs >= 0 && b_cs >= 0 && c_rs >= 0);
    let kernel = gemm_f32::gemm::f32::get_gemm_fn();
    // The micro-kernel prefers a column-major destination: a row-major c is computed as
    // c^T = b^T a^T (the orientation rule of the `gemm` facade).
    if c_rs > 1 {
        kernel(
            n, m, k, c, c_rs, 1, accumulate, b, b_rs, b_cs, a, a_rs, a_cs, 1.0, 1.0, false, false,
            false, par,
        );
    } else {
        kernel(
            m, n, k, c, 1, c_rs, accumulate, a, a_cs, a_rs, b, b_cs, b_rs, 1.0, 1.0, false, false,
            false, par,
        );
    }
}

/// `c[m, n] (+)= a[m, k] * b[k, n]`, contiguous row-major slices.
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: sizes checked above; strides describe contiguous row-major matrices.
    unsafe {
        sgemm_strided(
            m,
            n,
            k,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            c.as_mut_ptr(),
            n as isize,
            accumulate,
            Parallelism::None,
        )
    }
}

/// Bytes of gathered lhs rows per parallel task (`UQENGINE_TILE_BYTES` overrides).
fn tile_bytes() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("UQENGINE_TILE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1 << 20)
    })
}

/// Rows per parallel task so that a gathered `[rows, k]` tile stays around 1 MiB (L2-resident).
pub fn tile_rows(k: usize, total_rows: usize) -> usize {
    let by_cache = (tile_bytes() / (4 * k.max(1))).clamp(16, 4096);
    // Enough tasks for every thread when there is enough work.
    let threads = rayon::current_num_threads().max(1);
    let by_threads = total_rows.div_ceil(2 * threads).max(16);
    by_cache.min(by_threads).max(1)
}

/// Computes `out[p, :] = epilogue(lhs_row(p) * w)` for `p in 0..rows`, in parallel row tiles.
/// `fill(p0, tile)` writes the gathered `[tile_len, k]` lhs rows starting at row `p0` into
/// `tile` (or returns a borrowed contiguous slice via `direct`); `init(p0, out_tile)` pre-fills
/// the output tile (bias, residual) before the product is accumulated into it.
pub fn rows_times_matrix<F, I>(
    rows: usize,
    k: usize,
    n: usize,
    w: &[f32],
    out: &mut [f32],
    fill: F,
    init: I,
) where
    F: Fn(usize, usize, &mut [f32]) -> Option<*const f32> + Sync,
    I: Fn(usize, &mut [f32]) + Sync,
{
    assert_eq!(out.len(), rows * n);
    assert_eq!(w.len(), k * n);
    let tr = tile_rows(k, rows);
    thread_local! {
        /// Per-thread tile of gathered rows, reused across calls (no per-task allocation).
        static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    out.par_chunks_mut(tr * n).enumerate().for_each(|(ti, o)| {
        let p0 = ti * tr;
        let len = o.len() / n;
        init(p0, o);
        TILE.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < len * k {
                buf.resize(len * k, 0.0);
            }
            let a: *const f32 = match fill(p0, len, &mut buf[..len * k]) {
                Some(p) => p,
                None => buf.as_ptr(),
            };
            // SAFETY: `a` addresses `len` rows of `k` contiguous floats (either the thread's tile
            // or the caller's contiguous input); `o` is `len x n`.
            unsafe {
                sgemm_strided(
                    len,
                    n,
                    k,
                    a,
                    k as isize,
                    1,
                    w.as_ptr(),
                    n as isize,
                    1,
                    o.as_mut_ptr(),
                    n as isize,
                    true,
                    Parallelism::None,
                )
            }
        });
    });
}
