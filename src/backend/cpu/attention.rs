//! Scaled dot-product attention on the CPU: per (sample, head), `softmax(scale * q k^T) v`
//! with two GEMMs and an f32 softmax in between ([`fastmath::softmax_row`]).

use gemm_common::Parallelism;
use rayon::prelude::*;

use super::fastmath;
use crate::linalg::matmul::sgemm_strided;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: each task writes a disjoint (sample, head) column block of the output.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// q: `[n, lq, heads*dh]`, k/v: `[n, lk, heads*dh]`; returns `[n, lq, heads*dh]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    dh: usize,
    scale: f32,
) -> Vec<f32> {
    let d = heads * dh;
    let mut out = vec![0.0f32; n * lq * d];
    let optr = SendPtr(out.as_mut_ptr());
    (0..n * heads)
        .into_par_iter()
        .for_each_init(Vec::<f32>::new, |s, job| {
            // Capture the whole Send wrapper, not its raw-pointer field.
            #[allow(clippy::redundant_locals)]
            let optr = optr;
            let (b, h) = (job / heads, job % heads);
            s.resize(lq * lk, 0.0);
            let qo = b * lq * d + h * dh;
            let ko = b * lk * d + h * dh;
            // SAFETY: offsets stay within q/k/v/out for the given shapes; each job owns its
            // output columns [h*dh, (h+1)*dh) of sample b.
            unsafe {
                sgemm_strided(
                    lq,
                    lk,
                    dh,
                    q.as_ptr().add(qo),
                    d as isize,
                    1,
                    k.as_ptr().add(ko),
                    1,
                    d as isize,
                    s.as_mut_ptr(),
                    lk as isize,
                    false,
                    Parallelism::None,
                );
            }
            for row in s.chunks_exact_mut(lk) {
                fastmath::softmax_row(row, scale);
            }
            unsafe {
                sgemm_strided(
                    lq,
                    dh,
                    lk,
                    s.as_ptr(),
                    lk as isize,
                    1,
                    v.as_ptr().add(ko),
                    d as isize,
                    1,
                    optr.0.add(qo),
                    d as isize,
                    false,
                    Parallelism::None,
                );
            }
        });
    out
}
