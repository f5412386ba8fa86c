//! `uqengine convert adm`: guided-diffusion flags, the tensor names and the attention row order
//! against expectations written here from guided-diffusion's `UNetModel`, and conversions of
//! the checkpoints in `tests/fixtures/adm/<name>/` (saved by guided-diffusion's own code with
//! `torch.save`): the directory's files, every tensor with its shape and values, f16/bf16 output
//! as f32 rounded, and errors that name the file, flag or tensor and leave nothing behind.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use serde_json::Value;

use uqengine::convert::adm::flags::{default_channel_mult, known_flags, str2bool, NUM_CLASSES};
use uqengine::convert::adm::{
    plan, qkv_rows, scheduler_config, unet_config, AdmConvert, AdmFlags, QkvPart, FLAGS_PATH, HELP,
    WEIGHTS_FILE,
};
use uqengine::convert::checkpoint::Checkpoint;
use uqengine::convert::OutDtype;
use uqengine::Error;

/// The flags guided-diffusion's README gives for its 128x128 ImageNet model.
const ADM128: &str = "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 \
    --image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 \
    --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True \
    --use_scale_shift_norm True";

fn flags(text: &str) -> AdmFlags {
    AdmFlags::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The flag error's key, asserting it is an [`Error::Config`] or [`Error::Unsupported`] about
/// the flags.
fn flag_error_key(e: &Error) -> String {
    match e {
        Error::Config { path, key, .. } | Error::Unsupported { path, key, .. }
            if path == Path::new(FLAGS_PATH) =>
        {
            key.clone()
        }
        other => panic!("not an error about the flags: {other:?}"),
    }
}

/// The key of the error of `text`, which must not resolve.
fn resolve_error_key(text: &str) -> String {
    let e = AdmFlags::parse(text)
        .and_then(|f| f.resolve())
        .expect_err(text);
    flag_error_key(&e)
}

// ------------------------------------------------------------------------------------------
// Flags
// ------------------------------------------------------------------------------------------

#[test]
fn no_flags_are_model_and_diffusion_defaults() {
    let f = flags("");
    assert_eq!(f, AdmFlags::default());
    // guided-diffusion's model_and_diffusion_defaults(), written out.
    assert_eq!(
        (
            f.image_size,
            f.num_channels,
            f.num_res_blocks,
            f.num_heads,
            f.num_heads_upsample,
            f.num_head_channels,
            f.diffusion_steps
        ),
        (64, 128, 2, 4, -1, -1, 1000)
    );
    assert_eq!(f.attention_resolutions, "16,8");
    assert_eq!(f.channel_mult, "");
    assert_eq!(f.dropout, 0.0);
    assert_eq!(f.noise_schedule, "linear");
    assert_eq!(f.timestep_respacing, "");
    assert!(f.use_scale_shift_norm);
    for (name, v) in [
        ("class_cond", f.class_cond),
        ("use_checkpoint", f.use_checkpoint),
        ("resblock_updown", f.resblock_updown),
        ("use_fp16", f.use_fp16),
        ("use_new_attention_order", f.use_new_attention_order),
        ("learn_sigma", f.learn_sigma),
        ("use_kl", f.use_kl),
        ("predict_xstart", f.predict_xstart),
        ("rescale_timesteps", f.rescale_timesteps),
        ("rescale_learned_sigmas", f.rescale_learned_sigmas),
        ("sigma_small", f.sigma_small),
    ] {
        assert!(!v, "{name} defaults to False");
    }
}

#[test]
fn readme_flags_parse_to_their_values() {
    let f = flags(ADM128);
    assert_eq!((f.image_size, f.num_channels), (128, 256));
    assert_eq!(f.attention_resolutions, "32,16,8");
    assert!(f.class_cond && f.learn_sigma && f.resblock_updown && f.use_fp16);
    // `--key=value` and surrounding quotes are read as a shell and argparse would.
    let g = flags("--image_size=32 --channel_mult \"1,2\" --timestep_respacing ''");
    assert_eq!(g.image_size, 32);
    assert_eq!(g.channel_mult, "1,2");
    assert_eq!(g.timestep_respacing, "");
}

#[test]
fn booleans_take_every_str2bool_spelling() {
    for t in ["True", "true", "TRUE", "yes", "Y", "t", "1"] {
        assert_eq!(str2bool(t), Some(true), "{t}");
        assert!(flags(&format!("--class_cond {t}")).class_cond, "{t}");
    }
    for f in ["False", "false", "no", "N", "f", "0"] {
        assert_eq!(str2bool(f), Some(false), "{f}");
        assert!(!flags(&format!("--use_scale_shift_norm {f}")).use_scale_shift_norm);
    }
    let e = AdmFlags::parse("--learn_sigma maybe").unwrap_err();
    assert_eq!(flag_error_key(&e), "learn_sigma");
    assert!(e.to_string().contains("`maybe`"), "{e}");
}

#[test]
fn unknown_flag_is_named_with_the_known_ones() {
    let e = AdmFlags::parse("--image_size 64 --batch_size 4").unwrap_err();
    assert_eq!(flag_error_key(&e), "batch_size");
    let msg = e.to_string();
    for k in known_flags() {
        assert!(msg.contains(k), "{msg} lacks {k}");
    }
    assert_eq!(known_flags().len(), 24);
}

#[test]
fn malformed_flag_strings_name_the_flag() {
    for (text, key) in [
        ("--num_channels", "num_channels"),
        ("--num_channels --image_size 64", "num_channels"),
        ("--image_size 64 --image_size 128", "image_size"),
        ("--num_channels 12.5", "num_channels"),
        ("--dropout none", "dropout"),
        ("image_size 64", "image_size"),
    ] {
        let e = AdmFlags::parse(text).expect_err(text);
        assert_eq!(flag_error_key(&e), key, "{text}: {e}");
    }
}

#[test]
fn channel_mult_defaults_follow_the_image_size() {
    let d = |s| default_channel_mult(s).unwrap();
    assert_eq!(d(64), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(d(128), [1.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(d(256), [1.0, 1.0, 2.0, 2.0, 4.0, 4.0]);
    assert_eq!(d(512), [0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]);
    assert_eq!(default_channel_mult(32), None);
    let spec = flags(ADM128).resolve().unwrap();
    assert_eq!(spec.arch.block_channels, [256, 256, 512, 768, 1024]);
    // No default for 32: the error names channel_mult and asks for it.
    let e = AdmFlags::parse("--image_size 32")
        .unwrap()
        .resolve()
        .unwrap_err();
    assert_eq!(flag_error_key(&e), "channel_mult");
    assert!(e.to_string().contains("--image_size 32"), "{e}");
    // 512's first multiplier of 0.5 gives conv_in fewer channels than the time embedding's
    // sinusoids: the config says so with timestep_input_dim.
    let spec = flags("--image_size 512 --num_channels 256")
        .resolve()
        .unwrap();
    assert_eq!(
        spec.arch.block_channels,
        [128, 256, 256, 512, 512, 1024, 1024]
    );
    let c = unet_config(&spec);
    assert_eq!(c["timestep_input_dim"], 256);
    assert_eq!(c["time_embedding_dim"], 1024);
    let cfg = uqengine::models::unet::UNetConfig::from_json(
        &uqengine::config::JsonConfig::parse(&c.to_string(), std::path::Path::new("config.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!((cfg.timestep_input_dim, cfg.time_embed_dim), (256, 1024));
    assert_eq!(cfg.block_out_channels[0], 128);
}

#[test]
fn explicit_channel_mult_multiplies_num_channels() {
    let a = flags("--image_size 32 --num_channels 64 --channel_mult 1,1.5,2")
        .resolve()
        .unwrap()
        .arch;
    assert_eq!(a.channel_mult, [1.0, 1.5, 2.0]);
    assert_eq!(a.block_channels, [64, 96, 128]);
}

#[test]
fn attention_resolutions_are_downsampling_rates() {
    // ds = image_size // res: 128 // 32 = 4, // 16 = 8, // 8 = 16 -> levels 2, 3, 4.
    let a = flags(ADM128).resolve().unwrap().arch;
    assert_eq!(a.attention_ds, [4, 8, 16]);
    assert_eq!(a.level_attention, [false, false, true, true, true]);
    // The default 16,8 at 64: ds 4 and 8 -> levels 2 and 3.
    let d = flags("").resolve().unwrap().arch;
    assert_eq!(d.level_attention, [false, false, true, true]);
}

#[test]
fn head_counts_resolve_as_create_model() {
    let a = flags("--num_heads 4").resolve().unwrap().arch;
    assert_eq!((a.num_heads, a.num_heads_upsample), (4, 4));
    assert_eq!(a.heads(256, false), 4);
    assert_eq!(a.heads(256, true), 4);
    let b = flags("--num_heads 4 --num_heads_upsample 2")
        .resolve()
        .unwrap()
        .arch;
    assert_eq!((b.heads(256, false), b.heads(256, true)), (4, 2));
    let c = flags("--num_head_channels 64").resolve().unwrap().arch;
    assert_eq!(c.num_head_channels, Some(64));
    assert_eq!((c.heads(256, false), c.heads(384, true)), (4, 6));
}

#[test]
fn unsupported_values_name_their_flag() {
    for (text, key) in [
        ("--noise_schedule sigmoid", "noise_schedule"),
        (
            "--rescale_timesteps True --diffusion_steps 4000",
            "rescale_timesteps",
        ),
        ("--image_size 24 --channel_mult 1,1,1,1,1", "image_size"),
        ("--num_channels 48", "num_channels"),
        ("--num_channels 32 --channel_mult 1,1.5", "channel_mult"),
        ("--num_heads 3", "num_heads"),
        ("--num_heads_upsample 3", "num_heads_upsample"),
        ("--num_head_channels 48", "num_head_channels"),
        ("--num_heads 0", "num_heads"),
        ("--image_size 0", "image_size"),
        ("--diffusion_steps 0", "diffusion_steps"),
        ("--attention_resolutions 16,x", "attention_resolutions"),
        ("--attention_resolutions 0", "attention_resolutions"),
        ("--channel_mult 1,-2", "channel_mult"),
        ("--num_res_blocks 0", "num_res_blocks"),
    ] {
        assert_eq!(resolve_error_key(text), key, "{text}");
    }
    // rescale_timesteps is the identity at 1000 steps; num_res_blocks 0 works with one width.
    flags("--rescale_timesteps True").resolve().unwrap();
    flags("--num_res_blocks 0 --image_size 32 --channel_mult 1,1")
        .resolve()
        .unwrap();
}

#[test]
fn help_describes_every_flag_and_the_output() {
    for k in known_flags() {
        assert!(HELP.contains(&format!("--{k}")), "help lacks --{k}");
    }
    for f in [
        "config.json",
        WEIGHTS_FILE,
        "scheduler/scheduler_config.json",
    ] {
        assert!(HELP.contains(f), "help lacks {f}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uqengine"))
        .args(["convert", "adm", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for s in [
        "--checkpoint",
        "--flags",
        "--out",
        "--dtype",
        "--num_heads_upsample",
    ] {
        assert!(text.contains(s), "help lacks {s}:\n{text}");
    }
}

// ------------------------------------------------------------------------------------------
// Configs
// ------------------------------------------------------------------------------------------

#[test]
fn unet_config_of_the_readme_128_model() {
    let spec = flags(ADM128).resolve().unwrap();
    let c = unet_config(&spec);
    let want = serde_json::json!({
        "_class_name": "UNet2DModel",
        "sample_size": 128, "in_channels": 3, "out_channels": 6,
        "center_input_sample": false, "time_embedding_type": "positional",
        "timestep_input_dim": 256, "time_embedding_dim": 1024,
        "flip_sin_to_cos": true, "freq_shift": 0,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                             "AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                           "UpBlock2D", "UpBlock2D"],
        "block_out_channels": [256, 256, 512, 768, 1024],
        "layers_per_block": 2, "downsample_padding": 1,
        "downsample_type": "resnet", "upsample_type": "resnet",
        "resnet_time_scale_shift": "scale_shift", "act_fn": "silu",
        "attention_head_dim": null, "attention_heads": 4, "attention_heads_up": 4,
        "norm_num_groups": 32, "attn_norm_num_groups": 32, "norm_eps": 1e-5,
        "num_class_embeds": 1000, "add_attention": true, "mid_block_type": "UNetMidBlock2D",
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&c[k], v, "config.json `{k}`");
    }
    let f = &c["adm_flags"];
    assert_eq!(f.as_object().unwrap().len(), known_flags().len());
    assert_eq!(
        f["channel_mult"],
        serde_json::json!([1.0, 1.0, 2.0, 3.0, 4.0])
    );
    assert_eq!(f["attention_resolutions"], serde_json::json!([32, 16, 8]));
    assert_eq!(f["num_heads_upsample"], 4);
    assert_eq!(f["use_fp16"], true);

    // Fixed channels per head: attention_head_dim, no head counts; plain resnets and convs.
    let g = unet_config(
        &flags(
            "--num_head_channels 64 --use_scale_shift_norm False --learn_sigma False \
             --num_channels 192 --num_res_blocks 3",
        )
        .resolve()
        .unwrap(),
    );
    assert_eq!(g["attention_head_dim"], 64);
    assert_eq!(g["attention_heads"], Value::Null);
    assert_eq!(g["attention_heads_up"], Value::Null);
    assert_eq!(g["num_class_embeds"], Value::Null);
    assert_eq!(g["out_channels"], 3);
    assert_eq!(g["layers_per_block"], 3);
    assert_eq!(g["resnet_time_scale_shift"], "default");
    assert_eq!(g["downsample_type"], "conv");
    assert_eq!(
        g["block_out_channels"],
        serde_json::json!([192, 384, 576, 768])
    );
}

#[test]
fn scheduler_config_scales_the_linear_schedule_by_1000_over_t() {
    let s = |text: &str| scheduler_config(&flags(text).resolve().unwrap().diffusion);
    let a = s(ADM128);
    assert_eq!(a["num_train_timesteps"], 1000);
    assert_eq!(a["beta_schedule"], "linear");
    assert_eq!(a["beta_start"], 0.0001);
    assert_eq!(a["beta_end"], 0.02);
    assert_eq!(a["variance_type"], "learned_range");
    assert_eq!(a["prediction_type"], "epsilon");
    assert_eq!(a["timestep_spacing"], "guided_diffusion");
    for (k, v) in [
        ("clip_sample", Value::from(true)),
        ("clip_sample_range", Value::from(1.0)),
        ("set_alpha_to_one", Value::from(true)),
        ("steps_offset", Value::from(0)),
        ("use_clipped_model_output", Value::from(true)),
    ] {
        assert_eq!(a[k], v, "{k}");
    }
    // get_named_beta_schedule("linear", 4000): scale = 1000 / 4000 in float64.
    let b = s("--diffusion_steps 4000 --noise_schedule cosine --predict_xstart True");
    let scale = 1000.0 / 4000.0;
    assert_eq!(b["num_train_timesteps"], 4000);
    assert_eq!(b["beta_start"].as_f64(), Some(scale * 0.0001));
    assert_eq!(b["beta_end"].as_f64(), Some(scale * 0.02));
    assert_eq!(b["beta_schedule"], "squaredcos_cap_v2");
    assert_eq!(b["prediction_type"], "sample");
    assert_eq!(b["variance_type"], "fixed_large");
    assert_eq!(s("--sigma_small True")["variance_type"], "fixed_small");
}

// ------------------------------------------------------------------------------------------
// Names and rows
// ------------------------------------------------------------------------------------------

/// `(guided-diffusion name, diffusers name)` of every tensor of a ResBlock.
fn resnet_pairs(src: &str, dst: &str, shortcut: bool) -> Vec<(String, String)> {
    let mut layers = vec![
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
    ];
    if shortcut {
        layers.push(("skip_connection", "conv_shortcut"));
    }
    params(src, dst, &layers)
}

/// The same of an AttentionBlock.
fn attention_pairs(src: &str, dst: &str) -> Vec<(String, String)> {
    params(
        src,
        dst,
        &[
            ("norm", "group_norm"),
            ("qkv", "to_q"),
            ("qkv", "to_k"),
            ("qkv", "to_v"),
            ("proj_out", "to_out.0"),
        ],
    )
}

fn params(src: &str, dst: &str, layers: &[(&str, &str)]) -> Vec<(String, String)> {
    layers
        .iter()
        .flat_map(|(s, d)| {
            ["weight", "bias"].map(|p| (format!("{src}.{s}.{p}"), format!("{dst}.{d}.{p}")))
        })
        .collect()
}

/// Every `(source, name)` pair by the index formulas: input block `1 + l(nrb+1) + i`, its
/// downsampler at `i = nrb`, output block `r(nrb+1) + i` with r = 0 the deepest level.
/// `chans` must double at most once per level so that only a level's first resnet changes
/// the width on the way down.
fn expected_pairs(
    text: &str,
    chans: &[usize],
    attn: &[bool],
    nrb: usize,
) -> BTreeSet<(String, String)> {
    let a = flags(text);
    let levels = chans.len();
    let mut e: Vec<(String, String)> = Vec::new();
    let one = |s: &str, d: &str| {
        ["weight", "bias"]
            .map(|p| (format!("{s}.{p}"), format!("{d}.{p}")))
            .to_vec()
    };
    e.extend(one("time_embed.0", "time_embedding.linear_1"));
    e.extend(one("time_embed.2", "time_embedding.linear_2"));
    if a.class_cond {
        e.push(("label_emb.weight".into(), "class_embedding.weight".into()));
    }
    e.extend(one("input_blocks.0.0", "conv_in"));
    for l in 0..levels {
        for i in 0..nrb {
            let k = 1 + l * (nrb + 1) + i;
            let widens = i == 0 && l > 0 && chans[l] != chans[l - 1];
            e.extend(resnet_pairs(
                &format!("input_blocks.{k}.0"),
                &format!("down_blocks.{l}.resnets.{i}"),
                widens,
            ));
            if attn[l] {
                e.extend(attention_pairs(
                    &format!("input_blocks.{k}.1"),
                    &format!("down_blocks.{l}.attentions.{i}"),
                ));
            }
        }
        if l + 1 < levels {
            let k = 1 + l * (nrb + 1) + nrb;
            let d = format!("down_blocks.{l}.downsamplers.0");
            if a.resblock_updown {
                e.extend(resnet_pairs(&format!("input_blocks.{k}.0"), &d, false));
            } else {
                e.extend(one(&format!("input_blocks.{k}.0.op"), &format!("{d}.conv")));
            }
        }
    }
    e.extend(resnet_pairs("middle_block.0", "mid_block.resnets.0", false));
    e.extend(attention_pairs("middle_block.1", "mid_block.attentions.0"));
    e.extend(resnet_pairs("middle_block.2", "mid_block.resnets.1", false));
    for r in 0..levels {
        let l = levels - 1 - r;
        for i in 0..=nrb {
            let k = r * (nrb + 1) + i;
            // Concatenated skips always widen the input of an output resnet.
            e.extend(resnet_pairs(
                &format!("output_blocks.{k}.0"),
                &format!("up_blocks.{r}.resnets.{i}"),
                true,
            ));
            if attn[l] {
                e.extend(attention_pairs(
                    &format!("output_blocks.{k}.1"),
                    &format!("up_blocks.{r}.attentions.{i}"),
                ));
            }
            if i == nrb && r + 1 < levels {
                let m = if attn[l] { 2 } else { 1 };
                let d = format!("up_blocks.{r}.upsamplers.0");
                if a.resblock_updown {
                    e.extend(resnet_pairs(&format!("output_blocks.{k}.{m}"), &d, false));
                } else {
                    e.extend(one(
                        &format!("output_blocks.{k}.{m}.conv"),
                        &format!("{d}.conv"),
                    ));
                }
            }
        }
    }
    e.extend(one("out.0", "conv_norm_out"));
    e.extend(one("out.2", "conv_out"));
    let n = e.len();
    let set: BTreeSet<_> = e.into_iter().collect();
    assert_eq!(set.len(), n, "duplicate expected pairs");
    set
}

#[test]
fn tensor_names_follow_the_index_formulas() {
    for (text, chans, attn, nrb) in [
        (
            ADM128,
            vec![256, 256, 512, 768, 1024],
            vec![false, false, true, true, true],
            2,
        ),
        (
            "--image_size 32 --num_channels 32 --channel_mult 1,2,2 --attention_resolutions 16 \
             --num_res_blocks 3",
            vec![32, 64, 64],
            vec![false, true, false],
            3,
        ),
        (
            "--image_size 16 --num_channels 64 --channel_mult 1,1 --attention_resolutions 8 \
             --num_res_blocks 0 --resblock_updown True",
            vec![64, 64],
            vec![false, true],
            0,
        ),
        (
            "--image_size 8 --num_channels 32 --channel_mult 1 --attention_resolutions 8 \
             --class_cond True",
            vec![32],
            vec![true],
            2,
        ),
    ] {
        let spec = flags(text).resolve().unwrap();
        assert_eq!(spec.arch.block_channels, chans, "{text}");
        assert_eq!(spec.arch.level_attention, attn, "{text}");
        let got: BTreeSet<(String, String)> = plan(&spec.arch)
            .into_iter()
            .map(|p| (p.source, p.name))
            .collect();
        let want = expected_pairs(text, &chans, &attn, nrb);
        let missing: Vec<_> = want.difference(&got).take(5).collect();
        let extra: Vec<_> = got.difference(&want).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{text}\nnot planned: {missing:?}\nnot expected: {extra:?}"
        );
    }
}

#[test]
fn tensor_shapes_follow_the_channels() {
    let spec = flags(ADM128).resolve().unwrap();
    let shapes: HashMap<String, (Vec<usize>, Vec<usize>)> = plan(&spec.arch)
        .into_iter()
        .map(|p| (p.name, (p.source_shape, p.shape)))
        .collect();
    let shape = |n: &str| shapes.get(n).unwrap_or_else(|| panic!("no {n}")).1.clone();
    assert_eq!(shape("conv_in.weight"), [256, 3, 3, 3]);
    assert_eq!(shape("time_embedding.linear_1.weight"), [1024, 256]);
    assert_eq!(shape("time_embedding.linear_2.weight"), [1024, 1024]);
    assert_eq!(shape("class_embedding.weight"), [NUM_CLASSES, 1024]);
    // Scale-shift: the time embedding projects to 2x the channels.
    assert_eq!(
        shape("down_blocks.2.resnets.0.time_emb_proj.weight"),
        [1024, 1024]
    );
    assert_eq!(
        shape("down_blocks.2.resnets.0.conv_shortcut.weight"),
        [512, 256, 1, 1]
    );
    assert!(!shapes.contains_key("down_blocks.2.resnets.1.conv_shortcut.weight"));
    // The deepest up block: 1024 + 1024 in, then 1024 + 768 (the skip of level 3's
    // downsampler); the shallowest ends on conv_in's 256 channels.
    assert_eq!(
        shape("up_blocks.0.resnets.0.conv1.weight"),
        [1024, 2048, 3, 3]
    );
    assert_eq!(
        shape("up_blocks.0.resnets.2.conv1.weight"),
        [1024, 1792, 3, 3]
    );
    assert_eq!(
        shape("up_blocks.4.resnets.2.conv1.weight"),
        [256, 512, 3, 3]
    );
    assert_eq!(
        shape("up_blocks.0.upsamplers.0.conv1.weight"),
        [1024, 1024, 3, 3]
    );
    assert_eq!(shape("mid_block.attentions.0.to_q.weight"), [1024, 1024]);
    assert_eq!(
        shapes["mid_block.attentions.0.to_k.weight"].0,
        [3 * 1024, 1024, 1]
    );
    assert_eq!(shapes["mid_block.attentions.0.to_v.bias"].0, [3 * 1024]);
    assert_eq!(
        shape("mid_block.attentions.0.to_out.0.weight"),
        [1024, 1024]
    );
    assert_eq!(shape("conv_out.weight"), [6, 256, 3, 3]);
}

#[test]
fn qkv_rows_split_heads_first_in_the_legacy_order() {
    // C = 8, 2 heads of ch = 4: qkv rows are [q0 k0 v0 q1 k1 v1], 4 rows each.
    let legacy = |p| qkv_rows(8, 2, false, p);
    assert_eq!(legacy(QkvPart::Q), [0, 1, 2, 3, 12, 13, 14, 15]);
    assert_eq!(legacy(QkvPart::K), [4, 5, 6, 7, 16, 17, 18, 19]);
    assert_eq!(legacy(QkvPart::V), [8, 9, 10, 11, 20, 21, 22, 23]);
    // One head: the three blocks in order, as in the new order.
    assert_eq!(qkv_rows(4, 1, false, QkvPart::K), [4, 5, 6, 7]);
    // New order: q, k, v one after another, already head-major.
    let new = |p| qkv_rows(8, 2, true, p);
    assert_eq!(new(QkvPart::Q), (0..8).collect::<Vec<_>>());
    assert_eq!(new(QkvPart::K), (8..16).collect::<Vec<_>>());
    assert_eq!(new(QkvPart::V), (16..24).collect::<Vec<_>>());
}

// ------------------------------------------------------------------------------------------
// Fixtures
// ------------------------------------------------------------------------------------------

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adm")
}

/// `(name, model.pt, flags)` of every fixture.
fn fixtures() -> Vec<(String, PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let dir = entry.unwrap().path();
        let pt = dir.join("model.pt");
        if pt.is_file() {
            let text = std::fs::read_to_string(dir.join("flags.txt")).unwrap();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, pt, text.trim().to_string()));
        }
    }
    out.sort();
    assert!(
        !out.is_empty(),
        "no fixtures in {}",
        fixtures_dir().display()
    );
    out
}

fn fixture(name: &str) -> (PathBuf, String) {
    let (_, pt, text) = fixtures()
        .into_iter()
        .find(|(n, ..)| n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"));
    (pt, text)
}

fn convert(pt: &Path, flags: &str, out: &Path, dtype: OutDtype) -> uqengine::Result<()> {
    AdmConvert {
        checkpoint: pt.to_path_buf(),
        flags: flags.to_string(),
        out_dir: out.to_path_buf(),
        dtype,
    }
    .run()
    .map(|_| ())
}

/// Asserts that a failed conversion into `out` left neither `out` nor a partial sibling.
fn assert_nothing_left(out: &Path) {
    assert!(!out.exists(), "{} exists after a failure", out.display());
    let parent = out.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The tensors of a safetensors file: name -> (dtype, shape, raw bytes).
fn read_safetensors(path: &Path) -> HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn fixtures_convert_to_complete_model_directories() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, pt, text) in fixtures() {
        let out = tmp.path().join(&name);
        convert(&pt, &text, &out, OutDtype::F32).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut files: Vec<String> = walk(&out);
        files.sort();
        assert_eq!(
            files,
            [
                "config.json",
                WEIGHTS_FILE,
                "scheduler/scheduler_config.json"
            ],
            "{name}"
        );
        let spec = flags(&text).resolve().unwrap();
        // The files hold the values the flags give (checked above against the README model).
        assert_eq!(json(&out.join("config.json")), unet_config(&spec), "{name}");
        assert_eq!(
            json(&out.join("scheduler/scheduler_config.json")),
            scheduler_config(&spec.diffusion),
            "{name}"
        );
        let config = json(&out.join("config.json"));
        assert_eq!(config["sample_size"], spec.flags.image_size, "{name}");
        assert_eq!(
            config["num_class_embeds"],
            if spec.flags.class_cond {
                Value::from(1000)
            } else {
                Value::Null
            }
        );
        // The engine's reader accepts the config.
        uqengine::models::unet::UNetConfig::from_file(&out.join("config.json"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let st = read_safetensors(&out.join(WEIGHTS_FILE));
        let planned = plan(&spec.arch);
        assert_eq!(st.len(), planned.len(), "{name}");
        let ckpt = Checkpoint::open(&pt).unwrap();
        let meta: Value = json(&pt.with_file_name("meta.json"));
        let mut params = 0;
        for p in &planned {
            let (dtype, shape, bytes) = st
                .get(&p.name)
                .unwrap_or_else(|| panic!("{name}: no {}", p.name));
            assert_eq!(*dtype, safetensors::Dtype::F32);
            assert_eq!(shape, &p.shape, "{name}: {}", p.name);
            params += shape.iter().product::<usize>();
            // Copied tensors are their source, widened exactly from f16 where stored so.
            if !p.name.contains(".to_q.")
                && !p.name.contains(".to_k.")
                && !p.name.contains(".to_v.")
            {
                assert_eq!(
                    f32s(bytes),
                    ckpt.read_f32(&p.source).unwrap(),
                    "{name}: {}",
                    p.name
                );
            }
        }
        assert_eq!(params, meta["num_parameters"], "{name}");
    }
}

/// The files under `dir`, relative, with `/` separators.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            out.extend(walk(&p).into_iter().map(|f| format!("{rel}/{f}")));
        } else {
            out.push(rel);
        }
    }
    out
}

#[test]
fn fixture_q_k_v_are_the_expected_qkv_rows() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, pt, text) in fixtures() {
        let out = tmp.path().join(&name);
        convert(&pt, &text, &out, OutDtype::F32).unwrap();
        let spec = flags(&text).resolve().unwrap();
        let f = &spec.flags;
        let st = read_safetensors(&out.join(WEIGHTS_FILE));
        let ckpt = Checkpoint::open(&pt).unwrap();
        let mut checked = 0;
        for p in plan(&spec.arch) {
            let Some(part) = ["to_q", "to_k", "to_v"]
                .iter()
                .position(|s| p.name.contains(&format!(".{s}.")))
            else {
                continue;
            };
            let c = p.shape[0];
            let heads = if f.num_head_channels > 0 {
                c / f.num_head_channels as usize
            } else if p.name.starts_with("up_blocks.") && f.num_heads_upsample > 0 {
                f.num_heads_upsample as usize
            } else {
                f.num_heads as usize
            };
            let ch = c / heads;
            let qkv = ckpt.read_f32(&p.source).unwrap();
            let row_len = qkv.len() / (3 * c);
            let got = f32s(&st[&p.name].2);
            for h in 0..heads {
                for j in 0..ch {
                    // QKVAttention: qkv.chunk(3) then heads; legacy: heads, then q, k, v.
                    let src = if f.use_new_attention_order {
                        part * c + h * ch + j
                    } else {
                        h * 3 * ch + part * ch + j
                    };
                    let dst = h * ch + j;
                    assert_eq!(
                        got[dst * row_len..(dst + 1) * row_len],
                        qkv[src * row_len..(src + 1) * row_len],
                        "{name}: {} row {dst}",
                        p.name
                    );
                }
            }
            checked += 1;
        }
        assert!(checked > 0, "{name} has no attention");
    }
}

#[test]
fn f16_and_bf16_output_is_the_f32_output_rounded() {
    let tmp = tempfile::tempdir().unwrap();
    let (pt, text) = fixture("cond_learned_updown");
    let base = tmp.path().join("f32");
    convert(&pt, &text, &base, OutDtype::F32).unwrap();
    let f32_out = read_safetensors(&base.join(WEIGHTS_FILE));
    for dtype in [OutDtype::F16, OutDtype::Bf16] {
        let out = tmp.path().join(dtype.as_str());
        convert(&pt, &text, &out, dtype).unwrap();
        let half_out = read_safetensors(&out.join(WEIGHTS_FILE));
        assert_eq!(half_out.len(), f32_out.len());
        for (n, (_, shape, bytes)) in &f32_out {
            let (dt, s, b) = &half_out[n];
            assert_eq!(s, shape, "{n}");
            let want: Vec<u16> = f32s(bytes)
                .iter()
                .map(|&v| match dtype {
                    OutDtype::F16 => half::f16::from_f32(v).to_bits(),
                    _ => half::bf16::from_f32(v).to_bits(),
                })
                .collect();
            let got: Vec<u16> = b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let want_dt = match dtype {
                OutDtype::F16 => safetensors::Dtype::F16,
                _ => safetensors::Dtype::BF16,
            };
            assert_eq!(*dt, want_dt, "{n}");
            assert_eq!(got, want, "{n} in {}", dtype.as_str());
        }
    }
}

#[test]
fn cli_converts_a_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let (pt, text) = fixture("heads_upsample");
    let out = tmp.path().join("model");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_uqengine"))
        .args(["convert", "adm", "--checkpoint"])
        .arg(&pt)
        .args(["--flags", &text, "--dtype", "bf16", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("bf16"));
    let st = read_safetensors(&out.join(WEIGHTS_FILE));
    assert!(st.values().all(|(dt, ..)| *dt == safetensors::Dtype::BF16));
}

// ------------------------------------------------------------------------------------------
// Failures
// ------------------------------------------------------------------------------------------

/// The error of converting `pt` with `flags` into a fresh directory, after checking that the
/// failure left nothing behind.
fn conversion_error(pt: &Path, flags: &str) -> Error {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let e = convert(pt, flags, &out, OutDtype::F32).expect_err(flags);
    assert_nothing_left(&out);
    e
}

/// The key of an [`Error::Config`] about the checkpoint `pt`, and its message.
fn checkpoint_error(pt: &Path, flags: &str) -> (String, String) {
    match conversion_error(pt, flags) {
        Error::Config { path, key, msg } if path == pt => (key, msg),
        other => panic!("not an error about {}: {other:?}", pt.display()),
    }
}

/// `flags` with `--key value` replaced by `--key new` (or appended).
fn with_flag(flags: &str, key: &str, new: &str) -> String {
    let mut toks: Vec<String> = flags.split_whitespace().map(String::from).collect();
    match toks.iter().position(|t| t == &format!("--{key}")) {
        Some(i) => toks[i + 1] = new.to_string(),
        None => toks.extend([format!("--{key}"), new.to_string()]),
    }
    toks.join(" ")
}

#[test]
fn num_channels_off_names_the_flag_tensor_and_shapes() {
    let (pt, text) = fixture("cond_learned_updown");
    let (key, msg) = checkpoint_error(&pt, &with_flag(&text, "num_channels", "64"));
    assert_eq!(key, "num_channels");
    // time_embed.0 is [4 * num_channels, num_channels].
    assert!(msg.contains("`time_embed.0.weight`"), "{msg}");
    assert!(
        msg.contains("[128, 32]") && msg.contains("[256, 64]"),
        "{msg}"
    );
    assert!(msg.contains("--num_channels 64"), "{msg}");
}

#[test]
fn flags_that_change_the_tensors_are_named() {
    // (fixture, flag changed, its new value, the flag the error blames, tensor it names)
    for (fixture_name, key, value, blamed, tensor) in [
        // The flags say unconditional, the checkpoint has a class embedding, and the reverse.
        (
            "cond_learned_updown",
            "class_cond",
            "False",
            "class_cond",
            "`label_emb.weight`",
        ),
        (
            "uncond_newattn",
            "class_cond",
            "True",
            "class_cond",
            "`label_emb.weight`",
        ),
        (
            "cond_learned_updown",
            "learn_sigma",
            "False",
            "learn_sigma",
            "`out.2.weight`",
        ),
        (
            "cond_learned_updown",
            "use_scale_shift_norm",
            "False",
            "use_scale_shift_norm",
            "`input_blocks.1.0.emb_layers.1.weight`",
        ),
        (
            "cond_learned_updown",
            "resblock_updown",
            "False",
            "resblock_updown",
            "`input_blocks.2.0.op.weight`",
        ),
        // Attention at level 0 only: the level-1 output block's second module is expected to
        // be its upsampler but is an attention block.
        (
            "cond_learned_updown",
            "attention_resolutions",
            "8",
            "attention_resolutions",
            "`output_blocks.1.1.in_layers.0.weight`",
        ),
        (
            "uncond_newattn",
            "attention_resolutions",
            "4",
            "attention_resolutions",
            "`input_blocks.1.1.norm.bias`",
        ),
        // Two levels where the checkpoint has one: no input block 3 at all.
        (
            "uncond_newattn",
            "channel_mult",
            "1,2",
            "num_res_blocks",
            "`input_blocks.3.0.op.weight`",
        ),
        (
            "uncond_newattn",
            "num_res_blocks",
            "1",
            "num_res_blocks",
            "`input_blocks.2.0",
        ),
    ] {
        let (pt, text) = fixture(fixture_name);
        let flags = with_flag(&text, key, value);
        let (got, msg) = checkpoint_error(&pt, &flags);
        let case = format!("{fixture_name} --{key} {value}: {msg}");
        assert!(msg.contains(tensor), "{case}");
        assert_eq!(got, blamed, "{case}");
        assert!(msg.contains(&format!("--{key} {value}")), "{case}");
    }
}

#[test]
fn truncated_checkpoint_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (pt, text) = fixture("heads_upsample");
    let bytes = std::fs::read(&pt).unwrap();
    let cut = tmp.path().join("truncated.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = conversion_error(&cut, &text);
    assert!(
        matches!(&e, Error::Io { path, .. } if path == &cut),
        "{e:?}"
    );
    assert!(e.to_string().contains("truncated.pt"), "{e}");
}

#[test]
fn corrupted_storage_fails_while_writing_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (pt, text) = fixture("heads_upsample");
    let mut bytes = std::fs::read(&pt).unwrap();
    let entries = zip::entries(&bytes);
    let (name, start, len) = entries
        .iter()
        .find(|(n, _, len)| n.ends_with("/data/10") && *len > 0)
        .cloned()
        .expect("storage 10");
    bytes[start + len / 2] ^= 0x5a;
    let bad = tmp.path().join("corrupt.pt");
    std::fs::write(&bad, &bytes).unwrap();
    // The metadata is intact, so the checkpoint opens and matches the flags; the storage's
    // checksum fails when its tensor is read during the write.
    let e = conversion_error(&bad, &text);
    let msg = e.to_string();
    assert!(msg.contains("corrupt.pt"), "{msg}");
    assert!(msg.contains("tensor '"), "{name}: {msg}");
}

#[test]
fn existing_output_directory_is_refused_unless_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let (pt, text) = fixture("heads_upsample");
    let out = tmp.path().join("model");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let e = convert(&pt, &text, &out, OutDtype::F32).unwrap_err();
    assert!(e.to_string().contains(&out.display().to_string()), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(walk(&out), ["keep.txt"]);
    // An empty directory is filled.
    std::fs::remove_file(out.join("keep.txt")).unwrap();
    convert(&pt, &text, &out, OutDtype::F32).unwrap();
    assert!(out.join(WEIGHTS_FILE).is_file());
}

/// A copy of the ZIP checkpoint `pt` at `dest` whose `data.pkl` is `edit(data.pkl)`.
fn repickled(pt: &Path, dest: &Path, edit: impl Fn(&[u8]) -> Vec<u8>) {
    let bytes = std::fs::read(pt).unwrap();
    let files: Vec<(String, Vec<u8>)> = zip::entries(&bytes)
        .into_iter()
        .map(|(n, start, len)| {
            let data = &bytes[start..start + len];
            let data = if n.ends_with("/data.pkl") {
                edit(data)
            } else {
                data.to_vec()
            };
            (n, data)
        })
        .collect();
    std::fs::write(dest, zip::store(&files)).unwrap();
}

/// Pickle BINUNICODE of `s`.
fn pickle_str(s: &str) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
    out
}

/// `pkl` (protocol 2, one object) as the value of `key` in a new top-level dictionary.
fn nest_under(pkl: &[u8], key: &str) -> Vec<u8> {
    assert_eq!(&pkl[..2], b"\x80\x02");
    assert_eq!(pkl.last(), Some(&b'.'));
    let mut out = b"\x80\x02}".to_vec();
    out.extend(pickle_str(key));
    out.extend(&pkl[2..pkl.len() - 1]);
    out.extend(b"s.");
    out
}

/// `pkl` with one more entry at the start of its state dict: `name`, a view of the first four
/// values of storage `0` (`numel` f32 values).
fn with_extra_tensor(pkl: &[u8], name: &str, numel: u32) -> Vec<u8> {
    let head = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(";
    assert!(pkl.starts_with(head), "unexpected pickle start");
    let int = |v: u32| {
        let mut b = vec![b'J'];
        b.extend(v.to_le_bytes());
        b
    };
    let mut t = pickle_str(name);
    t.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    t.extend(pickle_str("storage"));
    t.extend(b"ctorch\nFloatStorage\n");
    t.extend(pickle_str("0"));
    t.extend(pickle_str("cpu"));
    t.extend(int(numel));
    t.extend(b"tQ");
    t.extend(int(0));
    t.extend(int(4));
    t.push(0x85);
    t.extend(int(1));
    t.push(0x85);
    t.push(0x89);
    t.extend(b"ccollections\nOrderedDict\n)RtR");
    let mut out = head.to_vec();
    out.extend(t);
    out.extend(&pkl[head.len()..]);
    out
}

#[test]
fn state_dict_nested_under_a_key_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let (pt, text) = fixture("heads_upsample");
    let nested = tmp.path().join("nested.pt");
    repickled(&pt, &nested, |p| nest_under(p, "state_dict"));
    let report = AdmConvert {
        checkpoint: nested.clone(),
        flags: text.clone(),
        out_dir: tmp.path().join("a"),
        dtype: OutDtype::F32,
    }
    .run()
    .unwrap();
    assert_eq!(report.wrapper.as_deref(), Some("state_dict"));
    convert(&pt, &text, &tmp.path().join("b"), OutDtype::F32).unwrap();
    let read = |d: &str| std::fs::read(tmp.path().join(d).join(WEIGHTS_FILE)).unwrap();
    assert!(
        read("a") == read("b"),
        "nested and plain conversions differ"
    );

    // Under a key that is not a known wrapper: an error naming the file and the key found.
    let other = tmp.path().join("other.pt");
    repickled(&pt, &other, |p| nest_under(p, "weights"));
    let e = conversion_error(&other, &text);
    let msg = e.to_string();
    assert!(msg.contains("other.pt") && msg.contains("weights"), "{msg}");
}

#[test]
fn extra_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (pt, text) = fixture("heads_upsample");
    let spec = flags(&text).resolve().unwrap();
    // Storage 0 is time_embed.0.weight: [4 * num_channels, num_channels].
    let numel = (spec.arch.time_embed_dim() * spec.arch.model_channels) as u32;
    let extra = tmp.path().join("extra.pt");
    repickled(&pt, &extra, |p| with_extra_tensor(p, "ema_decay", numel));
    assert_eq!(
        Checkpoint::open(&extra).unwrap().shape("ema_decay"),
        Some(&[4usize][..])
    );
    let e = conversion_error(&extra, &text);
    assert!(
        matches!(&e, Error::Io { path, .. } if path == &extra),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("`ema_decay`"), "{msg}");
    assert!(msg.contains("not a UNetModel state dict"), "{msg}");
}

#[test]
fn integer_tensors_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let (pt, text) = fixture("heads_upsample");
    // Every tensor of this checkpoint shares the memoised storage class: as `IntStorage`, all
    // become int32 with the same byte sizes.
    let ints = tmp.path().join("ints.pt");
    repickled(&pt, &ints, |p| {
        let (from, to) = (b"ctorch\nFloatStorage\n", b"ctorch\nIntStorage\n");
        let i = p.windows(from.len()).position(|w| w == from).unwrap();
        [&p[..i], &to[..], &p[i + from.len()..]].concat()
    });
    let e = conversion_error(&ints, &text);
    assert!(
        matches!(&e, Error::DType { path, key, .. } if path == &ints && key == "time_embed.0.weight"),
        "{e:?}"
    );
}

#[test]
fn half_outputs_round_to_nearest_and_refuse_overflow() {
    let bits = |d: OutDtype, v: f32| {
        let b = d.encode(&[v]).unwrap();
        u16::from_le_bytes([b[0], b[1]])
    };
    // 1 + 2^-11 is halfway between two f16 values: ties go to the even one, 1.0.
    let tie = 1.0 + 2f32.powi(-11);
    assert_eq!(bits(OutDtype::F16, tie), half::f16::from_f32(1.0).to_bits());
    assert_eq!(
        bits(OutDtype::Bf16, 0.1),
        half::bf16::from_f32(0.1).to_bits()
    );
    assert_eq!(OutDtype::F32.encode(&[0.1]).unwrap(), 0.1f32.to_le_bytes());
    // 70000 is beyond f16 (max 65504) but not bf16.
    assert_eq!(OutDtype::F16.encode(&[1.0, 70000.0]), Err(1));
    assert!(OutDtype::Bf16.encode(&[70000.0]).is_ok());
    for d in [OutDtype::F32, OutDtype::F16, OutDtype::Bf16] {
        assert_eq!(OutDtype::parse(d.as_str()).unwrap(), d);
    }
    assert!(OutDtype::parse("fp16").is_err());
}

/// A minimal reader and writer of stored (uncompressed) ZIP archives, as `torch.save` writes.
mod zip {
    fn u16_at(b: &[u8], i: usize) -> usize {
        u16::from_le_bytes([b[i], b[i + 1]]) as usize
    }

    fn u32_at(b: &[u8], i: usize) -> usize {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize
    }

    /// `(name, data offset, data length)` of every entry, from the central directory.
    pub fn entries(b: &[u8]) -> Vec<(String, usize, usize)> {
        let eocd = (0..=b.len() - 22)
            .rev()
            .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
            .expect("end of central directory");
        let count = u16_at(b, eocd + 10);
        let mut p = u32_at(b, eocd + 16);
        let mut out = Vec::new();
        for _ in 0..count {
            assert_eq!(b[p..p + 4], [0x50, 0x4b, 0x01, 0x02]);
            assert_eq!(u16_at(b, p + 10), 0, "compressed entry");
            let len = u32_at(b, p + 20);
            let (name_len, extra_len, comment_len) =
                (u16_at(b, p + 28), u16_at(b, p + 30), u16_at(b, p + 32));
            let local = u32_at(b, p + 42);
            let name = String::from_utf8(b[p + 46..p + 46 + name_len].to_vec()).unwrap();
            let start = local + 30 + u16_at(b, local + 26) + u16_at(b, local + 28);
            out.push((name, start, len));
            p += 46 + name_len + extra_len + comment_len;
        }
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A stored ZIP archive of `files`.
    pub fn store(files: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in files {
            let offset = out.len() as u32;
            let crc = crc32(data);
            let fixed = |sig: &[u8], out: &mut Vec<u8>| {
                out.extend(sig);
                out.extend(20u16.to_le_bytes()); // version needed
                out.extend(0u16.to_le_bytes()); // flags
                out.extend(0u16.to_le_bytes()); // stored
                out.extend(0u32.to_le_bytes()); // time, date
                out.extend(crc.to_le_bytes());
                out.extend((data.len() as u32).to_le_bytes());
                out.extend((data.len() as u32).to_le_bytes());
                out.extend((name.len() as u16).to_le_bytes());
                out.extend(0u16.to_le_bytes()); // extra
            };
            fixed(&[0x50, 0x4b, 0x03, 0x04], &mut out);
            out.extend(name.as_bytes());
            out.extend(data);
            central.extend([0x50, 0x4b, 0x01, 0x02]);
            central.extend(20u16.to_le_bytes()); // version made by
            fixed(&[], &mut central);
            central.extend(0u16.to_le_bytes()); // comment
            central.extend(0u16.to_le_bytes()); // disk
            central.extend(0u16.to_le_bytes()); // internal attributes
            central.extend(0u32.to_le_bytes()); // external attributes
            central.extend(offset.to_le_bytes());
            central.extend(name.as_bytes());
        }
        let cd_offset = out.len() as u32;
        out.extend(&central);
        out.extend([0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0]);
        out.extend((files.len() as u16).to_le_bytes());
        out.extend((files.len() as u16).to_le_bytes());
        out.extend((central.len() as u32).to_le_bytes());
        out.extend(cd_offset.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out
    }
}
