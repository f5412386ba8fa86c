//! Images as the engine's preprocessing takes them: borrowed row-major HWC buffers, resized
//! exactly as PIL resizes them ([`resize_u8`], [`resize_f32`]) and center-cropped as
//! transformers crops them ([`center_crop`]).

mod resample;

pub use resample::{resize_f32, resize_taps, resize_u8, PassTaps, Resample, ResizeTaps};

use crate::error::{Error, Result};

/// A borrowed image, row-major HWC (`data[(y * width + x) * channels + c]`).
#[derive(Clone, Copy, Debug)]
pub struct HwcImage<'a, T> {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: &'a [T],
}

impl<'a, T> HwcImage<'a, T> {
    /// An image view; `data.len()` must be `height * width * channels`.
    pub fn new(height: usize, width: usize, channels: usize, data: &'a [T]) -> Result<Self> {
        if height == 0 || width == 0 || data.len() != height * width * channels {
            return Err(Error::arg(format!(
                "image of {height}x{width}x{channels} with {} values",
                data.len()
            )));
        }
        Ok(HwcImage {
            height,
            width,
            channels,
            data,
        })
    }
}

/// Where [`center_crop`] reads: the window starts at `(y0, x0)` of the image padded with
/// `top_pad` rows and `left_pad` columns of zeros, and is `height x width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropWindow {
    pub y0: usize,
    pub x0: usize,
    pub height: usize,
    pub width: usize,
    pub top_pad: usize,
    pub left_pad: usize,
}

/// The [`CropWindow`] of center-cropping an `h x w` image to `ch x cw`.
pub fn crop_window(h: usize, w: usize, ch: usize, cw: usize) -> CropWindow {
    let (ph, pw) = (ch.max(h), cw.max(w));
    let (top_pad, left_pad) = ((ph - h).div_ceil(2), (pw - w).div_ceil(2));
    // Crop window in the padded image.
    let top = (h as isize - ch as isize).div_euclid(2) + top_pad as isize;
    let left = (w as isize - cw as isize).div_euclid(2) + left_pad as isize;
    let (y0, x0) = (top.max(0) as usize, left.max(0) as usize);
    let (y1, x1) = (
        ((top + ch as isize) as usize).min(ph),
        ((left + cw as isize) as usize).min(pw),
    );
    CropWindow {
        y0,
        x0,
        height: y1 - y0,
        width: x1 - x0,
        top_pad,
        left_pad,
    }
}

/// transformers' `center_crop` of `img` to `height x width`: offsets `(size - crop) // 2`; an
/// image smaller than the crop is first padded with zeros (`ceil` of half the difference on
/// top/left). Returns the cropped image (row-major HWC, the input's channels), its height and
/// its width.
pub fn center_crop<T: Copy + Default>(
    img: &HwcImage<T>,
    height: usize,
    width: usize,
) -> (Vec<T>, usize, usize) {
    let (x, h, w, c) = (img.data, img.height, img.width, img.channels);
    let CropWindow {
        y0,
        x0,
        height: oh,
        width: ow,
        top_pad,
        left_pad,
    } = crop_window(h, w, height, width);
    let mut out = vec![T::default(); oh * ow * c];
    for oy in 0..oh {
        let py = oy + y0;
        if py < top_pad || py >= top_pad + h {
            continue;
        }
        for ox in 0..ow {
            let px = ox + x0;
            if px < left_pad || px >= left_pad + w {
                continue;
            }
            let s = ((py - top_pad) * w + (px - left_pad)) * c;
            out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c].copy_from_slice(&x[s..s + c]);
        }
    }
    (out, oh, ow)
}
