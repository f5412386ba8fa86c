//! Parity of the CLIP vision feature extractor and its preprocessing with transformers
//! (`CLIPVisionModelWithProjection`, `CLIPImageProcessor`), on fixtures written by
//! `tools/make_clip_fixtures.py` (tiny random-weight models, sklearn's `china.jpg`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::Backend;
use uqengine::image::HwcImage;
use uqengine::models::clip::{ClipVision, ClipVisionConfig};
use uqengine::models::clip_preprocess::ClipPreprocess;
use uqengine::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

/// A little-endian f32 `.npy` array (C order): (shape, values).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not an npy file",
        path.display()
    );
    let (hlen, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).unwrap();
    assert!(
        header.contains("'descr': '<f4'"),
        "{}: {header}",
        path.display()
    );
    assert!(
        header.contains("'fortran_order': False"),
        "{}: {header}",
        path.display()
    );
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[start + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{}",
        path.display()
    );
    (shape, data)
}

/// `[n, c, h, w]` -> `[n, h, w, c]`.
fn nchw_to_nhwc(shape: &[usize], x: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for i in 0..h * w {
                y[(b * h * w + i) * c + ch] = x[(b * c + ch) * h * w + i];
            }
        }
    }
    (vec![n, h, w, c], y)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// RGB u8 pixels of a PNG: (height, width, data).
fn read_png_rgb(path: &Path) -> (usize, usize, Vec<u8>) {
    let (px, h, w, c) = uqengine::io::members::load_png_u8(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rgb = if c == 1 {
        px.iter().flat_map(|&v| [v; 3]).collect()
    } else {
        px
    };
    (h, w, rgb)
}

fn photo() -> (usize, usize, Vec<u8>) {
    read_png_rgb(&fixtures().join("preprocess/photo.png"))
}

/// Embeds the fixture pixels and compares with transformers' `image_embeds`.
fn check_forward(name: &str) {
    let dir = fixtures().join(name);
    let backend = cpu();
    let model = ClipVision::load(backend.clone(), &dir.join("model")).unwrap();
    let (shape, pixels) = read_npy(&dir.join("pixels.npy"));
    let (shape, pixels) = nchw_to_nhwc(&shape, &pixels);
    let (rshape, reference) = read_npy(&dir.join("image_embeds.npy"));
    let x = backend.upload(&shape, &pixels).unwrap();
    let y = model.embed(&x).unwrap();
    assert_eq!(y.shape(), rshape.as_slice());
    let got = backend.download(&y).unwrap();
    let (err, scale) = (max_abs_diff(&got, &reference), max_abs(&reference));
    println!(
        "{name}: max abs err {err:.3e}, max|ref| {scale:.3}, {}",
        model.describe()
    );
    assert!(
        err <= 1e-4 * scale,
        "{name}: max abs err {err} > 1e-4 * {scale}"
    );
}

#[test]
fn embeds_match_transformers_rgb_quick_gelu_f32() {
    check_forward("rgb_quick_gelu_f32");
}

#[test]
fn embeds_match_transformers_gray_gelu_f16_weights() {
    check_forward("gray_gelu_f16");
}

#[test]
fn embeds_do_not_depend_on_batch_composition() {
    let dir = fixtures().join("rgb_quick_gelu_f32");
    let backend = cpu();
    let model = ClipVision::load(backend.clone(), &dir.join("model")).unwrap();
    let (shape, pixels) = read_npy(&dir.join("pixels.npy"));
    let (shape, pixels) = nchw_to_nhwc(&shape, &pixels);
    let all = backend
        .download(
            &model
                .embed(&backend.upload(&shape, &pixels).unwrap())
                .unwrap(),
        )
        .unwrap();
    let per = pixels.len() / shape[0];
    let d = model.dim();
    for i in 0..shape[0] {
        let one = backend
            .upload(
                &[1, shape[1], shape[2], shape[3]],
                &pixels[i * per..(i + 1) * per],
            )
            .unwrap();
        let e = backend.download(&model.embed(&one).unwrap()).unwrap();
        assert!(
            max_abs_diff(&e, &all[i * d..(i + 1) * d]) <= 1e-6,
            "sample {i}"
        );
    }
}

#[test]
fn photo_through_model_preprocessing_matches_transformers() {
    let dir = fixtures().join("rgb_quick_gelu_f32");
    let model = ClipVision::load(cpu(), &dir.join("model")).unwrap();
    let (h, w, rgb) = photo();
    let img = HwcImage::new(h, w, 3, &rgb).unwrap();
    let y = model.embed_images_u8(&[img]).unwrap();
    let (_, reference) = read_npy(&dir.join("photo_embeds.npy"));
    let got = y.host_data().unwrap();
    let (err, scale) = (max_abs_diff(got, &reference), max_abs(&reference));
    println!("photo embeds: max abs err {err:.3e}, max|ref| {scale:.3}");
    assert!(err <= 1e-4 * scale);
}

/// The nested `CLIPConfig` layout (`model_type` clip, `vision_config`, top-level projection_dim)
/// loads the same model.
#[test]
fn full_clip_config_layout_loads_the_same_model() {
    let src = fixtures().join("rgb_quick_gelu_f32");
    let dir = temp_model_dir("nested", &src.join("model"));
    let vision: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("model/config.json")).unwrap())
            .unwrap();
    let nested = serde_json::json!({
        "model_type": "clip",
        "projection_dim": vision["projection_dim"],
        "text_config": {"hidden_size": 8},
        "vision_config": vision,
    });
    std::fs::write(dir.join("config.json"), nested.to_string()).unwrap();
    let backend = cpu();
    let a = ClipVision::load(backend.clone(), &src.join("model")).unwrap();
    let b = ClipVision::load(backend.clone(), &dir).unwrap();
    assert_eq!(a.config(), b.config());
    let (shape, pixels) = read_npy(&src.join("pixels.npy"));
    let (shape, pixels) = nchw_to_nhwc(&shape, &pixels);
    let x = backend.upload(&shape, &pixels).unwrap();
    let ya = backend.download(&a.embed(&x).unwrap()).unwrap();
    let yb = backend.download(&b.embed(&x).unwrap()).unwrap();
    assert_eq!(ya, yb);
}

/// A copy of a fixture model directory under the system temp dir, removed on drop.
struct TempModel(PathBuf);

impl std::ops::Deref for TempModel {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_model_dir(tag: &str, src: &Path) -> TempModel {
    let dir = std::env::temp_dir().join(format!("uqengine_clip_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    TempModel(dir)
}

fn edited_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

fn load_err(dir: &Path) -> Error {
    match ClipVision::load(cpu(), dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn malformed_config_json_names_the_file() {
    let dir = temp_model_dir("malformed", &fixtures().join("rgb_quick_gelu_f32/model"));
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 32,").unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(e, Error::Json { ref path, .. } if path.ends_with("config.json")),
        "{e}"
    );
    assert!(e.to_string().contains("config.json"), "{e}");

    std::fs::write(dir.join("preprocessor_config.json"), "[1, 2").unwrap();
    let p = ClipPreprocess::from_file(&dir.join("preprocessor_config.json")).unwrap_err();
    assert!(p.to_string().contains("preprocessor_config.json"), "{p}");
}

#[test]
fn unsupported_activation_names_key_and_value() {
    let dir = temp_model_dir("act", &fixtures().join("rgb_quick_gelu_f32/model"));
    edited_config(&dir, |v| v["hidden_act"] = "gelu_new".into());
    let e = load_err(&dir);
    match &e {
        Error::Unsupported { path, key, value } => {
            assert!(path.ends_with("config.json"));
            assert_eq!(key, "hidden_act");
            assert!(value.contains("gelu_new"));
        }
        _ => panic!("unexpected error {e}"),
    }
    println!("{e}");
}

#[test]
fn unsupported_channels_and_model_type_are_named() {
    let p = Path::new("config.json");
    let e = ClipVisionConfig::from_json_str(
        r#"{"model_type":"clip_vision_model","num_channels":4}"#,
        p,
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported { key, .. } if key == "num_channels"),
        "{e}"
    );
    let e =
        ClipVisionConfig::from_json_str(r#"{"model_type":"siglip_vision_model"}"#, p).unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported { key, .. } if key == "model_type"),
        "{e}"
    );
    let e = ClipVisionConfig::from_json_str(
        r#"{"model_type":"clip","vision_config":{"hidden_act":"relu"}}"#,
        p,
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported { key, .. } if key == "vision_config.hidden_act"),
        "{e}"
    );
    let e = ClipVisionConfig::from_json_str(r#"{"hidden_size":"big"}"#, p).unwrap_err();
    assert!(
        matches!(&e, Error::Config { key, .. } if key == "hidden_size"),
        "{e}"
    );
}

#[test]
fn missing_tensor_names_file_and_key() {
    let dir = temp_model_dir("missing", &fixtures().join("rgb_quick_gelu_f32/model"));
    edited_config(&dir, |v| v["num_hidden_layers"] = 3.into());
    let e = load_err(&dir);
    match &e {
        Error::MissingTensor { path, key } => {
            assert!(path.ends_with("model.safetensors"));
            assert!(key.starts_with("vision_model.encoder.layers.2."), "{key}");
        }
        _ => panic!("unexpected error {e}"),
    }
    println!("{e}");
}

#[test]
fn preprocessing_that_does_not_fit_the_model_is_rejected() {
    let dir = temp_model_dir("crop", &fixtures().join("rgb_quick_gelu_f32/model"));
    let path = dir.join("preprocessor_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["crop_size"] = serde_json::json!({"height": 224, "width": 224});
    std::fs::write(&path, v.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(&e, Error::Config { key, path, .. } if key == "crop_size" && path.ends_with("preprocessor_config.json")),
        "{e}"
    );
    v["resample"] = 0.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(&e, Error::Unsupported { key, .. } if key == "resample"),
        "{e}"
    );
}

#[test]
fn wrong_input_shape_is_an_error() {
    let model = ClipVision::load(cpu(), &fixtures().join("rgb_quick_gelu_f32/model")).unwrap();
    let x = uqengine::Tensor::host(vec![1, 32, 32, 1], vec![0.0; 32 * 32]);
    let e = model.embed(&x).unwrap_err();
    assert!(e.to_string().contains("[1, 32, 32, 1]"), "{e}");
}

/// One preprocessing case: its config, the processor's output as `[h, w, c]`, our output.
fn run_case(case: &str) -> (ClipPreprocess, Vec<f32>, Vec<f32>) {
    let dir = fixtures().join("preprocess");
    let cfg_path = dir.join(format!("{case}.json"));
    let p = ClipPreprocess::from_file(&cfg_path).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let (h, w, rgb) = photo();
    let got = match cfg["input"].as_str().unwrap() {
        "rgb" => p
            .process_u8(&HwcImage::new(h, w, 3, &rgb).unwrap())
            .unwrap(),
        "gray" => {
            let gray: Vec<u8> = rgb.chunks_exact(3).map(|px| px[0]).collect();
            p.process_u8(&HwcImage::new(h, w, 1, &gray).unwrap())
                .unwrap()
        }
        "rgb_float" => {
            let f: Vec<f32> = rgb.iter().map(|&v| v as f32 / 255.0).collect();
            p.process_f32(&HwcImage::new(h, w, 3, &f).unwrap()).unwrap()
        }
        other => panic!("unknown input {other}"),
    };
    let reference = if case == "openai_224" {
        // Stored as 8-bit levels q: the processor output is ((q * factor) as f32 - mean) / std.
        let (_, _, q) = read_png_rgb(&dir.join(format!("{case}.png")));
        q.iter()
            .enumerate()
            .map(|(i, &v)| {
                ((v as f64 * p.rescale_factor) as f32 - p.image_mean[i % 3]) / p.image_std[i % 3]
            })
            .collect()
    } else {
        let (shape, chw) = read_npy(&dir.join(format!("{case}.npy")));
        let (_, hwc) = nchw_to_nhwc(&[1, shape[0], shape[1], shape[2]], &chw);
        hwc
    };
    (p, reference, got)
}

/// One 8-bit level after normalisation: `rescale_factor / min(std)`.
fn one_level(p: &ClipPreprocess) -> f32 {
    p.rescale_factor as f32 / p.image_std.iter().cloned().fold(f32::INFINITY, f32::min)
}

#[test]
fn preprocessing_matches_clip_image_processor_exactly() {
    for case in [
        "openai_224",
        "small_rgb",
        "small_gray_to_rgb",
        "small_gray",
        "crop_pads",
        "hw_bilinear",
        "longest_edge",
        "lanczos",
        "box",
        "hamming",
    ] {
        let (p, reference, got) = run_case(case);
        assert_eq!(got.len(), reference.len(), "{case}");
        let err = max_abs_diff(&got, &reference);
        let levels = got.iter().zip(&reference).filter(|(a, b)| a != b).count();
        println!(
            "{case}: max abs err {err:.3e} ({levels} of {} values differ; one level = {:.4})",
            got.len(),
            one_level(&p)
        );
        assert_eq!(err, 0.0, "{case}: max abs err {err}");
    }
}

#[test]
fn float_preprocessing_matches_pil_float_resampling() {
    let (p, reference, got) = run_case("small_rgb_float");
    let err = max_abs_diff(&got, &reference);
    println!("small_rgb_float: max abs err {err:.3e}");
    assert!(err <= 1e-6, "max abs err {err}");
    // Without quantisation the result stays within one 8-bit level of the u8 path.
    let (_, u8_ref, _) = run_case("small_rgb");
    let dev = max_abs_diff(&got, &u8_ref);
    println!(
        "float vs 8-bit path: max deviation {dev:.4} (one level = {:.4})",
        one_level(&p)
    );
    assert!(
        dev <= one_level(&p) * 1.0001,
        "float path deviates {dev} from the 8-bit path"
    );
}

#[test]
fn absent_preprocessor_keys_take_clip_image_processor_defaults() {
    // openai_224.json is CLIPImageProcessor() with its defaults written out.
    let written =
        ClipPreprocess::from_file(&fixtures().join("preprocess/openai_224.json")).unwrap();
    let empty = ClipPreprocess::from_json_str("{}", Path::new("empty.json")).unwrap();
    assert_eq!(written, empty);
    assert_eq!(empty, ClipPreprocess::default());
}

#[test]
fn float_input_outside_unit_range_is_rejected() {
    let p = ClipPreprocess::default();
    let x = vec![0.5f32, 1.5, 0.0];
    assert!(p.process_f32(&HwcImage::new(1, 1, 3, &x).unwrap()).is_err());
}
