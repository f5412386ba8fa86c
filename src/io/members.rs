//! Reader of member image folders in the layout of the paper's reference code:
//! `DIR/<m>/imgs/<NNNNN>.png` for members `m = 0..K` (member 0 = the MAP model, members 1.. =
//! posterior draws), the same image indices in every member. Used to score images generated
//! elsewhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The members found under a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSet {
    /// The folder holding `0/`, `1/`, ...
    pub dir: PathBuf,
    /// Number of members `K` including the MAP member 0 (so `K - 1` posterior draws); >= 2.
    pub members: usize,
    /// Image indices present in every member, ascending.
    pub indices: Vec<usize>,
}

impl MemberSet {
    /// Path of image `index` of member `m`: `DIR/<m>/imgs/<index:05>.png`.
    pub fn image_path(&self, m: usize, index: usize) -> PathBuf {
        member_image_path(&self.dir, m, index)
    }
}

/// `dir/<m>/imgs/<index:05>.png`.
pub fn member_image_path(dir: &Path, m: usize, index: usize) -> PathBuf {
    dir.join(m.to_string())
        .join("imgs")
        .join(format!("{index:05}.png"))
}

fn err(path: impl Into<PathBuf>, msg: impl Into<String>) -> Error {
    Error::Image {
        path: path.into(),
        msg: msg.into(),
    }
}

/// Indices of the `NNNNN.png` files (at least five digits) in `imgs`; other files are ignored.
fn image_indices(imgs: &Path) -> Result<BTreeSet<usize>> {
    let rd = std::fs::read_dir(imgs).map_err(|e| Error::io(imgs, e))?;
    let mut out = BTreeSet::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(imgs, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".png") else {
            continue;
        };
        if stem.len() >= 5 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(i) = stem.parse::<usize>() {
                if format!("{i:05}") == stem {
                    out.insert(i);
                }
            }
        }
    }
    Ok(out)
}

/// Scan `dir` for member folders `0, 1, ..., K-1` (every numeric subfolder counts; other entries
/// are ignored) and their `imgs/NNNNN.png` files.
///
/// Errors, each naming the offending path: `dir` unreadable; fewer than two members; a gap in
/// the member numbers; a member without `imgs/`; member 0 without images; a member missing an
/// image that member 0 has, or having one member 0 lacks.
pub fn scan_members(dir: &Path) -> Result<MemberSet> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found = BTreeSet::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let is_dir = entry
            .file_type()
            .map_err(|e| Error::io(entry.path(), e))?
            .is_dir()
            || entry.path().is_dir();
        let name = entry.file_name();
        if let (true, Some(name)) = (is_dir, name.to_str()) {
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(m) = name.parse::<usize>() {
                    if m.to_string() == name {
                        found.insert(m);
                    }
                }
            }
        }
    }
    let members = found.len();
    if members < 2 {
        return Err(err(
            dir,
            format!(
                "need member folders 0 (MAP) and at least 1 posterior draw (0/imgs, 1/imgs, ...), found {}",
                if found.is_empty() { "none".to_string() } else { format!("{found:?}") }
            ),
        ));
    }
    if let Some(missing) = (0..members).find(|m| !found.contains(m)) {
        return Err(err(
            dir.join(missing.to_string()),
            format!(
                "member folder missing (members found: {found:?}; they must be numbered 0..K-1)"
            ),
        ));
    }
    let imgs = |m: usize| dir.join(m.to_string()).join("imgs");
    for m in 0..members {
        if !imgs(m).is_dir() {
            return Err(err(imgs(m), "member folder has no `imgs` folder"));
        }
    }
    let reference = image_indices(&imgs(0))?;
    if reference.is_empty() {
        return Err(err(imgs(0), "no NNNNN.png images in member 0 (MAP)"));
    }
    for m in 1..members {
        let got = image_indices(&imgs(m))?;
        if let Some(&i) = reference.difference(&got).next() {
            let n = reference.difference(&got).count();
            return Err(err(
                member_image_path(dir, m, i),
                format!("missing: member 0 has this image, member {m} does not ({n} such images in member {m})"),
            ));
        }
        if let Some(&i) = got.difference(&reference).next() {
            let n = got.difference(&reference).count();
            return Err(err(
                member_image_path(dir, 0, i),
                format!("missing: member {m} has this image, member 0 does not ({n} such images)"),
            ));
        }
    }
    Ok(MemberSet {
        dir: dir.to_path_buf(),
        members,
        indices: reference.into_iter().collect(),
    })
}

/// Decode image `index` of member `m`: `(pixels [h, w, c], h, w, c)`, 8 bits, c = 1 for grayscale
/// files and 3 otherwise (an alpha channel is dropped, as CLIP preprocessing's RGB conversion
/// does).
pub fn load_member_image(
    set: &MemberSet,
    m: usize,
    index: usize,
) -> Result<(Vec<u8>, usize, usize, usize)> {
    let path = set.image_path(m, index);
    if m >= set.members {
        return Err(err(
            path,
            format!("member {m} out of range (K = {})", set.members),
        ));
    }
    if set.indices.binary_search(&index).is_err() {
        return Err(err(
            path,
            format!("image index {index} is not in the scanned set"),
        ));
    }
    load_png_u8(&path)
}

/// Decode an image file to 8-bit `(pixels [h, w, c], h, w, c)`, c = 1 (gray) or 3.
pub fn load_png_u8(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_png_u8(&bytes, path)
}

/// Decode the bytes of an image file (PNG, or JPEG) as [`load_png_u8`] does; `path` names them
/// in errors. Any input gives an image or an error, never a panic.
pub fn decode_png_u8(bytes: &[u8], path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let d = crate::io::codec::decode(bytes)
        .map_err(|e| err(path, format!("cannot decode image: {e}")))?;
    Ok((d.pixels, d.h, d.w, d.c))
}
