//! `uqengine fit` then `uqengine sample --posterior` end to end on a fixture model and a fixture
//! CLIP; `uqengine score --members` on the saved member images reproduces the run's scores
//! (same 8-bit images, same extractor, same estimator, computed independently from the files);
//! bad input is rejected without output.

use crate::common;

use std::path::{Path, PathBuf};

use common::{arg as s, fit_on_cpu, fixture, random_image_folder, uqengine_cli as uq};
use uqengine::io::scores::read_csv;

const MODEL: &str = "unet/gray_cond_multihead_f16/model";
const CLIP: &str = "clip/gray_gelu_f16/model";

fn image_folder(root: &Path, n: usize, size: u32) -> PathBuf {
    random_image_folder(root, n, size, 12345)
}

#[test]
fn fit_sample_score_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 20, 8);
    let model = fixture(MODEL);
    let clip = fixture(CLIP);
    for hessian in ["ef-diag", "ggn-kron"] {
        let post = tmp.path().join(format!("{hessian}.safetensors"));
        let (ok, log) = uq(&[
            "fit",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(&post),
            "--hessian",
            hessian,
            "--batch",
            "8",
            "--device",
            "cpu",
        ]);
        assert!(ok, "fit: {log}");
        let out = tmp.path().join(format!("run-{hessian}"));
        let (ok, log) = uq(&[
            "sample",
            "--model",
            s(&model),
            "--posterior",
            s(&post),
            "--extractor",
            s(&clip),
            "--num",
            "6",
            "--steps",
            "5",
            "--draws",
            "3",
            "--batch",
            "4",
            "--keep",
            "2",
            "--save-members",
            "--out",
            s(&out),
            "--device",
            "cpu",
        ]);
        assert!(ok, "sample: {log}");
        for f in [
            "scores.csv",
            "scores.json",
            "summary.json",
            "contact_sheet.png",
            "keep.txt",
            "features.npy",
            "samples.npy",
        ] {
            assert!(out.join(f).exists(), "{hessian}: missing {f}");
        }
        assert_eq!(std::fs::read_dir(out.join("keep")).unwrap().count(), 2);
        let rows = read_csv(&out.join("scores.csv")).unwrap();
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r.uncertainty.is_finite()));
        // Members differ (the posterior draws changed the trajectories) but start from the same noise.
        let feats = uqengine::io::npy::read(&out.join("features.npy")).unwrap();
        assert_eq!(feats.shape[..2], [6, 4]);
        // Independent re-scoring from the saved member PNGs gives the same table.
        let rescored = tmp.path().join(format!("rescored-{hessian}"));
        let (ok, log) = uq(&[
            "score",
            "--members",
            s(&out.join("members")),
            "--extractor",
            s(&clip),
            "--out",
            s(&rescored),
            "--device",
            "cpu",
        ]);
        assert!(ok, "score: {log}");
        let again = read_csv(&rescored.join("scores.csv")).unwrap();
        for (a, b) in rows.iter().zip(&again) {
            assert_eq!(a.index, b.index);
            assert!(
                (a.uncertainty - b.uncertainty).abs() <= 1e-6 * a.uncertainty.abs().max(1.0),
                "{a:?} vs {b:?}"
            );
            assert_eq!(a.rank, b.rank);
        }
    }
}

#[test]
fn uncertainty_bad_input_is_rejected_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 10, 8);
    let model = fixture(MODEL);
    let other_model = fixture("unet/cifar_like_old_names_f32/model");
    let clip = fixture(CLIP);
    let post = tmp.path().join("post.safetensors");
    assert!(
        uq(&[
            "fit",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--out",
            s(&post),
            "--device",
            "cpu"
        ])
        .0
    );
    let out = tmp.path().join("out");
    let check = |args: &[&str], needle: &str| {
        let (ok, log) = uq(args);
        assert!(!ok, "{args:?} should fail");
        assert!(
            log.contains(needle),
            "{args:?}: expected `{needle}` in: {log}"
        );
        assert!(!out.exists(), "{args:?} left {}", out.display());
    };
    // --draws 0
    check(
        &[
            "sample",
            "--model",
            s(&model),
            "--posterior",
            s(&post),
            "--extractor",
            s(&clip),
            "--draws",
            "0",
            "--num",
            "2",
            "--out",
            s(&out),
        ],
        "--draws",
    );
    // a posterior of another model
    check(
        &[
            "sample",
            "--model",
            s(&other_model),
            "--posterior",
            s(&post),
            "--extractor",
            s(&clip),
            "--num",
            "2",
            "--out",
            s(&out),
        ],
        "post.safetensors",
    );
    // a malformed extractor config
    let bad_clip = tmp.path().join("bad_clip");
    std::fs::create_dir_all(&bad_clip).unwrap();
    for f in ["model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(clip.join(f), bad_clip.join(f)).unwrap();
    }
    std::fs::write(bad_clip.join("config.json"), "{\"hidden_size\": [}").unwrap();
    check(
        &[
            "sample",
            "--model",
            s(&model),
            "--posterior",
            s(&post),
            "--extractor",
            s(&bad_clip),
            "--num",
            "2",
            "--out",
            s(&out),
        ],
        "config.json",
    );
    // an empty image folder and images smaller than the model
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, log) = uq(&[
        "fit",
        "--model",
        s(&model),
        "--data",
        s(&empty),
        "--out",
        s(&tmp.path().join("p2.st")),
    ]);
    assert!(!ok && log.contains("empty"), "{log}");
    let small = image_folder(&tmp.path().join("small"), 3, 4);
    let (ok, log) = uq(&[
        "fit",
        "--model",
        s(&model),
        "--data",
        s(&small),
        "--out",
        s(&tmp.path().join("p3.st")),
    ]);
    assert!(!ok && log.contains("smaller"), "{log}");
    assert!(!tmp.path().join("p2.st").exists() && !tmp.path().join("p3.st").exists());
}

/// Scores are computed per batch where the features are (on the device for `emu`: one
/// reduction, only the scores come back) and equal the host estimator on the saved features;
/// without `--save-members` no features are written at all.
#[test]
fn per_batch_scores_equal_the_estimator_on_the_features_and_features_are_kept_only_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let data = image_folder(tmp.path(), 20, 8);
    let model = fixture(MODEL);
    let clip = fixture(CLIP);
    let post = tmp.path().join("post.safetensors");
    fit_on_cpu(&model, &data, &post);
    let devices: &[&str] = if cfg!(feature = "emu") {
        &["cpu", "emu"]
    } else {
        &["cpu"]
    };
    for &device in devices {
        let run = |name: &str, save: bool| {
            let out = tmp.path().join(format!("{device}-{name}"));
            let mut args = vec![
                "sample",
                "--model",
                s(&model),
                "--posterior",
                s(&post),
                "--extractor",
                s(&clip),
                "--num",
                "5",
                "--steps",
                "3",
                "--draws",
                "2",
                "--batch",
                "2",
                "--out",
                s(&out),
                "--device",
                device,
            ];
            if save {
                args.push("--save-members");
            }
            let (ok, log) = uq(&args);
            assert!(ok, "{device} {name}: {log}");
            out
        };
        let (saved, plain) = (run("saved", true), run("plain", false));
        let files: Vec<String> = walk(&plain);
        assert!(
            files.iter().all(|f| !f.contains("features")),
            "{device}: features written without --save-members: {files:?}"
        );
        let a = read_csv(&saved.join("scores.csv")).unwrap();
        let b = read_csv(&plain.join("scores.csv")).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.index, x.rank), (y.index, y.rank), "{device}");
            assert_eq!(x.uncertainty, y.uncertainty, "{device}");
        }
        // The host's f64 estimator on the features the run saved.
        let f = uqengine::io::npy::read(&saved.join("features.npy")).unwrap();
        let (n, k, d) = (f.shape[0], f.shape[1], f.shape[2]);
        let want = uqengine::uncertainty::Estimator::default()
            .score(&f.to_f32(), n, k, d)
            .unwrap();
        for (row, w) in a.iter().zip(&want) {
            assert!(
                (row.uncertainty - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{device} sample {}: {} vs {w}",
                row.index,
                row.uncertainty
            );
        }
    }
}

/// Every file under `dir`, as paths relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}
