//! Member images to extractor features.

use crate::error::Result;
use crate::models::clip::ClipVision;

/// Features `[n, D]` of final samples (NHWC, model space [-1, 1]) from the extractor: 8-bit
/// quantised first when `quantize` (as saving PNGs does), otherwise mapped to [0, 1] in float.
/// The samples go to the extractor's backend and are preprocessed there
/// ([`ClipVision::embed_state`]).
pub fn extract_features(
    clip: &ClipVision,
    x: &[f32],
    n: usize,
    s: usize,
    c: usize,
    quantize: bool,
) -> Result<Vec<f32>> {
    let plan = clip.pixel_plan(s, c, quantize)?;
    let be = clip.backend();
    let state = be.state_from_host(&[n, s, s, c], x)?;
    be.download(&clip.embed_state(&state, &plan)?)
}
