//! The report stage: from the member features of a whole set to its score table
//! (`scores.csv`, `scores.json`), the contact sheet sorted by uncertainty, the kept set
//! (`keep.txt`, `keep/`) and the summary. Shared by every job that scores a set.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::run_dir::{io, pretty, RunDir};
use crate::error::Result;
use crate::io::fs::write_atomic;
use crate::io::{contact_sheet, npy, scores};
use crate::keep::{self, KeepPolicy};
use crate::uncertainty::{order_ascending, Estimator};

/// An 8-bit image: HWC bytes, height, width, channels.
pub(crate) type Thumb = (Vec<u8>, usize, usize, usize);

/// A scored set: what the report is made from.
pub(crate) struct ScoredSet<'a> {
    /// Sample indices (image names `NNNNN.png`).
    pub indices: &'a [usize],
    /// Seed of the run the samples belong to.
    pub seed: u64,
    /// Class of every sample, for class-conditional models.
    pub classes: Option<&'a [usize]>,
    /// The scores, or the member features to score.
    pub scores: SetScores<'a>,
    pub members: usize,
    pub dim: usize,
    /// The MAP image of every sample, for the contact sheet.
    pub thumbs: &'a [Thumb],
}

/// Where a set's scores come from.
pub(crate) enum SetScores<'a> {
    /// Member features `[n, members, dim]` (member 0 the MAP model), scored by the report's
    /// estimator.
    Features(&'a [f32]),
    /// Scores already computed (per batch, where the features were), with the features when
    /// they were kept.
    Computed {
        scores: &'a [f64],
        features: Option<&'a [f32]>,
    },
}

/// What to write besides the score table.
pub(crate) struct ReportOptions<'a> {
    pub estimator: &'a Estimator,
    /// Job-specific entries of the score table's `meta` (next to the estimator's parameters,
    /// `members` and `feature_dim`).
    pub meta: Value,
    /// List the `N` most certain samples (chosen by `keep_policy`) in `keep.txt`, mark them in
    /// the score table and copy their images from `images/` to `keep/`.
    pub keep: Option<usize>,
    pub keep_policy: KeepPolicy,
    /// Also write the features as `features.npy` `[n, members, dim]` (when the set has them).
    pub save_features: bool,
    /// A sample with a feature or score that is not finite is marked invalid (`nan` score,
    /// ranked last, never kept) instead of failing the report.
    pub mark_non_finite: bool,
}

/// The report's scores and what the summary says of them.
pub(crate) struct Report {
    /// Uncertainty per sample, in set order (lower = more certain).
    pub scores: Vec<f64>,
    /// The score table's `meta`.
    pub meta: Value,
    /// Kept samples per class (class-conditional runs with a kept set).
    pub kept_per_class: Option<BTreeMap<usize, usize>>,
    /// Samples marked invalid (sample indices), when the report marks them.
    pub invalid: Option<Vec<usize>>,
}

impl Report {
    /// The summary's entries for the scores: estimator and parameters, kept set, range.
    pub fn summary(&self, keep: Option<usize>, policy: KeepPolicy) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("score".into(), self.meta.clone());
        m.insert("keep".into(), json!(keep));
        m.insert("keep_policy".into(), json!(keep.map(|_| policy.as_str())));
        if let Some(per_class) = &self.kept_per_class {
            let per_class: Map<String, Value> = per_class
                .iter()
                .map(|(c, n)| (c.to_string(), json!(n)))
                .collect();
            m.insert("kept_per_class".into(), Value::Object(per_class));
        }
        if let Some(invalid) = &self.invalid {
            m.insert("invalid_samples".into(), json!(invalid));
        }
        m.insert(
            "uncertainty_min".into(),
            json!(self.scores.iter().cloned().fold(f64::INFINITY, f64::min)),
        );
        m.insert(
            "uncertainty_max".into(),
            json!(self
                .scores
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, f64::max)),
        );
        m
    }
}

/// Score `set` with the estimator and write the score table, the contact sheet, and the kept
/// set and features when asked, into `dir`.
pub(crate) fn write_report(dir: &RunDir, set: &ScoredSet, opts: &ReportOptions) -> Result<Report> {
    let n = set.indices.len();
    let (scores_v, features) = match set.scores {
        SetScores::Features(features) => (score_features(set, features, opts)?, Some(features)),
        SetScores::Computed { scores, features } => {
            if scores.len() != n {
                return Err(crate::error::Error::arg(format!(
                    "{} scores for {n} samples",
                    scores.len()
                )));
            }
            let mut v = scores.to_vec();
            for u in &mut v {
                if !u.is_finite() {
                    *u = f64::NAN;
                }
            }
            (v, features)
        }
    };
    if !opts.mark_non_finite {
        if let Some(i) = scores_v.iter().position(|u| !u.is_finite()) {
            return Err(crate::error::Error::arg(format!(
                "the score of sample {} is not finite ({}); pass --on-non-finite mark to mark such samples invalid",
                set.indices[i], scores_v[i]
            )));
        }
    }
    write_scored(dir, set, opts, scores_v, features)
}

/// The estimator's scores of member features; with `mark_non_finite` a sample with a feature
/// or score that is not finite gets NaN, otherwise that is an error.
fn score_features(set: &ScoredSet, features: &[f32], opts: &ReportOptions) -> Result<Vec<f64>> {
    let n = set.indices.len();
    let per = set.members * set.dim;
    let scores_v = if opts.mark_non_finite {
        // Score the finite samples (the others' features zeroed), then mark the rest.
        let bad: Vec<bool> = features
            .chunks_exact(per.max(1))
            .map(|f| f.iter().any(|v| !v.is_finite()))
            .collect();
        let mut zeroed = features.to_vec();
        for (f, &b) in zeroed.chunks_exact_mut(per.max(1)).zip(&bad) {
            if b {
                f.fill(0.0);
            }
        }
        let mut v = opts.estimator.score(&zeroed, n, set.members, set.dim)?;
        for (u, &b) in v.iter_mut().zip(&bad) {
            if b || !u.is_finite() {
                *u = f64::NAN;
            }
        }
        v
    } else {
        opts.estimator.score(features, n, set.members, set.dim)?
    };
    Ok(scores_v)
}

/// The score table, contact sheet, kept set and (when asked and present) features of a scored
/// set.
fn write_scored(
    dir: &RunDir,
    set: &ScoredSet,
    opts: &ReportOptions,
    scores_v: Vec<f64>,
    features: Option<&[f32]>,
) -> Result<Report> {
    let n = set.indices.len();
    let invalid: Vec<usize> = scores_v
        .iter()
        .zip(set.indices)
        .filter(|(u, _)| u.is_nan())
        .map(|(_, &i)| i)
        .collect();
    let mut rows = scores::rows_from_scores(set.indices, set.seed, set.classes, &scores_v)?;
    let kept = match opts.keep {
        Some(n_keep) => keep::select(&rows, n_keep, opts.keep_policy)?,
        None => Vec::new(),
    };
    if opts.keep.is_some() {
        let in_set: BTreeSet<usize> = kept.iter().copied().collect();
        for r in &mut rows {
            r.kept = Some(in_set.contains(&r.index));
        }
    }
    let kept_per_class = match (opts.keep, set.classes) {
        (Some(_), Some(_)) => {
            let mut per_class: BTreeMap<usize, usize> = BTreeMap::new();
            for r in rows.iter().filter(|r| r.kept == Some(true)) {
                *per_class.entry(r.class.unwrap_or(0)).or_default() += 1;
            }
            Some(per_class)
        }
        _ => None,
    };
    let mut meta = opts.estimator.meta();
    meta.insert("members".into(), json!(set.members));
    meta.insert("feature_dim".into(), json!(set.dim));
    if let Value::Object(extra) = &opts.meta {
        meta.extend(extra.clone());
    }
    let meta = Value::Object(meta);
    scores::write_csv(&dir.join("scores.csv"), &rows)?;
    scores::write_json(&dir.join("scores.json"), &rows, meta.clone())?;
    let columns = (n as f64).sqrt().ceil().clamp(1.0, 16.0) as usize;
    contact_sheet::write_contact_sheet(
        &dir.join("contact_sheet.png"),
        set.thumbs,
        &scores_v,
        &order_ascending(&scores_v),
        columns,
        64,
        Some("most certain first"),
    )?;
    if opts.keep.is_some() {
        let text: String = kept.iter().map(|i| format!("{i:05}.png\n")).collect();
        write_atomic(&dir.join("keep.txt"), text.as_bytes())?;
        let keep_dir = dir.create_dir("keep")?;
        for i in &kept {
            let name = format!("{i:05}.png");
            io(
                &keep_dir,
                std::fs::copy(dir.join("images").join(&name), keep_dir.join(&name)),
            )?;
        }
    }
    if let (true, Some(features)) = (opts.save_features, features) {
        npy::write_f32(
            &dir.join("features.npy"),
            &[n, set.members, set.dim],
            features,
        )?;
    }
    Ok(Report {
        scores: scores_v,
        meta,
        kept_per_class,
        invalid: opts.mark_non_finite.then_some(invalid),
    })
}

/// Write the run's `summary.json`.
pub(crate) fn write_summary(dir: &RunDir, summary: &Value) -> Result<()> {
    write_atomic(&dir.join("summary.json"), pretty(summary).as_bytes())
}
