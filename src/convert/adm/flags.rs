//! guided-diffusion's command-line flags (`--key value` pairs, as its README gives them per
//! checkpoint) and what `create_model_and_diffusion` makes of them: the [`AdmArch`] of the
//! `UNetModel` and the [`AdmDiffusion`] it was trained with.
//!
//! Every error is an [`Error::Config`] or [`Error::Unsupported`] naming [`FLAGS_PATH`] and the
//! flag (without its `--`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::config::invalid;
use crate::error::{Error, Result};

/// The pseudo-path errors about the flags name.
pub const FLAGS_PATH: &str = "<adm --flags>";

/// guided-diffusion's `NUM_CLASSES`: the class count of a `--class_cond True` model (ImageNet).
pub const NUM_CLASSES: usize = 1000;

/// A flag's type and its default in `model_and_diffusion_defaults()`.
#[derive(Clone, Debug, PartialEq)]
enum FlagValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

/// Every flag guided-diffusion's sampling scripts take for the model and diffusion, with its
/// default, in the order of `model_and_diffusion_defaults()`.
fn defaults() -> Vec<(&'static str, FlagValue)> {
    use FlagValue::{Bool, Float, Int, Str};
    vec![
        ("image_size", Int(64)),
        ("num_channels", Int(128)),
        ("num_res_blocks", Int(2)),
        ("num_heads", Int(4)),
        ("num_heads_upsample", Int(-1)),
        ("num_head_channels", Int(-1)),
        ("attention_resolutions", Str("16,8".into())),
        ("channel_mult", Str(String::new())),
        ("dropout", Float(0.0)),
        ("class_cond", Bool(false)),
        ("use_checkpoint", Bool(false)),
        ("use_scale_shift_norm", Bool(true)),
        ("resblock_updown", Bool(false)),
        ("use_fp16", Bool(false)),
        ("use_new_attention_order", Bool(false)),
        ("learn_sigma", Bool(false)),
        ("diffusion_steps", Int(1000)),
        ("noise_schedule", Str("linear".into())),
        ("timestep_respacing", Str(String::new())),
        ("use_kl", Bool(false)),
        ("predict_xstart", Bool(false)),
        ("rescale_timesteps", Bool(false)),
        ("rescale_learned_sigmas", Bool(false)),
        ("sigma_small", Bool(false)),
    ]
}

/// The names of every flag [`AdmFlags::parse`] accepts, in guided-diffusion's order.
pub fn known_flags() -> Vec<&'static str> {
    defaults().into_iter().map(|(k, _)| k).collect()
}

/// guided-diffusion's `str2bool`: yes/no, true/false, t/f, y/n, 1/0 in any case.
pub fn str2bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "t" | "y" | "1" => Some(true),
        "no" | "false" | "f" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// The flags as given, defaults filled in, each in its Python type.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmFlags {
    pub image_size: i64,
    pub num_channels: i64,
    pub num_res_blocks: i64,
    pub num_heads: i64,
    pub num_heads_upsample: i64,
    pub num_head_channels: i64,
    pub attention_resolutions: String,
    pub channel_mult: String,
    pub dropout: f64,
    pub class_cond: bool,
    pub use_checkpoint: bool,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    pub use_fp16: bool,
    pub use_new_attention_order: bool,
    pub learn_sigma: bool,
    pub diffusion_steps: i64,
    pub noise_schedule: String,
    pub timestep_respacing: String,
    pub use_kl: bool,
    pub predict_xstart: bool,
    pub rescale_timesteps: bool,
    pub rescale_learned_sigmas: bool,
    pub sigma_small: bool,
}

impl Default for AdmFlags {
    /// `model_and_diffusion_defaults()`.
    fn default() -> Self {
        Self::from_values(&defaults().into_iter().collect())
    }
}

/// The error for the flag `key`, explained by `msg`.
fn flag_err(key: &str, msg: impl Into<String>) -> Error {
    invalid(Path::new(FLAGS_PATH), key, msg)
}

/// The error for a value of the flag `key` the engine does not implement.
fn unsupported(key: &str, value: impl std::fmt::Display) -> Error {
    Error::Unsupported {
        path: FLAGS_PATH.into(),
        key: key.into(),
        value: value.to_string(),
    }
}

impl AdmFlags {
    /// Parse `--key value` (or `--key=value`) pairs separated by whitespace. Booleans take
    /// guided-diffusion's `str2bool` spellings; integers and floats Python's `int()` and
    /// `float()` forms. An unknown flag (the error lists the known ones), a flag without a
    /// value, a flag given twice and a value of the wrong type are errors naming the flag.
    pub fn parse(text: &str) -> Result<Self> {
        let table = defaults();
        let known = known_flags();
        let mut values: BTreeMap<&str, FlagValue> = table.iter().cloned().collect();
        let mut given: Vec<&str> = Vec::new();
        let mut tokens = text.split_whitespace();
        while let Some(tok) = tokens.next() {
            let Some(flag) = tok.strip_prefix("--") else {
                return Err(Error::Config {
                    path: FLAGS_PATH.into(),
                    key: tok.into(),
                    msg: "expected a flag `--name` before this value".into(),
                });
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (flag, None),
            };
            let Some((key, default)) = table.iter().find(|(k, _)| *k == name) else {
                return Err(flag_err(
                    name,
                    format!("unknown flag; known flags: {}", known.join(", ")),
                ));
            };
            if given.contains(key) {
                return Err(flag_err(key, "given twice"));
            }
            given.push(key);
            let raw = match inline {
                Some(v) => v,
                None => match tokens.next() {
                    Some(v) if !v.starts_with("--") => v,
                    _ => return Err(flag_err(key, "has no value")),
                },
            };
            values.insert(key, parse_value(key, default, unquote(raw))?);
        }
        Ok(Self::from_values(&values))
    }

    fn from_values(v: &BTreeMap<&str, FlagValue>) -> Self {
        let int = |k: &str| match &v[k] {
            FlagValue::Int(x) => *x,
            other => unreachable!("{k} is an integer flag, holds {other:?}"),
        };
        let float = |k: &str| match &v[k] {
            FlagValue::Float(x) => *x,
            other => unreachable!("{k} is a float flag, holds {other:?}"),
        };
        let bool = |k: &str| match &v[k] {
            FlagValue::Bool(x) => *x,
            other => unreachable!("{k} is a boolean flag, holds {other:?}"),
        };
        let string = |k: &str| match &v[k] {
            FlagValue::Str(x) => x.clone(),
            other => unreachable!("{k} is a string flag, holds {other:?}"),
        };
        AdmFlags {
            image_size: int("image_size"),
            num_channels: int("num_channels"),
            num_res_blocks: int("num_res_blocks"),
            num_heads: int("num_heads"),
            num_heads_upsample: int("num_heads_upsample"),
            num_head_channels: int("num_head_channels"),
            attention_resolutions: string("attention_resolutions"),
            channel_mult: string("channel_mult"),
            dropout: float("dropout"),
            class_cond: bool("class_cond"),
            use_checkpoint: bool("use_checkpoint"),
            use_scale_shift_norm: bool("use_scale_shift_norm"),
            resblock_updown: bool("resblock_updown"),
            use_fp16: bool("use_fp16"),
            use_new_attention_order: bool("use_new_attention_order"),
            learn_sigma: bool("learn_sigma"),
            diffusion_steps: int("diffusion_steps"),
            noise_schedule: string("noise_schedule"),
            timestep_respacing: string("timestep_respacing"),
            use_kl: bool("use_kl"),
            predict_xstart: bool("predict_xstart"),
            rescale_timesteps: bool("rescale_timesteps"),
            rescale_learned_sigmas: bool("rescale_learned_sigmas"),
            sigma_small: bool("sigma_small"),
        }
    }

    /// The model and diffusion these flags describe, as `create_model_and_diffusion` builds
    /// them. Values the converted model could not reproduce are errors naming the flag.
    pub fn resolve(&self) -> Result<AdmSpec> {
        Ok(AdmSpec {
            arch: AdmArch::from_flags(self)?,
            diffusion: AdmDiffusion::from_flags(self)?,
            flags: self.clone(),
        })
    }
}

/// `raw` without one pair of surrounding quotes (`""` is the empty string, as a shell reads it).
fn unquote(raw: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = raw.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    raw
}

/// `raw`, the value given for the flag `key`, in the type of its default.
fn parse_value(key: &str, default: &FlagValue, raw: &str) -> Result<FlagValue> {
    let wrong = |expected: &str| flag_err(key, format!("expected {expected}, found `{raw}`"));
    Ok(match default {
        FlagValue::Int(_) => FlagValue::Int(
            raw.replace('_', "")
                .parse()
                .map_err(|_| wrong("an integer"))?,
        ),
        FlagValue::Float(_) => FlagValue::Float(raw.parse().map_err(|_| wrong("a number"))?),
        FlagValue::Bool(_) => FlagValue::Bool(
            str2bool(raw).ok_or_else(|| wrong("a boolean (True/False, yes/no, t/f, y/n, 1/0)"))?,
        ),
        FlagValue::Str(_) => FlagValue::Str(raw.to_string()),
    })
}

/// The diffusion process's noise schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseSchedule {
    /// Betas from `0.0001 * 1000 / T` to `0.02 * 1000 / T`, linearly.
    Linear,
    /// The cosine schedule of improved DDPM (diffusers `squaredcos_cap_v2`).
    Cosine,
}

/// What the diffusion flags mean for sampling.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmDiffusion {
    /// Training timesteps `T` (`diffusion_steps`).
    pub steps: usize,
    pub schedule: NoiseSchedule,
    /// The model also predicts the variance interpolation (output channels 3..6).
    pub learn_sigma: bool,
    /// With fixed variances: the posterior variance instead of beta.
    pub sigma_small: bool,
    /// The model predicts x0 instead of the noise.
    pub predict_xstart: bool,
}

impl AdmDiffusion {
    fn from_flags(f: &AdmFlags) -> Result<Self> {
        let steps = positive("diffusion_steps", f.diffusion_steps)?;
        let schedule = match f.noise_schedule.as_str() {
            "linear" => NoiseSchedule::Linear,
            "cosine" => NoiseSchedule::Cosine,
            other => return Err(unsupported("noise_schedule", format!("\"{other}\""))),
        };
        if f.rescale_timesteps && steps != 1000 {
            return Err(flag_err(
                "rescale_timesteps",
                format!(
                    "True with --diffusion_steps {steps}: the model was trained on timesteps \
                     scaled by 1000/{steps}, which the engine does not feed it"
                ),
            ));
        }
        Ok(AdmDiffusion {
            steps,
            schedule,
            learn_sigma: f.learn_sigma,
            sigma_small: f.sigma_small,
            predict_xstart: f.predict_xstart,
        })
    }
}

/// The `UNetModel` the flags build (`create_model`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdmArch {
    pub image_size: usize,
    pub in_channels: usize,
    /// 6 with `learn_sigma` (noise and variance interpolation), else 3.
    pub out_channels: usize,
    /// `num_channels`: the width of the timestep embedding's sinusoids; the embedding itself
    /// is 4x as wide.
    pub model_channels: usize,
    pub num_res_blocks: usize,
    /// Channel multiplier per level (`channel_mult`, or the default for the image size).
    pub channel_mult: Vec<f64>,
    /// Channels per level: `int(mult * model_channels)`.
    pub block_channels: Vec<usize>,
    /// Downsampling rates with attention: `image_size // res` per `attention_resolutions`.
    pub attention_ds: Vec<usize>,
    /// Whether level `l` (downsampling rate `2^l`) has attention after every resnet.
    pub level_attention: Vec<bool>,
    pub num_heads: usize,
    /// `num_heads_upsample`, with -1 resolved to `num_heads`.
    pub num_heads_upsample: usize,
    /// Fixed channels per head (overrides the head counts), or `None` for -1.
    pub num_head_channels: Option<usize>,
    /// `NUM_CLASSES` with `class_cond`.
    pub num_classes: Option<usize>,
    pub use_scale_shift_norm: bool,
    pub resblock_updown: bool,
    /// `QKVAttention` (q, k, v each head-major) instead of `QKVAttentionLegacy` (per head q, k, v).
    pub use_new_attention_order: bool,
}

/// The largest `image_size` (and the engine's largest `sample_size`).
const MAX_IMAGE_SIZE: usize = 4096;
/// The largest channel count of a level, far above any trained model, which keeps all size
/// arithmetic in range.
const MAX_CHANNELS: usize = 1 << 16;

/// `v`, which must be positive, as a `usize`.
fn positive(key: &str, v: i64) -> Result<usize> {
    usize::try_from(v)
        .ok()
        .filter(|&x| x > 0)
        .ok_or_else(|| flag_err(key, format!("expected a positive integer, found {v}")))
}

/// A head count or channels-per-head flag that may be -1 (unset).
fn positive_or_unset(key: &str, v: i64) -> Result<Option<usize>> {
    if v == -1 {
        Ok(None)
    } else {
        usize::try_from(v)
            .ok()
            .filter(|&x| x > 0)
            .map(Some)
            .ok_or_else(|| flag_err(key, format!("expected a positive integer or -1, found {v}")))
    }
}

/// guided-diffusion's default `channel_mult` for `image_size`.
pub fn default_channel_mult(image_size: usize) -> Option<Vec<f64>> {
    Some(match image_size {
        512 => vec![0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        256 => vec![1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
        128 => vec![1.0, 1.0, 2.0, 3.0, 4.0],
        64 => vec![1.0, 2.0, 3.0, 4.0],
        _ => return None,
    })
}

/// The comma-separated list `text` of the flag `key`, each entry parsed by `parse`.
fn list<T>(key: &str, text: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    text.split(',')
        .map(|s| {
            parse(s.trim()).ok_or_else(|| {
                flag_err(
                    key,
                    format!("`{}` in \"{text}\" is not a valid entry", s.trim()),
                )
            })
        })
        .collect()
}

impl AdmArch {
    fn from_flags(f: &AdmFlags) -> Result<Self> {
        let image_size = positive("image_size", f.image_size)?;
        if image_size > MAX_IMAGE_SIZE {
            return Err(flag_err(
                "image_size",
                format!("{image_size} is larger than {MAX_IMAGE_SIZE}"),
            ));
        }
        let model_channels = positive("num_channels", f.num_channels)?;
        if model_channels > MAX_CHANNELS {
            return Err(flag_err(
                "num_channels",
                format!("{model_channels} is larger than {MAX_CHANNELS}"),
            ));
        }
        let num_res_blocks = usize::try_from(f.num_res_blocks)
            .ok()
            .filter(|&n| n <= 64)
            .ok_or_else(|| {
                flag_err(
                    "num_res_blocks",
                    format!(
                        "expected an integer from 0 to 64, found {}",
                        f.num_res_blocks
                    ),
                )
            })?;
        let channel_mult = if f.channel_mult.is_empty() {
            default_channel_mult(image_size).ok_or_else(|| {
                flag_err(
                    "channel_mult",
                    format!(
                        "guided-diffusion has no default for --image_size {image_size} (only \
                         64, 128, 256 and 512): give --channel_mult, e.g. 1,2,2,2"
                    ),
                )
            })?
        } else {
            list("channel_mult", &f.channel_mult, |s| {
                s.parse::<f64>().ok().filter(|m| m.is_finite() && *m > 0.0)
            })?
        };
        let block_channels = channel_mult
            .iter()
            .map(|&m| {
                // Python's int(mult * model_channels): truncation toward zero.
                let c = (m * model_channels as f64).trunc();
                if c >= 1.0 && c <= MAX_CHANNELS as f64 {
                    Ok(c as usize)
                } else {
                    Err(flag_err(
                        "channel_mult",
                        format!("{m} x --num_channels {model_channels} gives {c} channels"),
                    ))
                }
            })
            .collect::<Result<Vec<usize>>>()?;
        for &c in &block_channels {
            if c % 32 != 0 {
                let key = if model_channels % 32 != 0 {
                    "num_channels"
                } else {
                    "channel_mult"
                };
                return Err(flag_err(
                    key,
                    format!(
                        "a level gets {c} channels ({block_channels:?}), not a multiple of the \
                         32 groups of guided-diffusion's GroupNorm32"
                    ),
                ));
            }
        }
        if num_res_blocks == 0 && block_channels.windows(2).any(|w| w[0] != w[1]) {
            return Err(flag_err(
                "num_res_blocks",
                format!(
                    "0 with levels of different widths ({block_channels:?}): without resnets \
                     guided-diffusion's input blocks keep the first level's width, which a \
                     UNet2DModel cannot express"
                ),
            ));
        }
        let levels = block_channels.len();
        let divisible = u32::try_from(levels - 1)
            .ok()
            .and_then(|n| 1usize.checked_shl(n))
            .is_some_and(|d| image_size % d == 0);
        if !divisible {
            return Err(flag_err(
                "image_size",
                format!(
                    "{image_size} is not divisible by 2^{} ({levels} levels of --channel_mult \
                     {channel_mult:?} downsample {} times)",
                    levels - 1,
                    levels - 1
                ),
            ));
        }
        let attention_ds = list("attention_resolutions", &f.attention_resolutions, |s| {
            s.parse::<usize>()
                .ok()
                .filter(|&r| r > 0)
                .map(|r| image_size / r)
        })?;
        let level_attention = (0..levels)
            .map(|l| attention_ds.contains(&(1usize << l)))
            .collect::<Vec<_>>();
        let num_heads = positive("num_heads", f.num_heads)?;
        let num_heads_upsample =
            positive_or_unset("num_heads_upsample", f.num_heads_upsample)?.unwrap_or(num_heads);
        let num_head_channels = positive_or_unset("num_head_channels", f.num_head_channels)?;
        let arch = AdmArch {
            image_size,
            in_channels: 3,
            out_channels: if f.learn_sigma { 6 } else { 3 },
            model_channels,
            num_res_blocks,
            channel_mult,
            block_channels,
            attention_ds,
            level_attention,
            num_heads,
            num_heads_upsample,
            num_head_channels,
            num_classes: f.class_cond.then_some(NUM_CLASSES),
            use_scale_shift_norm: f.use_scale_shift_norm,
            resblock_updown: f.resblock_updown,
            use_new_attention_order: f.use_new_attention_order,
        };
        arch.check_heads()?;
        Ok(arch)
    }

    /// Number of levels (resolutions) of the UNet.
    pub fn levels(&self) -> usize {
        self.block_channels.len()
    }

    /// Width of the timestep (and class) embedding: `4 * model_channels`.
    pub fn time_embed_dim(&self) -> usize {
        4 * self.model_channels
    }

    /// Heads of an attention block with `channels` channels in the input or middle blocks
    /// (`up == false`) or in the output blocks (`up == true`).
    pub fn heads(&self, channels: usize, up: bool) -> usize {
        match (self.num_head_channels, up) {
            (Some(d), _) => channels / d,
            (None, false) => self.num_heads,
            (None, true) => self.num_heads_upsample,
        }
    }

    /// Every attention block's heads must split its channels evenly.
    fn check_heads(&self) -> Result<()> {
        let last = self.levels() - 1;
        for (l, &c) in self.block_channels.iter().enumerate() {
            // (is an output block) of every attention block at this level; the middle block,
            // at the last level, always has attention.
            let mut sides = Vec::new();
            if self.level_attention[l] || l == last {
                sides.push(false);
            }
            if self.level_attention[l] {
                sides.push(true);
            }
            for up in sides {
                let (key, per) = match (self.num_head_channels, up) {
                    (Some(d), _) => ("num_head_channels", c % d == 0),
                    (None, false) => ("num_heads", c % self.num_heads == 0),
                    (None, true) => ("num_heads_upsample", c % self.num_heads_upsample == 0),
                };
                if !per {
                    return Err(flag_err(
                        key,
                        format!("does not divide the {c} channels of an attention block"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The model and diffusion a set of flags describes.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmSpec {
    pub flags: AdmFlags,
    pub arch: AdmArch,
    pub diffusion: AdmDiffusion,
}

impl AdmSpec {
    /// Every flag with its value as the conversion used it (`channel_mult` and
    /// `attention_resolutions` as lists, `num_heads_upsample` resolved), for the record in
    /// `config.json`'s `adm_flags`.
    pub fn flags_json(&self) -> Value {
        let (f, a) = (&self.flags, &self.arch);
        let resolutions: Vec<Value> = f
            .attention_resolutions
            .split(',')
            .filter_map(|s| s.trim().parse::<usize>().ok())
            .map(Value::from)
            .collect();
        json!({
            "image_size": a.image_size,
            "num_channels": a.model_channels,
            "num_res_blocks": a.num_res_blocks,
            "num_heads": a.num_heads,
            "num_heads_upsample": a.num_heads_upsample,
            "num_head_channels": f.num_head_channels,
            "attention_resolutions": resolutions,
            "channel_mult": a.channel_mult,
            "dropout": f.dropout,
            "class_cond": f.class_cond,
            "use_checkpoint": f.use_checkpoint,
            "use_scale_shift_norm": f.use_scale_shift_norm,
            "resblock_updown": f.resblock_updown,
            "use_fp16": f.use_fp16,
            "use_new_attention_order": f.use_new_attention_order,
            "learn_sigma": f.learn_sigma,
            "diffusion_steps": self.diffusion.steps,
            "noise_schedule": f.noise_schedule,
            "timestep_respacing": f.timestep_respacing,
            "use_kl": f.use_kl,
            "predict_xstart": f.predict_xstart,
            "rescale_timesteps": f.rescale_timesteps,
            "rescale_learned_sigmas": f.rescale_learned_sigmas,
            "sigma_small": f.sigma_small,
        })
    }
}
