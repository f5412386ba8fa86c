//! `uqengine eval` from the command line: metrics.json from feature files equals the library's
//! metrics (checked against scipy and prdc in eval_parity.rs); `--run` evaluates a run's kept,
//! first-N and least-certain sets, each equal to evaluating those images directly; the
//! reference folder's feature cache is reused while the folder is unchanged and refreshed when
//! it changes; bad input is a clear error.

use crate::common;

use common::{arg, fixture, uqengine_cli};
use uqengine::backend::cpu::CpuBackend;
use uqengine::eval::{encode_images, evaluate, load_features};
use uqengine::io::images_in::list_images;
use uqengine::models::clip::ClipVision;

fn read_json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn feature_files_give_the_reference_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("eval/small_shifted");
    let out = tmp.path().join("metrics.json");
    let (ok, log) = uqengine_cli(&[
        "eval",
        "--real-features",
        arg(&dir.join("real.npy")),
        "--fake-features",
        arg(&dir.join("fake.npy")),
        "--out",
        arg(&out),
    ]);
    assert!(ok, "{log}");
    let got = read_json(&out);
    let want = &read_json(&dir.join("metrics.json"))["metrics"];
    let rel = |g: f64, w: f64| (g - w).abs() / w.abs();
    assert!(rel(got["fd"].as_f64().unwrap(), want["fd"].as_f64().unwrap()) <= 1e-4);
    for key in ["precision", "recall", "density", "coverage"] {
        assert!(
            rel(
                got[key].as_f64().unwrap(),
                want["k3"][key].as_f64().unwrap()
            ) <= 1e-4,
            "{key}"
        );
    }
    assert_eq!(got["k"], 3);
}

#[test]
fn run_sets_and_the_reference_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let real_run = tmp.path().join("real-run");
    for (out, seed, keep) in [(&run, "1", "8"), (&real_run, "2", "1")] {
        let (ok, log) = uqengine_cli(&[
            "sample",
            "--num",
            "12",
            "--steps",
            "3",
            "--draws",
            "2",
            "--seed",
            seed,
            "--keep",
            keep,
            "--device",
            "cpu",
            "--out",
            arg(out),
        ]);
        assert!(ok, "{log}");
    }
    let real = real_run.join("images");
    let cache = tmp.path().join("cache/real");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    let out = tmp.path().join("metrics.json");
    let eval = || {
        uqengine_cli(&[
            "eval",
            "--run",
            arg(&run),
            "--real",
            arg(&real),
            "--real-cache",
            arg(&cache),
            "--k",
            "2",
            "--device",
            "cpu",
            "--out",
            arg(&out),
        ])
    };
    let (ok, log) = eval();
    assert!(
        ok && log.contains("encoded and cached") && log.contains("least certain"),
        "{log}"
    );
    let doc = read_json(&out);
    assert_eq!(doc["keep"], 8);
    assert_eq!(doc["keep_policy"], "per-class");

    // Reference: the extractor on the kept images and the reference folder, evaluated directly.
    let clip = ClipVision::load(
        std::sync::Arc::new(CpuBackend::new()),
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/demo/clip"),
    )
    .unwrap();
    let kept: Vec<std::path::PathBuf> = std::fs::read_to_string(run.join("keep.txt"))
        .unwrap()
        .lines()
        .map(|l| run.join("images").join(l))
        .collect();
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    let want = evaluate(
        &encode_images(&clip, &list_images(&real).unwrap()).unwrap(),
        &encode_images(&clip, &kept_sorted).unwrap(),
        2,
    )
    .unwrap();
    let got = &doc["kept"];
    assert!(
        (got["fd"].as_f64().unwrap() - want.fd).abs() <= 1e-9 * want.fd.abs().max(1.0),
        "{got} vs {want:?}"
    );
    assert_eq!(got["precision"].as_f64().unwrap(), want.precision);
    assert_eq!(got["n_fake"], 8);
    for key in ["first", "least_certain"] {
        assert_eq!(doc[key]["n_fake"], 8, "{key}");
    }
    assert_ne!(doc["kept"]["fd"], doc["least_certain"]["fd"]);

    // The cache serves the second evaluation, with the same numbers...
    let (ok, log) = eval();
    assert!(ok && log.contains("(cached)"), "{log}");
    assert_eq!(read_json(&out), doc);
    let cached = load_features(&cache.with_extension("npy")).unwrap();
    assert_eq!(cached.n, 12);
    // ... and is refreshed when the folder changes.
    std::fs::remove_file(real.join("00000.png")).unwrap();
    let (ok, log) = eval();
    assert!(ok && log.contains("encoded and cached"), "{log}");
    assert_eq!(read_json(&out)["kept"]["n_real"], 11);
}

#[test]
fn bad_eval_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("eval/small_shifted");
    let out = tmp.path().join("m.json");
    let two_d = tmp.path().join("three.npy");
    uqengine::io::npy::write_f32(&two_d, &[2, 2, 2], &[0.0; 8]).unwrap();
    for (args, needle) in [
        (
            vec!["--fake-features", arg(&dir.join("fake.npy"))],
            "--real",
        ),
        (
            vec!["--real-features", arg(&dir.join("real.npy"))],
            "--fake",
        ),
        (
            vec![
                "--real-features",
                arg(&two_d),
                "--fake-features",
                arg(&dir.join("fake.npy")),
            ],
            "2-D",
        ),
        (
            vec![
                "--real-features",
                arg(&dir.join("real.npy")),
                "--fake-features",
                arg(&dir.join("fake.npy")),
                "--k",
                "0",
            ],
            "k = 0",
        ),
        (
            vec![
                "--real-features",
                arg(&dir.join("real.npy")),
                "--run",
                arg(&tmp.path().join("nope")),
            ],
            "scores.csv",
        ),
    ] {
        let mut all = vec!["eval", "--out", arg(&out)];
        all.extend(args);
        let (ok, log) = uqengine_cli(&all);
        assert!(!ok && log.contains(needle), "{all:?}: {log}");
        assert!(!out.exists());
    }
}
