//! The output folder's lifecycle.
//!
//! A job writes into `<out>.partial/` and renames it to `<out>` only when every file is written,
//! so a folder named `<out>` is always complete. A resumable job records its settings in
//! `run.json` and its finished batches as chunk files; started again with the same settings it
//! keeps them, with other settings it refuses (or starts over with `overwrite`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::fs::write_atomic;

/// An output folder being written (by this process alone: see [`Lock`]).
pub(crate) struct RunDir {
    out: PathBuf,
    part: PathBuf,
    _lock: Lock,
}

/// An exclusive claim on an output folder: `<out>.lock`, created only if absent, holding the
/// owner's process id, removed when the writer finishes or fails. A lock whose process no longer
/// runs is stale and taken over.
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn take(out: &Path) -> Result<Lock> {
        let mut path = out.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write as _;
                    io(&path, write!(f, "{}", std::process::id()))?;
                    return Ok(Lock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok());
                    let alive = owner.is_none_or(|pid| {
                        !cfg!(target_os = "linux") || Path::new(&format!("/proc/{pid}")).exists()
                    });
                    if alive {
                        return Err(Error::arg(format!(
                            "another uqengine process{} is writing {} (lock file {}); wait for it to finish, or delete the lock file if no such process runs",
                            owner.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                            out.display(),
                            path.display()
                        )));
                    }
                    // Stale: its process is gone.
                    io(&path, std::fs::remove_file(&path))?;
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::arg(format!(
            "could not take the lock file {}",
            path.display()
        )))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Map an I/O error to the crate's error, naming `path`.
pub(crate) fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io(path, e))
}

impl RunDir {
    /// A fresh folder for a job that does not resume: a stale `<out>.partial` is removed, but
    /// not an unfinished sample run's (without `overwrite`).
    pub fn create(out: &Path, overwrite: bool) -> Result<RunDir> {
        let dir = RunDir::new(out, overwrite)?;
        if dir.run_json().exists() && !overwrite {
            return Err(Error::arg(format!(
                "{} holds an unfinished sample run; finish it, remove it, or use --overwrite to discard it",
                dir.part.display()
            )));
        }
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
            let recorded = std::fs::read_to_string(&run_json)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            if recorded.as_ref() != Some(identity) {
                if overwrite {
                    io(&dir.part, std::fs::remove_dir_all(&dir.part))?;
                } else {
                    let what = match &recorded {
                        Some(r) => {
                            let mut diff = Vec::new();
                            differences(r, identity, "", &mut diff);
                            format!(
                                "other settings or inputs (unfinished vs now: {})",
                                diff.join(", ")
                            )
                        }
                        None => "no readable run.json (not an unfinished sample run)".to_string(),
                    };
                    return Err(Error::arg(format!(
                        "{} holds an unfinished run with {what}; remove it, or use --overwrite to discard it",
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
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            io(parent, std::fs::create_dir_all(parent))?;
        }
        let lock = Lock::take(out)?;
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
            _lock: lock,
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

    /// Scores (`[n]`, f32) of the batch starting at sample `start`.
    pub fn score_chunk(&self, start: usize) -> PathBuf {
        self.part
            .join("chunks")
            .join(format!("{start:06}.scores.npy"))
    }

    /// Member features of the batch starting at sample `start` (kept with `--save-members`).
    pub fn feature_chunk(&self, start: usize) -> PathBuf {
        self.part
            .join("chunks")
            .join(format!("{start:06}.features.npy"))
    }

    /// The record of a finished batch: its files and their checksums (written last).
    pub fn batch_record(&self, start: usize) -> PathBuf {
        self.part
            .join("chunks")
            .join(format!("{start:06}.done.json"))
    }

    /// `path` (inside the folder being written) relative to the folder.
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.part)
            .unwrap_or(path)
            .display()
            .to_string()
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

/// The keys (dotted paths) where two JSON values differ, with both values.
pub(crate) fn differences(
    a: &serde_json::Value,
    b: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &p,
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{prefix} {a} vs {b}")),
        _ => {}
    }
}
