//! `uqengine sample` end to end on fixture models: the written `samples.npy` matches diffusers'
//! 10-step DDIM run from the same noise (`tools/make_unet_fixtures.py`), images are written, and
//! a sample's result does not depend on the batch size.

use crate::common;

use std::process::Command;

use common::{assert_close, fixture, npy};

fn run(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_uqengine"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "uqengine {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sample_from_given_noise_matches_diffusers_ddim() {
    for (name, class) in [
        ("cifar_like_old_names_f32", None),
        ("gray_cond_multihead_f16", Some("7,2")),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let model = fixture(&format!("unet/{name}/model"));
        let noise = fixture(&format!("unet/{name}/ddim_noise.npy"));
        let mut args = vec![
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--num",
            "2",
            "--steps",
            "10",
            "--noise",
            noise.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        if let Some(c) = class {
            args.extend(["--class", c]);
        }
        run(&args);
        let got = uqengine::io::npy::read(&out.join("samples.npy")).unwrap();
        let want = npy(&format!("unet/{name}/ddim_out.npy"));
        assert_eq!(got.shape, want.shape);
        assert_close(name, &got.to_f32(), &want.to_f32(), 1e-3, 0.0);
        for i in 0..2 {
            let (_, h, w, _) = common::read_image(&out.join(format!("images/{i:05}.png")));
            assert_eq!((w, h), (want.shape[3], want.shape[2]));
        }
        assert!(out.join("summary.json").exists());
        assert!(!tmp.path().join("out.partial").exists());
    }
}

#[test]
fn result_does_not_depend_on_batch_size() {
    let model = fixture("unet/gray_cond_multihead_f16/model");
    let tmp = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for batch in ["1", "3"] {
        let out = tmp.path().join(format!("b{batch}"));
        run(&[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--num",
            "5",
            "--steps",
            "4",
            "--seed",
            "11",
            "--batch",
            batch,
            "--sampler",
            "ddpm",
            "--classes",
            "random",
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        results.push(
            uqengine::io::npy::read(&out.join("samples.npy"))
                .unwrap()
                .to_f32(),
        );
    }
    assert_close("batch 1 vs 3", &results[0], &results[1], 1e-5, 1e-5);
}

#[test]
fn existing_output_is_not_overwritten_without_flag() {
    let model = fixture("unet/gray_cond_multihead_f16/model");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "finished work").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_uqengine"))
        .args([
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--num",
            "1",
            "--steps",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--overwrite"));
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "finished work"
    );
}

/// A batch split into several passes (as when GPU memory is short) gives the same samples as
/// one pass; the planner splits only when the budget requires it.
#[test]
fn split_passes_give_the_same_samples() {
    use std::sync::Arc;
    use uqengine::backend::cpu::CpuBackend;
    use uqengine::job::{plan_pass, SampleJob};
    use uqengine::pipeline::ClassChoice;
    use uqengine::sampler::SamplerKind;
    assert_eq!(plan_pass(None, 1000, 6, 16), 16);
    assert_eq!(plan_pass(Some(10 * 6 * 1000 * 10 / 8), 1000, 6, 16), 10);
    assert_eq!(plan_pass(Some(10), 1000, 6, 16), 1);
    let tmp = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for pass in [None, Some(2)] {
        let dir = tmp.path().join(format!("{pass:?}"));
        let job = SampleJob {
            model_dir: fixture("unet/gray_cond_multihead_f16/model"),
            out_dir: dir.clone(),
            num: 5,
            steps: 3,
            seed: 4,
            batch: 5,
            classes: ClassChoice::Balanced,
            noise_file: None,
            sampler: SamplerKind::Ddpm,
            scheduler_overrides: vec![],
            overwrite: false,
            uncertainty: None,
            max_samples_per_pass: pass,
            shard: None,
            on_non_finite: Default::default(),
        };
        job.run(Arc::new(CpuBackend::new()), &mut |_| {}).unwrap();
        out.push(
            uqengine::io::npy::read(&dir.join("samples.npy"))
                .unwrap()
                .to_f32(),
        );
    }
    assert_close("one pass vs passes of 2", &out[1], &out[0], 1e-5, 1e-5);
}
