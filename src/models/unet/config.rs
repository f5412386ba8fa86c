//! diffusers `UNet2DModel` configuration. Every value the engine does not implement is an
//! [`Error::Unsupported`] naming the key and value, never a silently different model.

use std::path::Path;

use crate::config::{invalid, JsonConfig, Positive};
use crate::error::{Error, Result};

/// Down block kinds of `UNet2DModel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownKind {
    Down,
    AttnDown,
}

/// Up block kinds of `UNet2DModel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpKind {
    Up,
    AttnUp,
}

/// The parts of a `UNet2DModel` config.json the engine uses.
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_blocks: Vec<DownKind>,
    pub up_blocks: Vec<UpKind>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub downsample_padding: usize,
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub num_class_embeds: Option<usize>,
    pub time_embed_dim: usize,
    /// Width of the sinusoidal timestep features (diffusers' `timestep_input_dim`,
    /// `block_out_channels[0]` unless the config's `timestep_input_dim` says otherwise: ADM's
    /// 512x512 model has a first level half as wide as its features).
    pub timestep_input_dim: usize,
    pub add_attention: bool,
    /// `resnet_time_scale_shift: "scale_shift"`: the time embedding scales and shifts the
    /// second norm of every resnet (ADM's `use_scale_shift_norm`) instead of being added.
    pub scale_shift: bool,
    /// `downsample_type: "resnet"`: levels downsample with a resnet that average-pools
    /// (ADM's `resblock_updown`) instead of a strided convolution.
    pub resnet_downsample: bool,
    /// `upsample_type: "resnet"`: levels upsample with a resnet that repeats pixels.
    pub resnet_upsample: bool,
    /// `attention_heads`: a fixed head count for the down and mid blocks (ADM's `num_heads`),
    /// used when `attention_head_dim` is null.
    pub attention_heads: Option<usize>,
    /// `attention_heads_up`: a fixed head count for the up blocks (ADM's
    /// `num_heads_upsample`); defaults to `attention_heads`.
    pub attention_heads_up: Option<usize>,
}

impl UNetConfig {
    /// Parse `config.json` of a diffusers `UNet2DModel` directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&JsonConfig::open(path)?)
    }

    /// Parse from an already-read JSON object.
    pub fn from_json(c: &JsonConfig) -> Result<Self> {
        if let Some(cls) = c.opt::<String>("_class_name")? {
            if cls != "UNet2DModel" {
                return Err(c.unsupported("_class_name", cls));
            }
        }
        let sample_size = match c.get("sample_size") {
            Some(v) if v.is_array() => {
                let s: Vec<usize> = c.convert("sample_size", v)?;
                if s.len() != 2 || s[0] != s[1] {
                    return Err(c.unsupported("sample_size", v));
                }
                s[0]
            }
            _ => c.req::<Positive<usize>>("sample_size")?.0,
        };
        // Activations of one sample hold at least sample_size^2 values per channel: beyond this
        // a model would need absurd memory.
        if sample_size > 4096 {
            return Err(invalid(
                c.path(),
                "sample_size",
                format!("{sample_size} is larger than 4096"),
            ));
        }
        let block_out_channels: Vec<usize> = c.req("block_out_channels")?;
        let down_names: Vec<String> = c.req("down_block_types")?;
        let up_names: Vec<String> = c.req("up_block_types")?;
        if block_out_channels.is_empty() {
            return Err(c.err("block_out_channels", "must not be empty"));
        }
        if down_names.len() != block_out_channels.len() {
            return Err(c.err(
                "down_block_types",
                format!(
                    "{} entries for {} block_out_channels",
                    down_names.len(),
                    block_out_channels.len()
                ),
            ));
        }
        if up_names.len() != down_names.len() {
            return Err(c.err(
                "up_block_types",
                format!(
                    "{} entries for {} down blocks",
                    up_names.len(),
                    down_names.len()
                ),
            ));
        }
        let down_blocks = down_names
            .iter()
            .map(|n| match n.as_str() {
                "DownBlock2D" => Ok(DownKind::Down),
                "AttnDownBlock2D" => Ok(DownKind::AttnDown),
                other => Err(c.unsupported("down_block_types", other)),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_blocks = up_names
            .iter()
            .map(|n| match n.as_str() {
                "UpBlock2D" => Ok(UpKind::Up),
                "AttnUpBlock2D" => Ok(UpKind::AttnUp),
                other => Err(c.unsupported("up_block_types", other)),
            })
            .collect::<Result<Vec<_>>>()?;

        // Values the engine implements only in their default form.
        let must_eq = |key: &str, default: &str, allowed: &[&str]| -> Result<()> {
            let v = c.or(key, default.to_string())?;
            if allowed.contains(&v.as_str()) {
                Ok(())
            } else {
                Err(c.unsupported(key, format!("\"{v}\"")))
            }
        };
        must_eq("time_embedding_type", "positional", &["positional"])?;
        must_eq("act_fn", "silu", &["silu", "swish"])?;
        must_eq(
            "resnet_time_scale_shift",
            "default",
            &["default", "scale_shift"],
        )?;
        must_eq("downsample_type", "conv", &["conv", "resnet"])?;
        must_eq("upsample_type", "conv", &["conv", "resnet"])?;
        let scale_shift = c.or("resnet_time_scale_shift", "default".to_string())? == "scale_shift";
        if scale_shift && c.opt::<usize>("attn_norm_num_groups")?.is_none() {
            // diffusers' mid block then has no group norm before its attention.
            return Err(c.unsupported(
                "attn_norm_num_groups",
                "null with resnet_time_scale_shift \"scale_shift\" (mid-block attention without a norm)",
            ));
        }
        must_eq("mid_block_type", "UNetMidBlock2D", &["UNetMidBlock2D"])?;
        if let Some(v) = c.opt::<String>("class_embed_type")? {
            return Err(c.unsupported("class_embed_type", format!("\"{v}\"")));
        }
        let msf = c.or("mid_block_scale_factor", 1.0)?;
        if msf != 1.0 {
            return Err(c.unsupported("mid_block_scale_factor", msf));
        }
        if c.is_null("mid_block_type") {
            return Err(c.unsupported("mid_block_type", "null"));
        }

        let norm_num_groups = c.or("norm_num_groups", 32)?;
        if norm_num_groups == 0 {
            return Err(c.unsupported("norm_num_groups", 0));
        }
        for &ch in &block_out_channels {
            if ch % norm_num_groups != 0 {
                return Err(c.err(
                    "norm_num_groups",
                    format!(
                        "{norm_num_groups} groups do not divide {ch} channels (block_out_channels)"
                    ),
                ));
            }
        }
        let attention_head_dim = c.opt("attention_head_dim")?;
        let attention_heads: Option<usize> = c.opt("attention_heads")?;
        let attention_heads_up: Option<usize> = c.opt("attention_heads_up")?;
        for (key, v) in [
            ("attention_head_dim", attention_head_dim),
            ("attention_heads", attention_heads),
            ("attention_heads_up", attention_heads_up),
        ] {
            if v == Some(0) {
                return Err(c.unsupported(key, 0));
            }
        }
        if attention_head_dim.is_some()
            && (attention_heads.is_some() || attention_heads_up.is_some())
        {
            return Err(c.err(
                "attention_heads",
                "give either attention_head_dim or a fixed head count, not both",
            ));
        }
        let last_level = block_out_channels.len() - 1;
        for (i, &ch) in block_out_channels.iter().enumerate() {
            // (uses attention, head count key, head count) for the down/mid and the up side.
            let down_attn = down_blocks[i] == DownKind::AttnDown || i == last_level;
            let up_attn = up_blocks[last_level - i] == UpKind::AttnUp;
            let checks = [
                (down_attn, "attention_heads", attention_heads),
                (
                    up_attn,
                    "attention_heads_up",
                    attention_heads_up.or(attention_heads),
                ),
            ];
            for (uses_attn, key, heads) in checks {
                if !uses_attn {
                    continue;
                }
                if let Some(d) = attention_head_dim {
                    if ch % d != 0 {
                        return Err(c.err(
                            "attention_head_dim",
                            format!("{d} does not divide {ch} channels"),
                        ));
                    }
                } else if let Some(h) = heads {
                    if ch % h != 0 {
                        return Err(c.err(key, format!("{h} heads do not divide {ch} channels")));
                    }
                }
            }
        }
        let downsample_padding = c.or("downsample_padding", 1)?;
        if downsample_padding > 1 {
            return Err(c.unsupported("downsample_padding", downsample_padding));
        }
        let layers_per_block = c.or("layers_per_block", 2)?;
        // Without resnets in the down blocks nothing changes the channel count there (ADM's
        // num_res_blocks 0): only equal block channels are well defined.
        if layers_per_block == 0
            && block_out_channels
                .iter()
                .any(|&ch| ch != block_out_channels[0])
        {
            return Err(c.unsupported("layers_per_block", "0 with unequal block_out_channels"));
        }
        let freq_shift = c.or("freq_shift", 0.0)?;
        let timestep_input_dim: usize = c.or("timestep_input_dim", block_out_channels[0])?;
        let time_embed_dim = match c.opt("time_embedding_dim")? {
            Some(d) => d,
            None => block_out_channels[0].checked_mul(4).ok_or_else(|| {
                c.err(
                    "block_out_channels",
                    format!(
                        "{} channels in the first block is too large (the time embedding has 4x as many)",
                        block_out_channels[0]
                    ),
                )
            })?,
        };
        let cfg = UNetConfig {
            sample_size,
            in_channels: c.or("in_channels", 3)?,
            out_channels: c.or("out_channels", 3)?,
            center_input_sample: c.or("center_input_sample", false)?,
            flip_sin_to_cos: c.or("flip_sin_to_cos", true)?,
            freq_shift,
            down_blocks,
            up_blocks,
            block_out_channels,
            layers_per_block,
            downsample_padding,
            attention_head_dim,
            norm_num_groups,
            attn_norm_num_groups: c.opt("attn_norm_num_groups")?,
            norm_eps: c.or("norm_eps", Positive(1e-5))?.0,
            num_class_embeds: c.opt("num_class_embeds")?,
            time_embed_dim,
            timestep_input_dim,
            add_attention: c.or("add_attention", true)?,
            scale_shift,
            resnet_downsample: c.or("downsample_type", "conv".to_string())? == "resnet",
            resnet_upsample: c.or("upsample_type", "conv".to_string())? == "resnet",
            attention_heads,
            attention_heads_up,
        };
        if cfg.timestep_input_dim / 2 == 0 {
            return Err(if c.get("timestep_input_dim").is_some() {
                c.unsupported("timestep_input_dim", cfg.timestep_input_dim)
            } else {
                c.unsupported(
                    "block_out_channels",
                    format!("{:?}", cfg.block_out_channels),
                )
            });
        }
        if (cfg.timestep_input_dim / 2) as f64 == freq_shift {
            return Err(c.unsupported("freq_shift", freq_shift));
        }
        // 2^downsamplings overflows past 63 downsamplings, where no sample size is divisible.
        let downsamplings = cfg.block_out_channels.len() - 1;
        let divisible = u32::try_from(downsamplings)
            .ok()
            .and_then(|n| 1usize.checked_shl(n))
            .is_some_and(|f| cfg.sample_size.is_multiple_of(f));
        if !divisible {
            return Err(c.err(
                "sample_size",
                format!(
                    "{} is not divisible by 2^{downsamplings} (number of downsamplings)",
                    cfg.sample_size
                ),
            ));
        }
        Ok(cfg)
    }

    /// Attention heads of a down or mid block with `channels` channels.
    pub fn heads(&self, channels: usize) -> usize {
        match (self.attention_head_dim, self.attention_heads) {
            (Some(d), _) => channels / d,
            (None, Some(h)) => h,
            (None, None) => 1,
        }
    }

    /// Attention heads of an up block with `channels` channels.
    pub fn heads_up(&self, channels: usize) -> usize {
        match (self.attention_head_dim, self.attention_heads_up) {
            (None, Some(h)) => h,
            _ => self.heads(channels),
        }
    }

    /// Whether the model is class-conditional.
    pub fn is_conditional(&self) -> bool {
        self.num_class_embeds.is_some()
    }
}

/// Check a class index against the config.
pub fn check_class(cfg: &UNetConfig, class: usize) -> Result<()> {
    match cfg.num_class_embeds {
        Some(n) if class < n => Ok(()),
        Some(n) => Err(Error::arg(format!(
            "class {class} is out of range: the model has {n} classes (0..{})",
            n - 1
        ))),
        None => Err(Error::arg(format!(
            "class {class} given, but the model is not class-conditional"
        ))),
    }
}
