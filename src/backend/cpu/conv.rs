//! Convolution on the CPU: GEMM over L2-sized tiles of gathered input patches (never a whole
//! im2col buffer); 1x1 stride-1 convolutions multiply the input directly; 3x3 stride-1 pad-1
//! convolutions use Winograd F(2x2, 3x3) (16 multiplies per 2x2 outputs and channel pair instead
//! of 36).
//! Weights are kept as `[k*k*cin, cout]`, row index `(kh*k + kw)*cin + ci`, or for Winograd as
//! the 16 transformed matrices `[16, cin, cout]` ([`winograd_weights`]).

use crate::backend::ConvSpec;

use rayon::prelude::*;

use crate::linalg::matmul::{rows_times_matrix, sgemm};

/// Reorder PyTorch `[cout, cin, k, k]` weights to `[k*k*cin, cout]`.
pub fn reorder_oihw(spec: &ConvSpec, w: &[f32]) -> Vec<f32> {
    let (co_n, ci_n, k) = (spec.cout, spec.cin, spec.kernel);
    let mut out = vec![0.0f32; k * k * ci_n * co_n];
    for co in 0..co_n {
        for ci in 0..ci_n {
            for kh in 0..k {
                for kw in 0..k {
                    out[((kh * k + kw) * ci_n + ci) * co_n + co] =
                        w[((co * ci_n + ci) * k + kh) * k + kw];
                }
            }
        }
    }
    out
}

/// NHWC convolution `y = conv(x) + bias + residual`.
/// `x`: `[n, h, w, cin]`; `w`: reordered weights; returns `[n, ho, wo, cout]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_nhwc(
    spec: &ConvSpec,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let (ho, wo) = spec.out_hw(h, w);
    let (cin, cout, k, s, pad) = (spec.cin, spec.cout, spec.kernel, spec.stride, spec.padding);
    let rows = n * ho * wo;
    let kk = k * k * cin;
    let mut out = vec![0.0f32; rows * cout];
    let init = |p0: usize, o: &mut [f32]| {
        let len = o.len() / cout;
        for r in 0..len {
            let orow = &mut o[r * cout..(r + 1) * cout];
            match residual {
                Some(res) => orow.copy_from_slice(&res[(p0 + r) * cout..(p0 + r + 1) * cout]),
                None => orow.fill(0.0),
            }
            if let Some(b) = bias {
                for (v, bv) in orow.iter_mut().zip(b) {
                    *v += bv;
                }
            }
        }
    };
    if k == 1 && s == 1 && pad == 0 {
        rows_times_matrix(
            rows,
            kk,
            cout,
            wt,
            &mut out,
            |p0, _len, _buf| Some(x[p0 * cin..].as_ptr()),
            init,
        );
        return out;
    }
    let fill = |p0: usize, len: usize, buf: &mut [f32]| {
        for r in 0..len {
            let p = p0 + r;
            let ow = p % wo;
            let oh = (p / wo) % ho;
            let b = p / (wo * ho);
            let row = &mut buf[r * kk..(r + 1) * kk];
            let iw0 = (ow * s) as isize - pad as isize;
            for kh in 0..k {
                let ih = (oh * s + kh) as isize - pad as isize;
                let seg = &mut row[kh * k * cin..(kh + 1) * k * cin];
                if ih < 0 || ih >= h as isize {
                    seg.fill(0.0);
                } else if iw0 >= 0 && iw0 + k as isize <= w as isize {
                    // The k taps of this kernel row are contiguous in NHWC memory.
                    let src = ((b * h + ih as usize) * w + iw0 as usize) * cin;
                    seg.copy_from_slice(&x[src..src + k * cin]);
                } else {
                    for kw in 0..k {
                        let iw = iw0 + kw as isize;
                        let dst = &mut seg[kw * cin..(kw + 1) * cin];
                        if iw < 0 || iw >= w as isize {
                            dst.fill(0.0);
                        } else {
                            let src = ((b * h + ih as usize) * w + iw as usize) * cin;
                            dst.copy_from_slice(&x[src..src + cin]);
                        }
                    }
                }
            }
        }
        None
    };
    rows_times_matrix(rows, kk, cout, wt, &mut out, fill, init);
    out
}

/// Whether a convolution runs as Winograd F(2x2, 3x3) on the CPU: 3x3, stride 1, padding 1
/// (`UQENGINE_CPU_WINOGRAD=0` turns it off, for comparisons).
pub fn uses_winograd(spec: &ConvSpec) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    spec.kernel == 3
        && spec.stride == 1
        && spec.padding == 1
        && spec.pad_end == 0
        && *ON.get_or_init(|| std::env::var("UQENGINE_CPU_WINOGRAD").map_or(true, |v| v != "0"))
}

/// The Winograd weights `U_e = (G g G^T)_e`, `[16, cin, cout]`, from reordered 3x3 weights
/// `[9*cin, cout]` ([`reorder_oihw`]); `G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]]`.
pub fn winograd_weights(cin: usize, cout: usize, wt: &[f32]) -> Vec<f32> {
    const G: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let mut u = vec![0.0f32; 16 * cin * cout];
    for ci in 0..cin {
        let g = |kh: usize, kw: usize, co: usize| wt[((kh * 3 + kw) * cin + ci) * cout + co];
        for co in 0..cout {
            // t = G g (4x3), then U = t G^T (4x4).
            let mut t = [[0.0f32; 3]; 4];
            for (a, row) in t.iter_mut().enumerate() {
                for (kw, v) in row.iter_mut().enumerate() {
                    *v = (0..3).map(|kh| G[a][kh] * g(kh, kw, co)).sum();
                }
            }
            for a in 0..4 {
                for b in 0..4 {
                    let v: f32 = (0..3).map(|kw| t[a][kw] * G[b][kw]).sum();
                    u[((a * 4 + b) * cin + ci) * cout + co] = v;
                }
            }
        }
    }
    u
}

/// NHWC 3x3 stride-1 pad-1 convolution by Winograd F(2x2, 3x3), `y = conv(x) + bias +
/// residual`; `u`: [`winograd_weights`]. Output tiles of 2x2 (input tiles of 4x4) are processed
/// in parallel chunks; per chunk the 16 transformed products are 16 GEMMs
/// `[tiles, cin] x [cin, cout]`, themselves in parallel when there are fewer chunks than twice
/// the threads.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_winograd_nhwc(
    cin: usize,
    cout: usize,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    u: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = n * th * tw;
    let mut out = vec![0.0f32; n * h * w * cout];
    // Tiles per chunk: the chunk's transformed input and products stay around 4 MiB (measured
    // on ddpm-cifar10-32, batch 16: 1 MiB 3.6 s, 2 MiB 3.4 s, 4 MiB 2.9 s, 8 MiB 3.2 s).
    let chunk = (4usize << 20) / (4 * 16 * (cin + cout)).max(1);
    let threads = rayon::current_num_threads().max(1);
    // At least 64 tiles per chunk (GEMMs of 64 rows or more): small maps (batch 1 at 16x16 or
    // 8x8) are then one or two chunks, and the threads share each chunk's 16 products instead,
    // so the transformed weights are read once per call rather than once per chunk (ADM-64,
    // batch 1, same run: 8x8 768->768 15.7 -> 6.2 ms, 16x16 576->576 12.3 -> 8.3 ms).
    let chunk = chunk.clamp(4, 512).min(tiles.div_ceil(2 * threads).max(64));
    let chunks = tiles.div_ceil(chunk);
    let split_products = chunks < 2 * threads;
    // Each chunk writes its own output pixels: collect them, then scatter.
    let results: Vec<(usize, Vec<f32>)> = (0..chunks)
        .into_par_iter()
        .map(|ci_| {
            let t0 = ci_ * chunk;
            let tc = chunk.min(tiles - t0);
            let mut v = vec![0.0f32; 16 * tc * cin];
            let mut d = vec![0.0f32; 16 * cin];
            let mut tmp = vec![0.0f32; 16 * cin];
            for j in 0..tc {
                let t = t0 + j;
                let (b, ty, tx) = (t / (th * tw), (t / tw) % th, t % tw);
                // d[i][k] = x[b, 2ty-1+i, 2tx-1+k, :] (zero outside).
                for i in 0..4 {
                    let ih = (2 * ty + i) as isize - 1;
                    for k in 0..4 {
                        let iw = (2 * tx + k) as isize - 1;
                        let dst = &mut d[(i * 4 + k) * cin..(i * 4 + k + 1) * cin];
                        if ih < 0 || ih >= h as isize || iw < 0 || iw >= w as isize {
                            dst.fill(0.0);
                        } else {
                            let src = ((b * h + ih as usize) * w + iw as usize) * cin;
                            dst.copy_from_slice(&x[src..src + cin]);
                        }
                    }
                }
                // tmp = B^T d (rows), then V = tmp B (columns);
                // B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]].
                for k in 0..4 {
                    let r = |i: usize| (i * 4 + k) * cin;
                    for c in 0..cin {
                        let (d0, d1, d2, d3) = (d[r(0) + c], d[r(1) + c], d[r(2) + c], d[r(3) + c]);
                        tmp[r(0) + c] = d0 - d2;
                        tmp[r(1) + c] = d1 + d2;
                        tmp[r(2) + c] = d2 - d1;
                        tmp[r(3) + c] = d1 - d3;
                    }
                }
                for i in 0..4 {
                    let r = |k: usize| (i * 4 + k) * cin;
                    let vr = |k: usize| ((i * 4 + k) * tc + j) * cin;
                    for c in 0..cin {
                        let (t0_, t1, t2, t3) =
                            (tmp[r(0) + c], tmp[r(1) + c], tmp[r(2) + c], tmp[r(3) + c]);
                        v[vr(0) + c] = t0_ - t2;
                        v[vr(1) + c] = t1 + t2;
                        v[vr(2) + c] = t2 - t1;
                        v[vr(3) + c] = t1 - t3;
                    }
                }
            }
            let mut m = vec![0.0f32; 16 * tc * cout];
            let product = |(e, me): (usize, &mut [f32])| {
                sgemm(
                    tc,
                    cout,
                    cin,
                    &v[e * tc * cin..(e + 1) * tc * cin],
                    &u[e * cin * cout..(e + 1) * cin * cout],
                    me,
                    false,
                );
            };
            if split_products {
                m.par_chunks_mut(tc * cout).enumerate().for_each(product);
            } else {
                m.chunks_mut(tc * cout).enumerate().for_each(product);
            }
            // Y = A^T M A, A^T = [[1,1,1,0],[0,1,-1,-1]]: 4 outputs per tile and channel, in
            // tile order (row-major 2x2).
            let mut y = vec![0.0f32; tc * 4 * cout];
            let mr = |a: usize, b: usize, j: usize| ((a * 4 + b) * tc + j) * cout;
            for j in 0..tc {
                for c in 0..cout {
                    let mv = |a: usize, b: usize| m[mr(a, b, j) + c];
                    let mut s = [[0.0f32; 4]; 2];
                    for (b, _) in [(); 4].iter().enumerate() {
                        s[0][b] = mv(0, b) + mv(1, b) + mv(2, b);
                        s[1][b] = mv(1, b) - mv(2, b) - mv(3, b);
                    }
                    for (i, row) in s.iter().enumerate() {
                        y[(j * 4 + i * 2) * cout + c] = row[0] + row[1] + row[2];
                        y[(j * 4 + i * 2 + 1) * cout + c] = row[1] - row[2] - row[3];
                    }
                }
            }
            (t0, y)
        })
        .collect();
    for (t0, y) in results {
        for (j, ty4) in y.chunks_exact(4 * cout).enumerate() {
            let t = t0 + j;
            let (b, ty, tx) = (t / (th * tw), (t / tw) % th, t % tw);
            for i in 0..2 {
                for k in 0..2 {
                    let (oh, ow) = (2 * ty + i, 2 * tx + k);
                    if oh >= h || ow >= w {
                        continue;
                    }
                    let p = (b * h + oh) * w + ow;
                    let o = &mut out[p * cout..(p + 1) * cout];
                    o.copy_from_slice(&ty4[(i * 2 + k) * cout..(i * 2 + k + 1) * cout]);
                    if let Some(bv) = bias {
                        for (v, b) in o.iter_mut().zip(bv) {
                            *v += b;
                        }
                    }
                    if let Some(r) = residual {
                        for (v, rv) in o.iter_mut().zip(&r[p * cout..(p + 1) * cout]) {
                            *v += rv;
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                (x >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// Winograd against the direct convolution, odd sizes, bias and residual: equal to f32
    /// rounding of the transforms.
    #[test]
    fn winograd_equals_the_direct_convolution() {
        for (n, h, w, cin, cout) in [
            (2, 5, 7, 3, 5),
            (1, 1, 1, 4, 2),
            (3, 8, 6, 17, 9),
            (1, 2, 3, 1, 1),
            (4, 24, 23, 3, 2),
        ] {
            let spec = ConvSpec::new(cin, cout, 3, 1, 1);
            let x = values(n * h * w * cin, 1);
            let wt = reorder_oihw(&spec, &values(cout * cin * 9, 2));
            let bias = values(cout, 3);
            let res = values(n * h * w * cout, 4);
            let want = conv2d_nhwc(&spec, &x, n, h, w, &wt, Some(&bias), Some(&res));
            let u = winograd_weights(cin, cout, &wt);
            let got = conv3x3_winograd_nhwc(cin, cout, &x, n, h, w, &u, Some(&bias), Some(&res));
            let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0.0f32, |a, (g, w)| a.max((g - w).abs()));
            assert!(
                err <= 1e-5 * scale.max(1.0),
                "{n}x{h}x{w}x{cin}->{cout}: {err}"
            );
        }
    }
}
