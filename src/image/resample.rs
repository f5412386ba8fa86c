//! PIL's `Image.resize` of HWC images, reproduced exactly.
//!
//! 8-bit images are resampled as PIL resamples uint8 images, bit for bit: separable two-pass
//! resampling (horizontal pass first, only the rows the vertical pass reads), antialiased
//! filters when downscaling, 22-bit fixed-point coefficients, rounding and clipping to u8 after
//! each pass. Float images are resampled as PIL resamples 32-bit float images (mode "F"):
//! coefficients and sums in f64, each pass stored as f32, no clipping.

use rayon::prelude::*;

use super::HwcImage;

/// Fixed-point precision of PIL's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL resampling filters usable by [`resize_u8`] and [`resize_f32`] (PIL codes: LANCZOS 1, BILINEAR 2, BICUBIC 3,
/// BOX 4, HAMMING 5). NEAREST (0) is not supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Resample {
    /// The filter of a PIL resampling code.
    pub fn from_pil_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Resample::Lanczos),
            2 => Some(Resample::Bilinear),
            3 => Some(Resample::Bicubic),
            4 => Some(Resample::Box),
            5 => Some(Resample::Hamming),
            _ => None,
        }
    }

    /// Support radius of the filter at scale 1, in input pixels.
    fn support(self) -> f64 {
        match self {
            Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    /// The filter kernel, as PIL evaluates it.
    fn eval(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Resample::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Resample::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// PIL's resampling coefficients of one axis: per output pixel, the first input index, the
/// number of taps, and `ksize` normalised weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<f64>,
}

/// PIL `precompute_coeffs` for the box `[0, in_size)` resampled to `out_size` pixels.
fn precompute_coeffs(in_size: usize, out_size: usize, filter: Resample) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0.0f64; out_size * ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C casts truncate toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let k = &mut weights[xx * ksize..xx * ksize + xmax];
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate() {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        if ww != 0.0 {
            for kx in k.iter_mut() {
                *kx /= ww;
            }
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// PIL `normalize_coeffs_8bpc`: weights in 22-bit fixed point, rounded half away from zero.
fn fixed_point(w: &[f64]) -> Vec<i64> {
    let one = (1i64 << PRECISION_BITS) as f64;
    w.iter()
        .map(|&v| {
            if v < 0.0 {
                (-0.5 + v * one) as i32 as i64
            } else {
                (0.5 + v * one) as i32 as i64
            }
        })
        .collect()
}

/// PIL `clip8`: a sum in 22-bit fixed point as a u8, clipped to [0, 255].
#[inline]
fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// The passes PIL's `ImagingResampleInner` runs, and the input rows the vertical pass reads.
struct Plan {
    horiz: Coeffs,
    vert: Coeffs,
    need_h: bool,
    need_v: bool,
    rows: (usize, usize),
}

/// The plan of resizing an `h x w` image to `oh x ow` with `filter`.
fn plan(h: usize, w: usize, oh: usize, ow: usize, filter: Resample) -> Plan {
    let horiz = precompute_coeffs(w, ow, filter);
    let vert = precompute_coeffs(h, oh, filter);
    let first = vert.bounds[0].0;
    let last = vert.bounds[oh - 1].0 + vert.bounds[oh - 1].1;
    Plan {
        horiz,
        vert,
        need_h: ow != w,
        need_v: oh != h,
        rows: (first, last),
    }
}

/// One pass of a resize as tables a kernel reads: per output pixel `(first input index, taps)`
/// in `bounds`, and `ksize` weights per output pixel, normalised f64 (float images) and in PIL's
/// 22-bit fixed point (8-bit images).
#[derive(Clone, Debug, PartialEq)]
pub struct PassTaps {
    pub ksize: usize,
    pub bounds: Vec<(usize, usize)>,
    pub weights: Vec<f64>,
    pub fixed: Vec<i32>,
}

impl PassTaps {
    fn of(c: Coeffs) -> Self {
        let fixed = fixed_point(&c.weights).iter().map(|&v| v as i32).collect();
        PassTaps {
            ksize: c.ksize,
            bounds: c.bounds,
            weights: c.weights,
            fixed,
        }
    }
}

/// The passes [`resize_u8`] and [`resize_f32`] run for `h x w -> oh x ow`: the horizontal pass
/// (over input rows `rows.0 .. rows.1`, the ones the vertical pass reads) and the vertical pass,
/// each `None` where that size is unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct ResizeTaps {
    pub horiz: Option<PassTaps>,
    pub vert: Option<PassTaps>,
    pub rows: (usize, usize),
}

/// The [`ResizeTaps`] of resizing an `h x w` image to `oh x ow` (all positive) with `filter`.
pub fn resize_taps(h: usize, w: usize, oh: usize, ow: usize, filter: Resample) -> ResizeTaps {
    let p = plan(h, w, oh, ow, filter);
    ResizeTaps {
        horiz: p.need_h.then(|| PassTaps::of(p.horiz)),
        rows: if p.need_h { p.rows } else { (0, h) },
        vert: p.need_v.then(|| PassTaps::of(p.vert)),
    }
}

/// PIL `Image.resize((width, height), filter)` of an 8-bit image (bit-exact): the resized
/// image, row-major HWC with the input's channels. `height` and `width` must be positive.
pub fn resize_u8(img: &HwcImage<u8>, height: usize, width: usize, filter: Resample) -> Vec<u8> {
    resize(img, height, width, filter)
}

/// PIL `Image.resize((width, height), filter)` of a float image, each channel as a 32-bit
/// float image (mode "F"): f64 weights and sums, each pass stored as f32, no clipping. Returns
/// the resized image, row-major HWC with the input's channels. `height` and `width` must be
/// positive.
pub fn resize_f32(img: &HwcImage<f32>, height: usize, width: usize, filter: Resample) -> Vec<f32> {
    resize(img, height, width, filter)
}

/// A sample type PIL resamples, with the arithmetic of its passes.
trait Sample: Copy + Default + Send + Sync {
    /// A filter weight as this type's passes use it.
    type Weight: Copy + Send + Sync;
    /// The weights `w` (normalised f64) as this type's passes use them.
    fn weights(w: &[f64]) -> Vec<Self::Weight>;
    /// One output sample: the sum of `tap(t) * k[t]` over the taps, stored as this type.
    fn dot(k: &[Self::Weight], tap: impl Fn(usize) -> Self) -> Self;
}

impl Sample for u8 {
    type Weight = i64;
    fn weights(w: &[f64]) -> Vec<i64> {
        fixed_point(w)
    }
    /// Fixed-point sum, rounded (half added first) and clipped to u8.
    fn dot(k: &[i64], tap: impl Fn(usize) -> u8) -> u8 {
        let mut ss = 1i64 << (PRECISION_BITS - 1);
        for (t, &kv) in k.iter().enumerate() {
            ss += tap(t) as i64 * kv;
        }
        clip8(ss)
    }
}

impl Sample for f32 {
    type Weight = f64;
    fn weights(w: &[f64]) -> Vec<f64> {
        w.to_vec()
    }
    /// f64 sum, stored as f32.
    fn dot(k: &[f64], tap: impl Fn(usize) -> f32) -> f32 {
        let mut ss = 0.0f64;
        for (t, &kv) in k.iter().enumerate() {
            ss += tap(t) as f64 * kv;
        }
        ss as f32
    }
}

/// PIL `ImagingResampleInner` of `img` to `oh x ow`: the horizontal pass over the rows the
/// vertical pass reads, then the vertical pass, each skipped where that size is unchanged.
fn resize<T: Sample>(img: &HwcImage<T>, oh: usize, ow: usize, filter: Resample) -> Vec<T> {
    let (x, h, w, c) = (img.data, img.height, img.width, img.channels);
    let p = plan(h, w, oh, ow, filter);
    let (mut src, mut sw, mut row0): (&[T], usize, usize) = (x, w, 0);
    let tmp;
    if p.need_h {
        let (first, last) = p.rows;
        let kk = T::weights(&p.horiz.weights);
        let mut out = vec![T::default(); (last - first) * ow * c];
        out.par_chunks_mut(ow * c)
            .enumerate()
            .for_each(|(r, orow)| {
                let irow = &x[(r + first) * w * c..(r + first + 1) * w * c];
                for (xx, &(xmin, xmax)) in p.horiz.bounds.iter().enumerate() {
                    let k = &kk[xx * p.horiz.ksize..xx * p.horiz.ksize + xmax];
                    for ch in 0..c {
                        orow[xx * c + ch] = T::dot(k, |t| irow[(xmin + t) * c + ch]);
                    }
                }
            });
        tmp = out;
        src = &tmp;
        sw = ow;
        row0 = first;
    }
    if !p.need_v {
        return src.to_vec();
    }
    let kk = T::weights(&p.vert.weights);
    let mut out = vec![T::default(); oh * sw * c];
    out.par_chunks_mut(sw * c)
        .enumerate()
        .for_each(|(yy, orow)| {
            let (ymin, ymax) = p.vert.bounds[yy];
            let k = &kk[yy * p.vert.ksize..yy * p.vert.ksize + ymax];
            for (i, o) in orow.iter_mut().enumerate() {
                *o = T::dot(k, |t| src[(ymin + t - row0) * sw * c + i]);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_resize_is_identity() {
        let x: Vec<u8> = (0..5 * 7 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let img = HwcImage::new(5, 7, 3, &x).unwrap();
        assert_eq!(resize_u8(&img, 5, 7, Resample::Bicubic), x);
    }

    #[test]
    fn coefficients_sum_to_one() {
        for f in [
            Resample::Bicubic,
            Resample::Bilinear,
            Resample::Lanczos,
            Resample::Box,
            Resample::Hamming,
        ] {
            for (i, o) in [(160, 40), (40, 160), (7, 3), (3, 7)] {
                let c = precompute_coeffs(i, o, f);
                for xx in 0..o {
                    let s: f64 = c.weights[xx * c.ksize..(xx + 1) * c.ksize].iter().sum();
                    assert!((s - 1.0).abs() < 1e-12, "{f:?} {i}->{o}: {s}");
                }
            }
        }
    }
}
