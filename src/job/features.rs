//! Member images to extractor features.

use crate::error::Result;
use crate::image::HwcImage;
use crate::io::images_out;
use crate::models::clip::ClipVision;
use crate::tensor::Tensor;

/// Features `[n, D]` of final samples (NHWC, model space [-1, 1]) from the extractor: 8-bit
/// quantised first when `quantize` (as saving PNGs does), otherwise mapped to [0, 1] in float.
pub fn extract_features(
    clip: &ClipVision,
    x: &[f32],
    n: usize,
    s: usize,
    c: usize,
    quantize: bool,
) -> Result<Vec<f32>> {
    let t = member_features(clip, x, n, s, c, quantize)?;
    clip.backend().download(&t)
}

/// [`extract_features`] left where the extractor ran (`[n, D]` on its backend).
pub fn member_features(
    clip: &ClipVision,
    x: &[f32],
    n: usize,
    s: usize,
    c: usize,
    quantize: bool,
) -> Result<Tensor> {
    let per = s * s * c;
    let t = if quantize {
        let bytes: Vec<Vec<u8>> = (0..n)
            .map(|i| images_out::to_u8(&x[i * per..(i + 1) * per]))
            .collect();
        let imgs = bytes
            .iter()
            .map(|b| HwcImage::new(s, s, c, b))
            .collect::<Result<Vec<_>>>()?;
        clip.embed_images_u8(&imgs)?
    } else {
        let floats: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                x[i * per..(i + 1) * per]
                    .iter()
                    .map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
                    .collect()
            })
            .collect();
        let imgs = floats
            .iter()
            .map(|b| HwcImage::new(s, s, c, b))
            .collect::<Result<Vec<_>>>()?;
        clip.embed_images_f32(&imgs)?
    };
    Ok(t)
}
