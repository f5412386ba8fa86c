//! The paper's workflow on an ADM checkpoint through the command line: `convert adm` a
//! guided-diffusion `.pt`, `info`, `fit` a posterior on a folder of class subfolders, `sample`
//! with members, scores and a per-class keep (DDIM and the learned-variance DDPM, a member
//! schedule), on the CPU and on the emulated CUDA device.

use crate::common;

use common::{arg as s, fixture, random_image_folder, uqengine_cli as uq};
use uqengine::io::scores::read_csv;

const ADM: &str = "adm/cond_learned_updown";
const CLIP: &str = "clip/rgb_quick_gelu_f32/model";

#[test]
fn convert_fit_and_sample_an_adm_checkpoint() {
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

    let clip = fixture(CLIP);
    let runs: [(&str, &[&str]); 3] = [
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
        (
            "ddpm-emu",
            &["--sampler", "ddpm", "--steps", "4", "--device", "emu"],
        ),
    ];
    for (name, extra) in runs {
        if name.ends_with("emu") && !cfg!(feature = "emu") {
            continue;
        }
        let out = tmp.path().join(name);
        let mut args = vec![
            "sample",
            "--model",
            s(&model),
            "--posterior",
            s(&post),
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
}
