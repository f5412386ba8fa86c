//! The whole CUDA code path of a sample run with uncertainty — K-member trunk, per-member last
//! layer, sampler, CLIP features, scores — on the emulated device (`--device emu`, feature
//! `emu`) against the CPU pipeline on a fixture model. Tolerances are f16-level: activations
//! are stored in f16 on the device, so samples agree to ~2e-3 and features to a few tenths of a
//! percent of their scale.
#![cfg(feature = "emu")]

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{assert_close, fit_on_cpu, fixture, max_abs, max_abs_diff};
use uqengine::io::npy;
use uqengine::io::scores::read_csv;

fn uq(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_uqengine"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "uqengine {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn emulated_cuda_pipeline_matches_cpu_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("unet/gray_cond_multihead_f16/model");
    let clip = fixture("clip/gray_gelu_f16/model");
    // A posterior from a handful of training images (CPU; the fit is not under test here).
    let data = tmp.path().join("data");
    for i in 0..4u32 {
        std::fs::create_dir_all(data.join(format!("{i}"))).unwrap();
        common::write_gray_png(&data.join(format!("{i}/{i}.png")), 8, 8, |x, y| {
            ((x * 31 + y * 17 + i * 50) % 256) as u8
        });
    }
    let post = tmp.path().join("post.safetensors");
    fit_on_cpu(&model, &data, &post);
    let mut runs = Vec::new();
    for device in ["cpu", "emu"] {
        let out = tmp.path().join(device);
        uq(&[
            "sample",
            "--model",
            s(&model),
            "--posterior",
            s(&post),
            "--extractor",
            s(&clip),
            "--num",
            "2",
            "--steps",
            "2",
            "--draws",
            "2",
            "--save-members",
            "--out",
            s(&out),
            "--device",
            device,
        ]);
        runs.push(out);
    }
    let samples: Vec<Vec<f32>> = runs
        .iter()
        .map(|r| npy::read(&r.join("samples.npy")).unwrap().to_f32())
        .collect();
    println!(
        "samples: max abs diff {:.3e}",
        max_abs_diff(&samples[0], &samples[1])
    );
    assert_close("samples (emu vs cpu)", &samples[1], &samples[0], 5e-3, 5e-3);
    let feats: Vec<Vec<f32>> = runs
        .iter()
        .map(|r| npy::read(&r.join("features.npy")).unwrap().to_f32())
        .collect();
    let scale = max_abs(&feats[0]);
    println!(
        "features: max abs diff {:.3e} (scale {scale:.3e})",
        max_abs_diff(&feats[0], &feats[1])
    );
    assert_close(
        "features (emu vs cpu)",
        &feats[1],
        &feats[0],
        1e-2 * scale,
        0.0,
    );
    let rows: Vec<_> = runs
        .iter()
        .map(|r| read_csv(&r.join("scores.csv")).unwrap())
        .collect();
    assert_eq!(rows[0].len(), 2);
    assert!(rows[1].iter().all(|r| r.uncertainty.is_finite()));
    for (a, b) in rows[0].iter().zip(&rows[1]) {
        assert_eq!((a.index, a.class), (b.index, b.class));
    }
}

/// The built-in demo model, 8 samples of 8 DDIM steps (the MAP trajectories), on the emulated
/// device against the CPU: every pixel within 2e-2. With bf16 activations and weights the worst
/// pixel was 0.166 off; f16 activations with f32 edge weights give ~9e-3.
#[test]
fn the_demo_samples_on_emu_are_within_2e_2_of_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for device in ["cpu", "emu"] {
        let out = tmp.path().join(device);
        uq(&[
            "sample",
            "--num",
            "8",
            "--steps",
            "8",
            "--no-uncertainty",
            "--out",
            s(&out),
            "--device",
            device,
        ]);
        runs.push(npy::read(&out.join("samples.npy")).unwrap().to_f32());
    }
    let diff = max_abs_diff(&runs[0], &runs[1]);
    println!("demo samples, emu vs cpu: max abs diff {diff:.3e}");
    assert!(
        diff <= 2e-2,
        "demo samples: emu differs from the CPU by {diff}"
    );
}

/// f16 activations: a starting noise far beyond what a model sees (1e5) stays finite on the CPU
/// (f32) but overflows f16 on the device, and the run stops with the non-finite error naming the
/// sample instead of writing it; `--on-non-finite mark` keeps the run and marks it.
#[test]
fn an_activation_beyond_the_f16_range_is_a_non_finite_error_naming_the_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let noise = tmp.path().join("noise.npy");
    let z: Vec<f32> = (0..2 * 32 * 32)
        .map(|i| {
            let v = ((i * 37 % 101) as f32 / 50.0) - 1.0;
            if i >= 32 * 32 {
                v * 1e5
            } else {
                v
            }
        })
        .collect();
    npy::write_f32(&noise, &[2, 1, 32, 32], &z).unwrap();
    let run = |device: &str, extra: &[&str]| {
        let out = tmp.path().join(format!("{device}{}", extra.len()));
        let mut args = vec![
            "sample",
            "--num",
            "2",
            "--steps",
            "2",
            "--no-uncertainty",
            "--noise",
            s(&noise),
            "--device",
            device,
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        let o = Command::new(env!("CARGO_BIN_EXE_uqengine"))
            .args(&args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
            out,
        )
    };
    let (ok, log, _) = run("cpu", &[]);
    assert!(ok, "the CPU computes in f32: {log}");
    let (ok, log, out) = run("emu", &[]);
    assert!(
        !ok && log.contains("sample 1") && log.contains("not finite"),
        "{log}"
    );
    assert!(!out.join("samples.npy").exists());
    let (ok, log, out) = run("emu", &["--on-non-finite", "mark"]);
    assert!(ok, "{log}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["invalid_samples"],
        serde_json::json!([1]),
        "{summary}"
    );
}
