//! The output folder's lifecycle.
//!
//! A job writes into `<out>.partial/` and renames it to `<out>` only when every file is written,
//! so a folder named `<out>` is always complete. A resumable job records its settings in
//! `run.json` and its finished batches as chunk files; started again with the same settings it
//! keeps them, with other settings it refuses (or starts over with `overwrite`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::fs::write_atomic;

/// An output folder being written.
pub(crate) struct RunDir {
    out: PathBuf,
    part: PathBuf,
}

/// Map an I/O error to the crate's error, naming `path`.
pub(crate) fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io(path, e))
}

impl RunDir {
    /// A fresh folder for a job that does not resume: a stale `<out>.partial` is removed.
    pub fn create(out: &Path, overwrite: bool) -> Result<RunDir> {
        let dir = RunDir::new(out, overwrite)?;
        if dir.part.exists() {
            io(&dir.part, std::fs::remove_dir_all(&dir.part))?;
        }
        io(&dir.part, std::fs::create_dir_all(&dir.part))?;
        Ok(dir)
    }

    /// The folder of a resumable job with settings `identity`: an unfinished run with the same
    /// settings is continued (its chunks are kept); one with other settings is an error, or is
    /// removed with `overwrite`.
    pub fn resume_or_create(
        out: &Path,
        overwrite: bool,
        identity: &serde_json::Value,
    ) -> Result<RunDir> {
        let dir = RunDir::new(out, overwrite)?;
        let run_json = dir.run_json();
        if dir.part.exists() {
            let same = std::fs::read_to_string(&run_json)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| &v == identity);
            if !same {
                if overwrite {
                    io(&dir.part, std::fs::remove_dir_all(&dir.part))?;
                } else {
                    return Err(Error::arg(format!(
                        "{} holds an unfinished run with other settings; remove it or use --overwrite",
                        dir.part.display()
                    )));
                }
            }
        }
        dir.create_dir("chunks")?;
        dir.create_dir("images")?;
        write_atomic(&run_json, pretty(identity).as_bytes())?;
        Ok(dir)
    }

    /// An existing non-empty output folder is an error unless `overwrite` (finished work is
    /// never replaced by accident).
    fn new(out: &Path, overwrite: bool) -> Result<RunDir> {
        let nonempty = out.exists()
            && std::fs::read_dir(out)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true);
        if nonempty && !overwrite {
            return Err(Error::arg(format!(
                "output folder {} already exists and is not empty (use --overwrite to replace it)",
                out.display()
            )));
        }
        let mut part = out.as_os_str().to_owned();
        part.push(".partial");
        Ok(RunDir {
            out: out.to_path_buf(),
            part: PathBuf::from(part),
        })
    }

    /// A path inside the folder being written.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.part.join(name)
    }

    /// Create a sub-folder (and its parents) of the folder being written.
    pub fn create_dir(&self, name: impl AsRef<Path>) -> Result<PathBuf> {
        let p = self.part.join(name);
        io(&p, std::fs::create_dir_all(&p))?;
        Ok(p)
    }

    /// Samples (all `K` members, NCHW) of the batch starting at sample `start`; its presence
    /// marks the batch finished.
    pub fn chunk(&self, start: usize) -> PathBuf {
        self.part.join("chunks").join(format!("{start:06}.npy"))
    }

    /// Member features of the batch starting at sample `start`.
    pub fn feature_chunk(&self, start: usize) -> PathBuf {
        self.part
            .join("chunks")
            .join(format!("{start:06}.features.npy"))
    }

    fn run_json(&self) -> PathBuf {
        self.part.join("run.json")
    }

    /// Drop the resume state (chunks, `run.json`) and move the folder to its final name,
    /// replacing what was there.
    pub fn publish(self) -> Result<PathBuf> {
        let chunks = self.part.join("chunks");
        if chunks.exists() {
            io(&chunks, std::fs::remove_dir_all(&chunks))?;
        }
        let run_json = self.run_json();
        if run_json.exists() {
            io(&run_json, std::fs::remove_file(&run_json))?;
        }
        if self.out.exists() {
            io(&self.out, std::fs::remove_dir_all(&self.out))?;
        }
        io(&self.out, std::fs::rename(&self.part, &self.out))?;
        Ok(self.out)
    }
}

/// Pretty JSON text of a value built by the crate (always serialisable).
pub(crate) fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("a serde_json::Value always serialises")
}
