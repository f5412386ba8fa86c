//! `sample --shard i/n` and `uqengine merge`: the merged run equals the run made in one piece,
//! byte for byte in samples.npy, scores.csv/json, keep.txt and every image; shards of different
//! settings, missing shards and bad shard specs are refused, naming the problem.

use crate::common;

use std::path::Path;

use common::{arg, uqengine_cli};

fn sample(out: &Path, extra: &[&str]) {
    let mut args = vec![
        "sample",
        "--num",
        "10",
        "--batch",
        "3",
        "--steps",
        "3",
        "--draws",
        "2",
        "--seed",
        "4",
        "--device",
        "cpu",
        "--out",
        arg(out),
    ];
    args.extend_from_slice(extra);
    let (ok, log) = uqengine_cli(&args);
    assert!(ok, "{args:?}: {log}");
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn merged_shards_equal_the_whole_run() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    sample(&whole, &["--keep", "4"]);
    let shard_dirs: Vec<_> = (0..3)
        .map(|i| tmp.path().join(format!("shard{i}")))
        .collect();
    for (i, d) in shard_dirs.iter().enumerate() {
        sample(d, &["--shard", &format!("{i}/3")]);
    }
    // 4 batches of 3 over 3 shards: batches [0], [1], [2, 3] -> samples 0-2, 3-5, 6-9.
    let held: Vec<usize> = shard_dirs
        .iter()
        .map(|d| std::fs::read_dir(d.join("images")).unwrap().count())
        .collect();
    assert_eq!(held, vec![3, 3, 4]);
    assert!(
        !shard_dirs[0].join("scores.csv").exists(),
        "a shard is not scored alone"
    );
    let merged = tmp.path().join("merged");
    // Shards in any order.
    let (ok, log) = uqengine_cli(&[
        "merge",
        arg(&shard_dirs[2]),
        arg(&shard_dirs[0]),
        arg(&shard_dirs[1]),
        "--keep",
        "4",
        "--out",
        arg(&merged),
    ]);
    assert!(ok, "{log}");
    for f in [
        "samples.npy",
        "scores.csv",
        "scores.json",
        "keep.txt",
        "contact_sheet.png",
    ] {
        assert!(
            bytes(&whole.join(f)) == bytes(&merged.join(f)),
            "{f} differs"
        );
    }
    for i in 0..10 {
        let name = format!("images/{i:05}.png");
        assert!(
            bytes(&whole.join(&name)) == bytes(&merged.join(&name)),
            "{name}"
        );
    }
    assert_eq!(std::fs::read_dir(merged.join("keep")).unwrap().count(), 4);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("summary.json")).unwrap())
            .unwrap();
    assert!(summary["shard"].is_null() && summary["merged_from"].as_array().unwrap().len() == 3);
    assert_eq!(summary["uncertainty"]["keep_policy"], "per-class");
}

#[test]
fn shards_that_do_not_form_one_run_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let c = tmp.path().join("c");
    sample(&a, &["--shard", "0/2"]);
    sample(&b, &["--shard", "1/2", "--sigma2", "0.01"]);
    sample(&c, &["--shard", "1/2"]);
    let out = tmp.path().join("out");
    for (shards, needle) in [
        (vec![&a, &b], "sigma2"),
        (vec![&a], "1/2 is missing"),
        (vec![&a, &a], "1/2 is missing"),
    ] {
        let mut args = vec!["merge", "--out", arg(&out)];
        args.extend(shards.iter().map(|p| arg(p)));
        let (ok, log) = uqengine_cli(&args);
        assert!(!ok && log.contains(needle), "{args:?}: {log}");
        assert!(!out.exists());
    }
    let (ok, log) = uqengine_cli(&["merge", "--out", arg(&out), arg(&a), arg(&c)]);
    assert!(ok, "{log}");
    // A damaged shard (samples.npy of another shape, features of another dimension) is an error
    // naming the file, never a panic or a garbled merge.
    let damaged = tmp.path().join("damaged");
    copy_dir(&c, &damaged);
    let n = uqengine::io::npy::read(&c.join("samples.npy"))
        .unwrap()
        .shape[0];
    let samples = damaged.join("samples.npy");
    for (shape, len) in [
        (vec![n], n),
        (vec![n, 1, 4, 8], n * 32),
        (vec![n, 3, 8, 8], n * 192),
    ] {
        uqengine::io::npy::write_f32(&samples, &shape, &vec![0.0; len]).unwrap();
        let (ok, log) = uqengine_cli(&[
            "merge",
            "--out",
            arg(&tmp.path().join("m")),
            arg(&a),
            arg(&damaged),
        ]);
        assert!(
            !ok && log.contains("samples.npy has shape"),
            "{shape:?}: {log}"
        );
    }
    std::fs::copy(c.join("samples.npy"), &samples).unwrap();
    // Without --save-members a shard keeps its scores, not its features.
    assert!(c.join("scores.npy").exists() && !c.join("features.npy").exists());
    uqengine::io::npy::write_f32(&damaged.join("scores.npy"), &[n + 1], &vec![0.0; n + 1]).unwrap();
    let (ok, log) = uqengine_cli(&[
        "merge",
        "--out",
        arg(&tmp.path().join("m")),
        arg(&a),
        arg(&damaged),
    ]);
    assert!(!ok && log.contains("scores.npy has shape"), "{log}");
    assert!(!tmp.path().join("m").exists());
    // A run with different steps cannot join.
    let d = tmp.path().join("d");
    let (ok, log) = uqengine_cli(&[
        "sample",
        "--num",
        "10",
        "--batch",
        "3",
        "--steps",
        "2",
        "--draws",
        "2",
        "--seed",
        "4",
        "--device",
        "cpu",
        "--shard",
        "1/2",
        "--out",
        arg(&d),
    ]);
    assert!(ok, "{log}");
    let (ok, log) = uqengine_cli(&[
        "merge",
        "--out",
        arg(&tmp.path().join("o2")),
        arg(&a),
        arg(&d),
    ]);
    assert!(!ok && log.contains("settings.steps"), "{log}");

    let bad = tmp.path().join("bad");
    for (spec, needle) in [
        ("2/2", "--shard 2/2"),
        ("x", "i/n"),
        ("0/5", "only 4 batches"),
    ] {
        let (ok, log) = uqengine_cli(&[
            "sample",
            "--num",
            "10",
            "--batch",
            "3",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--shard",
            spec,
            "--out",
            arg(&bad),
        ]);
        assert!(!ok && log.contains(needle), "{spec}: {log}");
    }
    let (ok, log) = uqengine_cli(&[
        "sample",
        "--num",
        "10",
        "--batch",
        "3",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--shard",
        "0/2",
        "--keep",
        "3",
        "--out",
        arg(&bad),
    ]);
    assert!(!ok && log.contains("merge"), "{log}");
    assert!(!bad.exists());
    let (ok, log) = uqengine_cli(&[
        "merge",
        "--out",
        arg(&bad),
        arg(&tmp.path().join("nowhere")),
    ]);
    assert!(!ok && log.contains("summary.json"), "{log}");
}

/// The one-machine recipe of docs/cluster.md: xargs starts the shards as concurrent processes,
/// then merge; the result equals the whole run.
#[test]
fn concurrent_shard_processes_by_xargs_merge_into_the_whole_run() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    sample(&whole, &[]);
    let bin = env!("CARGO_BIN_EXE_uqengine");
    let script = format!(
        "seq 0 2 | xargs -P 3 -I{{}} {bin} sample --num 10 --batch 3 --steps 3 --draws 2 --seed 4 --device cpu \
         --shard {{}}/3 --out {}/s{{}}",
        tmp.path().display()
    );
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let merged = tmp.path().join("merged");
    let shards: Vec<_> = (0..3).map(|i| tmp.path().join(format!("s{i}"))).collect();
    let mut args = vec!["merge", "--out", arg(&merged)];
    args.extend(shards.iter().map(|p| arg(p)));
    let (ok, log) = uqengine_cli(&args);
    assert!(ok, "{log}");
    for f in ["samples.npy", "scores.csv", "scores.json"] {
        assert!(
            bytes(&whole.join(f)) == bytes(&merged.join(f)),
            "{f} differs"
        );
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
