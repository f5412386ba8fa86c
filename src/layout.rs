//! Memory-layout conversions between NCHW (files, PyTorch) and NHWC (the backends' activations).

/// NCHW -> NHWC.
pub fn nchw_to_nhwc(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for i in 0..h * w {
                y[(b * h * w + i) * c + ch] = x[(b * c + ch) * h * w + i];
            }
        }
    }
    y
}

/// NHWC -> NCHW.
pub fn nhwc_to_nchw(x: &[f32], n: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for i in 0..h * w {
            for ch in 0..c {
                y[(b * c + ch) * h * w + i] = x[(b * h * w + i) * c + ch];
            }
        }
    }
    y
}
