//! Reliability: non-finite input never becomes a score (errors naming the sample and the input),
//! config values and arguments are validated before any work, a resume whose inputs changed is
//! refused naming what changed, one writer per output folder (a live lock refuses a second
//! writer, a stale one is taken over), a sample run's unfinished folder is not deleted by
//! another job, and an I/O error states its cause once.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{arg, fixture, random_image_folder, uqengine_cli};

const MODEL: &str = "unet/gray_cond_multihead_f16/model";

fn fit(tmp: &Path, name: &str, seed: u64) -> std::path::PathBuf {
    let data = random_image_folder(&tmp.join(name), 10, 8, seed);
    let post = tmp.join(format!("{name}.safetensors"));
    let (ok, log) = uqengine_cli(&[
        "fit",
        "--model",
        arg(&fixture(MODEL)),
        "--data",
        arg(&data),
        "--out",
        arg(&post),
        "--device",
        "cpu",
    ]);
    assert!(ok, "fit: {log}");
    post
}

#[test]
fn non_finite_noise_is_an_error_naming_the_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let noise = tmp.path().join("noise.npy");
    let mut z = vec![0.1f32; 3 * 8 * 8];
    z[64 + 5] = f32::NAN;
    uqengine::io::npy::write_f32(&noise, &[3, 1, 8, 8], &z).unwrap();
    let out = tmp.path().join("out");
    let (ok, log) = uqengine_cli(&[
        "sample",
        "--model",
        arg(&fixture(MODEL)),
        "--num",
        "3",
        "--steps",
        "2",
        "--noise",
        arg(&noise),
        "--device",
        "cpu",
        "--out",
        arg(&out),
    ]);
    assert!(
        !ok && log.contains("noise.npy") && log.contains("sample 1") && log.contains("not finite"),
        "{log}"
    );
    assert!(!out.exists() && !tmp.path().join("out.partial").exists());
}

/// A sample the model turns into NaN (finite noise far beyond float range inside the network):
/// an error naming it by default; with `--on-non-finite mark` the run finishes, the sample's
/// score is `nan`, it ranks last and is never kept, and summary.json lists it.
#[test]
fn non_finite_samples_fail_the_run_or_are_marked_invalid_and_never_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let post = fit(tmp.path(), "data", 3);
    let noise = tmp.path().join("noise.npy");
    let mut z: Vec<f32> = (0..4 * 64)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    z[64..128].fill(3.0e38);
    uqengine::io::npy::write_f32(&noise, &[4, 1, 8, 8], &z).unwrap();
    let (model, clip) = (fixture(MODEL), fixture("clip/gray_gelu_f16/model"));
    let run = |out: &Path, extra: &[&str]| {
        let base = [
            "sample",
            "--model",
            arg(&model),
            "--posterior",
            arg(&post),
            "--extractor",
            arg(&clip),
            "--num",
            "4",
            "--steps",
            "3",
            "--draws",
            "2",
            "--noise",
            arg(&noise),
            "--keep",
            "3",
            "--device",
            "cpu",
            "--out",
            arg(out),
        ];
        uqengine_cli(&[&base[..], extra].concat())
    };
    let failed = tmp.path().join("failed");
    let (ok, log) = run(&failed, &[]);
    assert!(
        !ok && log.contains("sample 1")
            && log.contains("not finite")
            && log.contains("--on-non-finite mark"),
        "{log}"
    );
    assert!(!failed.exists());

    let out = tmp.path().join("marked");
    let (ok, log) = run(&out, &["--on-non-finite", "mark"]);
    assert!(
        ok && log.contains("sample 1") && log.contains("marked invalid"),
        "{log}"
    );
    let rows = uqengine::io::scores::read_csv(&out.join("scores.csv")).unwrap();
    assert!(rows[1].uncertainty.is_nan(), "{:?}", rows[1]);
    assert_eq!(rows[1].rank, 3, "an invalid sample ranks last");
    assert_eq!(rows[1].kept, Some(false));
    assert!(rows
        .iter()
        .filter(|r| r.index != 1)
        .all(|r| r.uncertainty.is_finite() && r.kept == Some(true)));
    let keep = std::fs::read_to_string(out.join("keep.txt")).unwrap();
    assert!(
        !keep.contains("00001.png") && keep.lines().count() == 3,
        "{keep}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["on_non_finite"], "mark");
    assert_eq!(summary["invalid_samples"], serde_json::json!([1]));
    assert_eq!(
        summary["uncertainty"]["invalid_samples"],
        serde_json::json!([1])
    );
    assert!(summary["uncertainty"]["uncertainty_max"]
        .as_f64()
        .unwrap()
        .is_finite());

    let (ok, log) = run(&tmp.path().join("bad"), &["--on-non-finite", "skip"]);
    assert!(
        !ok && log.contains("--on-non-finite skip") && log.contains("error or mark"),
        "{log}"
    );
}

#[test]
fn config_values_that_cannot_work_are_errors_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("norm_eps", serde_json::json!(-1e-5)),
        ("sample_size", serde_json::json!(0)),
    ] {
        let dir = tmp.path().join(key);
        std::fs::create_dir_all(&dir).unwrap();
        let weights = "diffusion_pytorch_model.safetensors";
        std::fs::copy(fixture(MODEL).join(weights), dir.join(weights)).unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(MODEL).join("config.json")).unwrap(),
        )
        .unwrap();
        cfg[key] = value;
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let (ok, log) = uqengine_cli(&["info", "--model", arg(&dir)]);
        assert!(
            !ok && log.contains(key) && log.contains("config.json"),
            "{key}: {log}"
        );
    }
}

#[test]
fn arguments_are_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let t0 = Instant::now();
    let (ok, log) = uqengine_cli(&[
        "sample",
        "--num",
        "2",
        "--steps",
        "2",
        "--sigma2",
        "0",
        "--device",
        "cpu",
        "--out",
        arg(&out),
    ]);
    assert!(!ok && log.contains("--sigma2 0"), "{log}");
    assert!(!out.exists() && t0.elapsed() < Duration::from_secs(30));
    let (ok, log) = uqengine_cli(&[
        "sample",
        "--no-uncertainty",
        "--num",
        "1",
        "--steps",
        "1",
        "--threads",
        "100000",
        "--device",
        "cpu",
        "--out",
        arg(&out),
    ]);
    assert!(
        ok && log.contains("--threads 100000") && log.contains("cores"),
        "{log}"
    );
    // An I/O error names the file and says its cause once.
    let (ok, log) = uqengine_cli(&[
        "sample",
        "--num",
        "1",
        "--noise",
        arg(&tmp.path().join("none.npy")),
        "--device",
        "cpu",
        "--out",
        arg(&tmp.path().join("o")),
    ]);
    assert!(
        !ok && log.contains("none.npy") && log.matches("os error 2").count() == 1,
        "{log}"
    );
}

/// Start a sample run of `num` samples and kill it once `marker` (a file of its unfinished
/// folder) exists.
fn interrupted_run(out: &Path, post: &Path, num: &str, marker: &str) {
    let model = fixture(MODEL);
    let clip = fixture("clip/gray_gelu_f16/model");
    let args = vec![
        "sample",
        "--model",
        arg(&model),
        "--posterior",
        arg(post),
        "--extractor",
        arg(&clip),
        "--num",
        num,
        "--batch",
        "2",
        "--steps",
        "4",
        "--draws",
        "2",
        "--device",
        "cpu",
        "--out",
        arg(out),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_uqengine"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut part = out.as_os_str().to_owned();
    part.push(".partial");
    let chunk = Path::new(&part).join(marker);
    let t0 = Instant::now();
    while !chunk.exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no batch finished");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn resume_refuses_changed_inputs_and_takes_over_a_stale_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let post = fit(tmp.path(), "a", 1);
    let other = fit(tmp.path(), "b", 2);
    let out = tmp.path().join("run");
    interrupted_run(&out, &post, "600", "chunks/000000.npy");
    // SIGKILL left the lock behind; its process is gone.
    assert!(tmp.path().join("run.lock").exists());
    // The posterior file is replaced between interruption and resume.
    std::fs::copy(&other, &post).unwrap();
    let model = fixture(MODEL);
    let clip = fixture("clip/gray_gelu_f16/model");
    let resume = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--model",
            arg(&model),
            "--posterior",
            arg(&post),
            "--extractor",
            arg(&clip),
            "--num",
            "600",
            "--batch",
            "2",
            "--steps",
            "4",
            "--draws",
            "2",
            "--device",
            "cpu",
            "--out",
            arg(&out),
        ];
        args.extend_from_slice(extra);
        uqengine_cli(&args)
    };
    let (ok, log) = resume(&[]);
    assert!(
        !ok && log.contains("posterior_fingerprint") && log.contains("unfinished"),
        "{log}"
    );
    assert!(
        tmp.path().join("run.partial/chunks/000000.npy").exists(),
        "the unfinished run is kept"
    );
    // Another kind of job does not delete it either.
    let (ok, log) = uqengine_cli(&[
        "score",
        "--members",
        arg(&tmp.path().join("nowhere")),
        "--extractor",
        arg(&clip),
        "--out",
        arg(&out),
    ]);
    assert!(!ok, "{log}");
    let members = tmp.path().join("members");
    for m in 0..2 {
        std::fs::create_dir_all(members.join(format!("{m}/imgs"))).unwrap();
        common::write_gray_png(&members.join(format!("{m}/imgs/00000.png")), 8, 8, |_, _| 0);
    }
    let (ok, log) = uqengine_cli(&[
        "score",
        "--members",
        arg(&members),
        "--extractor",
        arg(&clip),
        "--out",
        arg(&out),
    ]);
    assert!(!ok && log.contains("unfinished sample run"), "{log}");
    assert!(tmp.path().join("run.partial/chunks/000000.npy").exists());
}

#[test]
fn a_second_writer_is_refused_while_the_first_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // A live process (this test) holds the lock.
    std::fs::write(tmp.path().join("out.lock"), std::process::id().to_string()).unwrap();
    let (ok, log) = uqengine_cli(&[
        "sample",
        "--no-uncertainty",
        "--num",
        "1",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--out",
        arg(&out),
    ]);
    assert!(
        !ok && log.contains("another uqengine process")
            && log.contains(&std::process::id().to_string()),
        "{log}"
    );
    assert!(!out.exists() && !tmp.path().join("out.partial").exists());
    assert!(
        tmp.path().join("out.lock").exists(),
        "the other writer's lock is not touched"
    );
    std::fs::remove_file(tmp.path().join("out.lock")).unwrap();
    let (ok, log) = uqengine_cli(&[
        "sample",
        "--no-uncertainty",
        "--num",
        "1",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--out",
        arg(&out),
    ]);
    assert!(ok, "{log}");
    assert!(
        !tmp.path().join("out.lock").exists(),
        "the lock is released"
    );
}

#[test]
fn a_damaged_batch_is_computed_again_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let post = fit(tmp.path(), "a", 1);
    let whole = tmp.path().join("whole");
    let out = tmp.path().join("run");
    let model = fixture(MODEL);
    let clip = fixture("clip/gray_gelu_f16/model");
    let run = |out: &Path| {
        uqengine_cli(&[
            "sample",
            "--model",
            arg(&model),
            "--posterior",
            arg(&post),
            "--extractor",
            arg(&clip),
            "--num",
            "200",
            "--batch",
            "2",
            "--steps",
            "4",
            "--draws",
            "2",
            "--device",
            "cpu",
            "--out",
            arg(out),
        ])
    };
    let (ok, log) = run(&whole);
    assert!(ok, "{log}");
    interrupted_run(&out, &post, "200", "chunks/000002.done.json");
    // Damage the first finished batch: truncate one of its images.
    let img = tmp.path().join("run.partial/images/00001.png");
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&img, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, log) = run(&out);
    assert!(
        ok && log.contains("images/00001.png is damaged or missing") && log.contains("resuming"),
        "{log}"
    );
    for f in ["samples.npy", "scores.csv", "images/00001.png"] {
        assert!(
            std::fs::read(whole.join(f)).unwrap() == std::fs::read(out.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

#[test]
fn an_inconsistent_safetensors_entry_is_named_and_a_huge_num_is_refused() {
    let header = br#"{"good":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"conv.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[4,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    let Err(e) = uqengine::models::weights::Weights::from_bytes(&bytes, Path::new("m.safetensors"))
    else {
        panic!("an inconsistent entry was accepted");
    };
    let e = e.to_string();
    assert!(
        e.contains("m.safetensors") && e.contains("conv.weight"),
        "{e}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (ok, log) = uqengine_cli(&[
        "sample",
        "--num",
        "200000000000",
        "--device",
        "cpu",
        "--out",
        arg(&out),
    ]);
    assert!(!ok && log.contains("--num 200000000000"), "{log}");
    assert!(!out.exists());
}
