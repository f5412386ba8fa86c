//! The four JSON configs (UNet `config.json`, CLIP vision `config.json`, CLIP
//! `preprocessor_config.json`, diffusers `scheduler_config.json` and its command-line overrides)
//! report a missing required key, a value of the wrong type and an unknown key in the same words,
//! naming the file and the key.

use std::path::Path;

use uqengine::config::JsonConfig;
use uqengine::models::clip::ClipVisionConfig;
use uqengine::models::clip_preprocess::ClipPreprocess;
use uqengine::models::unet::UNetConfig;
use uqengine::sampler::schedule::{KNOWN_KEYS, OVERRIDE_PATH};
use uqengine::sampler::SchedulerConfig;
use uqengine::Error;

/// The common text of a missing required key.
fn missing(path: &str, key: &str) -> String {
    format!("{path}: config key `{key}`: required key is absent")
}

/// The common text of a value of the wrong type.
fn wrong_type(path: &str, key: &str, expected: &str, found: &str) -> String {
    format!("{path}: config key `{key}`: expected {expected}, found {found}")
}

/// The common text of an unknown key.
fn unknown(path: &str, key: &str, known: &[&str]) -> String {
    format!(
        "{path}: config key `{key}`: unknown key; known keys: {}",
        known.join(", ")
    )
}

/// Parses each text of `cases` with `parse` and asserts that it fails with an [`Error::Config`]
/// naming `path`, whose message is the one given.
fn check<T: std::fmt::Debug>(
    parse: impl Fn(&str) -> uqengine::Result<T>,
    path: &str,
    cases: &[(&str, String)],
) {
    for (text, want) in cases {
        let e = parse(text).expect_err(text);
        assert!(
            matches!(&e, Error::Config { path: p, .. } if p == Path::new(path)),
            "{text}: {e:?}"
        );
        assert_eq!(&e.to_string(), want, "{text}");
    }
}

const UNET: &str = r#"{
    "_class_name": "UNet2DModel",
    "sample_size": 8,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]
}"#;

/// `UNET` with `key` set to `value` (`None` removes it).
fn unet_with(key: &str, value: Option<serde_json::Value>) -> String {
    let mut v: serde_json::Value = serde_json::from_str(UNET).unwrap();
    match value {
        Some(x) => v[key] = x,
        None => {
            v.as_object_mut().unwrap().remove(key);
        }
    }
    v.to_string()
}

fn unet(text: &str) -> uqengine::Result<UNetConfig> {
    UNetConfig::from_json(&JsonConfig::parse(text, Path::new("unet/config.json"))?)
}

#[test]
fn unet_config_errors() {
    let p = "unet/config.json";
    let list = serde_json::json!(["UpBlock2D", 3]);
    check(
        unet,
        p,
        &[
            (
                &unet_with("down_block_types", None),
                missing(p, "down_block_types"),
            ),
            (
                &unet_with("sample_size", Some(serde_json::Value::Null)),
                missing(p, "sample_size"),
            ),
            (
                &unet_with("layers_per_block", Some("two".into())),
                wrong_type(p, "layers_per_block", "a non-negative integer", "\"two\""),
            ),
            (
                &unet_with("up_block_types", Some(list)),
                wrong_type(
                    p,
                    "up_block_types",
                    "a list of strings",
                    "[\"UpBlock2D\",3]",
                ),
            ),
        ],
    );
    // Values whose arithmetic would overflow are errors naming the key.
    let n = 65;
    let deep = serde_json::json!({
        "sample_size": 8,
        "block_out_channels": vec![32; n],
        "down_block_types": vec!["DownBlock2D"; n],
        "up_block_types": vec!["UpBlock2D"; n],
    })
    .to_string();
    check(
        unet,
        p,
        &[
            (
                &unet_with(
                    "block_out_channels",
                    Some(serde_json::json!([1u64 << 63, 64])),
                ),
                format!("{p}: config key `block_out_channels`: 9223372036854775808 channels in the first block is too large (the time embedding has 4x as many)"),
            ),
            (
                &deep,
                format!("{p}: config key `sample_size`: 8 is not divisible by 2^64 (number of downsamplings)"),
            ),
        ],
    );
    // An explicit time embedding size needs no default.
    let explicit = serde_json::json!({
        "sample_size": 8,
        "block_out_channels": [1u64 << 63],
        "down_block_types": ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"],
        "time_embedding_dim": 16,
    });
    assert_eq!(unet(&explicit.to_string()).unwrap().time_embed_dim, 16);
    // config.json files carry keys the engine does not read; they are ignored.
    let extra = unet_with("made_up_key", Some(serde_json::json!({"a": 1})));
    assert_eq!(unet(&extra).unwrap(), unet(UNET).unwrap());
}

fn clip(text: &str) -> uqengine::Result<ClipVisionConfig> {
    ClipVisionConfig::from_json_str(text, Path::new("clip/config.json"))
}

#[test]
fn clip_vision_config_errors() {
    let p = "clip/config.json";
    let positive = "a positive integer";
    check(
        clip,
        p,
        &[
            (r#"{"model_type": "clip"}"#, missing(p, "vision_config")),
            (
                r#"{"hidden_size": "big"}"#,
                wrong_type(p, "hidden_size", positive, "\"big\""),
            ),
            (
                r#"{"model_type": "clip", "vision_config": {"patch_size": 0}}"#,
                wrong_type(p, "vision_config.patch_size", positive, "0"),
            ),
            (
                r#"{"vision_config": [1]}"#,
                wrong_type(p, "vision_config", "an object", "[1]"),
            ),
            (
                r#"{"layer_norm_eps": -0.5}"#,
                wrong_type(p, "layer_norm_eps", "a positive number", "-0.5"),
            ),
        ],
    );
    // Unknown keys (the text tower's, transformers' bookkeeping) are ignored.
    let extra =
        r#"{"model_type": "clip", "text_config": {"x": 1}, "vision_config": {"made_up": 2}}"#;
    assert_eq!(clip(extra).unwrap(), ClipVisionConfig::default());
}

fn preprocess(text: &str) -> uqengine::Result<ClipPreprocess> {
    ClipPreprocess::from_json_str(text, Path::new("clip/preprocessor_config.json"))
}

#[test]
fn clip_preprocessor_config_errors() {
    let p = "clip/preprocessor_config.json";
    check(
        preprocess,
        p,
        &[
            (r#"{"size": {"height": 224}}"#, missing(p, "size.width")),
            (
                r#"{"do_resize": "yes"}"#,
                wrong_type(p, "do_resize", "true or false", "\"yes\""),
            ),
            (
                r#"{"image_mean": []}"#,
                wrong_type(
                    p,
                    "image_mean",
                    "a number or a non-empty list of numbers",
                    "[]",
                ),
            ),
            (
                r#"{"size": {"shortest_edge": 224, "longest_edge": null}}"#,
                wrong_type(p, "size.longest_edge", "a positive integer", "null"),
            ),
            (
                r#"{"crop_size": {"height": 224, "width": 224, "depth": 3}}"#,
                unknown(p, "crop_size.depth", &["height", "width"]),
            ),
            (
                r#"{"size": {"shortest_edge": 224, "height": 224}}"#,
                unknown(p, "size.height", &["shortest_edge", "longest_edge"]),
            ),
        ],
    );
    // Top-level keys that do not affect CLIP preprocessing are ignored.
    let extra = r#"{"feature_extractor_type": "CLIPFeatureExtractor", "made_up": 1}"#;
    assert_eq!(preprocess(extra).unwrap(), ClipPreprocess::default());
}

fn scheduler(text: &str) -> uqengine::Result<SchedulerConfig> {
    SchedulerConfig::from_json_str(text, Path::new("scheduler/scheduler_config.json"))
}

#[test]
fn scheduler_config_and_override_errors() {
    let p = "scheduler/scheduler_config.json";
    // No key is required: absent keys take the DDIMScheduler defaults.
    assert_eq!(scheduler("{}").unwrap(), SchedulerConfig::default());
    check(
        scheduler,
        p,
        &[
            (
                r#"{"clip_sample": "yes"}"#,
                wrong_type(p, "clip_sample", "true or false", "\"yes\""),
            ),
            (
                r#"{"num_train_timesteps": null}"#,
                wrong_type(p, "num_train_timesteps", "a non-negative integer", "null"),
            ),
        ],
    );
    // A config file may hold other schedulers' keys; they are ignored.
    let extra = r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true}"#;
    assert_eq!(scheduler(extra).unwrap(), SchedulerConfig::default());

    // Overrides `key=value`, here written `key value`, reject unknown keys.
    let o = OVERRIDE_PATH;
    let set = |kv: &str| {
        let (key, value) = kv.split_once(' ').unwrap();
        SchedulerConfig::default().set_override(key, value)
    };
    check(
        set,
        o,
        &[
            (
                "steps_offset one",
                wrong_type(o, "steps_offset", "a non-negative integer", "\"one\""),
            ),
            (
                "beta_schedul linear",
                unknown(o, "beta_schedul", KNOWN_KEYS),
            ),
        ],
    );
}

#[test]
fn reader_reports_nested_keys_by_their_path() {
    let c = JsonConfig::parse(
        r#"{"outer": {"inner": "x", "n": null}, "flag": true}"#,
        Path::new("f.json"),
    )
    .unwrap();
    let outer = c.sub("outer").unwrap().unwrap();
    assert_eq!(
        outer.req::<usize>("n").unwrap_err().to_string(),
        missing("f.json", "outer.n")
    );
    assert_eq!(
        outer.req::<usize>("inner").unwrap_err().to_string(),
        wrong_type("f.json", "outer.inner", "a non-negative integer", "\"x\"")
    );
    assert_eq!(
        outer.deny_unknown(&["n"]).unwrap_err().to_string(),
        unknown("f.json", "outer.inner", &["n"])
    );
    assert_eq!(
        c.sub("flag").unwrap_err().to_string(),
        wrong_type("f.json", "flag", "an object", "true")
    );
    assert!(c.sub("absent").unwrap().is_none());
    assert_eq!(outer.opt::<usize>("n").unwrap(), None);
    assert!(outer.present::<usize>("n").is_err());
}
