//! The fitted posterior: its file format, the model check, and weight draws.
//!
//! File: safetensors with tensors `map.weight` (f32 `[cout, cin, k, k]`), `map.bias` (f32
//! `[cout]`) and `curvature` (f64; `ef-diag`: `[cout*cin*k*k + cout]`, weights then bias;
//! `ggn-kron`: `A`, `[cin*k*k + 1, cin*k*k + 1]`, rows/columns `(ci, kh, kw)` then bias), and
//! string metadata `format`, `format_version`, `layer`, `hessian`, `channels_in_loss`,
//! `num_images`, `prior_precision`, `sigma_noise`, `model_fingerprint`, `target`, `fit_seed`.
//! The Cholesky factor of the `ggn-kron` precision is computed at load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::Hessian;
use crate::error::{Error, Result};
use crate::io::fs::write_atomic;
use crate::linalg::{cholesky_lower, solve_lower_transpose_in_place};
use crate::models::unet::UNet;
use crate::rng::{Purpose, Stream};

/// The `format` metadata value of posterior files.
pub const FORMAT: &str = "uqengine-laplace-posterior";
/// The `format_version` this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Everything a posterior file stores.
#[derive(Clone, Debug, PartialEq)]
pub struct PosteriorParts {
    /// Name of the Bayesian layer in the checkpoint (`conv_out`).
    pub layer: String,
    pub hessian: Hessian,
    /// `[cout, cin, k, k]`.
    pub weight_shape: [usize; 4],
    /// MAP (pretrained) weights, PyTorch layout `[cout, cin, k, k]`, and bias `[cout]`.
    pub map_weight: Vec<f32>,
    pub map_bias: Vec<f32>,
    /// `ef-diag`: `H` per parameter (weights then bias). `ggn-kron`: `A`, `(cin*k*k + 1)^2`,
    /// ordered `(ci, kh, kw)` then bias.
    pub curvature: Vec<f64>,
    /// Output channels that entered the loss (the first ones); the rest have zero curvature.
    pub channels_in_loss: usize,
    pub num_images: usize,
    pub prior_precision: f64,
    pub sigma_noise: f64,
    /// [`UNet::fingerprint`] of the model the posterior belongs to.
    pub model_fingerprint: String,
    /// The loss target (`epsilon`, `v_prediction` or `sample`), for the record.
    pub target: String,
    /// Seed of the fit's random draws, for the record.
    pub fit_seed: u64,
}

/// How draws are made.
#[derive(Clone, Debug)]
enum Factor {
    /// `ef-diag`: the posterior standard deviation of each parameter.
    Std(Vec<f64>),
    /// `ggn-kron`: lower Cholesky factor of `A / sigma^2 + prior I` (shared by the output
    /// channels in the loss).
    Cholesky(Vec<f64>),
}

/// A last-layer Laplace posterior.
#[derive(Clone, Debug)]
pub struct Posterior {
    parts: PosteriorParts,
    source: Option<PathBuf>,
    factor: Factor,
}

fn num_params(shape: &[usize; 4]) -> usize {
    shape.iter().product::<usize>() + shape[0]
}

impl Posterior {
    /// Validates the parts and factors the precision. Inconsistent sizes, non-finite values,
    /// negative diagonal curvature or non-positive hyperparameters are errors.
    pub fn from_parts(parts: PosteriorParts) -> Result<Self> {
        let [cout, cin, k, k2] = parts.weight_shape;
        let fail = |msg: String| Err(Error::arg(format!("invalid posterior: {msg}")));
        if k != k2 || cout == 0 || cin == 0 || k == 0 {
            return fail(format!("weight shape {:?}", parts.weight_shape));
        }
        if parts.map_weight.len() != cout * cin * k * k || parts.map_bias.len() != cout {
            return fail(format!(
                "MAP weights have {} + {} values for shape {:?}",
                parts.map_weight.len(),
                parts.map_bias.len(),
                parts.weight_shape
            ));
        }
        let cols = cin * k * k + 1;
        let want = match parts.hessian {
            Hessian::EfDiag => num_params(&parts.weight_shape),
            Hessian::GgnKron => cols * cols,
        };
        if parts.curvature.len() != want {
            return fail(format!(
                "{} curvature has {} values, expected {want}",
                parts.hessian,
                parts.curvature.len()
            ));
        }
        if parts.channels_in_loss == 0 || parts.channels_in_loss > cout {
            return fail(format!(
                "{} channels in the loss of {cout}",
                parts.channels_in_loss
            ));
        }
        if !(parts.prior_precision.is_finite() && parts.prior_precision > 0.0) {
            return fail(format!(
                "prior precision {} (must be > 0)",
                parts.prior_precision
            ));
        }
        if !(parts.sigma_noise.is_finite() && parts.sigma_noise > 0.0) {
            return fail(format!("sigma_noise {} (must be > 0)", parts.sigma_noise));
        }
        if parts.curvature.iter().any(|v| !v.is_finite())
            || parts
                .map_weight
                .iter()
                .chain(&parts.map_bias)
                .any(|v| !v.is_finite())
        {
            return fail("non-finite values".into());
        }
        let scale = 1.0 / (parts.sigma_noise * parts.sigma_noise);
        let factor = match parts.hessian {
            Hessian::EfDiag => {
                if let Some(v) = parts.curvature.iter().find(|&&v| v < 0.0) {
                    return fail(format!("negative diagonal curvature {v}"));
                }
                Factor::Std(
                    parts
                        .curvature
                        .iter()
                        .map(|&h| 1.0 / (h * scale + parts.prior_precision).sqrt())
                        .collect(),
                )
            }
            Hessian::GgnKron => {
                let mut p: Vec<f64> = parts.curvature.iter().map(|&a| a * scale).collect();
                for i in 0..cols {
                    p[i * cols + i] += parts.prior_precision;
                }
                Factor::Cholesky(cholesky_lower(&p, cols).map_err(|e| {
                    Error::arg(format!("invalid posterior: ggn-kron precision: {e}"))
                })?)
            }
        };
        Ok(Posterior {
            parts,
            source: None,
            factor,
        })
    }

    /// The same posterior with other hyperparameters (refactors the precision).
    pub fn with_hyperparameters(&self, prior_precision: f64, sigma_noise: f64) -> Result<Self> {
        let mut parts = self.parts.clone();
        parts.prior_precision = prior_precision;
        parts.sigma_noise = sigma_noise;
        let mut p = Self::from_parts(parts)?;
        p.source = self.source.clone();
        Ok(p)
    }

    pub fn parts(&self) -> &PosteriorParts {
        &self.parts
    }
    pub fn into_parts(self) -> PosteriorParts {
        self.parts
    }
    pub fn hessian(&self) -> Hessian {
        self.parts.hessian
    }
    pub fn layer(&self) -> &str {
        &self.parts.layer
    }
    pub fn map_weight(&self) -> &[f32] {
        &self.parts.map_weight
    }
    pub fn map_bias(&self) -> &[f32] {
        &self.parts.map_bias
    }
    pub fn curvature(&self) -> &[f64] {
        &self.parts.curvature
    }
    pub fn weight_shape(&self) -> [usize; 4] {
        self.parts.weight_shape
    }
    pub fn num_images(&self) -> usize {
        self.parts.num_images
    }
    pub fn prior_precision(&self) -> f64 {
        self.parts.prior_precision
    }
    pub fn sigma_noise(&self) -> f64 {
        self.parts.sigma_noise
    }
    pub fn model_fingerprint(&self) -> &str {
        &self.parts.model_fingerprint
    }
    /// Number of Bayesian parameters (weights and biases).
    pub fn num_params(&self) -> usize {
        num_params(&self.parts.weight_shape)
    }
    /// The file this posterior was loaded from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Diagonal of the posterior precision `H / sigma^2 + prior`, weights `[cout, cin, k, k]` then
    /// bias. For `ggn-kron` this is `diag(I ⊗ A) / sigma^2 + prior` on the channels in the loss
    /// and `prior` elsewhere (the marginal variances are not its inverse there).
    pub fn precision_diag(&self) -> Vec<f64> {
        let p = &self.parts;
        let scale = 1.0 / (p.sigma_noise * p.sigma_noise);
        match p.hessian {
            Hessian::EfDiag => p
                .curvature
                .iter()
                .map(|&h| h * scale + p.prior_precision)
                .collect(),
            Hessian::GgnKron => {
                let [cout, cin, k, _] = p.weight_shape;
                let cols = cin * k * k + 1;
                let mut out = vec![p.prior_precision; num_params(&p.weight_shape)];
                let nw = cout * (cols - 1);
                for co in 0..p.channels_in_loss {
                    for j in 0..cols - 1 {
                        out[co * (cols - 1) + j] += p.curvature[j * cols + j] * scale;
                    }
                    out[nw + co] += p.curvature[cols * cols - 1] * scale;
                }
                out
            }
        }
    }

    /// Weight draw `m` (0-based) of run `seed`: weights `[cout, cin, k, k]` and bias `[cout]`.
    /// Only the first `channels_in_loss` output channels are in the posterior; the others (a
    /// learned-variance model's variance channels) keep the MAP weights in every draw.
    /// Its standard normals come from the stream (seed, m, WeightDraw): `num_params()` values,
    /// weights then bias for `ef-diag` (`w = w* + z / sqrt(precision)`), per output channel
    /// `(w[co] flattened, b[co])` for `ggn-kron` (`w_co = w*_co + L^{-T} z_co`, `L L^T` the
    /// channel's precision, so the draw's covariance is the inverse precision).
    pub fn draw(&self, seed: u64, m: usize) -> (Vec<f32>, Vec<f32>) {
        let p = &self.parts;
        let [cout, cin, k, _] = p.weight_shape;
        let cols = cin * k * k + 1;
        let mut z = vec![0.0f32; cout * cols];
        Stream::new(seed, m as u64, Purpose::WeightDraw, 0).fill_normal(&mut z);
        let mut w = p.map_weight.clone();
        let mut b = p.map_bias.clone();
        match &self.factor {
            Factor::Std(std) => {
                let (zw, zb) = z.split_at(w.len());
                let in_loss = p.channels_in_loss;
                let nw = in_loss * (cols - 1);
                for ((wi, &zi), &si) in w[..nw].iter_mut().zip(zw).zip(std) {
                    *wi = (f64::from(*wi) + f64::from(zi) * si) as f32;
                }
                let std_b = &std[cout * (cols - 1)..];
                for ((bi, &zi), &si) in b[..in_loss].iter_mut().zip(zb).zip(std_b) {
                    *bi = (f64::from(*bi) + f64::from(zi) * si) as f32;
                }
            }
            Factor::Cholesky(l) => {
                for co in 0..p.channels_in_loss {
                    let mut x: Vec<f64> = z[co * cols..(co + 1) * cols]
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect();
                    solve_lower_transpose_in_place(l, cols, &mut x);
                    for (wi, xi) in w[co * (cols - 1)..(co + 1) * (cols - 1)].iter_mut().zip(&x) {
                        *wi = (f64::from(*wi) + xi) as f32;
                    }
                    b[co] = (f64::from(b[co]) + x[cols - 1]) as f32;
                }
            }
        }
        (w, b)
    }

    /// Checks that `unet` is the model this posterior was fitted for (same weights fingerprint
    /// and last-layer shape); otherwise an error naming both fingerprints and the file.
    pub fn check_model(&self, unet: &UNet) -> Result<()> {
        let file = self
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<in memory>".into());
        if unet.fingerprint() != self.parts.model_fingerprint {
            return Err(Error::arg(format!(
                "posterior {file} was fitted for the model with fingerprint {}, but the model at {} has fingerprint {}; \
                 fit a posterior for this model",
                self.parts.model_fingerprint,
                unet.dir().display(),
                unet.fingerprint()
            )));
        }
        let [cout, cin, k, _] = self.parts.weight_shape;
        let spec = unet.conv_out.spec;
        if (spec.cout, spec.cin, spec.kernel) != (cout, cin, k) {
            return Err(Error::arg(format!(
                "posterior {file}: last layer {:?} does not match the model's {} ({} -> {}, {}x{})",
                self.parts.weight_shape,
                self.parts.layer,
                spec.cin,
                spec.cout,
                spec.kernel,
                spec.kernel
            )));
        }
        Ok(())
    }

    /// Writes the posterior to `path` (safetensors, see the module docs), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let p = &self.parts;
        let [cout, cin, k, _] = p.weight_shape;
        let cols = cin * k * k + 1;
        let curv_shape = match p.hessian {
            Hessian::EfDiag => vec![p.curvature.len()],
            Hessian::GgnKron => vec![cols, cols],
        };
        let w: &[u8] = bytemuck::cast_slice(&p.map_weight);
        let b: &[u8] = bytemuck::cast_slice(&p.map_bias);
        let c: &[u8] = bytemuck::cast_slice(&p.curvature);
        let view = |dtype, shape: Vec<usize>, data| {
            safetensors::tensor::TensorView::new(dtype, shape, data).map_err(|e| {
                Error::Safetensors {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                }
            })
        };
        let tensors = vec![
            (
                "map.weight".to_string(),
                view(Dtype::F32, p.weight_shape.to_vec(), w)?,
            ),
            ("map.bias".to_string(), view(Dtype::F32, vec![cout], b)?),
            ("curvature".to_string(), view(Dtype::F64, curv_shape, c)?),
        ];
        let meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("format_version", FORMAT_VERSION.to_string()),
            ("layer", p.layer.clone()),
            ("hessian", p.hessian.as_str().to_string()),
            ("channels_in_loss", p.channels_in_loss.to_string()),
            ("num_images", p.num_images.to_string()),
            ("prior_precision", format!("{:e}", p.prior_precision)),
            ("sigma_noise", format!("{:e}", p.sigma_noise)),
            ("model_fingerprint", p.model_fingerprint.clone()),
            ("target", p.target.clone()),
            ("fit_seed", p.fit_seed.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes =
            safetensors::serialize(tensors, Some(meta)).map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        write_atomic(path, &bytes)
    }

    /// Reads a posterior file written by [`Self::save`]. Every problem is an error naming the
    /// file and the tensor or metadata key.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a posterior file (`path` names it in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bytes = bytes.to_vec();
        let st_err = |msg: String| Error::Safetensors {
            path: path.to_path_buf(),
            msg,
        };
        let explain = |e: safetensors::SafeTensorError| {
            st_err(crate::models::weights::explain_safetensors_error(
                &bytes,
                &e.to_string(),
            ))
        };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(explain)?;
        let st = SafeTensors::deserialize(&bytes).map_err(explain)?;
        let empty = HashMap::new();
        let meta = header.metadata().as_ref().unwrap_or(&empty);
        let config_err = |key: &str, msg: String| Error::Config {
            path: path.to_path_buf(),
            key: key.to_string(),
            msg,
        };
        let get = |key: &str| -> Result<&String> {
            meta.get(key)
                .ok_or_else(|| config_err(key, "missing from the posterior file's metadata".into()))
        };
        let num = |key: &str| -> Result<f64> {
            let v = get(key)?;
            v.parse::<f64>()
                .map_err(|_| config_err(key, format!("`{v}` is not a number")))
        };
        let int = |key: &str| -> Result<u64> {
            let v = get(key)?;
            v.parse::<u64>()
                .map_err(|_| config_err(key, format!("`{v}` is not a non-negative integer")))
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                key: "format".into(),
                value: format!("{format} (not a uqengine posterior)"),
            });
        }
        let version = int("format_version")?;
        if version != u64::from(FORMAT_VERSION) {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                key: "format_version".into(),
                value: format!("{version} (this build reads version {FORMAT_VERSION})"),
            });
        }
        let hessian_name = get("hessian")?;
        let hessian = Hessian::parse(hessian_name).map_err(|_| Error::Unsupported {
            path: path.to_path_buf(),
            key: "hessian".into(),
            value: hessian_name.clone(),
        })?;

        let tensor = |key: &str, dtype: Dtype| -> Result<(Vec<usize>, Vec<u8>)> {
            let view = st.tensor(key).map_err(|_| Error::MissingTensor {
                path: path.to_path_buf(),
                key: key.to_string(),
            })?;
            if view.dtype() != dtype {
                return Err(Error::DType {
                    path: path.to_path_buf(),
                    key: key.to_string(),
                    dtype: format!("{:?} (expected {dtype:?})", view.dtype()),
                });
            }
            Ok((view.shape().to_vec(), view.data().to_vec()))
        };
        let f32s = |d: &[u8]| -> Vec<f32> {
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let (wshape, wdata) = tensor("map.weight", Dtype::F32)?;
        if wshape.len() != 4 || wshape[2] != wshape[3] {
            return Err(Error::ShapeMismatch {
                path: path.to_path_buf(),
                key: "map.weight".into(),
                expected: vec![wshape.first().copied().unwrap_or(0), 0, 3, 3],
                got: wshape,
            });
        }
        // An empty dimension holds no data, so the safetensors reader does not bound the others:
        // `cin * k * k` below could overflow.
        if wshape.contains(&0) {
            return Err(Error::Image {
                path: path.to_path_buf(),
                msg: format!(
                    "invalid posterior: tensor `map.weight` has shape {wshape:?}, with an empty dimension"
                ),
            });
        }
        let weight_shape = [wshape[0], wshape[1], wshape[2], wshape[3]];
        let (bshape, bdata) = tensor("map.bias", Dtype::F32)?;
        if bshape != [weight_shape[0]] {
            return Err(Error::ShapeMismatch {
                path: path.to_path_buf(),
                key: "map.bias".into(),
                expected: vec![weight_shape[0]],
                got: bshape,
            });
        }
        let (cshape, cdata) = tensor("curvature", Dtype::F64)?;
        let cols = weight_shape[1] * weight_shape[2] * weight_shape[3] + 1;
        let want = match hessian {
            Hessian::EfDiag => vec![num_params(&weight_shape)],
            Hessian::GgnKron => vec![cols, cols],
        };
        if cshape != want {
            return Err(Error::ShapeMismatch {
                path: path.to_path_buf(),
                key: "curvature".into(),
                expected: want,
                got: cshape,
            });
        }
        let curvature: Vec<f64> = cdata
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        for (key, finite) in [
            ("map.weight", f32s(&wdata).iter().all(|v| v.is_finite())),
            ("map.bias", f32s(&bdata).iter().all(|v| v.is_finite())),
            ("curvature", curvature.iter().all(|v| v.is_finite())),
        ] {
            if !finite {
                return Err(Error::NonFinite {
                    path: path.to_path_buf(),
                    key: key.into(),
                });
            }
        }
        let parts = PosteriorParts {
            layer: get("layer")?.clone(),
            hessian,
            weight_shape,
            map_weight: f32s(&wdata),
            map_bias: f32s(&bdata),
            curvature,
            channels_in_loss: int("channels_in_loss")? as usize,
            num_images: int("num_images")? as usize,
            prior_precision: num("prior_precision")?,
            sigma_noise: num("sigma_noise")?,
            model_fingerprint: get("model_fingerprint")?.clone(),
            target: get("target")?.clone(),
            fit_seed: int("fit_seed")?,
        };
        let mut post = Self::from_parts(parts).map_err(|e| Error::Image {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        post.source = Some(path.to_path_buf());
        Ok(post)
    }
}
