//! OpenAI guided-diffusion (ADM) checkpoints to diffusers `UNet2DModel` directories.
//!
//! The input is a `torch.save` of a `UNetModel` state dict (f32, f16, bf16 or, as
//! `use_fp16` checkpoints are, f16 and f32 mixed) and the flags guided-diffusion's README gives
//! for it (`--attention_resolutions 32,16,8 --class_cond True ...`), which fix the model's shape
//! and its diffusion: see [`flags`]. Every tensor the flags imply must be in the checkpoint with
//! the shape they imply, and every tensor of the checkpoint must be used, else the conversion
//! fails naming the tensor and the flag that most probably differs.
//!
//! The output directory holds:
//!
//! - `config.json`: the `UNet2DModel` config, plus `attention_heads` and `attention_heads_up`
//!   (guided-diffusion's fixed head counts, `num_heads` and `num_heads_upsample`, when
//!   `num_head_channels` is -1) and `adm_flags` (every flag as the conversion read it, for the
//!   record);
//! - `diffusion_pytorch_model.safetensors`: the weights in diffusers names (see [`names`]),
//!   in the chosen dtype. `conv_out` (guided-diffusion's `out.2`) is the layer whose
//!   last-layer Laplace posterior `fit` builds;
//! - `scheduler/scheduler_config.json`: the training schedule, guided-diffusion's timestep
//!   spacing and variance type.
//!
//! The directory is built beside its final path and renamed into place only when complete.

pub mod flags;
pub mod names;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde_json::{json, Value};

pub use flags::{AdmArch, AdmDiffusion, AdmFlags, AdmSpec, NoiseSchedule, FLAGS_PATH};
pub use names::{plan, qkv_rows, Planned, QkvPart, Role, Take};

use super::checkpoint::Checkpoint;
use super::{check_out_dir, write_json, write_weights, LazyTensor, OutDtype, StagedDir};
use crate::error::{Error, Result};

/// The weight file of the output directory.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// What `uqengine convert adm --help` prints after the options: the flags and the output.
pub const HELP: &str = "\
--flags takes guided-diffusion's model and diffusion flags as its README gives them for the
checkpoint, as one string of `--name value` pairs. Booleans read True/False (or yes/no, t/f,
y/n, 1/0). A flag left out has guided-diffusion's default:

  --image_size 64  --num_channels 128  --num_res_blocks 2  --num_heads 4
  --num_heads_upsample -1 (= num_heads)  --num_head_channels -1 (fixed head counts)
  --attention_resolutions 16,8  --channel_mult \"\" (by image size: 64 -> 1,2,3,4;
  128 -> 1,1,2,3,4; 256 -> 1,1,2,2,4,4; 512 -> 0.5,1,1,2,2,4,4)
  --class_cond False (True: 1000 classes)  --use_scale_shift_norm True
  --resblock_updown False  --use_new_attention_order False  --learn_sigma False
  --diffusion_steps 1000  --noise_schedule linear (or cosine)  --predict_xstart False
  --rescale_timesteps False (True only with 1000 steps)  --sigma_small False

Recorded but without effect on the converted model: --dropout 0.0, --use_checkpoint False,
--use_fp16 False (the weights are written in --dtype), --use_kl False,
--rescale_learned_sigmas False, --timestep_respacing \"\" (choose the steps at `sample`).

The output directory (which must not exist, or be empty) receives config.json (UNet2DModel,
with the flags under adm_flags), diffusion_pytorch_model.safetensors (diffusers names, in
--dtype) and scheduler/scheduler_config.json (training schedule, guided-diffusion timestep
spacing, variance type). It is written beside its final path and renamed into place when
complete, so a failed conversion leaves nothing there.";

/// One conversion: the checkpoint, its flags, where to write and in which dtype.
#[derive(Clone, Debug)]
pub struct AdmConvert {
    /// The `torch.save` file of the `UNetModel` state dict.
    pub checkpoint: PathBuf,
    /// guided-diffusion's flags for it (see [`AdmFlags::parse`]).
    pub flags: String,
    /// The model directory to create; it must be absent or empty.
    pub out_dir: PathBuf,
    /// Storage type of the written weights.
    pub dtype: OutDtype,
}

/// What a conversion wrote.
#[derive(Clone, Debug)]
pub struct AdmConvertReport {
    pub out_dir: PathBuf,
    /// Number of tensors written.
    pub tensors: usize,
    /// Number of parameters written.
    pub params: usize,
    pub dtype: OutDtype,
    /// The top-level key the state dict was nested under, if any.
    pub wrapper: Option<String>,
    pub spec: AdmSpec,
}

impl AdmConvert {
    /// Convert: read the flags, check the checkpoint against them, then write the directory.
    /// Nothing is left at [`Self::out_dir`] when this fails.
    pub fn run(&self) -> Result<AdmConvertReport> {
        let spec = AdmFlags::parse(&self.flags)?.resolve()?;
        check_out_dir(&self.out_dir)?;
        let ckpt = Checkpoint::open(&self.checkpoint)?;
        let plan = names::plan(&spec.arch);
        check_checkpoint(&plan, &ckpt, &spec)?;
        let dir = StagedDir::create(&self.out_dir)?;
        write_json(&dir.path().join("config.json"), &unet_config(&spec))?;
        let sched = dir.path().join("scheduler");
        std::fs::create_dir(&sched).map_err(|e| Error::io(&sched, e))?;
        write_json(
            &sched.join("scheduler_config.json"),
            &scheduler_config(&spec.diffusion),
        )?;
        let tensors = lazy_tensors(&plan, &ckpt);
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_weights(
            &dir.path().join(WEIGHTS_FILE),
            &tensors,
            self.dtype,
            metadata,
        )?;
        let out_dir = dir.commit()?;
        Ok(AdmConvertReport {
            out_dir,
            tensors: plan.len(),
            params: plan.iter().map(|p| p.shape.iter().product::<usize>()).sum(),
            dtype: self.dtype,
            wrapper: ckpt.wrapper().map(String::from),
            spec,
        })
    }
}

/// The `UNet2DModel` `config.json` of the model `spec` describes.
pub fn unet_config(spec: &AdmSpec) -> Value {
    let a = &spec.arch;
    let down: Vec<&str> = a
        .level_attention
        .iter()
        .map(|&att| {
            if att {
                "AttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = a
        .level_attention
        .iter()
        .rev()
        .map(|&att| if att { "AttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    let resample = if a.resblock_updown { "resnet" } else { "conv" };
    let fixed_heads = a.num_head_channels.is_none();
    json!({
        "_class_name": "UNet2DModel",
        "sample_size": a.image_size,
        "in_channels": a.in_channels,
        "out_channels": a.out_channels,
        "center_input_sample": false,
        "time_embedding_type": "positional",
        "timestep_input_dim": a.model_channels,
        "time_embedding_dim": a.time_embed_dim(),
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": a.block_channels,
        "layers_per_block": a.num_res_blocks,
        "downsample_padding": 1,
        "downsample_type": resample,
        "upsample_type": resample,
        "resnet_time_scale_shift": if a.use_scale_shift_norm { "scale_shift" } else { "default" },
        "act_fn": "silu",
        "attention_head_dim": a.num_head_channels,
        "attention_heads": fixed_heads.then_some(a.num_heads),
        "attention_heads_up": fixed_heads.then_some(a.num_heads_upsample),
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-5,
        "num_class_embeds": a.num_classes,
        "add_attention": true,
        "mid_block_type": "UNetMidBlock2D",
        "adm_flags": spec.flags_json(),
    })
}

/// The `scheduler_config.json` of the diffusion `d`: guided-diffusion's training schedule
/// (the linear one scaled by `1000 / T`), its timestep spacing, and the variance the model
/// was trained with.
pub fn scheduler_config(d: &AdmDiffusion) -> Value {
    let t = d.steps;
    // As `get_named_beta_schedule`: scale = 1000 / T, in f64.
    let scale = 1000.0 / t as f64;
    let variance = if d.learn_sigma {
        "learned_range"
    } else if d.sigma_small {
        "fixed_small"
    } else {
        "fixed_large"
    };
    json!({
        "num_train_timesteps": t,
        "beta_schedule": match d.schedule {
            NoiseSchedule::Linear => "linear",
            NoiseSchedule::Cosine => "squaredcos_cap_v2",
        },
        "beta_start": scale * 0.0001,
        "beta_end": scale * 0.02,
        "clip_sample": true,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": true,
        "steps_offset": 0,
        "prediction_type": if d.predict_xstart { "sample" } else { "epsilon" },
        "timestep_spacing": "guided_diffusion",
        "use_clipped_model_output": true,
        "variance_type": variance,
    })
}

/// A flag's value as the user would write it (`True`, `128`, `1,1,2,3,4`).
fn show_flag(spec: &AdmSpec, key: &str) -> String {
    match &spec.flags_json()[key] {
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) if s.is_empty() => "\"\"".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|v| match v.as_f64() {
                Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
                _ => v.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// The error for a checkpoint that does not match the flags, blaming the flag `key`.
fn blame(ckpt: &Checkpoint, key: &str, msg: String) -> Error {
    Error::Config {
        path: ckpt.path().to_path_buf(),
        key: key.into(),
        msg,
    }
}

/// `--key value, which ...`: the suggestion that `key` differs from the checkpoint's.
fn suggest(spec: &AdmSpec, keys: &[&str]) -> String {
    let given: Vec<String> = keys
        .iter()
        .map(|k| format!("--{k} {}", show_flag(spec, k)))
        .collect();
    let one = keys.len() == 1;
    format!(
        "{} probably differ{} from the checkpoint's",
        given.join(" or "),
        if one { "s" } else { "" }
    )
}

/// The flags to blame for the channel counts of a tensor: `channel_mult` (and `image_size`,
/// which picks its default) when the first level's width (`conv_in`) agrees with the flags,
/// else `num_channels`.
fn channel_flags(ckpt: &Checkpoint, spec: &AdmSpec) -> &'static [&'static str] {
    let first = ckpt.shape("input_blocks.0.0.weight").map(|s| s[0]);
    if first == Some(spec.arch.block_channels[0]) {
        if spec.flags.channel_mult.is_empty() {
            &["channel_mult", "image_size"]
        } else {
            &["channel_mult"]
        }
    } else {
        &["num_channels", "channel_mult"]
    }
}

/// The error for the tensor `p.source`, present with the shape `got`.
fn shape_error(ckpt: &Checkpoint, spec: &AdmSpec, p: &Planned, got: &[usize]) -> Error {
    let exp = &p.source_shape;
    let rows_differ = got.first() != exp.first() && got.get(1..) == exp.get(1..);
    // A resnet's projection of the time embedding: [(2x) channels, 4 * num_channels].
    let emb = p.source.contains(".emb_layers.");
    let keys: &[&str] = if emb && rows_differ && (got[0] == 2 * exp[0] || 2 * got[0] == exp[0]) {
        &["use_scale_shift_norm"]
    } else if p.role == Role::OutConv && rows_differ {
        &["learn_sigma"]
    } else if p.role == Role::ClassEmbed && rows_differ {
        &["class_cond"]
    } else if matches!(p.role, Role::TimeEmbed | Role::ClassEmbed)
        || (emb && got.get(1) != exp.get(1))
    {
        &["num_channels"]
    } else {
        channel_flags(ckpt, spec)
    };
    blame(
        ckpt,
        keys[0],
        format!(
            "tensor `{}` has shape {got:?}, the flags give {exp:?}: {}",
            p.source,
            suggest(spec, keys)
        ),
    )
}

/// The flags that fix how many blocks the model has.
const STRUCTURE: &[&str] = &["num_res_blocks", "channel_mult"];

/// The module path of a checkpoint tensor: `output_blocks.4.1` of
/// `output_blocks.4.1.qkv.weight`, `out.2` of `out.2.weight`.
fn module_of(source: &str) -> &str {
    let depth = if source.starts_with("input_blocks.") || source.starts_with("output_blocks.") {
        3
    } else {
        2
    };
    match source.match_indices('.').nth(depth - 1) {
        Some((i, _)) => &source[..i],
        None => source,
    }
}

/// The kind of module a checkpoint holds at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Nothing,
    Attention,
    ResBlock,
    /// A convolution (`op`, `conv`) or another layer.
    Layer,
}

/// The kind of module `ckpt` holds under `module`.
fn found_at(ckpt: &Checkpoint, module: &str) -> Found {
    let prefix = format!("{module}.");
    let names: Vec<&str> = ckpt
        .names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    kind_of(&names)
}

/// The kind of module the tensors `names` make up.
fn kind_of(names: &[&str]) -> Found {
    let any = |parts: &[&str]| names.iter().any(|n| parts.iter().any(|p| n.contains(p)));
    if names.is_empty() {
        Found::Nothing
    } else if any(&[".qkv.", ".proj_out."]) {
        Found::Attention
    } else if any(&[
        ".in_layers.",
        ".emb_layers.",
        ".out_layers.",
        ".skip_connection.",
    ]) {
        Found::ResBlock
    } else {
        Found::Layer
    }
}

/// The error for the tensor `p.source`, absent: the flag to blame follows from what the
/// checkpoint holds at that module instead.
fn missing_error(ckpt: &Checkpoint, spec: &AdmSpec, p: &Planned) -> Error {
    let module = module_of(&p.source);
    let expected = if p.role == Role::Attention {
        Found::Attention
    } else {
        kind_of(&[p.source.as_str()])
    };
    let block = module.rsplit_once('.').map_or(module, |(b, _)| b);
    let keys: &[&str] = match (p.role, found_at(ckpt, module)) {
        (Role::ClassEmbed, _) => &["class_cond"],
        (Role::Attention, Found::Nothing) if found_at(ckpt, block) != Found::Nothing => {
            &["attention_resolutions", "num_res_blocks"]
        }
        (_, Found::Nothing) => STRUCTURE,
        (_, found) if found == expected => channel_flags(ckpt, spec),
        (Role::Attention, _) | (_, Found::Attention) => {
            &["attention_resolutions", "num_res_blocks"]
        }
        (Role::Resample, _) => &["resblock_updown", "num_res_blocks"],
        _ => STRUCTURE,
    };
    blame(
        ckpt,
        keys[0],
        format!(
            "missing tensor `{}` (for `{}`): {}",
            p.source,
            p.name,
            suggest(spec, keys)
        ),
    )
}

/// The top-level modules of guided-diffusion's `UNetModel`.
const UNET_MODULES: &[&str] = &[
    "time_embed",
    "label_emb",
    "input_blocks",
    "middle_block",
    "output_blocks",
    "out",
];

/// The error for the checkpoint tensors `extra`, which the flags' model does not have.
fn extra_error(ckpt: &Checkpoint, spec: &AdmSpec, extra: &[&str]) -> Error {
    let first = extra[0];
    let more = match extra.len() {
        1 => String::new(),
        n => format!(
            " ({} tensors in all: {}{})",
            n,
            extra[..n.min(5)].join(", "),
            if n > 5 { ", ..." } else { "" }
        ),
    };
    let top = first.split('.').next().unwrap_or(first);
    if !UNET_MODULES.contains(&top) {
        return Error::io(
            ckpt.path(),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "not a UNetModel state dict: tensor `{first}`{more} belongs to none of \
                     its modules ({})",
                    UNET_MODULES.join(", ")
                ),
            ),
        );
    }
    let module = first.rsplit_once('.').map_or(first, |(m, _)| m);
    let keys: &[&str] = if first.starts_with("label_emb.") {
        &["class_cond"]
    } else if [".qkv", ".proj_out", ".norm"]
        .iter()
        .any(|s| module.ends_with(s))
    {
        &["attention_resolutions", "num_res_blocks"]
    } else if module.ends_with(".skip_connection") {
        channel_flags(ckpt, spec)
    } else if module.ends_with(".op") || module.ends_with(".conv") {
        &["resblock_updown", "num_res_blocks"]
    } else {
        STRUCTURE
    };
    blame(
        ckpt,
        keys[0],
        format!(
            "tensor `{first}`{more} is not part of the UNetModel the flags describe: {}",
            suggest(spec, keys)
        ),
    )
}

/// An error unless the checkpoint holds exactly the tensors of `plan`, each with its shape and
/// a floating-point dtype. The first problem in the model's order is reported, naming the
/// checkpoint, the tensor and the flag that most probably differs.
pub fn check_checkpoint(plan: &[Planned], ckpt: &Checkpoint, spec: &AdmSpec) -> Result<()> {
    let mut used: HashSet<&str> = HashSet::new();
    for p in plan {
        if !used.insert(p.source.as_str()) {
            continue;
        }
        match ckpt.shape(&p.source) {
            None => return Err(missing_error(ckpt, spec, p)),
            Some(got) if got != p.source_shape.as_slice() => {
                return Err(shape_error(ckpt, spec, p, got))
            }
            Some(_) => ckpt.check_float(&p.source)?,
        }
    }
    let extra: Vec<&str> = ckpt
        .names()
        .into_iter()
        .filter(|n| !used.contains(n))
        .collect();
    if extra.is_empty() {
        Ok(())
    } else {
        Err(extra_error(ckpt, spec, &extra))
    }
}

/// The values of `p` from its checkpoint tensor's values `src`.
pub fn take(p: &Planned, src: &[f32]) -> Vec<f32> {
    match &p.take {
        Take::All => src.to_vec(),
        Take::Rows(rows) => {
            let row_len = src.len() / p.source_shape[0];
            rows.iter()
                .flat_map(|&r| &src[r * row_len..(r + 1) * row_len])
                .copied()
                .collect()
        }
    }
}

/// The output tensors of `plan`, each read from `ckpt` when written.
fn lazy_tensors<'a>(plan: &'a [Planned], ckpt: &'a Checkpoint) -> Vec<LazyTensor<'a>> {
    plan.iter()
        .map(|p| LazyTensor {
            name: p.name.clone(),
            shape: p.shape.clone(),
            values: Box::new(move || Ok(take(p, &ckpt.read_f32(&p.source)?))),
        })
        .collect()
}
