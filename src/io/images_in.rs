//! Training images for the Laplace fit: listing a folder and turning a file into model-space
//! pixels the way diffusion training pipelines do (PIL `convert`, torchvision `CenterCrop`,
//! `RandomHorizontalFlip`, `ToTensor`, `Normalize(0.5, 0.5)`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File extensions read as training images (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        // `metadata` follows symbolic links, so linked folders and files are included.
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            walk(&path, out)?;
        } else if meta.is_file() && is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// All `.png`, `.jpg` and `.jpeg` files under `dir` (recursively), sorted by path. A folder that
/// cannot be read, or that holds no such file, is an error naming it.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    if out.is_empty() {
        return Err(Error::Image {
            path: dir.to_path_buf(),
            msg: "no training images (.png, .jpg, .jpeg) in this folder or its subfolders".into(),
        });
    }
    out.sort();
    Ok(out)
}

/// Class labels of `paths` (all under `dir`) from the first-level subfolder each lies in, as
/// torchvision's `ImageFolder` assigns them: folders sorted by name get labels 0, 1, ...; when
/// every folder name is a non-negative integer, the number itself is the label. Returns the
/// labels and the folder names in label order (for integer names: the distinct names, sorted by
/// value). An image directly in `dir` is an error naming it.
pub fn class_labels(dir: &Path, paths: &[PathBuf]) -> Result<(Vec<usize>, Vec<String>)> {
    let mut folders = Vec::with_capacity(paths.len());
    for p in paths {
        let rel = p.strip_prefix(dir).map_err(|_| Error::Image {
            path: p.clone(),
            msg: format!("not inside the training folder {}", dir.display()),
        })?;
        let mut comps = rel.components();
        let first = comps
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        match (first, comps.next()) {
            (Some(f), Some(_)) => folders.push(f),
            _ => {
                return Err(Error::Image {
                    path: p.clone(),
                    msg: format!(
                        "a class-conditional model needs its training images in one subfolder per class of {}",
                        dir.display()
                    ),
                })
            }
        }
    }
    let numeric: Option<Vec<usize>> = folders.iter().map(|f| f.parse::<usize>().ok()).collect();
    if let Some(labels) = numeric {
        let names: BTreeSet<usize> = labels.iter().copied().collect();
        return Ok((labels, names.into_iter().map(|n| n.to_string()).collect()));
    }
    let names: Vec<String> = folders
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels = folders
        .iter()
        .map(|f| {
            names
                .binary_search(f)
                .expect("every folder is among the names")
        })
        .collect();
    Ok((labels, names))
}

/// PIL's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point, rounded).
#[inline]
fn pil_luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// Offset of a centered crop of `size` from `len`, as torchvision's `CenterCrop`:
/// `int(round((len - size) / 2))` with Python's ties-to-even rounding.
pub fn center_crop_offset(len: usize, size: usize) -> usize {
    ((len - size) as f64 / 2.0).round_ties_even() as usize
}

/// Load one training image as model-space pixels: HWC `[size, size, channels]` f32 in [-1, 1].
///
/// Conversion to `channels` follows PIL: 3 -> `convert("RGB")` (gray replicated, alpha dropped),
/// 1 -> `convert("L")` (601-2 luma). The image is center-cropped to `size x size` (never
/// resized; see [`center_crop_offset`]); `flip` mirrors it left-right after cropping. Values are
/// `(v / 255 - 0.5) / 0.5` in f32. An image smaller than `size` in either dimension, an
/// undecodable file or another channel count is an error naming the file.
pub fn load_training_image(
    path: &Path,
    size: usize,
    channels: usize,
    flip: bool,
) -> Result<Vec<f32>> {
    if channels != 1 && channels != 3 {
        return Err(Error::Image {
            path: path.to_path_buf(),
            msg: format!(
                "training images can be loaded for models with 1 or 3 channels, not {channels}"
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img = crate::io::codec::decode(&bytes).map_err(|e| Error::Image {
        path: path.to_path_buf(),
        msg: format!("cannot decode image: {e}"),
    })?;
    let (w, h) = (img.w, img.h);
    if w < size || h < size {
        return Err(Error::Image {
            path: path.to_path_buf(),
            msg: format!(
                "image is {w}x{h} (width x height), smaller than the model's {size}x{size}; \
                 training images are center-cropped to the model size, never upscaled"
            ),
        });
    }
    let top = center_crop_offset(h, size);
    let left = center_crop_offset(w, size);
    let mut out = Vec::with_capacity(size * size * channels);
    let to_model = |v: u8| (f32::from(v) / 255.0 - 0.5) / 0.5;
    for y in 0..size {
        for x in 0..size {
            let sx = if flip { size - 1 - x } else { x };
            // A gray file's pixel is (v, v, v) in RGB (and its luma is v again).
            let i = ((top + y) * w + left + sx) * img.c;
            let px = &img.pixels[i..i + img.c];
            let (r, g, b) = if img.c == 1 {
                (px[0], px[0], px[0])
            } else {
                (px[0], px[1], px[2])
            };
            if channels == 3 {
                out.extend([to_model(r), to_model(g), to_model(b)]);
            } else {
                out.push(to_model(pil_luma(r, g, b)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_round_ties_to_even_like_python() {
        assert_eq!(center_crop_offset(8, 8), 0);
        assert_eq!(center_crop_offset(9, 8), 0); // round(0.5) = 0
        assert_eq!(center_crop_offset(11, 8), 2); // round(1.5) = 2
        assert_eq!(center_crop_offset(13, 8), 2); // round(2.5) = 2
        assert_eq!(center_crop_offset(15, 8), 4); // round(3.5) = 4
    }

    #[test]
    fn luma_of_gray_is_identity() {
        for v in 0..=255u8 {
            assert_eq!(pil_luma(v, v, v), v);
        }
    }
}
