//! Converters from other projects' checkpoints into the diffusers model directories the engine
//! reads (`config.json`, `diffusion_pytorch_model.safetensors`,
//! `scheduler/scheduler_config.json`).
//!
//! - [`adm`]: OpenAI guided-diffusion (ADM) `UNetModel` checkpoints.
//!
//! The pieces every converter shares: [`checkpoint::Checkpoint`], a PyTorch checkpoint read
//! tensor by tensor; [`OutDtype`], the storage type of the written weights; [`StagedDir`], an
//! output directory built beside its final path and renamed into place only when complete;
//! [`write_weights`], a safetensors file written one tensor at a time; [`write_json`].

pub mod adm;
pub mod checkpoint;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::View;
use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::io::fs::write_atomic;

/// The storage type of converted weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl OutDtype {
    /// `f32`, `f16` or `bf16`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(OutDtype::F32),
            "f16" => Ok(OutDtype::F16),
            "bf16" => Ok(OutDtype::Bf16),
            other => Err(Error::arg(format!(
                "dtype `{other}`: expected f32, f16 or bf16"
            ))),
        }
    }

    /// The name [`Self::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            OutDtype::F32 => "f32",
            OutDtype::F16 => "f16",
            OutDtype::Bf16 => "bf16",
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            OutDtype::F32 => Dtype::F32,
            OutDtype::F16 => Dtype::F16,
            OutDtype::Bf16 => Dtype::BF16,
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            OutDtype::F32 => 4,
            OutDtype::F16 | OutDtype::Bf16 => 2,
        }
    }

    /// `values` in this type (rounded to nearest, ties to even), little-endian; `Err(i)` when
    /// the finite value `values[i]` lies beyond the type's range.
    pub fn encode(self, values: &[f32]) -> std::result::Result<Vec<u8>, usize> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        for (i, &v) in values.iter().enumerate() {
            match self {
                OutDtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
                OutDtype::F16 => {
                    let h = half::f16::from_f32(v);
                    if v.is_finite() && !h.is_finite() {
                        return Err(i);
                    }
                    out.extend_from_slice(&h.to_le_bytes());
                }
                OutDtype::Bf16 => {
                    let h = half::bf16::from_f32(v);
                    if v.is_finite() && !h.is_finite() {
                        return Err(i);
                    }
                    out.extend_from_slice(&h.to_le_bytes());
                }
            }
        }
        Ok(out)
    }
}

/// The error for an output directory that exists and holds files.
fn refuse(dest: &Path) -> Error {
    Error::io(
        dest,
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not empty; give a new directory",
        ),
    )
}

/// An error unless `dest` is absent or an empty directory.
pub fn check_out_dir(dest: &Path) -> Result<()> {
    match std::fs::read_dir(dest) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(refuse(dest)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dest, e)),
    }
}

/// An output directory under construction: written at a hidden sibling of its final path
/// (`.NAME.partial-PID`) and renamed into place by [`StagedDir::commit`]. Dropped uncommitted
/// (a failed conversion), it is removed, so a directory found at the final path is always
/// complete.
pub struct StagedDir {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Start the directory `dest`, which must be absent or empty (see [`check_out_dir`]); its
    /// parent directories are created.
    pub fn create(dest: &Path) -> Result<Self> {
        check_out_dir(dest)?;
        let name = dest
            .file_name()
            .ok_or_else(|| Error::arg(format!("{}: not a directory name", dest.display())))?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let tmp = parent.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(StagedDir {
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    /// Where the files go until [`Self::commit`].
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Move the finished directory to its final path (replacing an empty directory there).
    pub fn commit(mut self) -> Result<PathBuf> {
        check_out_dir(&self.dest)?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the directory is hidden and named as partial either way.
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Write `value` to `path` as pretty-printed JSON, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("a serde_json::Value serialises");
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// A tensor of an output weight file whose f32 values are produced when the file is written,
/// so only one tensor is in memory at a time.
pub struct LazyTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    /// The values, row-major, `shape.iter().product()` of them.
    pub values: Box<dyn Fn() -> Result<Vec<f32>> + 'a>,
}

/// One [`LazyTensor`] as the safetensors writer sees it. The writer cannot fail a tensor, so
/// the first error is kept in `failed` (and zeros written in its place) for
/// [`write_weights`] to return.
struct Encoded<'t, 'a> {
    tensor: &'t LazyTensor<'a>,
    dtype: OutDtype,
    failed: &'t RefCell<Option<Error>>,
}

impl Encoded<'_, '_> {
    fn bytes(&self) -> Result<Vec<u8>> {
        let t = self.tensor;
        let values = (t.values)()?;
        let n: usize = t.shape.iter().product();
        if values.len() != n {
            return Err(Error::arg(format!(
                "tensor `{}`: {} values for shape {:?}",
                t.name,
                values.len(),
                t.shape
            )));
        }
        self.dtype.encode(&values).map_err(|i| {
            Error::arg(format!(
                "--dtype {}: tensor `{}` holds {}, beyond the range of {}; use f32{}",
                self.dtype.as_str(),
                t.name,
                values[i],
                self.dtype.as_str(),
                if self.dtype == OutDtype::F16 {
                    " or bf16"
                } else {
                    ""
                }
            ))
        })
    }
}

impl View for Encoded<'_, '_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if self.failed.borrow().is_none() {
            match self.bytes() {
                Ok(b) => return Cow::Owned(b),
                Err(e) => *self.failed.borrow_mut() = Some(e),
            }
        }
        Cow::Owned(vec![0; self.data_len()])
    }

    fn data_len(&self) -> usize {
        self.tensor.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Write `tensors` to the safetensors file `path` in `dtype`, with `metadata` in its header,
/// one tensor at a time (through a temporary file in the same folder, then renamed). The first
/// error of a tensor's values is returned, after which `path` must be discarded.
pub fn write_weights(
    path: &Path,
    tensors: &[LazyTensor],
    dtype: OutDtype,
    metadata: HashMap<String, String>,
) -> Result<()> {
    // The writer's temporary file is private (0600); the weights get the permissions a new
    // file has, like the directory's other files.
    let permissions = std::fs::File::create(path)
        .and_then(|f| f.metadata())
        .map_err(|e| Error::io(path, e))?
        .permissions();
    let failed = RefCell::new(None);
    let views = tensors.iter().map(|t| {
        (
            t.name.clone(),
            Encoded {
                tensor: t,
                dtype,
                failed: &failed,
            },
        )
    });
    let written = safetensors::serialize_to_file(views, Some(metadata), path);
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    written.map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    std::fs::set_permissions(path, permissions).map_err(|e| Error::io(path, e))?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}
