//! Bad input gives an error naming the file, key, shape or value; the CLI exits non-zero and
//! leaves no output folder that looks complete.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixture;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use uqengine::backend::cpu::CpuBackend;
use uqengine::models::unet::UNet;

const MODEL: &str = "unet/gray_cond_multihead_f16/model";

/// A writable copy of a fixture model directory.
fn copy_model(tmp: &Path) -> PathBuf {
    let src = fixture(MODEL);
    let dst = tmp.join("model");
    std::fs::create_dir_all(dst.join("scheduler")).unwrap();
    for f in [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    dst
}

fn load_err(dir: &Path) -> String {
    match UNet::load(&CpuBackend::new(), dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrite the model's safetensors with `edit` applied to the (name -> (shape, f32 data)) map.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, (Vec<usize>, Vec<f32>)>)) {
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map: HashMap<String, (Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = v
                .data()
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            (n, (v.shape().to_vec(), data))
        })
        .collect();
    edit(&mut map);
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = map
        .into_iter()
        .map(|(n, (s, d))| (n, s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView)> = raw
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn truncated_safetensors_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());
    let p = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
}

#[test]
fn corrupted_safetensors_header_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());
    let p = dir.join("diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    for b in bytes.iter_mut().skip(8).take(40) {
        *b = b'#';
    }
    std::fs::write(&p, &bytes).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
}

#[test]
fn missing_tensor_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());
    rewrite_weights(&dir, |m| {
        m.remove("mid_block.attentions.0.to_k.weight")
            .expect("fixture has the tensor");
    });
    let e = load_err(&dir);
    assert!(
        e.contains("missing tensor") && e.contains("mid_block.attentions.0.to_k.weight"),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_key_and_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());
    rewrite_weights(&dir, |m| {
        let (s, d) = m.get_mut("conv_in.weight").unwrap();
        let n: usize = s.iter().product();
        *s = vec![n];
        d.truncate(n);
    });
    let e = load_err(&dir);
    assert!(
        e.contains("conv_in.weight") && e.contains("expected [16, 1, 3, 3]"),
        "{e}"
    );
}

#[test]
fn non_finite_weight_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());
    rewrite_weights(&dir, |m| {
        m.get_mut("conv_out.bias").unwrap().1[0] = f32::NAN
    });
    let e = load_err(&dir);
    assert!(
        e.contains("conv_out.bias") && e.contains("non-finite"),
        "{e}"
    );
}

#[test]
fn malformed_json_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());
    std::fs::write(dir.join("config.json"), "{\"sample_size\": 8,, }").unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("malformed JSON"),
        "{e}"
    );
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn unknown_block_type_names_key_and_value() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());
    edit_config(
        &dir,
        "down_block_types",
        serde_json::json!(["DownBlock2D", "CrossAttnDownBlock2D"]),
    );
    let e = load_err(&dir);
    assert!(
        e.contains("down_block_types") && e.contains("CrossAttnDownBlock2D"),
        "{e}"
    );
}

#[test]
fn unsupported_config_values_name_key_and_value() {
    for (key, value, shown) in [
        ("act_fn", serde_json::json!("gelu"), "gelu"),
        (
            "resnet_time_scale_shift",
            serde_json::json!("spatial"),
            "spatial",
        ),
        (
            "time_embedding_type",
            serde_json::json!("fourier"),
            "fourier",
        ),
        (
            "class_embed_type",
            serde_json::json!("timestep"),
            "timestep",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_model(tmp.path());
        edit_config(&dir, key, value);
        let e = load_err(&dir);
        assert!(e.contains(key) && e.contains(shown), "{key}: {e}");
    }
}

fn uqengine(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_uqengine"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn class_out_of_range_fails_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixture(MODEL);
    let (ok, err) = uqengine(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--num",
        "2",
        "--steps",
        "2",
        "--class",
        "10",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!ok);
    assert!(
        err.contains("class 10") && err.contains("10 classes"),
        "{err}"
    );
    assert!(!out.exists() && !tmp.path().join("out.partial").exists());
}

#[test]
fn num_zero_fails_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixture(MODEL);
    let (ok, err) = uqengine(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--num",
        "0",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!ok);
    assert!(err.contains("--num") && err.contains("0"), "{err}");
    assert!(!out.exists() && !tmp.path().join("out.partial").exists());
}

#[test]
fn broken_model_fails_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_model(tmp.path());
    let p = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..100]).unwrap();
    let out = tmp.path().join("out");
    let (ok, err) = uqengine(&[
        "sample",
        "--model",
        dir.to_str().unwrap(),
        "--num",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!ok);
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    assert!(!out.exists() && !tmp.path().join("out.partial").exists());
}
