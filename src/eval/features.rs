//! Feature sets for evaluation: read from `.npy`, or encoded from image folders by an extractor
//! (with an on-disk cache, so a large reference folder is encoded once).

use std::path::{Path, PathBuf};

use super::FeatureSet;
use crate::error::{Error, Result};
use crate::io::fs::write_atomic;
use crate::io::images_in::list_images;
use crate::io::members::load_png_u8;
use crate::io::npy;
use crate::models::clip::ClipVision;

/// Images sent through the extractor at once.
const IMAGES_PER_BATCH: usize = 64;

/// A float32 `.npy` of shape `[N, D]` as a feature set.
pub fn load_features(path: &Path) -> Result<FeatureSet> {
    let a = npy::read(path)?;
    if a.shape.len() != 2 {
        return Err(Error::arg(format!(
            "{}: features must be a 2-D array [N, D], got shape {:?}",
            path.display(),
            a.shape
        )));
    }
    FeatureSet::new(
        &path.display().to_string(),
        a.shape[0],
        a.shape[1],
        a.to_f32(),
    )
}

/// The extractor's features of the images `paths` (8-bit, as stored), in that order.
pub fn encode_images(clip: &ClipVision, paths: &[PathBuf]) -> Result<FeatureSet> {
    let mut data = Vec::with_capacity(paths.len() * clip.dim());
    for chunk in paths.chunks(IMAGES_PER_BATCH) {
        let imgs = chunk
            .iter()
            .map(|p| load_png_u8(p))
            .collect::<Result<Vec<_>>>()?;
        data.extend(clip.features_of_decoded(&imgs)?);
    }
    FeatureSet::new("encoded images", paths.len(), clip.dim(), data)
}

/// A features cache: `<path>.npy` beside `<path>.json` (whatever extension `path` has), which
/// records the extractor's fingerprint and the image list (names and sizes) the features came
/// from. A cache that does not match is recomputed and replaced.
pub struct FeatureCache {
    pub path: PathBuf,
}

impl FeatureCache {
    fn key(clip: &ClipVision, dir: &Path, paths: &[PathBuf]) -> Result<serde_json::Value> {
        let files = paths
            .iter()
            .map(|p| {
                let size = std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len();
                let name = p.strip_prefix(dir).unwrap_or(p).display().to_string();
                Ok(serde_json::json!([name, size]))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(serde_json::json!({
            "extractor_fingerprint": clip.fingerprint(),
            "folder": dir.display().to_string(),
            "files": files,
        }))
    }

    fn meta_path(&self) -> PathBuf {
        self.path.with_extension("json")
    }

    fn npy_path(&self) -> PathBuf {
        self.path.with_extension("npy")
    }

    /// The features of every image under `dir`: from the cache when it matches, otherwise
    /// encoded and written to the cache. Returns the set and whether the cache served it.
    pub fn features_of_folder(&self, clip: &ClipVision, dir: &Path) -> Result<(FeatureSet, bool)> {
        let paths = list_images(dir)?;
        let key = Self::key(clip, dir, &paths)?;
        let cached = std::fs::read_to_string(self.meta_path())
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v == key)
            && self.npy_path().exists();
        if cached {
            let set = load_features(&self.npy_path())?;
            if set.n == paths.len() && set.dim == clip.dim() {
                return Ok((set, true));
            }
        }
        let set = encode_images(clip, &paths)?;
        npy::write_f32(&self.npy_path(), &[set.n, set.dim], &set.data)?;
        let text =
            serde_json::to_string(&key).map_err(|e| Error::arg(format!("cache key: {e}")))?;
        write_atomic(&self.meta_path(), text.as_bytes())?;
        Ok((set, false))
    }
}
