//! The paper's workflow on an ADM checkpoint through the command line: `convert adm` a
//! guided-diffusion `.pt`, `info`, `fit` a posterior on a folder of class subfolders, `sample`
//! with members, scores and a per-class keep (DDIM and the learned-variance DDPM, a member
//! schedule), on the CPU and on the emulated CUDA device.

use crate::common;

use common::{arg as s, fixture, random_image_folder, uqengine_cli as uq};
use uqengine::io::scores::read_csv;

const ADM: &str = "adm/cond_learned_updown";
const CLIP: &str = "clip/rgb_quick_gelu_f32/model";

/// `convert adm`, `info` and `fit` into a fresh folder: the folder, the converted model and the
/// posterior.
fn convert_and_fit() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("adm");
    let flags = std::fs::read_to_string(fixture(&format!("{ADM}/flags.txt"))).unwrap();
    let (ok, log) = uq(&[
        "convert",
        "adm",
        "--checkpoint",
        s(&fixture(&format!("{ADM}/model.pt"))),
        "--flags",
        flags.trim(),
        "--out",
        s(&model),
    ]);
    assert!(ok, "convert: {log}");

    let (ok, log) = uq(&["info", "--model", s(&model)]);
    assert!(ok, "info: {log}");
    assert!(
        log.contains("scale-shift") && log.contains("2 heads"),
        "{log}"
    );
    assert!(
        log.contains("GuidedDiffusion") && log.contains("LearnedRange"),
        "{log}"
    );

    let data = random_image_folder(tmp.path(), 20, 8, 77);
    let post = tmp.path().join("posterior.safetensors");
    let (ok, log) = uq(&[
        "fit",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&post),
        "--batch",
        "8",
        "--device",
        "cpu",
    ]);
    assert!(ok, "fit: {log}");
    (tmp, model, post)
}

/// DDIM, and the learned-variance DDPM with a member schedule, on the CPU.
#[test]
fn convert_fit_and_sample_an_adm_checkpoint() {
    let (tmp, model, post) = convert_and_fit();
    let runs: [(&str, &[&str]); 2] = [
        ("ddim-cpu", &["--steps", "5", "--device", "cpu"]),
        (
            "ddpm-cpu",
            &[
                "--sampler",
                "ddpm",
                "--steps",
                "4",
                "--uq-schedule",
                "branch:0.5",
                "--device",
                "cpu",
            ],
        ),
    ];
    for (name, extra) in runs {
        sample_and_check(tmp.path(), &model, &post, name, extra);
    }
}

/// The learned-variance DDPM on the emulated CUDA device (a test of its own: it runs beside the
/// CPU one).
#[cfg(feature = "emu")]
#[test]
fn convert_fit_and_sample_an_adm_checkpoint_on_the_emulated_device() {
    let (tmp, model, post) = convert_and_fit();
    // Two steps: the emulated device runs the ADM trunk ~100x slower than the CPU backend.
    let extra = ["--sampler", "ddpm", "--steps", "2", "--device", "emu"];
    sample_and_check(tmp.path(), &model, &post, "ddpm-emu", &extra);
}

/// `sample` 6 images of classes 0,1,2 with 2 draws and a keep of 3 into `dir/name`: finite
/// scores and a per-class keep (one of each class).
fn sample_and_check(
    dir: &std::path::Path,
    model: &std::path::Path,
    post: &std::path::Path,
    name: &str,
    extra: &[&str],
) {
    let clip = fixture(CLIP);
    let out = dir.join(name);
    let mut args = vec![
        "sample",
        "--model",
        s(model),
        "--posterior",
        s(post),
        "--extractor",
        s(&clip),
        "--num",
        "6",
        "--class",
        "0,1,2,0,1,2",
        "--draws",
        "2",
        "--batch",
        "3",
        "--keep",
        "3",
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    let (ok, log) = uq(&args);
    assert!(ok, "{name}: {log}");
    let rows = read_csv(&out.join("scores.csv")).unwrap();
    assert_eq!(rows.len(), 6, "{name}");
    assert!(
        rows.iter().all(|r| r.uncertainty.is_finite()),
        "{name}: {rows:?}"
    );
    // Per-class keep (the default for a class-conditional model): one of each class.
    let mut kept: Vec<usize> = rows
        .iter()
        .filter(|r| r.kept == Some(true))
        .map(|r| r.class.unwrap())
        .collect();
    kept.sort_unstable();
    assert_eq!(kept, vec![0, 1, 2], "{name}");
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("per-class"), "{name}: {summary}");
}
