//! CLIP vision feature extractor: transformers' `CLIPVisionModelWithProjection`, whose projected
//! class-token embedding (`image_embeds`, not normalised) is the feature `c(x)` of the semantic
//! likelihood.
//!
//! A model directory holds `config.json` (`model_type` `clip_vision_model`, or `clip` with the
//! vision parameters under `vision_config`), `model.safetensors` (f32/f16/bf16; a full
//! `CLIPModel` file also works, its text tower is ignored) and `preprocessor_config.json`
//! (see [`crate::models::clip_preprocess`]).
//!
//! Forward (NHWC input, sequences `[n, 1 + patches, hidden]`):
//! patch convolution (kernel = stride = patch, no bias) -> prepend the class embedding -> add
//! position embeddings -> `pre_layrnorm` -> pre-LN encoder layers
//! (`x += out_proj(attn(ln1(x)))`, `x += fc2(act(fc1(ln2(x))))`) -> `post_layernorm` of the class
//! token -> `visual_projection` (no bias). Everything runs as backend ops: the class token is
//! prepended with `concat_channels` on `[n, 1, 1, len * hidden]` views, and the class token is
//! picked and projected in one 1x1 convolution with stride `len` over the `[n, len, 1, hidden]`
//! view of the sequence.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Activation, Backend, Conv2d, ConvSpec, Linear, Norm};
use crate::config::{invalid, JsonConfig, Positive};
use crate::error::{Error, Result};
use crate::image::HwcImage;
use crate::models::clip_preprocess::{ClipPreprocess, PixelPlan};
use crate::models::layers;
use crate::models::weights::Weights;
use crate::tensor::Tensor;

/// The vision tower's hyper-parameters (transformers `CLIPVisionConfig`; absent keys take its
/// defaults, those of ViT-B/32).
#[derive(Clone, Debug, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub projection_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// 1 or 3.
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    /// `quick_gelu` or `gelu` (exact erf).
    pub hidden_act: Activation,
    pub layer_norm_eps: f32,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Read a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&JsonConfig::open(path)?)
    }

    /// Parse a `config.json` text (`path` names it in errors).
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        Self::from_json(&JsonConfig::parse(text, path)?)
    }

    /// Parse an already-read `config.json`: the vision parameters at the top level, or under
    /// `vision_config` (required when `model_type` is `clip`). Absent keys take the defaults of
    /// [`Default`]; keys the vision tower does not use are ignored.
    pub fn from_json(top: &JsonConfig) -> Result<Self> {
        let model_type = top.present::<String>("model_type")?;
        if let Some(t) = &model_type {
            if t != "clip_vision_model" && t != "clip" {
                return Err(top.unsupported("model_type", format!("\"{t}\"")));
            }
        }
        let nested = top.sub("vision_config")?;
        if nested.is_none() && model_type.as_deref() == Some("clip") {
            return Err(top.missing("vision_config"));
        }
        let vision = nested.as_ref().unwrap_or(top);
        let d = ClipVisionConfig::default();
        let u = |key: &str, default: usize| -> Result<usize> {
            Ok(vision.or(key, Positive(default))?.0)
        };
        // A full CLIP config keeps the shared projection size at the top level.
        let mut projection_dim = u("projection_dim", d.projection_dim)?;
        if nested.is_some() {
            projection_dim = top.or("projection_dim", Positive(projection_dim))?.0;
        }
        let hidden_act = match vision.opt::<String>("hidden_act")?.as_deref() {
            None => d.hidden_act,
            Some("quick_gelu") => Activation::QuickGelu,
            Some("gelu") => Activation::Gelu,
            Some(other) => return Err(vision.unsupported("hidden_act", format!("\"{other}\""))),
        };
        let layer_norm_eps = match vision.opt::<Positive<f64>>("layer_norm_eps")? {
            None => d.layer_norm_eps,
            Some(Positive(e)) => e as f32,
        };
        let cfg = ClipVisionConfig {
            hidden_size: u("hidden_size", d.hidden_size)?,
            intermediate_size: u("intermediate_size", d.intermediate_size)?,
            projection_dim,
            num_hidden_layers: u("num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: u("num_attention_heads", d.num_attention_heads)?,
            num_channels: u("num_channels", d.num_channels)?,
            image_size: u("image_size", d.image_size)?,
            patch_size: u("patch_size", d.patch_size)?,
            hidden_act,
            layer_norm_eps,
        };
        if cfg.num_channels != 1 && cfg.num_channels != 3 {
            return Err(vision.unsupported("num_channels", cfg.num_channels));
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(vision.err(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    cfg.num_attention_heads, cfg.hidden_size
                ),
            ));
        }
        if cfg.patch_size > cfg.image_size {
            return Err(vision.err(
                "patch_size",
                format!("{} exceeds image_size {}", cfg.patch_size, cfg.image_size),
            ));
        }
        Ok(cfg)
    }

    /// Patches per side (`image_size / patch_size`, rounded down as the convolution does).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Sequence length: class token plus patches.
    pub fn seq_len(&self) -> usize {
        1 + self.grid() * self.grid()
    }

    fn act_name(&self) -> &'static str {
        match self.hidden_act {
            Activation::Gelu => "gelu",
            _ => "quick_gelu",
        }
    }
}

/// One pre-LN transformer encoder layer.
struct EncoderLayer {
    ln1: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// A loaded CLIP vision tower with its projection and preprocessing, prepared on one backend.
pub struct ClipVision {
    backend: Arc<dyn Backend>,
    config: ClipVisionConfig,
    preprocess: ClipPreprocess,
    dir: PathBuf,
    patch: Conv2d,
    /// `[1, 1, 1, hidden]`
    class_embedding: Tensor,
    /// `[1, seq_len, hidden]`
    position: Tensor,
    pre_ln: Norm,
    layers: Vec<EncoderLayer>,
    post_ln: Norm,
    /// `visual_projection` as a 1x1 convolution with stride `seq_len` (picks the class token).
    projection: Conv2d,
    num_params: usize,
    dtype: String,
    fingerprint: String,
}

impl ClipVision {
    /// Load `config.json`, `model.safetensors` and `preprocessor_config.json` from `dir` and
    /// prepare the weights on `backend`. Errors name the file and key that is wrong.
    pub fn load(backend: Arc<dyn Backend>, dir: &Path) -> Result<Self> {
        let config = ClipVisionConfig::from_file(&dir.join("config.json"))?;
        let pre_path = ClipPreprocess::config_path(dir);
        let preprocess = ClipPreprocess::from_file(&pre_path)?;
        check_preprocess(&config, &preprocess, &pre_path)?;
        let weights = Weights::open(&dir.join("model.safetensors"))?;
        Self::from_weights(backend, config, preprocess, &weights, dir)
    }

    /// Build from an already parsed config, preprocessing and weight file.
    pub fn from_weights(
        backend: Arc<dyn Backend>,
        config: ClipVisionConfig,
        preprocess: ClipPreprocess,
        weights: &Weights,
        dir: &Path,
    ) -> Result<Self> {
        let b: &dyn Backend = backend.as_ref();
        let c = &config;
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        let vm = weights.root().pp("vision_model");
        let emb = vm.pp("embeddings");
        let patch = layers::conv(
            b,
            &emb,
            "patch_embedding",
            ConvSpec::new(c.num_channels, d, c.patch_size, c.patch_size, 0),
            false,
        )?;
        let class_embedding = b.upload(&[1, 1, 1, d], &emb.get("class_embedding", &[d])?)?;
        let seq = c.seq_len();
        let position = b.upload(
            &[1, seq, d],
            &emb.pp("position_embedding").get("weight", &[seq, d])?,
        )?;
        let pre_ln = layers::norm(b, &vm, "pre_layrnorm", d, 1, eps)?;
        let enc = vm.pp("encoder").pp("layers");
        let mut encoder_layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = enc.pp(i);
            let att = l.pp("self_attn");
            let mlp = l.pp("mlp");
            encoder_layers.push(EncoderLayer {
                ln1: layers::norm(b, &l, "layer_norm1", d, 1, eps)?,
                q: layers::linear(b, &att, "q_proj", d, d, true)?,
                k: layers::linear(b, &att, "k_proj", d, d, true)?,
                v: layers::linear(b, &att, "v_proj", d, d, true)?,
                out: layers::linear(b, &att, "out_proj", d, d, true)?,
                ln2: layers::norm(b, &l, "layer_norm2", d, 1, eps)?,
                fc1: layers::linear(b, &mlp, "fc1", d, c.intermediate_size, true)?,
                fc2: layers::linear(b, &mlp, "fc2", c.intermediate_size, d, true)?,
            });
        }
        let post_ln = layers::norm(b, &vm, "post_layernorm", d, 1, eps)?;
        let proj_w = weights
            .root()
            .pp("visual_projection")
            .get("weight", &[c.projection_dim, d])?;
        let projection =
            b.prepare_conv(ConvSpec::new(d, c.projection_dim, 1, seq, 0), &proj_w, None)?;
        Ok(ClipVision {
            backend,
            config,
            preprocess,
            dir: dir.to_path_buf(),
            patch,
            class_embedding,
            position,
            pre_ln,
            layers: encoder_layers,
            post_ln,
            projection,
            num_params: weights.num_params(),
            dtype: weights.dtype().to_string(),
            fingerprint: weights.fingerprint(),
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The model's preprocessing (`preprocessor_config.json`).
    pub fn preprocess(&self) -> &ClipPreprocess {
        &self.preprocess
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Embedding size (`projection_dim`).
    pub fn dim(&self) -> usize {
        self.config.projection_dim
    }

    /// Scalar parameters in the weight file (every tensor in it).
    pub fn num_params(&self) -> usize {
        self.num_params
    }

    /// Content fingerprint of the weight file.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// One-line description of the model and its preprocessing.
    pub fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "CLIP vision ({}): image {}x{}x{}, patch {}, {} layers, hidden {}, {} heads, mlp {}, {}, \
             projection {}; {} parameters ({}); preprocess: {}",
            self.dir.display(),
            c.image_size,
            c.image_size,
            c.num_channels,
            c.patch_size,
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.intermediate_size,
            c.act_name(),
            c.projection_dim,
            self.num_params,
            self.dtype,
            self.preprocess.describe()
        )
    }

    /// Projected image embeddings (`image_embeds`, not normalised), `[n, projection_dim]`, of
    /// preprocessed pixels `[n, image_size, image_size, num_channels]` (NHWC, on the backend).
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = self.backend.as_ref();
        let c = &self.config;
        let s = pixels.shape();
        if s.len() != 4 || s[0] == 0 || s[1..] != [c.image_size, c.image_size, c.num_channels] {
            return Err(Error::arg(format!(
                "CLIP input has shape {s:?}, expected [n, {}, {}, {}] (NHWC)",
                c.image_size, c.image_size, c.num_channels
            )));
        }
        let n = s[0];
        let (d, seq, g) = (c.hidden_size, c.seq_len(), c.grid());

        // Embeddings: [class, patches] + positions.
        let patches = b
            .conv2d(pixels, &self.patch, None)?
            .reshape(vec![n, 1, 1, g * g * d]);
        let class = tile(b, &self.class_embedding, n)?;
        let x = b
            .concat_channels(&class, &patches)?
            .reshape(vec![n, seq, d]);
        let mut x = b.add(&x, &tile(b, &self.position, n)?)?;
        x = b.layer_norm(&x, &self.pre_ln)?;

        let heads = c.num_attention_heads;
        let scale = ((d / heads) as f64).powf(-0.5) as f32;
        for l in &self.layers {
            let h = b.layer_norm(&x, &l.ln1)?;
            let q = b.linear(&h, &l.q, Activation::None, None)?;
            let k = b.linear(&h, &l.k, Activation::None, None)?;
            let v = b.linear(&h, &l.v, Activation::None, None)?;
            let a = b.attention(&q, &k, &v, heads, scale)?;
            x = b.linear(&a, &l.out, Activation::None, Some(&x))?;
            let h = b.layer_norm(&x, &l.ln2)?;
            let h = b.linear(&h, &l.fc1, c.hidden_act, None)?;
            x = b.linear(&h, &l.fc2, Activation::None, Some(&x))?;
        }

        // post_layernorm is per token, so normalising all tokens and then picking the class token
        // equals normalising the class token.
        let x = b.layer_norm(&x, &self.post_ln)?.reshape(vec![n, seq, 1, d]);
        let y = b.conv2d(&x, &self.projection, None)?;
        Ok(y.reshape(vec![n, c.projection_dim]))
    }

    /// The run's plan for turning final samples of `size x size x channels` into this
    /// extractor's input (8-bit quantised first when `quantize`), prepared on its backend.
    pub fn pixel_plan(&self, size: usize, channels: usize, quantize: bool) -> Result<PixelPlan> {
        let plan = self.preprocess.pixel_plan(size, size, channels, quantize)?;
        self.backend.prepare_pixels(plan)
    }

    /// Embeddings `[n, projection_dim]` of final samples `state` (a state tensor on this
    /// extractor's backend, `[n, s, s, c]` in model space), preprocessed by `plan` where they
    /// are.
    pub fn embed_state(&self, state: &Tensor, plan: &PixelPlan) -> Result<Tensor> {
        self.embed(&self.backend.extractor_pixels(state, plan)?)
    }

    /// Features `[n * projection_dim]` (on the host) of decoded 8-bit images given as
    /// `(pixels HWC, height, width, channels)`, as image files are read.
    pub fn features_of_decoded(
        &self,
        images: &[(Vec<u8>, usize, usize, usize)],
    ) -> Result<Vec<f32>> {
        let views = images
            .iter()
            .map(|(px, h, w, c)| HwcImage::new(*h, *w, *c, px))
            .collect::<Result<Vec<_>>>()?;
        let t = self.embed_images_u8(&views)?;
        self.backend().download(&t)
    }

    /// Preprocess 8-bit images (HWC, 1 or 3 channels) with the model's preprocessing and embed
    /// them: `[n, projection_dim]`.
    pub fn embed_images_u8(&self, images: &[HwcImage<u8>]) -> Result<Tensor> {
        let x = self.preprocess.batch_u8(images)?;
        self.embed_host(&x)
    }

    /// Preprocess float images in [0, 1] (HWC) without 8-bit quantisation and embed them.
    pub fn embed_images_f32(&self, images: &[HwcImage<f32>]) -> Result<Tensor> {
        let x = self.preprocess.batch_f32(images)?;
        self.embed_host(&x)
    }

    fn embed_host(&self, x: &Tensor) -> Result<Tensor> {
        let data = x
            .host_data()
            .ok_or_else(|| Error::arg("preprocessed batch is not in host memory"))?;
        let x = self.backend.upload(x.shape(), data)?;
        self.embed(&x)
    }
}

/// `n` copies of a `[1, ...]` tensor along the leading dimension.
fn tile(b: &dyn Backend, x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        Ok(x.clone())
    } else {
        b.concat_batch(&vec![x.clone(); n])
    }
}

/// The preprocessing must produce what the model takes: `image_size` squares with
/// `num_channels` channels.
fn check_preprocess(c: &ClipVisionConfig, p: &ClipPreprocess, path: &Path) -> Result<()> {
    let s = c.image_size;
    if p.do_center_crop && p.crop_size != (s, s) {
        return Err(invalid(
            path,
            "crop_size",
            format!(
                "{:?} does not match the model's image_size {s}",
                p.crop_size
            ),
        ));
    }
    if c.num_channels == 1 && p.do_convert_rgb {
        return Err(invalid(
            path,
            "do_convert_rgb",
            "true, but the model takes 1 channel",
        ));
    }
    let c_out = if p.do_convert_rgb { 3 } else { c.num_channels };
    for (key, v) in [("image_mean", &p.image_mean), ("image_std", &p.image_std)] {
        if p.do_normalize && v.len() != 1 && v.len() != c_out {
            return Err(invalid(
                path,
                key,
                format!("{} values for {c_out} channels", v.len()),
            ));
        }
    }
    Ok(())
}
