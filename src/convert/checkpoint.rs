//! PyTorch checkpoints (`torch.save` files), read with the `pytorch-reader` crate: no torch or
//! Burn dependency and a light tree (zip, tar, byteorder); it reads the ZIP, legacy and TAR
//! containers, reads each tensor only when asked, and refuses complex and quantized tensors.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use pytorch_reader::{DType, PickleValue, PytorchError, PytorchReader, Tensor};

use crate::error::{Error, Result};

/// Keys under which training code commonly nests a state dict (`{"state_dict": {...}, "step":
/// ...}`), tried in this order when the top level holds no tensors.
pub const WRAPPER_KEYS: &[&str] = &["state_dict", "model", "model_state_dict"];

/// A checkpoint's tensors by state-dict name, their bytes not yet read.
pub struct Checkpoint {
    path: PathBuf,
    wrapper: Option<String>,
    tensors: HashMap<String, Tensor>,
}

/// The error for a file the reader could not parse.
fn unreadable(path: &Path, e: PytorchError) -> Error {
    let kind = match &e {
        PytorchError::Io(io) => io.kind(),
        _ => io::ErrorKind::InvalidData,
    };
    Error::io(
        path,
        io::Error::new(kind, format!("not a readable PyTorch checkpoint: {e}")),
    )
}

/// The error for a checkpoint whose content is not what a state dict holds.
fn not_a_state_dict(path: &Path, msg: String) -> Error {
    Error::io(
        path,
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a state dict: {msg}"),
        ),
    )
}

impl Checkpoint {
    /// Open the checkpoint `path`: its tensors at the top level, or else under the first of
    /// [`WRAPPER_KEYS`] that holds a dictionary. A file that is not a PyTorch checkpoint (or is
    /// truncated), a top level without tensors or such a key, and a checkpoint without any
    /// tensor are errors naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let top = PytorchReader::read_pickle_data(path, None).map_err(|e| unreadable(path, e))?;
        let wrapper = match &top {
            PickleValue::Dict(d) if !d.values().any(is_tensor) => {
                let key = WRAPPER_KEYS
                    .iter()
                    .find(|k| matches!(d.get(**k), Some(PickleValue::Dict(_))));
                match key {
                    Some(k) => Some(k.to_string()),
                    None => {
                        let mut keys: Vec<&str> = d.keys().map(String::as_str).collect();
                        keys.sort_unstable();
                        return Err(not_a_state_dict(
                            path,
                            format!(
                                "no tensors at the top level and no dictionary under {} \
                                 (top-level keys: {})",
                                WRAPPER_KEYS.join(", "),
                                keys.join(", ")
                            ),
                        ));
                    }
                }
            }
            _ => None,
        };
        let reader = match &wrapper {
            Some(k) => PytorchReader::with_top_level_key(path, k),
            None => PytorchReader::new(path),
        }
        .map_err(|e| unreadable(path, e))?;
        let tensors = reader.into_tensors();
        if tensors.is_empty() {
            return Err(not_a_state_dict(path, "it holds no tensors".into()));
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            wrapper,
            tensors,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The top-level key the state dict was found under, if it was nested.
    pub fn wrapper(&self) -> Option<&str> {
        self.wrapper.as_deref()
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The shape of the tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(Tensor::shape)
    }

    /// An error unless the tensor `name` is stored as F32, F16 or BF16 (the types
    /// [`Self::read_f32`] widens).
    pub fn check_float(&self, name: &str) -> Result<()> {
        let t = self.get(name)?;
        match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => Ok(()),
            other => Err(Error::DType {
                path: self.path.clone(),
                key: name.into(),
                dtype: format!("{other:?}"),
            }),
        }
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            key: name.into(),
        })
    }

    /// The values of the tensor `name`, row-major, widened to f32. A storage the file does not
    /// hold in full (a truncated file), another dtype and a non-finite value are errors naming
    /// the file and the tensor.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.check_float(name)?;
        let t = self.get(name)?;
        let bytes = t.read().map_err(|e| Error::io(&self.path, e))?;
        // `Tensor::read` gives native-endian bytes.
        let values: Vec<f32> = match t.dtype() {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_ne_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_ne_bytes([c[0], c[1]]).to_f32())
                .collect(),
        };
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                path: self.path.clone(),
                key: name.into(),
            });
        }
        Ok(values)
    }
}

/// Whether a pickled value is a tensor.
fn is_tensor(v: &PickleValue) -> bool {
    matches!(v, PickleValue::Unsupported(t) if t == "torch.Tensor")
}
