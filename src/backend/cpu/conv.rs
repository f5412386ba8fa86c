//! Convolution on the CPU: GEMM over L2-sized tiles of gathered input patches (never a whole
//! im2col buffer); 1x1 stride-1 convolutions multiply the input directly.
//! Weights are kept as `[k*k*cin, cout]`, row index `(kh*k + kw)*cin + ci`.

use crate::backend::ConvSpec;

use crate::linalg::matmul::rows_times_matrix;

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
