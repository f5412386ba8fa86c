//! diffusers `UNet2DModel` on the backend op set: loading (f32/f16/bf16 safetensors, old and new
//! attention names) and the forward pass, split into the trunk (everything before `conv_out`)
//! and the last layer, which the uncertainty method makes Bayesian.

pub mod attention;
pub mod config;
pub mod resnet;

use std::path::{Path, PathBuf};

use crate::backend::{Activation, Backend, Conv2d, ConvSpec, Linear, Norm};
use crate::error::{Error, Result};
use crate::models::layers;
use crate::models::weights::Weights;
use crate::tensor::Tensor;

use attention::AttentionBlock;
pub use config::{DownKind, UNetConfig, UpKind};
use resnet::{Resample, ResnetBlock, ResnetSpec};

/// A level's down- or upsampler: a convolution (strided, or after a nearest 2x upsampling), or
/// a resampling resnet (`downsample_type`/`upsample_type` "resnet", ADM's `resblock_updown`).
enum Sampler {
    Conv(Conv2d),
    Resnet(Box<ResnetBlock>),
}

struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<AttentionBlock>,
    downsample: Option<Sampler>,
}

struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<AttentionBlock>,
    upsample: Option<Sampler>,
}

/// Name of the last layer in diffusers checkpoints.
pub const LAST_LAYER: &str = "conv_out";

/// A loaded `UNet2DModel`.
pub struct UNet {
    pub config: UNetConfig,
    dir: PathBuf,
    fingerprint: String,
    num_params: usize,
    weights_dtype: String,
    conv_in: Conv2d,
    time_lin1: Linear,
    time_lin2: Linear,
    class_embedding: Option<Vec<f32>>,
    /// The sinusoidal embedding's frequencies `[timestep_input_dim / 2]`, on the backend.
    time_freqs: Tensor,
    down: Vec<DownBlock>,
    mid_resnets: Vec<ResnetBlock>,
    mid_attention: Option<AttentionBlock>,
    up: Vec<UpBlock>,
    norm_out: Norm,
    /// The last layer `conv_out` as loaded (MAP weights).
    pub conv_out: Conv2d,
    /// `conv_out` weights in PyTorch layout `[cout, cin, 3, 3]` and bias `[cout]`.
    pub conv_out_weight: Vec<f32>,
    pub conv_out_bias: Vec<f32>,
}

/// The safetensors file of a diffusers model directory.
pub fn weights_file(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("diffusion_pytorch_model.safetensors");
    if p.exists() {
        return Ok(p);
    }
    Err(Error::io(
        &p,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "model weights not found (expected diffusion_pytorch_model.safetensors)",
        ),
    ))
}

impl UNet {
    /// Load `dir/config.json` and `dir/diffusion_pytorch_model.safetensors`.
    pub fn load(b: &dyn Backend, dir: &Path) -> Result<Self> {
        let cfg = UNetConfig::from_file(&dir.join("config.json"))?;
        let w = Weights::open(&weights_file(dir)?)?;
        let mut m = Self::from_weights(b, cfg, &w)?;
        m.dir = dir.to_path_buf();
        Ok(m)
    }

    /// Build from a parsed config and weights.
    pub fn from_weights(b: &dyn Backend, cfg: UNetConfig, w: &Weights) -> Result<Self> {
        let r = w.root();
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let eps = cfg.norm_eps as f32;
        let temb = cfg.time_embed_dim;
        let spec = |cin: usize, cout: usize, resample: Resample| ResnetSpec {
            cin,
            cout,
            temb,
            groups: g,
            eps,
            scale_shift: cfg.scale_shift,
            resample,
        };
        let conv_in = layers::conv(
            b,
            &r,
            "conv_in",
            ConvSpec::new(cfg.in_channels, ch[0], 3, 1, 1),
            true,
        )?;
        let tv = r.pp("time_embedding");
        let tdim = cfg.timestep_input_dim;
        let time_lin1 = layers::linear(b, &tv, "linear_1", tdim, temb, true)?;
        let time_lin2 = layers::linear(b, &tv, "linear_2", temb, temb, true)?;
        let class_embedding = match cfg.num_class_embeds {
            Some(n) => Some(r.pp("class_embedding").get("weight", &[n, temb])?),
            None => None,
        };
        let mut down = Vec::new();
        let mut out_ch = ch[0];
        for (i, kind) in cfg.down_blocks.iter().enumerate() {
            let v = r.pp("down_blocks").pp(i);
            let in_ch = out_ch;
            out_ch = ch[i];
            let last = i + 1 == ch.len();
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..cfg.layers_per_block {
                let cin = if j == 0 { in_ch } else { out_ch };
                resnets.push(ResnetBlock::load(
                    b,
                    &v.pp("resnets").pp(j),
                    spec(cin, out_ch, Resample::None),
                )?);
                if *kind == DownKind::AttnDown {
                    attentions.push(AttentionBlock::load(
                        b,
                        &v.pp("attentions").pp(j),
                        out_ch,
                        cfg.heads(out_ch),
                        g,
                        eps,
                    )?);
                }
            }
            let downsample = if last {
                None
            } else if cfg.resnet_downsample {
                Some(Sampler::Resnet(Box::new(ResnetBlock::load(
                    b,
                    &v.pp("downsamplers").pp(0),
                    spec(out_ch, out_ch, Resample::Down),
                )?)))
            } else {
                let p = cfg.downsample_padding;
                let spec = ConvSpec {
                    pad_end: if p == 0 { 1 } else { 0 },
                    ..ConvSpec::new(out_ch, out_ch, 3, 2, p)
                };
                Some(Sampler::Conv(layers::conv(
                    b,
                    &v.pp("downsamplers").pp(0),
                    "conv",
                    spec,
                    true,
                )?))
            };
            down.push(DownBlock {
                resnets,
                attentions,
                downsample,
            });
        }
        let mid_ch = *ch.last().unwrap();
        let mv = r.pp("mid_block");
        let mid_resnets = vec![
            ResnetBlock::load(
                b,
                &mv.pp("resnets").pp(0),
                spec(mid_ch, mid_ch, Resample::None),
            )?,
            ResnetBlock::load(
                b,
                &mv.pp("resnets").pp(1),
                spec(mid_ch, mid_ch, Resample::None),
            )?,
        ];
        let mid_attention = if cfg.add_attention {
            let ag = cfg.attn_norm_num_groups.unwrap_or(g);
            Some(AttentionBlock::load(
                b,
                &mv.pp("attentions").pp(0),
                mid_ch,
                cfg.heads(mid_ch),
                ag,
                eps,
            )?)
        } else {
            None
        };
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut out_ch = rev[0];
        for (i, kind) in cfg.up_blocks.iter().enumerate() {
            let v = r.pp("up_blocks").pp(i);
            let prev = out_ch;
            out_ch = rev[i];
            let in_ch = rev[(i + 1).min(ch.len() - 1)];
            let n = cfg.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..n {
                let skip = if j == n - 1 { in_ch } else { out_ch };
                let cin = if j == 0 { prev } else { out_ch };
                resnets.push(ResnetBlock::load(
                    b,
                    &v.pp("resnets").pp(j),
                    spec(cin + skip, out_ch, Resample::None),
                )?);
                if *kind == UpKind::AttnUp {
                    attentions.push(AttentionBlock::load(
                        b,
                        &v.pp("attentions").pp(j),
                        out_ch,
                        cfg.heads_up(out_ch),
                        g,
                        eps,
                    )?);
                }
            }
            let upsample = if i + 1 == ch.len() {
                None
            } else if cfg.resnet_upsample {
                Some(Sampler::Resnet(Box::new(ResnetBlock::load(
                    b,
                    &v.pp("upsamplers").pp(0),
                    spec(out_ch, out_ch, Resample::Up),
                )?)))
            } else {
                Some(Sampler::Conv(layers::conv(
                    b,
                    &v.pp("upsamplers").pp(0),
                    "conv",
                    ConvSpec::new(out_ch, out_ch, 3, 1, 1),
                    true,
                )?))
            };
            up.push(UpBlock {
                resnets,
                attentions,
                upsample,
            });
        }
        let norm_out = layers::norm(b, &r, "conv_norm_out", ch[0], g, eps)?;
        let co = r.pp(LAST_LAYER);
        let conv_out_weight = co.get("weight", &[cfg.out_channels, ch[0], 3, 3])?;
        let conv_out_bias = co.get("bias", &[cfg.out_channels])?;
        let conv_out = b.prepare_conv(
            ConvSpec::new(ch[0], cfg.out_channels, 3, 1, 1),
            &conv_out_weight,
            Some(&conv_out_bias),
        )?;
        let time_freqs = b.upload_params(&[tdim / 2], &time_freqs(&cfg))?;
        Ok(UNet {
            config: cfg,
            dir: w.path().parent().map(Path::to_path_buf).unwrap_or_default(),
            fingerprint: w.fingerprint(),
            num_params: w.num_params(),
            weights_dtype: w.dtype().to_string(),
            conv_in,
            time_lin1,
            time_lin2,
            class_embedding,
            time_freqs,
            down,
            mid_resnets,
            mid_attention,
            up,
            norm_out,
            conv_out,
            conv_out_weight,
            conv_out_bias,
        })
    }

    /// The model directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Content fingerprint of the weights file (identifies the model in posterior files).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    pub fn num_params(&self) -> usize {
        self.num_params
    }
    pub fn weights_dtype(&self) -> &str {
        &self.weights_dtype
    }

    /// Sinusoidal timestep embedding `[n, timestep_input_dim]`, computed in f32 as diffusers'
    /// `get_timestep_embedding` does.
    pub fn timestep_features(&self, t: &[f32]) -> Vec<f32> {
        let freqs = time_freqs(&self.config);
        let mut out = Vec::with_capacity(t.len() * 2 * freqs.len());
        for &tn in t {
            out.extend(crate::backend::state::timestep_features(
                &freqs,
                tn,
                1,
                self.config.flip_sin_to_cos,
            ));
        }
        out
    }

    /// `silu(time_embedding(t) + class_embedding(y))`: `[n, time_embed_dim]`, the form every
    /// resnet consumes.
    pub fn embedding(&self, b: &dyn Backend, t: &[f32], class: Option<&[usize]>) -> Result<Tensor> {
        let n = t.len();
        let dim = self.config.timestep_input_dim;
        let feats = b.upload(&[n, dim], &self.timestep_features(t))?;
        let rows = self.class_rows(b, class, n)?;
        self.embedding_from(b, &feats, rows.as_ref())
    }

    /// The class embedding rows `[n, time_embed_dim]` of `class` on the backend (`None` for an
    /// unconditional model); an error when labels are missing, superfluous or out of range.
    pub fn class_rows(
        &self,
        b: &dyn Backend,
        class: Option<&[usize]>,
        n: usize,
    ) -> Result<Option<Tensor>> {
        match (&self.class_embedding, class) {
            (Some(table), Some(cls)) => {
                if cls.len() != n {
                    return Err(Error::arg(format!(
                        "{} class labels for a batch of {n}",
                        cls.len()
                    )));
                }
                let d = self.config.time_embed_dim;
                let mut rows = Vec::with_capacity(n * d);
                for &c in cls {
                    config::check_class(&self.config, c)?;
                    rows.extend_from_slice(&table[c * d..(c + 1) * d]);
                }
                Ok(Some(b.upload(&[n, d], &rows)?))
            }
            (Some(_), None) => Err(Error::arg(
                "the model is class-conditional: class labels are required",
            )),
            (None, Some(_)) => Err(Error::arg(
                "class labels given, but the model is not class-conditional",
            )),
            (None, None) => Ok(None),
        }
    }

    /// The sinusoidal features `[rows, timestep_input_dim]` of one timestep `t` for every
    /// row, computed on the backend (nothing is uploaded).
    pub fn step_features(&self, b: &dyn Backend, t: f32, rows: usize) -> Result<Tensor> {
        b.timestep_features(&self.time_freqs, t, rows, self.config.flip_sin_to_cos)
    }

    /// The embedding from timestep features `[n, timestep_input_dim]` and class rows (from
    /// [`UNet::class_rows`]).
    pub fn embedding_from(
        &self,
        b: &dyn Backend,
        feats: &Tensor,
        class_rows: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = b.linear(feats, &self.time_lin1, Activation::Silu, None)?;
        let emb = b.linear(&h, &self.time_lin2, Activation::None, class_rows)?;
        b.activation(&emb, Activation::Silu)
    }

    /// Everything before the last layer: returns `silu(conv_norm_out(h))`, NHWC with
    /// `block_out_channels[0]` channels — the input of `conv_out`.
    /// `x`: NHWC `[n, s, s, in_channels]`; `t`: one timestep per sample.
    pub fn trunk(
        &self,
        b: &dyn Backend,
        x: &Tensor,
        t: &[f32],
        class: Option<&[usize]>,
    ) -> Result<Tensor> {
        let n = self.check_input(x)?;
        let cfg = &self.config;
        if t.len() != n {
            return Err(Error::arg(format!(
                "{} timesteps for a batch of {n}",
                t.len()
            )));
        }
        let x = if cfg.center_input_sample {
            crate::backend::state::centered(b, x)?
        } else {
            x.clone()
        };
        let temb = self.embedding(b, t, class)?;
        self.trunk_from(b, &x, &temb)
    }

    /// The batch size of an NHWC model input, or an error when it does not fit the model.
    fn check_input(&self, x: &Tensor) -> Result<usize> {
        let (n, h, w, c) = x.nhwc();
        let cfg = &self.config;
        if c != cfg.in_channels || h != w || h % (1 << (cfg.block_out_channels.len() - 1)) != 0 {
            return Err(Error::arg(format!(
                "input {:?} does not fit the model ({} channels, spatial size divisible by {})",
                x.shape(),
                cfg.in_channels,
                1 << (cfg.block_out_channels.len() - 1)
            )));
        }
        Ok(n)
    }

    /// [`UNet::trunk`] from the model's input as it enters `conv_in` (already centered for a
    /// model with `center_input_sample`) and the embedding (from [`UNet::embedding_from`]).
    /// Rows are independent, so the backend may run the batch in pieces
    /// ([`Backend::run_in_pieces`]).
    pub fn trunk_from(&self, b: &dyn Backend, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let n = self.check_input(x)?;
        if temb.shape().first() != Some(&n) {
            return Err(Error::arg(format!(
                "embedding {:?} for a batch of {n}",
                temb.shape()
            )));
        }
        b.run_in_pieces(
            &[x, temb],
            self.widest_activation_bytes_per_sample(),
            self.num_params as u64 * 4,
            &|p| self.trunk_rows(b, &p[0], &p[1]),
        )
    }

    /// The largest activation of one sample (f32 bytes): the widest level, doubled for the
    /// up path's concatenation with the skip.
    fn widest_activation_bytes_per_sample(&self) -> u64 {
        let widest = (0..self.config.block_out_channels.len())
            .map(|l| self.level_elements(l))
            .max()
            .unwrap_or(0);
        2 * widest * 4
    }

    /// Elements of one sample's activation at level `l` (`block_out_channels[l]` channels at
    /// `sample_size >> l` pixels a side).
    fn level_elements(&self, l: usize) -> u64 {
        let c = &self.config;
        let side = (c.sample_size >> l) as u64;
        c.block_out_channels[l] as u64 * side * side
    }

    /// [`UNet::trunk_from`] on all rows at once.
    fn trunk_rows(&self, b: &dyn Backend, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let mut h = b.conv2d(x, &self.conv_in, None)?;
        let mut skips = vec![h.clone()];
        for blk in &self.down {
            for (j, rn) in blk.resnets.iter().enumerate() {
                h = rn.forward(b, &h, temb)?;
                if let Some(a) = blk.attentions.get(j) {
                    h = a.forward(b, &h)?;
                }
                skips.push(h.clone());
            }
            match &blk.downsample {
                Some(Sampler::Conv(ds)) => h = b.conv2d(&h, ds, None)?,
                Some(Sampler::Resnet(ds)) => h = ds.forward(b, &h, temb)?,
                None => continue,
            }
            skips.push(h.clone());
        }
        h = self.mid_resnets[0].forward(b, &h, temb)?;
        if let Some(a) = &self.mid_attention {
            h = a.forward(b, &h)?;
        }
        h = self.mid_resnets[1].forward(b, &h, temb)?;
        for blk in &self.up {
            for (j, rn) in blk.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                h = b.concat_channels(&h, &skip)?;
                h = rn.forward(b, &h, temb)?;
                if let Some(a) = blk.attentions.get(j) {
                    h = a.forward(b, &h)?;
                }
            }
            match &blk.upsample {
                Some(Sampler::Conv(us)) => {
                    h = b.upsample_nearest2x(&h)?;
                    h = b.conv2d(&h, us, None)?;
                }
                Some(Sampler::Resnet(us)) => h = us.forward(b, &h, temb)?,
                None => {}
            }
        }
        b.group_norm(&h, &self.norm_out, true)
    }

    /// The full forward pass: `conv_out(trunk(x))`, NHWC `[n, s, s, out_channels]`.
    pub fn forward(
        &self,
        b: &dyn Backend,
        x: &Tensor,
        t: &[f32],
        class: Option<&[usize]>,
    ) -> Result<Tensor> {
        let h = self.trunk(b, x, t, class)?;
        b.conv2d(&h, &self.conv_out, None)
    }

    /// Peak activation memory of one sample's forward pass, in elements (an upper estimate):
    /// every skip connection stays alive until the up path consumes it, plus a few working
    /// tensors at the widest resolution and the attention score matrices.
    pub fn activation_elements_per_sample(&self) -> u64 {
        let c = &self.config;
        let mut total = 0u64;
        let mut widest = 0u64;
        for l in 0..c.block_out_channels.len() {
            let side = (c.sample_size >> l) as u64;
            let level = self.level_elements(l);
            // Skips kept for the up path (resnets + downsampler) and the concatenated inputs.
            total += level * (c.layers_per_block as u64 + 2);
            widest = widest.max(level);
            let attn = c.down_blocks[l] == DownKind::AttnDown
                || c.up_blocks[c.block_out_channels.len() - 1 - l] == UpKind::AttnUp;
            if attn {
                total += c.heads(c.block_out_channels[l]) as u64 * (side * side) * (side * side);
            }
        }
        total + 6 * widest
    }

    /// A human-readable summary of the architecture (for `uqengine info`).
    pub fn describe(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        s += &format!("UNet2DModel  {}\n", self.dir.display());
        s += &format!(
            "  parameters        {} ({:.2} M), stored as {}\n",
            self.num_params,
            self.num_params as f64 / 1e6,
            self.weights_dtype
        );
        s += &format!(
            "  sample            {}x{}x{} -> {} channels\n",
            c.sample_size, c.sample_size, c.in_channels, c.out_channels
        );
        s += &format!(
            "  block channels    {:?}, {} layers per block\n",
            c.block_out_channels, c.layers_per_block
        );
        s += &format!("  down blocks       {:?}\n", c.down_blocks);
        s += &format!("  up blocks         {:?}\n", c.up_blocks);
        s += &format!(
            "  attention         {}, mid-block attention {}\n",
            match (c.attention_head_dim, c.attention_heads) {
                (Some(d), _) => format!("head dim {d}"),
                (None, Some(h)) => format!(
                    "{h} heads ({} in up blocks)",
                    c.attention_heads_up.unwrap_or(h)
                ),
                (None, None) => "one head".into(),
            },
            c.add_attention
        );
        s += &format!(
            "  norm              {} groups, eps {:e}\n",
            c.norm_num_groups, c.norm_eps
        );
        s += &format!(
            "  resnets           time embedding {}, {} down, {} up\n",
            if c.scale_shift {
                "scale-shift"
            } else {
                "added"
            },
            if c.resnet_downsample {
                "resnet"
            } else {
                "conv"
            },
            if c.resnet_upsample { "resnet" } else { "conv" }
        );
        s += &format!(
            "  time embedding    {} dims, flip_sin_to_cos {}, freq_shift {}\n",
            c.time_embed_dim, c.flip_sin_to_cos, c.freq_shift
        );
        s += &format!(
            "  classes           {}\n",
            c.num_class_embeds
                .map(|n| n.to_string())
                .unwrap_or_else(|| "unconditional".into())
        );
        s += &format!(
            "  last layer        {LAST_LAYER}: {} -> {} channels, 3x3\n",
            c.block_out_channels[0], c.out_channels
        );
        s
    }
}

/// The frequencies of diffusers' `get_timestep_embedding` for `timestep_input_dim` features:
/// `exp(-ln(10000) * i / (half - freq_shift))`, in f32 as diffusers computes them.
fn time_freqs(cfg: &UNetConfig) -> Vec<f32> {
    let half = cfg.timestep_input_dim / 2;
    let shift = cfg.freq_shift as f32;
    let ln = -(10000f64.ln() as f32);
    (0..half)
        .map(|i| ((ln * i as f32) / (half as f32 - shift)).exp())
        .collect()
}
