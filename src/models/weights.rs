//! Safetensors weight files, read into f32 and addressed hierarchically
//! (`w.root().pp("down_blocks").pp(0).get("conv.weight", &[..])`), close to the checkpoint's own
//! naming. F32, F16 and BF16 tensors are accepted; every error names the file and key.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// All tensors of one safetensors file, converted to f32.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    dtype: String,
    hash: u64,
    /// When set, every requested tensor exists and is synthesised from this seed (benchmarks).
    synthetic: Option<u64>,
}

/// 64-bit FNV-1a over bytes: a cheap content fingerprint (not cryptographic).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The safetensors reader's message, with the tensor it is about when the message does not name
/// one (an entry whose shape and dtype do not match its data offsets, or whose data lies outside
/// the file).
pub fn explain_safetensors_error(bytes: &[u8], msg: &str) -> String {
    let tensor = (|| {
        let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
        let header: serde_json::Value =
            serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
        let data_len = bytes.len() - 8 - n;
        for (name, info) in header.as_object()? {
            if name == "__metadata__" {
                continue;
            }
            let size = match info["dtype"].as_str()? {
                "F64" | "I64" | "U64" => 8,
                "F32" | "I32" | "U32" => 4,
                "F16" | "BF16" | "I16" | "U16" => 2,
                _ => 1,
            };
            let elems = info["shape"]
                .as_array()?
                .iter()
                .try_fold(1u64, |acc, d| acc.checked_mul(d.as_u64()?));
            let offsets = info["data_offsets"].as_array()?;
            let (start, end) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
            let fits = end >= start && end as usize <= data_len;
            if !fits || elems.and_then(|e| e.checked_mul(size)) != Some(end - start) {
                return Some(name.clone());
            }
        }
        None
    })();
    match tensor {
        Some(name) if !msg.contains(&name) => format!("{msg} (tensor `{name}`: its shape, dtype and data offsets do not agree with each other or with the file size)"),
        _ => msg.to_string(),
    }
}

impl Weights {
    /// Read and convert every tensor of `path`. Truncated or corrupted files, unsupported dtypes
    /// and non-finite values are errors naming the file (and key).
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parse safetensors bytes; `path` is used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            msg: explain_safetensors_error(bytes, &e.to_string()),
        })?;
        let mut tensors = HashMap::new();
        let mut dtype = String::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let vals: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(Error::DType {
                        path: path.to_path_buf(),
                        key: name,
                        dtype: format!("{other:?}"),
                    })
                }
            };
            if vals.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    path: path.to_path_buf(),
                    key: name,
                });
            }
            if dtype.is_empty() {
                dtype = format!("{:?}", view.dtype()).to_lowercase();
            }
            tensors.insert(name, (view.shape().to_vec(), vals));
        }
        Ok(Weights {
            path: path.to_path_buf(),
            tensors,
            dtype,
            hash: fnv1a64(bytes),
            synthetic: None,
        })
    }

    /// Build from named f32 tensors (tests, synthetic models).
    pub fn from_tensors(path: &Path, tensors: HashMap<String, (Vec<usize>, Vec<f32>)>) -> Self {
        Weights {
            path: path.to_path_buf(),
            tensors,
            dtype: "f32".into(),
            hash: 0,
            synthetic: None,
        }
    }

    /// A weight source in which every requested tensor exists, filled deterministically from
    /// `seed` and the tensor's name: normal / sqrt(fan_in) for weights, 1 for norm scales, small
    /// values for biases. For benchmarks of real architectures without their checkpoints.
    pub fn synthetic(seed: u64) -> Self {
        Weights {
            path: PathBuf::from("<synthetic>"),
            tensors: HashMap::new(),
            dtype: "f32".into(),
            hash: seed,
            synthetic: Some(seed),
        }
    }

    fn synthesise(seed: u64, key: &str, shape: &[usize]) -> Vec<f32> {
        use crate::rng::{Purpose, Stream};
        let n: usize = shape.iter().product();
        let is_norm = key.contains("norm");
        if is_norm && key.ends_with(".weight") {
            return vec![1.0; n];
        }
        let mut v = vec![0.0f32; n];
        Stream::new(seed ^ fnv1a64(key.as_bytes()), 0, Purpose::WeightDraw, 0).fill_normal(&mut v);
        let scale = if shape.len() >= 2 {
            1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt()
        } else {
            0.02
        };
        v.iter_mut().for_each(|x| *x *= scale);
        v
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Storage dtype of the file's first tensor ("f32", "f16", "bf16").
    pub fn dtype(&self) -> &str {
        &self.dtype
    }
    /// Content fingerprint of the file (FNV-1a 64 of its bytes), as 16 hex digits.
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", self.hash)
    }
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }
    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|(_, v)| v.len()).sum()
    }
    /// The root view (empty prefix).
    pub fn root(&self) -> View<'_> {
        View {
            w: self,
            prefix: String::new(),
        }
    }
}

/// A prefix into a [`Weights`] file.
#[derive(Clone)]
pub struct View<'a> {
    w: &'a Weights,
    prefix: String,
}

impl<'a> View<'a> {
    /// Descend one level: `pp("down_blocks").pp(0)` addresses `down_blocks.0.`.
    pub fn pp(&self, name: impl Display) -> View<'a> {
        View {
            w: self.w,
            prefix: format!("{}{}.", self.prefix, name),
        }
    }
    fn full(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }
    /// Whether `name` exists under this prefix.
    pub fn has(&self, name: &str) -> bool {
        self.w.synthetic.is_some() || self.w.tensors.contains_key(&self.full(name))
    }
    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = self.full(name);
        if let Some(seed) = self.w.synthetic {
            return Ok(Weights::synthesise(seed, &key, shape));
        }
        let (s, v) = self
            .w
            .tensors
            .get(&key)
            .ok_or_else(|| Error::MissingTensor {
                path: self.w.path.clone(),
                key: key.clone(),
            })?;
        if s != shape {
            return Err(Error::ShapeMismatch {
                path: self.w.path.clone(),
                key,
                expected: shape.to_vec(),
                got: s.clone(),
            });
        }
        Ok(v.clone())
    }
    /// The first of `names` that exists (old and new checkpoint names), with `shape`.
    pub fn get_any(&self, names: &[&str], shape: &[usize]) -> Result<Vec<f32>> {
        for n in names {
            if self.has(n) {
                return self.get(n, shape);
            }
        }
        Err(Error::MissingTensor {
            path: self.w.path.clone(),
            key: names
                .iter()
                .map(|n| self.full(n))
                .collect::<Vec<_>>()
                .join(" or "),
        })
    }
    /// Shape of `name`, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.w.tensors.get(&self.full(name)).map(|(s, _)| s.clone())
    }
    pub fn path(&self) -> &Path {
        &self.w.path
    }
}
