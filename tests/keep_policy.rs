//! The keep policies: per-class quotas by largest remainders (hand-worked apportionments and a
//! brute-force selection as references), and `uqengine sample --keep N --keep-policy ...` end to
//! end: keep.txt, keep/, the score table's kept column and summary.json agree with the policy
//! recomputed from the written scores.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{arg as s, fit_on_cpu, fixture, random_image_folder, uqengine_cli as uq};
use uqengine::io::scores::{read_csv, rows_from_scores, ScoreRow};
use uqengine::keep::{class_quotas, select, KeepPolicy};

fn counts(pairs: &[(usize, usize)]) -> BTreeMap<usize, usize> {
    pairs.iter().copied().collect()
}

#[test]
fn quotas_are_largest_remainder_apportionments() {
    // 5/3/2 samples, keep 7: exact shares 3.5, 2.1, 1.4 -> floors 3, 2, 1 (6), the one left goes
    // to the largest remainder (class 0).
    let q = class_quotas(&counts(&[(0, 5), (1, 3), (2, 2)]), 7);
    assert_eq!(q, counts(&[(0, 4), (1, 2), (2, 1)]));
    // 10 balanced classes of 120, keep 1000: 100 each.
    let balanced: Vec<(usize, usize)> = (0..10).map(|c| (c, 120)).collect();
    let q = class_quotas(&counts(&balanced), 1000);
    assert!(q.values().all(|&n| n == 100), "{q:?}");
    // Equal remainders: 3 classes of 1, keep 2 -> the smaller classes first.
    assert_eq!(
        class_quotas(&counts(&[(4, 1), (7, 1), (9, 1)]), 2),
        counts(&[(4, 1), (7, 1), (9, 0)])
    );
    // Keeping more than the run keeps everything; keeping none keeps none.
    assert_eq!(
        class_quotas(&counts(&[(0, 2), (1, 3)]), 99),
        counts(&[(0, 2), (1, 3)])
    );
    assert_eq!(
        class_quotas(&counts(&[(0, 2), (1, 3)]), 0),
        counts(&[(0, 0), (1, 0)])
    );
}

#[test]
fn quotas_sum_to_n_and_stay_within_one_of_the_exact_share() {
    let mut state = 99u64;
    let mut next = |m: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    for _ in 0..200 {
        let classes = 1 + next(12) as usize;
        let c: BTreeMap<usize, usize> = (0..classes)
            .map(|k| (k * 3, 1 + next(40) as usize))
            .collect();
        let total: usize = c.values().sum();
        let n = next(total as u64 + 1) as usize;
        let q = class_quotas(&c, n);
        assert_eq!(q.values().sum::<usize>(), n, "{c:?} keep {n}: {q:?}");
        for (k, &count) in &c {
            let share = n as f64 * count as f64 / total as f64;
            assert!(
                q[k] as f64 >= share.floor() && q[k] as f64 <= share.ceil(),
                "{c:?} keep {n}: {q:?}"
            );
            assert!(q[k] <= count);
        }
    }
}

/// Rows of `n` samples with classes `i % classes` and pseudo-random scores.
fn rows(n: usize, classes: usize) -> Vec<ScoreRow> {
    let indices: Vec<usize> = (0..n).map(|i| 100 + i).collect();
    let cls: Vec<usize> = (0..n).map(|i| (i * 7 + i / 3) % classes).collect();
    let scores: Vec<f64> = (0..n)
        .map(|i| ((i * 7919) % 101) as f64 - 50.0 + (i as f64) * 1e-3)
        .collect();
    rows_from_scores(&indices, 0, Some(&cls), &scores).unwrap()
}

#[test]
fn per_class_keeps_each_class_most_certain_in_proportion() {
    let r = rows(53, 4);
    for n in [0, 1, 10, 26, 52, 53, 60] {
        let kept = select(&r, n, KeepPolicy::PerClass).unwrap();
        // Reference: per class, the rows sorted by uncertainty, the first quota of them.
        let mut by_class: BTreeMap<usize, Vec<&ScoreRow>> = BTreeMap::new();
        for row in &r {
            by_class.entry(row.class.unwrap()).or_default().push(row);
        }
        let q = class_quotas(&by_class.iter().map(|(&c, v)| (c, v.len())).collect(), n);
        let mut want: Vec<&ScoreRow> = Vec::new();
        for (c, mut v) in by_class {
            v.sort_by(|a, b| a.uncertainty.partial_cmp(&b.uncertainty).unwrap());
            want.extend(v.into_iter().take(q[&c]));
        }
        want.sort_by(|a, b| a.uncertainty.partial_cmp(&b.uncertainty).unwrap());
        let want: Vec<usize> = want.iter().map(|r| r.index).collect();
        assert_eq!(kept, want, "keep {n}");
        assert_eq!(kept.len(), n.min(r.len()));
    }
}

#[test]
fn global_keeps_the_most_certain_of_the_run() {
    let r = rows(30, 3);
    let mut by_score = r.clone();
    by_score.sort_by(|a, b| a.uncertainty.partial_cmp(&b.uncertainty).unwrap());
    let want: Vec<usize> = by_score.iter().take(11).map(|r| r.index).collect();
    assert_eq!(select(&r, 11, KeepPolicy::Global).unwrap(), want);
}

#[test]
fn per_class_without_classes_is_an_error_naming_the_way_out() {
    let r = rows_from_scores(&[0, 1, 2], 0, None, &[1.0, 2.0, 3.0]).unwrap();
    let e = select(&r, 2, KeepPolicy::PerClass).unwrap_err().to_string();
    assert!(
        e.contains("per-class") && e.contains("global") && e.contains("sample 0"),
        "{e}"
    );
    assert_eq!(select(&r, 2, KeepPolicy::Global).unwrap(), vec![0, 1]);
    assert!(KeepPolicy::parse("classwise")
        .unwrap_err()
        .to_string()
        .contains("classwise"));
    assert_eq!(
        KeepPolicy::parse("per-class").unwrap(),
        KeepPolicy::PerClass
    );
    assert_eq!(KeepPolicy::default_for(true), KeepPolicy::PerClass);
    assert_eq!(KeepPolicy::default_for(false), KeepPolicy::Global);
}

// ---------------------------------------------------------------------------------------------
// End to end

#[test]
fn sample_keep_follows_the_policy_in_every_output() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("unet/gray_cond_multihead_f16/model");
    let clip = fixture("clip/gray_gelu_f16/model");
    let post = tmp.path().join("post.safetensors");
    let data = random_image_folder(tmp.path(), 20, 8, 777);
    fit_on_cpu(&model, &data, &post);
    let run = |policy: Option<&str>, out: &Path| {
        let mut args = vec![
            "sample",
            "--model",
            s(&model),
            "--posterior",
            s(&post),
            "--extractor",
            s(&clip),
            "--num",
            "9",
            "--steps",
            "3",
            "--draws",
            "2",
            "--classes",
            "random",
            "--keep",
            "4",
            "--out",
            s(out),
            "--device",
            "cpu",
        ];
        if let Some(p) = policy {
            args.extend(["--keep-policy", p]);
        }
        let (ok, log) = uq(&args);
        assert!(ok, "sample {policy:?}: {log}");
    };
    for (policy, name) in [
        (None, "per-class"),
        (Some("per-class"), "per-class"),
        (Some("global"), "global"),
    ] {
        let out = tmp.path().join(format!("run-{policy:?}"));
        run(policy, &out);
        let rows = read_csv(&out.join("scores.csv")).unwrap();
        let want = select(&rows, 4, KeepPolicy::parse(name).unwrap()).unwrap();
        let listed: Vec<usize> = std::fs::read_to_string(out.join("keep.txt"))
            .unwrap()
            .lines()
            .map(|l| l.trim_end_matches(".png").parse().unwrap())
            .collect();
        assert_eq!(listed, want, "{policy:?}: keep.txt");
        let marked: Vec<usize> = rows
            .iter()
            .filter(|r| r.kept == Some(true))
            .map(|r| r.index)
            .collect();
        let mut sorted_want = want.clone();
        sorted_want.sort();
        assert_eq!(marked, sorted_want, "{policy:?}: kept column");
        assert!(rows.iter().all(|r| r.kept.is_some()));
        let mut in_folder: Vec<usize> = std::fs::read_dir(out.join("keep"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .trim_end_matches(".png")
                    .parse()
                    .unwrap()
            })
            .collect();
        in_folder.sort();
        assert_eq!(in_folder, sorted_want, "{policy:?}: keep/");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let u = &summary["uncertainty"];
        assert_eq!(u["keep_policy"], name, "{policy:?}");
        let per_class_total: u64 = u["kept_per_class"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(per_class_total, 4);
    }

    let out = tmp.path().join("bad");
    for (args, needle) in [
        (
            vec!["--keep", "4", "--keep-policy", "classwise"],
            "classwise",
        ),
        (vec!["--keep-policy", "global"], "--keep"),
    ] {
        let mut all = vec![
            "sample",
            "--model",
            s(&model),
            "--posterior",
            s(&post),
            "--extractor",
            s(&clip),
            "--num",
            "3",
            "--steps",
            "2",
            "--out",
            s(&out),
            "--device",
            "cpu",
        ];
        all.extend(args);
        let (ok, log) = uq(&all);
        assert!(!ok && log.contains(needle), "{log}");
        assert!(!out.exists(), "a refused run leaves no output");
    }
}
