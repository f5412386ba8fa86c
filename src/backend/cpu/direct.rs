//! Direct 3x3 stride-1 pad-1 convolution for narrow layers on AVX-512, with the GroupNorm
//! (+ scale-shift) (+ SiLU) prologue fused.
//!
//! Where the output has few channels (a multiple of 16, at most [`MAX_COUT`]), the GEMM and
//! Winograd forms spend their time on packing and transforms, not on multiplies (the demo UNet's
//! 32x32 16->16 layer ran at 18 GFLOP/s). Here each task takes a band of output rows of one
//! sample, writes its input rows (with a one-row halo) normalised and zero-padded into a scratch
//! buffer once, and then accumulates `P` output pixels x `16*CB` output channels in registers over
//! the 9 taps and the input channels: one broadcast input value and `CB` weight vectors per step.
//! Weights are the reordered `[9*cin, cout]` of [`super::conv::reorder_oihw`].

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::conv::SendPtr;
use super::fastmath;

/// Widest output (channels) that takes the direct path; wider layers use Winograd or the GEMM.
pub const MAX_COUT: usize = 32;

/// Whether the CPU can run the direct kernel (`UQENGINE_CPU_DIRECT=0` turns it off).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let env_on = std::env::var("UQENGINE_CPU_DIRECT").map_or(true, |v| v != "0");
        #[cfg(target_arch = "x86_64")]
        let cpu = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        env_on && cpu
    })
}

/// Whether a layer of `cout` output channels is narrow enough for the direct kernel, and the
/// CPU can run it. The map width must also be a multiple of 8 ([`width_ok`]).
pub fn narrow(cout: usize) -> bool {
    cout > 0 && cout.is_multiple_of(16) && cout <= MAX_COUT && available()
}

/// Map widths the kernel handles (blocks of 8 or 16 output pixels).
pub fn width_ok(w: usize) -> bool {
    w > 0 && w.is_multiple_of(8)
}

/// The fused GroupNorm prologue: a per-sample vector `add` `[n, cin]` added to the input first
/// (a resnet's time embedding; f32, as a separate add stores it), per sample `stats` `[2*cin]`
/// (the group means then the `1/sqrt(var+eps)` repeated over each group's channels, of the
/// input plus `add`, [`super::norm::channel_stats`]), the affine parameters, ADM's scale-shift
/// `[n, 2*cin]` and the SiLU switch.
pub struct Prologue<'a> {
    pub add: Option<&'a [f32]>,
    pub stats: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub ss: Option<&'a [f32]>,
    pub silu: bool,
}

/// `y = conv3x3(pro(x)) + bias + residual`, NHWC, stride 1, padding 1. `x` `[n, h, w, cin]`,
/// `wt` `[9*cin, cout]`. Requires [`narrow`]`(cout)` and [`width_ok`]`(w)`.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3(
    cin: usize,
    cout: usize,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    pro: Option<&Prologue>,
) -> Vec<f32> {
    assert!(
        narrow(cout) && width_ok(w),
        "direct conv3x3: {cin}->{cout} at width {w}"
    );
    assert_eq!(x.len(), n * h * w * cin);
    assert_eq!(wt.len(), 9 * cin * cout);
    assert!(bias.is_none_or(|b| b.len() == cout));
    assert!(residual.is_none_or(|r| r.len() == n * h * w * cout));
    if let Some(p) = pro {
        assert!(p.stats.len() == n * 2 * cin && p.gamma.len() == cin && p.beta.len() == cin);
        assert!(p.ss.is_none_or(|ss| ss.len() == n * 2 * cin));
        assert!(p.add.is_none_or(|a| a.len() == n * cin));
    }
    // Written only through raw pointers until every element is set (no zero fill first).
    let len = n * h * w * cout;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // Bands of rows: at least four tasks per thread when the batch alone does not give them.
    let threads = rayon::current_num_threads().max(1);
    let bands = (4 * threads).div_ceil(n.max(1)).clamp(1, h.max(1));
    let band = h.div_ceil(bands);
    let bands = h.div_ceil(band);
    let optr = SendPtr(out.as_mut_ptr());
    let row_len = (w + 2) * cin;
    (0..n * bands).into_par_iter().for_each(|task| {
        #[allow(clippy::redundant_locals)]
        let optr = optr;
        let (b, r0) = (task / bands, (task % bands) * band);
        let r1 = (r0 + band).min(h);
        let mut pad = super::conv::take_scratch((r1 - r0 + 2) * row_len);
        let mut line = super::conv::take_scratch(w * cin);
        let mut summed = super::conv::take_scratch(if pro.is_some_and(|p| p.add.is_some()) {
            w * cin
        } else {
            0
        });
        // Padded rows r0-1 ..= r1 of sample b, normalised, channel-major within a row
        // (`[cin][w+2]`, so that a block's pixels are consecutive for each channel): zero outside
        // the map.
        for (r, row) in pad.chunks_exact_mut(row_len).enumerate() {
            let ih = (r0 + r) as isize - 1;
            if ih < 0 || ih >= h as isize {
                row.fill(0.0);
                continue;
            }
            let src = &x[(b * h + ih as usize) * w * cin..(b * h + ih as usize + 1) * w * cin];
            let px: &[f32] = match pro {
                Some(p) => {
                    let src = match p.add {
                        Some(a) => {
                            let ab = &a[b * cin..(b + 1) * cin];
                            for (d, v) in summed.chunks_exact_mut(cin).zip(src.chunks_exact(cin)) {
                                fastmath::add_into(d, v, ab);
                            }
                            &summed[..]
                        }
                        None => src,
                    };
                    let st = &p.stats[b * 2 * cin..(b + 1) * 2 * cin];
                    let ssb = p.ss.map(|ss| &ss[b * 2 * cin..(b + 1) * 2 * cin]);
                    fastmath::norm_pixels(
                        src,
                        &mut line,
                        &st[..cin],
                        &st[cin..],
                        p.gamma,
                        p.beta,
                        ssb,
                        p.silu,
                    );
                    &line
                }
                None => src,
            };
            let plane = w + 2;
            for ci in 0..cin {
                row[ci * plane] = 0.0;
                row[ci * plane + w + 1] = 0.0;
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `narrow` checked AVX-512; `px` holds w pixels of cin, `row` cin planes.
            unsafe {
                to_channel_major(&px[..w * cin], cin, w, row, plane)
            };
        }
        super::conv::give_scratch(line);
        super::conv::give_scratch(summed);
        let o0 = (b * h + r0) * w * cout;
        let res = residual.map(|r| &r[o0..o0 + (r1 - r0) * w * cout]);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `narrow` checked AVX-512; rows r0..r1 of sample b (`(r1-r0)*w*cout` floats at
        // `o0`) belong to this task only and every one of them is written.
        unsafe {
            band_avx512(&pad, r1 - r0, w, cin, cout, wt, bias, res, optr.0.add(o0))
        };
        super::conv::give_scratch(pad);
    });
    // SAFETY: the tasks wrote every element (all pixels of all bands, all channel blocks).
    unsafe { out.set_len(len) };
    out
}

/// `row[ci * plane + 1 + iw] = px[iw * cin + ci]`: one row of pixels to channel planes, 16
/// pixels of a channel per gather and store (a scalar scatter cost ~1.5 cycles per value).
/// Requires `w` a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn to_channel_major(px: &[f32], cin: usize, w: usize, row: &mut [f32], plane: usize) {
    assert!(px.len() >= w * cin && row.len() >= cin * plane && plane > w);
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(cin as i32),
    );
    for ci in 0..cin {
        let src = px.as_ptr().add(ci);
        let dst = row.as_mut_ptr().add(ci * plane + 1);
        let mut iw = 0;
        while iw + 16 <= w {
            let v = _mm512_i32gather_ps::<4>(idx, src.add(iw * cin));
            _mm512_storeu_ps(dst.add(iw), v);
            iw += 16;
        }
        if iw < w {
            let m: __mmask16 = ((1u32 << (w - iw)) - 1) as __mmask16;
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, idx, src.add(iw * cin));
            _mm512_mask_storeu_ps(dst.add(iw), m, v);
        }
    }
}

/// One band: `rows` output rows from `pad` (`rows + 2` padded rows of `(w+2)*cin`) to `out`
/// (`rows*w*cout` floats, written once each).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn band_avx512(
    pad: &[f32],
    rows: usize,
    w: usize,
    cin: usize,
    cout: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    out: *mut f32,
) {
    let row_len = (w + 2) * cin;
    let blocks = cout / 16;
    let pair = blocks.is_multiple_of(2);
    for r in 0..rows {
        let src_row = pad.as_ptr().add(r * row_len);
        let mut ow = 0;
        while ow < w {
            let src = src_row.add(ow);
            let po = (r * w + ow) * cout;
            let step = if pair || !w.is_multiple_of(16) { 8 } else { 16 };
            let mut c0 = 0;
            while c0 < cout {
                let wp = wt.as_ptr().add(c0);
                let bp = bias.map_or(std::ptr::null(), |b| b.as_ptr().add(c0));
                let rp = res.map_or(std::ptr::null(), |r| r.as_ptr().add(po + c0));
                let op = out.add(po + c0);
                if pair {
                    block::<8, 2>(src, row_len, cin, wp, cout, bp, rp, op);
                    c0 += 32;
                } else if step == 16 {
                    block::<16, 1>(src, row_len, cin, wp, cout, bp, rp, op);
                    c0 += 16;
                } else {
                    block::<8, 1>(src, row_len, cin, wp, cout, bp, rp, op);
                    c0 += 16;
                }
            }
            ow += step;
        }
    }
}

/// `P` output pixels x `16*CB` output channels. `src`: the padded input at the window's top-left
/// (`row_len` floats per padded row, channel-major: channel `ci` of the row at `ci*(row_len/cin)`);
/// `wt`: the weights at the first output
/// channel (`cout` per row); `bias` / `res` null or at the first channel (`res` per pixel
/// `cout`); `out` at the first pixel and channel.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block<const P: usize, const CB: usize>(
    src: *const f32,
    row_len: usize,
    cin: usize,
    wt: *const f32,
    cout: usize,
    bias: *const f32,
    res: *const f32,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); CB]; P];
    let plane = row_len / cin;
    for kh in 0..3 {
        for kw in 0..3 {
            let mut s = src.add(kh * row_len + kw);
            let mut wr = wt.add((kh * 3 + kw) * cin * cout);
            for _ in 0..cin {
                let mut wv = [_mm512_setzero_ps(); CB];
                for (c, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(wr.add(16 * c));
                }
                for (p, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*s.add(p));
                    for c in 0..CB {
                        a[c] = _mm512_fmadd_ps(xv, wv[c], a[c]);
                    }
                }
                s = s.add(plane);
                wr = wr.add(cout);
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        for (c, &v) in a.iter().enumerate() {
            let mut v = v;
            if !bias.is_null() {
                v = _mm512_add_ps(v, _mm512_loadu_ps(bias.add(16 * c)));
            }
            if !res.is_null() {
                v = _mm512_add_ps(v, _mm512_loadu_ps(res.add(p * cout + 16 * c)));
            }
            _mm512_storeu_ps(out.add(p * cout + 16 * c), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// Groups, gamma, beta, scale-shift, SiLU.
    type RefNorm<'a> = (usize, &'a [f32], &'a [f32], Option<&'a [f32]>, bool);

    /// The definition, in f64: GroupNorm over (h, w, group channels) with biased variance, the
    /// affine, scale-shift, SiLU, then the zero-padded 3x3 convolution, bias and residual.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        cin: usize,
        cout: usize,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
        w_oihw: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        norm: Option<RefNorm>,
        add: Option<&[f32]>,
    ) -> Vec<f64> {
        let mut a: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        if let Some(t) = add {
            for (i, v) in a.iter_mut().enumerate() {
                let (b, ch) = (i / (h * w * cin), i % cin);
                *v = (x[i] + t[b * cin + ch]) as f64;
            }
        }
        if let Some((groups, gamma, beta, ss, silu)) = norm {
            let cg = cin / groups;
            for b in 0..n {
                for g in 0..groups {
                    let idx = |p: usize, c: usize| (b * h * w + p) * cin + g * cg + c;
                    let cnt = (h * w * cg) as f64;
                    let mean = (0..h * w)
                        .flat_map(|p| (0..cg).map(move |c| (p, c)))
                        .map(|(p, c)| a[idx(p, c)])
                        .sum::<f64>()
                        / cnt;
                    let var = (0..h * w)
                        .flat_map(|p| (0..cg).map(move |c| (p, c)))
                        .map(|(p, c)| (a[idx(p, c)] - mean).powi(2))
                        .sum::<f64>()
                        / cnt;
                    let rstd = 1.0 / (var + 1e-5).sqrt();
                    for p in 0..h * w {
                        for c in 0..cg {
                            let ch = g * cg + c;
                            let mut v =
                                (a[idx(p, c)] - mean) * rstd * gamma[ch] as f64 + beta[ch] as f64;
                            if let Some(ss) = ss {
                                v = v * (1.0 + ss[b * 2 * cin + ch] as f64)
                                    + ss[b * 2 * cin + cin + ch] as f64;
                            }
                            if silu {
                                v /= 1.0 + (-v).exp();
                            }
                            a[idx(p, c)] = v;
                        }
                    }
                }
            }
        }
        let mut y = vec![0.0f64; n * h * w * cout];
        for b in 0..n {
            for oh in 0..h {
                for ow in 0..w {
                    for co in 0..cout {
                        let mut s = bias.map_or(0.0, |bv| bv[co] as f64);
                        for kh in 0..3 {
                            for kw in 0..3 {
                                let (ih, iw) = (oh as isize + kh - 1, ow as isize + kw - 1);
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                    continue;
                                }
                                for ci in 0..cin {
                                    let xv =
                                        a[((b * h + ih as usize) * w + iw as usize) * cin + ci];
                                    let wv = w_oihw
                                        [((co * cin + ci) * 3 + kh as usize) * 3 + kw as usize];
                                    s += xv * wv as f64;
                                }
                            }
                        }
                        let o = ((b * h + oh) * w + ow) * cout + co;
                        y[o] = s + residual.map_or(0.0, |r| r[o] as f64);
                    }
                }
            }
        }
        y
    }

    /// The direct kernel against the definition at odd shapes: 1, 3 and 20 input channels,
    /// 16 and 32 output channels, widths 8/16/24, band splits of 1..h rows, with and without
    /// the norm, scale-shift, SiLU, bias, residual and a per-sample add before the norm.
    #[test]
    fn direct_conv_equals_the_definition() {
        if !available() {
            eprintln!("skipped: the CPU has no AVX-512");
            return;
        }
        let cases = [
            // (n, h, w, cin, cout, groups)
            (1, 5, 8, 1, 16, 1),
            (3, 7, 16, 3, 16, 3),
            (2, 4, 24, 20, 32, 4),
            (1, 9, 8, 20, 32, 5),
            (5, 3, 16, 8, 16, 2),
        ];
        for (case, &(n, h, w, cin, cout, groups)) in cases.iter().enumerate() {
            let seed = case as u64 * 17;
            let x: Vec<f32> = values(n * h * w * cin, seed + 1)
                .iter()
                .enumerate()
                .map(|(i, v)| v * 3.0 + (i % cin) as f32 * 0.5)
                .collect();
            let w_oihw: Vec<f32> = values(cout * cin * 9, seed + 2)
                .iter()
                .map(|v| v * 0.3)
                .collect();
            let wt = super::super::conv::reorder_oihw(
                &crate::backend::ConvSpec::new(cin, cout, 3, 1, 1),
                &w_oihw,
            );
            let bias = values(cout, seed + 3);
            let res = values(n * h * w * cout, seed + 4);
            let gamma: Vec<f32> = values(cin, seed + 5)
                .iter()
                .map(|v| 1.0 + 0.5 * v)
                .collect();
            let beta = values(cin, seed + 6);
            let ss: Vec<f32> = values(n * 2 * cin, seed + 7)
                .iter()
                .map(|v| v * 0.4)
                .collect();
            let tvec = values(n * cin, seed + 8);
            for variant in 0..5 {
                let with_norm = variant != 0;
                let with_ss = variant == 2;
                let silu = variant != 3;
                let (b_opt, r_opt) = match variant {
                    0 => (Some(&bias[..]), None),
                    1 => (None, Some(&res[..])),
                    _ => (Some(&bias[..]), Some(&res[..])),
                };
                let with_add = variant == 4;
                let addv = with_add.then_some(&tvec[..]);
                let stats =
                    super::super::norm::channel_stats(&x, addv, n, h * w, cin, groups, 1e-5);
                let pro = Prologue {
                    add: addv,
                    stats: &stats,
                    gamma: &gamma,
                    beta: &beta,
                    ss: with_ss.then_some(&ss[..]),
                    silu,
                };
                let got = conv3x3(
                    cin,
                    cout,
                    &x,
                    n,
                    h,
                    w,
                    &wt,
                    b_opt,
                    r_opt,
                    with_norm.then_some(&pro),
                );
                let want = reference(
                    cin,
                    cout,
                    &x,
                    n,
                    h,
                    w,
                    &w_oihw,
                    b_opt,
                    r_opt,
                    with_norm.then_some((
                        groups,
                        &gamma[..],
                        &beta[..],
                        with_ss.then_some(&ss[..]),
                        silu,
                    )),
                    addv,
                );
                let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (i, (g, wv)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - wv).abs() <= 2e-5 * scale,
                        "case {case} variant {variant} at {i}: {g} vs {wv} (scale {scale})"
                    );
                }
            }
        }
    }
}
