//! Convolution on the CPU: GEMM over L2-sized tiles of gathered input patches (never a whole
//! im2col buffer); 1x1 stride-1 convolutions multiply the input directly; 3x3 stride-1 pad-1
//! convolutions use Winograd: F(4x4, 3x3) (`winograd4.rs`), or F(2x2, 3x3) for wide layers (16
//! multiplies per 2x2 outputs and channel pair instead of 36; [`winograd_tile`]).
//! Weights are kept as `[k*k*cin, cout]`, row index `(kh*k + kw)*cin + ci`, or for Winograd as
//! the 16 (36) transformed matrices `[cin, cout]` ([`winograd_weights`]), each packed at load
//! into the column panels of `linalg::panel`, whose kernel multiplies without packing at every
//! call (same run, batch 1: ADM-64 forward 1,412 / 1,449 -> 1,355 / 1,265 ms; 8x8 1024->1024
//! 29.8 / 31.1 -> 11.0 / 12.7 ms).

use crate::backend::ConvSpec;

use rayon::prelude::*;

use crate::linalg::matmul::rows_times_matrix;
use crate::linalg::panel;

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

/// The Winograd tile of a [`uses_winograd`] convolution: 4 (F(4x4, 3x3), `winograd4.rs`) unless
/// the layer is wide (`cin * cout >= 384 * 384`) or `UQENGINE_CPU_WINOGRAD=2` asks for
/// F(2x2, 3x3). F(4x4)'s 36 weight matrices are 2.25 times F(2x2)'s 16; wide layers run on
/// small maps, few tiles per call, where reading them costs more than the multiplies saved
/// (batch 1, same run, F(2x2) -> F(4x4): 64x64 192->192 17.4 -> 9.1 ms, 128x128 256->256
/// 89.6 -> 55.4 ms, 32x32 384->384 12.1 -> 12.5 ms, 16x16 576->576 10.1 -> 13.7 ms, 16x16
/// 1024->1024 28.3 -> 69.7 ms).
pub fn winograd_tile(spec: &ConvSpec) -> usize {
    static F2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let f2 = *F2.get_or_init(|| std::env::var("UQENGINE_CPU_WINOGRAD").is_ok_and(|v| v == "2"));
    if f2 || spec.cin * spec.cout >= 384 * 384 {
        2
    } else {
        4
    }
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

/// `o = B^T [a0; a1; a2; a3]` per channel, `B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`.
#[inline(always)]
fn bt4(a: [&[f32]; 4], o: [&mut [f32]; 4]) {
    let [o0, o1, o2, o3] = o;
    let n = o0.len();
    let (a0, a1, a2, a3) = (&a[0][..n], &a[1][..n], &a[2][..n], &a[3][..n]);
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for c in 0..n {
        let (d0, d1, d2, d3) = (a0[c], a1[c], a2[c], a3[c]);
        o0[c] = d0 - d2;
        o1[c] = d1 + d2;
        o2[c] = d2 - d1;
        o3[c] = d1 - d3;
    }
}

/// `o = A^T [a0; a1; a2; a3]` per channel, `A^T = [[1,1,1,0],[0,1,-1,-1]]`.
#[inline(always)]
fn at4(a: [&[f32]; 4], o: [&mut [f32]; 2]) {
    let [o0, o1] = o;
    let n = o0.len();
    let (a0, a1, a2, a3) = (&a[0][..n], &a[1][..n], &a[2][..n], &a[3][..n]);
    let o1 = &mut o1[..n];
    for c in 0..n {
        o0[c] = a0[c] + a1[c] + a2[c];
        o1[c] = a1[c] - a2[c] - a3[c];
    }
}

/// The first `R` rows of `n` floats of `x`.
fn tile_rows<const R: usize>(x: &[f32], n: usize) -> [&[f32]; R] {
    std::array::from_fn(|e| &x[e * n..(e + 1) * n])
}

/// The input transform `V = B^T d B` of tile `j` of a chunk of `tc` tiles: `d` is the gathered
/// 4x4 tile `[16, cin]`, `tmp` scratch of the same size, `v` the chunk's `[16, tc, cin]`.
#[inline(always)]
fn input_tile_impl(d: &[f32], tmp: &mut [f32], v: &mut [f32], cin: usize, tc: usize, j: usize) {
    // tmp = B^T d (over the rows i, per column k), stored column after column: tmp[k*4 + i].
    let dr = tile_rows::<16>(d, cin);
    for (k, tk) in tmp[..16 * cin].chunks_exact_mut(4 * cin).enumerate() {
        let (t0, rest) = tk.split_at_mut(cin);
        let (t1, rest) = rest.split_at_mut(cin);
        let (t2, t3) = rest.split_at_mut(cin);
        bt4([dr[k], dr[4 + k], dr[8 + k], dr[12 + k]], [t0, t1, t2, t3]);
    }
    // V = tmp B (over the columns k, per row i).
    let tr = tile_rows::<16>(tmp, cin);
    for i in 0..4 {
        let e = |k: usize| ((i * 4 + k) * tc + j) * cin;
        let (e0, e1, e2, e3) = (e(0), e(1), e(2), e(3));
        let (lo, hi) = v.split_at_mut(e1);
        let v0 = &mut lo[e0..e0 + cin];
        let (m1, hi) = hi.split_at_mut(e2 - e1);
        let (m2, m3) = hi.split_at_mut(e3 - e2);
        bt4(
            [tr[i], tr[4 + i], tr[8 + i], tr[12 + i]],
            [v0, &mut m1[..cin], &mut m2[..cin], &mut m3[..cin]],
        );
    }
}

/// The output transform `Y = A^T M A` of tile `j` of a chunk: `m` the chunk's products
/// `[16, tc, cout]`, `s` scratch `[8, cout]`, `y` the tile's 2x2 outputs `[4, cout]` (row-major).
#[inline(always)]
fn output_tile_impl(m: &[f32], s: &mut [f32], y: &mut [f32], cout: usize, tc: usize, j: usize) {
    let mr =
        |a: usize, b: usize| &m[((a * 4 + b) * tc + j) * cout..((a * 4 + b) * tc + j + 1) * cout];
    // s[i][b] = (A^T M)[i][b].
    let (s0, s1) = s[..8 * cout].split_at_mut(4 * cout);
    for b in 0..4 {
        at4(
            [mr(0, b), mr(1, b), mr(2, b), mr(3, b)],
            [
                &mut s0[b * cout..(b + 1) * cout],
                &mut s1[b * cout..(b + 1) * cout],
            ],
        );
    }
    // y[i][*] = s[i] A.
    let (y0, y1) = y[..4 * cout].split_at_mut(2 * cout);
    for (si, yi) in [(&*s0, y0), (&*s1, y1)] {
        let sr = tile_rows::<4>(si, cout);
        let (ya, yb) = yi.split_at_mut(cout);
        at4([sr[0], sr[1], sr[2], sr[3]], [ya, yb]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn input_tile_avx2(
    d: &[f32],
    tmp: &mut [f32],
    v: &mut [f32],
    cin: usize,
    tc: usize,
    j: usize,
) {
    input_tile_impl(d, tmp, v, cin, tc, j)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn output_tile_avx2(
    m: &[f32],
    s: &mut [f32],
    y: &mut [f32],
    cout: usize,
    tc: usize,
    j: usize,
) {
    output_tile_impl(m, s, y, cout, tc, j)
}

/// [`input_tile_impl`], vectorised for AVX2 when the CPU has it (same arithmetic either way).
fn input_tile(d: &[f32], tmp: &mut [f32], v: &mut [f32], cin: usize, tc: usize, j: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { input_tile_avx2(d, tmp, v, cin, tc, j) };
    }
    input_tile_impl(d, tmp, v, cin, tc, j)
}

/// [`output_tile_impl`], vectorised for AVX2 when the CPU has it (same arithmetic either way).
fn output_tile(m: &[f32], s: &mut [f32], y: &mut [f32], cout: usize, tc: usize, j: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { output_tile_avx2(m, s, y, cout, tc, j) };
    }
    output_tile_impl(m, s, y, cout, tc, j)
}

thread_local! {
    /// Scratch buffers of this thread, reused across calls: taken and given back, so nested
    /// parallel tasks that run on one thread never share one.
    static SCRATCH: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `len` floats, contents arbitrary: the smallest scratch buffer that is large
/// enough, else the largest one grown.
pub(super) fn take_scratch(len: usize) -> Vec<f32> {
    let mut v = SCRATCH
        .with(|p| {
            let mut p = p.borrow_mut();
            let fit = (0..p.len())
                .filter(|&i| p[i].capacity() >= len)
                .min_by_key(|&i| p[i].capacity())
                .or_else(|| (0..p.len()).max_by_key(|&i| p[i].capacity()));
            fit.map(|i| p.swap_remove(i))
        })
        .unwrap_or_default();
    v.resize(len, 0.0);
    v
}

/// Give back a buffer of [`take_scratch`].
pub(super) fn give_scratch(v: Vec<f32>) {
    SCRATCH.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < 8 {
            p.push(v);
        }
    });
}

/// The `e` Winograd products of a chunk of `tc` tiles, `[e, tc, cout]` in a scratch buffer
/// ([`give_scratch`] it back): `v` the transformed input `[e, tc, cin]`, `u` the `e` packed
/// transformed weight matrices ([`panel::pack_each`]); in parallel over the products when
/// `split` (few chunks), else on this thread.
pub(super) fn winograd_products(
    e: usize,
    tc: usize,
    cin: usize,
    cout: usize,
    v: &[f32],
    u: &[f32],
    split: bool,
) -> Vec<f32> {
    let plen = panel::packed_len(cin, cout);
    assert!(v.len() >= e * tc * cin && u.len() >= e * plen);
    let mut m = take_scratch(e * tc * cout);
    let product = |(i, mi): (usize, &mut [f32])| {
        panel::sgemm(
            tc,
            cout,
            cin,
            &v[i * tc * cin..(i + 1) * tc * cin],
            cin,
            &u[i * plen..(i + 1) * plen],
            mi,
            cout,
            false,
        );
    };
    let m_used = &mut m[..e * tc * cout];
    if split {
        m_used
            .par_chunks_mut(tc * cout)
            .enumerate()
            .for_each(product);
    } else {
        m_used.chunks_mut(tc * cout).enumerate().for_each(product);
    }
    m
}

#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: the tasks that share one write disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// NHWC 3x3 stride-1 pad-1 convolution by Winograd F(2x2, 3x3), `y = conv(x) + bias +
/// residual`; `u`: [`winograd_weights`], each of the 16 matrices packed
/// ([`panel::pack_each`]). Output tiles of 2x2 (input tiles of 4x4) are processed
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
    let plen = panel::packed_len(cin, cout);
    assert!(x.len() >= n * h * w * cin && u.len() >= 16 * plen);
    let mut out = vec![0.0f32; n * h * w * cout];
    // Tiles per chunk: the chunk's transformed input and products stay around 4 MiB (measured
    // on ddpm-cifar10-32, batch 16: 1 MiB 3.6 s, 2 MiB 3.4 s, 4 MiB 2.9 s, 8 MiB 3.2 s).
    let chunk = (4usize << 20) / (4 * 16 * (cin + cout)).max(1);
    let threads = rayon::current_num_threads().max(1);
    // At least 64 tiles per chunk (GEMMs of 64 rows or more), also where the cache size asks
    // for fewer: small maps (batch 1 at 16x16 or 8x8) are then one or two chunks, and the
    // threads share each chunk's 16 products instead, so the transformed weights are read once
    // per call rather than once per chunk (batch 1, same run: 8x8 768->768 15.7 -> 6.2 ms,
    // 16x16 576->576 12.3 -> 8.3 ms; 16x16 1024->1024 in 2 chunks of 32 tiles 59.9 ms, in one
    // of 64 23.5 ms).
    let chunk = chunk
        .clamp(64, 512)
        .min(tiles.div_ceil(2 * threads).max(64));
    let chunks = tiles.div_ceil(chunk);
    let split_products = chunks < 2 * threads;
    // Each chunk writes its own output pixels.
    let optr = SendPtr(out.as_mut_ptr());
    (0..chunks).into_par_iter().for_each(|ci_| {
        #[allow(clippy::redundant_locals)]
        let optr = optr;
        let t0 = ci_ * chunk;
        let tc = chunk.min(tiles - t0);
        let mut v = take_scratch(16 * tc * cin);
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
            input_tile(&d, &mut tmp, &mut v, cin, tc, j);
        }
        let m = winograd_products(16, tc, cin, cout, &v, u, split_products);
        // Y = A^T M A, A^T = [[1,1,1,0],[0,1,-1,-1]]: 4 outputs per tile and channel, in
        // tile order (row-major 2x2).
        give_scratch(v);
        let mut y = take_scratch(tc * 4 * cout);
        let mut s = vec![0.0f32; 8 * cout];
        for j in 0..tc {
            output_tile(
                &m,
                &mut s,
                &mut y[j * 4 * cout..(j + 1) * 4 * cout],
                cout,
                tc,
                j,
            );
        }
        give_scratch(m);
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
                    // SAFETY: pixel p < n*h*w belongs to tile t, which only this task writes.
                    let o = unsafe { std::slice::from_raw_parts_mut(optr.0.add(p * cout), cout) };
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
        give_scratch(y);
    });
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (shared with the other convolution tests).
    pub(in crate::backend::cpu) fn values(n: usize, seed: u32) -> Vec<f32> {
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
            let u = panel::pack_each(16, cin, cout, &winograd_weights(cin, cout, &wt));
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
