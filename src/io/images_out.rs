//! Model-space images to 8-bit pixels and PNG files.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::fs::write_atomic;

/// Quantise model-space pixels (any layout, values nominally in [-1, 1]) to 8 bits exactly as
/// diffusers' pipelines do: `(x / 2 + 0.5).clamp(0, 1)` in f32, then `numpy_to_pil`'s
/// `(x * 255).round().astype(uint8)`. NumPy's `round` breaks ties to even (127.5 -> 128,
/// 126.5 -> 126), and so does this. NaN maps to 0.
pub fn to_u8(x: &[f32]) -> Vec<u8> {
    x.iter()
        .map(|&v| {
            let y = (v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
            y.round_ties_even() as u8
        })
        .collect()
}

/// Encode an 8-bit image (`[H, W, C]`, C = 1 gray or 3 RGB) as PNG bytes.
pub fn encode_png(hwc: &[u8], h: usize, w: usize, c: usize) -> Result<Vec<u8>> {
    if c != 1 && c != 3 {
        return Err(Error::arg(format!(
            "PNG output supports 1 or 3 channels, got {c}"
        )));
    }
    if hwc.len() != h * w * c {
        return Err(Error::arg(format!(
            "PNG output: {} bytes for an image of {h}x{w}x{c} (expected {})",
            hwc.len(),
            h * w * c
        )));
    }
    let (h32, w32) = match (u32::try_from(h), u32::try_from(w)) {
        (Ok(a), Ok(b)) if a > 0 && b > 0 => (a, b),
        _ => {
            return Err(Error::arg(format!(
                "PNG output: unsupported image size {h}x{w}"
            )))
        }
    };
    crate::io::codec::encode_png(hwc, h32, w32, c)
        .map_err(|e| Error::arg(format!("PNG encoding of a {h}x{w}x{c} image failed: {e}")))
}

/// Write an 8-bit image (`[H, W, C]`, C = 1 or 3) to `path` as PNG, atomically (temporary file in
/// the same folder, then rename), so an interrupted run never leaves a truncated image.
pub fn write_png(path: &Path, hwc: &[u8], h: usize, w: usize, c: usize) -> Result<()> {
    let bytes = encode_png(hwc, h, w, c).map_err(|e| Error::Image {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}
