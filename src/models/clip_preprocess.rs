//! Image preprocessing of CLIP models: transformers' `CLIPImageProcessor` (its PIL path) as
//! configured by a `preprocessor_config.json`.
//!
//! Steps, in order: convert to RGB (one channel replicated to three), resize (`shortest_edge`,
//! `shortest_edge` + `longest_edge`, or `height` x `width`) with PIL's resampling filters, center
//! crop (zero padding where the image is smaller than the crop), rescale (`x * rescale_factor`,
//! computed in f64, stored as f32) and normalise (`(x - mean) / std` in f32).
//!
//! 8-bit input is resized exactly as PIL resizes uint8 images ([`crate::image::resize_u8`]).
//! Float input in [0, 1] is resized without quantisation, as PIL resizes 32-bit float images
//! ([`crate::image::resize_f32`]), then clipped to [0, 1]; a float value `x` stands for the
//! 8-bit value `255 x`, so rescaling multiplies by `255 * rescale_factor`.
//!
//! Output: one image is `[h, w, c]` f32 (HWC); a batch is an `[n, h, w, c]` host tensor, the
//! NHWC input of [`crate::models::clip::ClipVision::embed`].

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::config::{ConfigValue, JsonConfig, Positive};
use crate::error::{Error, Result};
use crate::image::{
    center_crop, crop_window, resize_f32, resize_taps, resize_u8, CropWindow, HwcImage, Resample,
    ResizeTaps,
};
use crate::io::images_out;
use crate::tensor::Tensor;

/// CLIP's normalisation constants (openai/clip-vit-*), as transformers writes them; stored as
/// the f32 nearest to these f64 values, as the processor does.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// How `resize` picks the output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Scale so the shorter edge is `shortest` (the longer edge truncated), optionally capped so
    /// the longer edge is at most `longest`.
    ShortestEdge {
        shortest: usize,
        longest: Option<usize>,
    },
    /// Exactly `height` x `width`.
    Exact { height: usize, width: usize },
}

/// `CLIPImageProcessor` settings. [`Default`] is the processor's own defaults (openai CLIP,
/// 224 x 224).
#[derive(Clone, Debug, PartialEq)]
pub struct ClipPreprocess {
    pub do_convert_rgb: bool,
    pub do_resize: bool,
    pub size: ResizeTarget,
    pub resample: Resample,
    pub do_center_crop: bool,
    /// (height, width)
    pub crop_size: (usize, usize),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    /// One value per output channel, or one value for all.
    pub image_mean: Vec<f32>,
    pub image_std: Vec<f32>,
}

impl Default for ClipPreprocess {
    fn default() -> Self {
        ClipPreprocess {
            do_convert_rgb: true,
            do_resize: true,
            size: ResizeTarget::ShortestEdge {
                shortest: 224,
                longest: None,
            },
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN.iter().map(|&v| v as f32).collect(),
            image_std: OPENAI_CLIP_STD.iter().map(|&v| v as f32).collect(),
        }
    }
}

/// `image_mean` or `image_std`: one number, or a non-empty list of numbers (stored as f32).
struct Floats(Vec<f32>);

impl ConfigValue for Floats {
    const EXPECTED: &'static str = "a number or a non-empty list of numbers";
    fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::Number(n) => Some(Floats(vec![n.as_f64()? as f32])),
            Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<_>>()
                .map(Floats),
            _ => None,
        }
    }
}

/// The value `v` of `key` (`size` or `crop_size`) as (height, width): an integer for a square,
/// `[height, width]`, or `{"height": .., "width": ..}`.
fn height_width(c: &JsonConfig, key: &str, v: &Value) -> Result<(usize, usize)> {
    let side = |v: &Value| -> Result<usize> { Ok(c.convert::<Positive<usize>>(key, v)?.0) };
    match v {
        Value::Number(_) => {
            let s = side(v)?;
            Ok((s, s))
        }
        Value::Array(a) if a.len() == 2 => Ok((side(&a[0])?, side(&a[1])?)),
        Value::Object(o) => {
            let hw = c.nested(key, o);
            hw.deny_unknown(&["height", "width"])?;
            Ok((
                hw.req::<Positive<usize>>("height")?.0,
                hw.req::<Positive<usize>>("width")?.0,
            ))
        }
        _ => Err(c.wrong_type(
            key,
            "a positive integer, a [height, width] list or a {height, width} object",
            v,
        )),
    }
}

/// The `{"shortest_edge": .., "longest_edge": ..}` object `o` of `size` (`longest_edge`
/// optional).
fn shortest_edge(c: &JsonConfig, o: &Map<String, Value>) -> Result<ResizeTarget> {
    let size = c.nested("size", o);
    size.deny_unknown(&["shortest_edge", "longest_edge"])?;
    Ok(ResizeTarget::ShortestEdge {
        shortest: size.req::<Positive<usize>>("shortest_edge")?.0,
        longest: size
            .present::<Positive<usize>>("longest_edge")?
            .map(|l| l.0),
    })
}

/// How a batch of final samples (NHWC f32 in model space, [-1, 1]) becomes the extractor's
/// input, made once per run by [`ClipPreprocess::pixel_plan`]: the steps of
/// [`ClipPreprocess::process_u8`] (8-bit images, as PNG files store the samples) or
/// [`ClipPreprocess::process_f32`] (float images) as tables and numbers a device kernel reads.
/// [`PixelPlan::host_pixels`] is the definition; a device backend may keep its copy of the
/// tables in `device` ([`crate::backend::Backend::prepare_pixels`]).
#[derive(Clone)]
pub struct PixelPlan {
    pub preprocess: ClipPreprocess,
    /// Sample height, width and channels.
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// 8-bit quantisation first (else float images in [0, 1]).
    pub quantize: bool,
    /// Size after resizing, and the resampling passes (`None` without resizing).
    pub resized: (usize, usize),
    pub taps: Option<ResizeTaps>,
    /// The crop of the resized image (the whole image without center crop).
    pub crop: CropWindow,
    pub out_channels: usize,
    /// `v * scale` (in f64) before normalising, if any.
    pub scale: Option<f64>,
    /// Mean and std per output channel when normalising (empty otherwise).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// A device backend's copy of the tables.
    pub device: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for PixelPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PixelPlan({}x{}x{} -> {:?}, quantize {})",
            self.height,
            self.width,
            self.channels,
            (self.crop.height, self.crop.width, self.out_channels),
            self.quantize
        )
    }
}

impl PixelPlan {
    /// Shape `[n, h, w, c]` of the extractor input of `n` samples.
    pub fn output_shape(&self, n: usize) -> [usize; 4] {
        [n, self.crop.height, self.crop.width, self.out_channels]
    }

    /// The extractor input `[n, h, w, c]` (host tensor) of `n` final samples `x` (NHWC) on the
    /// host: each sample quantised as [`images_out::to_u8`] and preprocessed by
    /// [`ClipPreprocess::process_u8`], or mapped to `clamp(x / 2 + 0.5, 0, 1)` and preprocessed
    /// by [`ClipPreprocess::process_f32`]. A NaN value becomes 0 either way (such a sample is
    /// marked invalid or stops the run).
    pub fn host_pixels(&self, x: &[f32], n: usize) -> Result<Tensor> {
        let (s_h, s_w, c) = (self.height, self.width, self.channels);
        let per = s_h * s_w * c;
        if x.len() != n * per {
            return Err(Error::arg(format!(
                "{} sample values for {n} samples of {s_h}x{s_w}x{c}",
                x.len()
            )));
        }
        if self.quantize {
            let bytes: Vec<Vec<u8>> = x.chunks_exact(per).map(images_out::to_u8).collect();
            let imgs = bytes
                .iter()
                .map(|b| HwcImage::new(s_h, s_w, c, b))
                .collect::<Result<Vec<_>>>()?;
            self.preprocess.batch_u8(&imgs)
        } else {
            let floats: Vec<Vec<f32>> = x
                .chunks_exact(per)
                .map(|v| {
                    v.iter()
                        .map(|v| match (v / 2.0 + 0.5).clamp(0.0, 1.0) {
                            y if y.is_nan() => 0.0,
                            y => y,
                        })
                        .collect()
                })
                .collect();
            let imgs = floats
                .iter()
                .map(|b| HwcImage::new(s_h, s_w, c, b))
                .collect::<Result<Vec<_>>>()?;
            self.preprocess.batch_f32(&imgs)
        }
    }
}

impl ClipPreprocess {
    /// Read a `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&JsonConfig::open(path)?)
    }

    /// Parse a `preprocessor_config.json` text (`path` names it in errors).
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        Self::from_json(&JsonConfig::parse(text, path)?)
    }

    /// Parse an already-read `preprocessor_config.json`. Keys absent from the file take the
    /// processor's defaults; keys that do not affect CLIP preprocessing are ignored.
    pub fn from_json(c: &JsonConfig) -> Result<Self> {
        let mut p = ClipPreprocess::default();
        p.do_convert_rgb = c.or("do_convert_rgb", p.do_convert_rgb)?;
        p.do_resize = c.or("do_resize", p.do_resize)?;
        p.do_center_crop = c.or("do_center_crop", p.do_center_crop)?;
        p.do_rescale = c.or("do_rescale", p.do_rescale)?;
        p.do_normalize = c.or("do_normalize", p.do_normalize)?;
        let default_to_square = c.or("default_to_square", false)?;
        if c.or("do_pad", false)? {
            return Err(c.unsupported("do_pad", true));
        }

        if let Some(v) = c.get("size") {
            p.size = match v {
                Value::Number(_) if !default_to_square => ResizeTarget::ShortestEdge {
                    shortest: c.convert::<Positive<usize>>("size", v)?.0,
                    longest: None,
                },
                Value::Object(o) if o.contains_key("shortest_edge") => shortest_edge(c, o)?,
                _ => {
                    let (height, width) = height_width(c, "size", v)?;
                    ResizeTarget::Exact { height, width }
                }
            };
        }
        if let Some(v) = c.get("crop_size") {
            p.crop_size = height_width(c, "crop_size", v)?;
        }
        if let Some(code) = c.opt::<i64>("resample")? {
            p.resample =
                Resample::from_pil_code(code).ok_or_else(|| c.unsupported("resample", code))?;
        }
        p.rescale_factor = c.or("rescale_factor", p.rescale_factor)?;
        if let Some(Floats(mean)) = c.opt("image_mean")? {
            p.image_mean = mean;
        }
        if let Some(Floats(std)) = c.opt("image_std")? {
            if std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
                return Err(c.err("image_std", "values must be finite and non-zero"));
            }
            p.image_std = std;
        }
        Ok(p)
    }

    /// Channels of the output for an input with `channels` channels.
    pub fn output_channels(&self, channels: usize) -> usize {
        if self.do_convert_rgb {
            3
        } else {
            channels
        }
    }

    /// Size (height, width) after `resize`, computed as transformers does.
    pub fn resized_hw(&self, height: usize, width: usize) -> (usize, usize) {
        if !self.do_resize {
            return (height, width);
        }
        match self.size {
            ResizeTarget::Exact { height, width } => (height, width),
            ResizeTarget::ShortestEdge {
                shortest,
                longest: None,
            } => {
                // get_resize_output_image_size(default_to_square=False)
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                let new_long = ((shortest * long) as f64 / short as f64) as usize;
                if width <= height {
                    (new_long, shortest)
                } else {
                    (shortest, new_long)
                }
            }
            ResizeTarget::ShortestEdge {
                shortest,
                longest: Some(max_size),
            } => {
                // get_size_with_aspect_ratio
                let (h, w) = (height as f64, width as f64);
                let (min_orig, max_orig) = (h.min(w), h.max(w));
                let mut size = shortest;
                let mut raw = None;
                if max_orig / min_orig * shortest as f64 > max_size as f64 {
                    let r = max_size as f64 * min_orig / max_orig;
                    size = r.round_ties_even() as usize;
                    raw = Some(r);
                }
                let size_f = raw.unwrap_or(size as f64);
                if (height <= width && height == size) || (width <= height && width == size) {
                    (height, width)
                } else if width < height {
                    (((size_f * h) / w) as usize, size)
                } else {
                    (size, ((size_f * w) / h) as usize)
                }
            }
        }
    }

    /// Size (height, width) of the output for an input of `height x width`.
    pub fn output_hw(&self, height: usize, width: usize) -> (usize, usize) {
        if self.do_center_crop {
            self.crop_size
        } else {
            self.resized_hw(height, width)
        }
    }

    fn check_channels(&self, channels: usize) -> Result<()> {
        if channels != 1 && channels != 3 {
            return Err(Error::arg(format!(
                "image has {channels} channels; 1 or 3 are supported"
            )));
        }
        let c = self.output_channels(channels);
        for (name, v) in [
            ("image_mean", &self.image_mean),
            ("image_std", &self.image_std),
        ] {
            if self.do_normalize && v.len() != 1 && v.len() != c {
                return Err(Error::arg(format!(
                    "{name} has {} values for a {c}-channel image",
                    v.len()
                )));
            }
        }
        Ok(())
    }

    /// Preprocess one 8-bit image (HWC, 1 or 3 channels). Returns `[h, w, c]` f32, bit-identical
    /// to `CLIPImageProcessor` output (transposed from CHW).
    pub fn process_u8(&self, img: &HwcImage<u8>) -> Result<Vec<f32>> {
        HwcImage::new(img.height, img.width, img.channels, img.data)?;
        self.check_channels(img.channels)?;
        let (data, c) = self.convert_rgb(img.data, img.channels);
        let (rh, rw) = self.resized_hw(img.height, img.width);
        if rh == 0 || rw == 0 {
            return Err(Error::arg(format!(
                "image of {}x{} resizes to an empty image",
                img.height, img.width
            )));
        }
        let resized = resize_u8(
            &HwcImage::new(img.height, img.width, c, &data)?,
            rh,
            rw,
            self.resample,
        );
        let (cropped, oh, ow) = self.crop(&resized, rh, rw, c)?;
        let scale = if self.do_rescale {
            Some(self.rescale_factor)
        } else {
            None
        };
        Ok(self.finish(cropped.iter().map(|&v| v as f64), oh, ow, c, scale))
    }

    /// Preprocess one float image with values in [0, 1] (HWC, 1 or 3 channels) without 8-bit
    /// quantisation: `x` is treated as the 8-bit value `255 x`. Returns `[h, w, c]` f32.
    pub fn process_f32(&self, img: &HwcImage<f32>) -> Result<Vec<f32>> {
        HwcImage::new(img.height, img.width, img.channels, img.data)?;
        self.check_channels(img.channels)?;
        if let Some(bad) = img.data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(Error::arg(format!(
                "float image value {bad} is outside [0, 1]"
            )));
        }
        let (data, c) = self.convert_rgb(img.data, img.channels);
        let (rh, rw) = self.resized_hw(img.height, img.width);
        if rh == 0 || rw == 0 {
            return Err(Error::arg(format!(
                "image of {}x{} resizes to an empty image",
                img.height, img.width
            )));
        }
        let mut resized = resize_f32(
            &HwcImage::new(img.height, img.width, c, &data)?,
            rh,
            rw,
            self.resample,
        );
        for v in resized.iter_mut() {
            *v = v.clamp(0.0, 1.0);
        }
        let (cropped, oh, ow) = self.crop(&resized, rh, rw, c)?;
        let scale = Some(if self.do_rescale {
            255.0 * self.rescale_factor
        } else {
            255.0
        });
        Ok(self.finish(cropped.iter().map(|&v| v as f64), oh, ow, c, scale))
    }

    /// Preprocess a batch of 8-bit images into an `[n, h, w, c]` host tensor. All images must
    /// produce the same output size (always true with center crop).
    pub fn batch_u8(&self, images: &[HwcImage<u8>]) -> Result<Tensor> {
        let out: Vec<Vec<f32>> = images
            .par_iter()
            .map(|im| self.process_u8(im))
            .collect::<Result<_>>()?;
        self.stack(
            images.iter().map(|im| (im.height, im.width, im.channels)),
            out,
        )
    }

    /// Preprocess a batch of float images in [0, 1] into an `[n, h, w, c]` host tensor.
    pub fn batch_f32(&self, images: &[HwcImage<f32>]) -> Result<Tensor> {
        let out: Vec<Vec<f32>> = images
            .par_iter()
            .map(|im| self.process_f32(im))
            .collect::<Result<_>>()?;
        self.stack(
            images.iter().map(|im| (im.height, im.width, im.channels)),
            out,
        )
    }

    fn stack(
        &self,
        dims: impl Iterator<Item = (usize, usize, usize)>,
        out: Vec<Vec<f32>>,
    ) -> Result<Tensor> {
        let shapes: Vec<[usize; 3]> = dims
            .map(|(h, w, c)| {
                let (oh, ow) = self.output_hw(h, w);
                [oh, ow, self.output_channels(c)]
            })
            .collect();
        let first = *shapes
            .first()
            .ok_or_else(|| Error::arg("empty image batch"))?;
        if let Some(s) = shapes.iter().find(|s| **s != first) {
            return Err(Error::arg(format!(
                "images preprocess to different shapes {first:?} and {s:?}; enable center crop"
            )));
        }
        let n = out.len();
        Ok(Tensor::host(
            vec![n, first[0], first[1], first[2]],
            out.concat(),
        ))
    }

    fn convert_rgb<T: Copy>(&self, data: &[T], channels: usize) -> (Vec<T>, usize) {
        if self.do_convert_rgb && channels == 1 {
            (data.iter().flat_map(|&v| [v, v, v]).collect(), 3)
        } else {
            (data.to_vec(), channels)
        }
    }

    /// The resized `h x w x c` image `x` center-cropped to `crop_size` when `do_center_crop`
    /// (see [`center_crop`]), else `x`; with its height and width.
    fn crop<T: Copy + Default>(
        &self,
        x: &[T],
        h: usize,
        w: usize,
        c: usize,
    ) -> Result<(Vec<T>, usize, usize)> {
        if !self.do_center_crop {
            return Ok((x.to_vec(), h, w));
        }
        let (ch, cw) = self.crop_size;
        Ok(center_crop(&HwcImage::new(h, w, c, x)?, ch, cw))
    }

    /// Rescale (`(x * scale) as f32`, f64 product) and normalise (`(x - mean) / std` in f32).
    fn finish(
        &self,
        x: impl Iterator<Item = f64>,
        h: usize,
        w: usize,
        c: usize,
        scale: Option<f64>,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(h * w * c);
        let pick = |v: &[f32], ch: usize| if v.len() == 1 { v[0] } else { v[ch] };
        for (i, v) in x.enumerate() {
            let mut y = match scale {
                Some(s) => (v * s) as f32,
                None => v as f32,
            };
            if self.do_normalize {
                let ch = i % c;
                y = (y - pick(&self.image_mean, ch)) / pick(&self.image_std, ch);
            }
            out.push(y);
        }
        out
    }

    /// The [`PixelPlan`] of final samples of `height x width x channels` (1 or 3 channels),
    /// 8-bit quantised first when `quantize`.
    pub fn pixel_plan(
        &self,
        height: usize,
        width: usize,
        channels: usize,
        quantize: bool,
    ) -> Result<PixelPlan> {
        self.check_channels(channels)?;
        let (rh, rw) = self.resized_hw(height, width);
        if height == 0 || width == 0 || rh == 0 || rw == 0 {
            return Err(Error::arg(format!(
                "image of {height}x{width} resizes to an empty image"
            )));
        }
        let taps = self
            .do_resize
            .then(|| resize_taps(height, width, rh, rw, self.resample));
        let crop = if self.do_center_crop {
            crop_window(rh, rw, self.crop_size.0, self.crop_size.1)
        } else {
            crop_window(rh, rw, rh, rw)
        };
        let scale = match (quantize, self.do_rescale) {
            (true, true) => Some(self.rescale_factor),
            (true, false) => None,
            (false, true) => Some(255.0 * self.rescale_factor),
            (false, false) => Some(255.0),
        };
        let co = self.output_channels(channels);
        let per_channel = |v: &[f32]| -> Vec<f32> {
            (0..co)
                .map(|ch| if v.len() == 1 { v[0] } else { v[ch] })
                .collect()
        };
        let (mean, std) = if self.do_normalize {
            (per_channel(&self.image_mean), per_channel(&self.image_std))
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(PixelPlan {
            preprocess: self.clone(),
            height,
            width,
            channels,
            quantize,
            resized: (rh, rw),
            taps,
            crop,
            out_channels: co,
            scale,
            mean,
            std,
            device: None,
        })
    }

    /// One-line summary of the settings.
    pub fn describe(&self) -> String {
        let size = match self.size {
            ResizeTarget::ShortestEdge {
                shortest,
                longest: None,
            } => format!("shortest edge {shortest}"),
            ResizeTarget::ShortestEdge {
                shortest,
                longest: Some(l),
            } => format!("shortest edge {shortest} (longest <= {l})"),
            ResizeTarget::Exact { height, width } => format!("{height}x{width}"),
        };
        let mut parts = vec![];
        if self.do_convert_rgb {
            parts.push("rgb".to_string());
        }
        if self.do_resize {
            parts.push(format!("resize {size} {:?}", self.resample).to_lowercase());
        }
        if self.do_center_crop {
            parts.push(format!("crop {}x{}", self.crop_size.0, self.crop_size.1));
        }
        if self.do_rescale {
            parts.push(format!("rescale {:.6}", self.rescale_factor));
        }
        if self.do_normalize {
            parts.push(format!(
                "normalize mean {:?} std {:?}",
                self.image_mean, self.image_std
            ));
        }
        parts.join(", ")
    }

    /// The path of the preprocessor config inside a model directory.
    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("preprocessor_config.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_size_matches_transformers_rounding() {
        let p = ClipPreprocess::default();
        // int(224 * 160 / 107) = 334; portrait images keep the width at 224.
        assert_eq!(p.resized_hw(107, 160), (224, 334));
        assert_eq!(p.resized_hw(160, 107), (334, 224));
        assert_eq!(p.resized_hw(224, 224), (224, 224));
    }
}
