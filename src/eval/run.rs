//! The sets of a finished sample run that evaluation compares: its kept set, its first `N`
//! samples (the reference protocol's random subset) and its `N` least certain, `N` the keep
//! count.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::scores::{read_csv, ScoreRow};
use crate::keep::{self, KeepPolicy};

/// Sample indices of a run's three sets, each sorted by index.
#[derive(Clone, Debug)]
pub struct RunSets {
    pub keep: usize,
    pub policy: KeepPolicy,
    /// The `keep` most certain under `policy`.
    pub kept: Vec<usize>,
    /// Samples `0..keep` of the run.
    pub first: Vec<usize>,
    /// The `keep` least certain under `policy` (per class: each class's least certain, with the
    /// same quotas as the kept set).
    pub least_certain: Vec<usize>,
    /// Every sample's index, ascending, and its image (`images[j]` is sample `indices[j]`).
    pub indices: Vec<usize>,
    pub images: Vec<PathBuf>,
}

impl RunSets {
    /// Positions in [`RunSets::indices`] (and rows of features encoded from
    /// [`RunSets::images`]) of the samples `set`.
    pub fn positions(&self, set: &[usize]) -> Vec<usize> {
        set.iter()
            .map(|i| {
                self.indices
                    .binary_search(i)
                    .expect("every set member is a sample of the run")
            })
            .collect()
    }
}

fn bad(run: &Path, msg: String) -> Error {
    Error::arg(format!("run {}: {msg}", run.display()))
}

/// The sets of the run in folder `run`. `keep`: the set size (default: the run's `keep.txt`
/// count); `policy`: how the kept and least-certain sets are chosen (default: the run's own
/// policy from summary.json, else per class for class-conditional runs).
pub fn run_sets(run: &Path, keep: Option<usize>, policy: Option<KeepPolicy>) -> Result<RunSets> {
    let rows = read_csv(&run.join("scores.csv"))?;
    if rows.is_empty() {
        return Err(bad(run, "scores.csv holds no samples".into()));
    }
    let keep = match keep {
        Some(n) => n,
        None => {
            let path = run.join("keep.txt");
            let text = std::fs::read_to_string(&path).map_err(|_| {
                bad(
                    run,
                    "has no keep.txt (sampled without --keep): give --keep N".into(),
                )
            })?;
            text.lines().filter(|l| !l.trim().is_empty()).count()
        }
    };
    if keep == 0 || keep > rows.len() {
        return Err(bad(
            run,
            format!(
                "keep {keep} is not between 1 and the run's {} samples",
                rows.len()
            ),
        ));
    }
    let conditional = rows.iter().all(|r| r.class.is_some());
    let policy = match policy {
        Some(p) => p,
        None => run_policy(run)?.unwrap_or(KeepPolicy::default_for(conditional)),
    };
    let mut kept = keep::select(&rows, keep, policy)?;
    // The least certain: the same selection on the reversed order.
    let n = rows.len();
    let reversed: Vec<ScoreRow> = rows
        .iter()
        .map(|r| ScoreRow {
            rank: n - 1 - r.rank,
            ..r.clone()
        })
        .collect();
    let mut least_certain = keep::select(&reversed, keep, policy)?;
    let mut by_index: Vec<&ScoreRow> = rows.iter().collect();
    by_index.sort_by_key(|r| r.index);
    let first: Vec<usize> = by_index.iter().take(keep).map(|r| r.index).collect();
    kept.sort_unstable();
    least_certain.sort_unstable();
    let images = by_index
        .iter()
        .map(|r| {
            let p = run.join("images").join(format!("{:05}.png", r.index));
            if p.exists() {
                Ok(p)
            } else {
                Err(bad(run, format!("image {} is missing", p.display())))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RunSets {
        keep,
        policy,
        kept,
        first,
        least_certain,
        indices: by_index.iter().map(|r| r.index).collect(),
        images,
    })
}

/// The keep policy a run recorded in summary.json, if any.
fn run_policy(run: &Path) -> Result<Option<KeepPolicy>> {
    let Ok(text) = std::fs::read_to_string(run.join("summary.json")) else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: run.join("summary.json"),
        msg: e.to_string(),
    })?;
    v["uncertainty"]["keep_policy"]
        .as_str()
        .map(KeepPolicy::parse)
        .transpose()
}

/// The extractor a run used (summary.json), if it recorded one.
pub fn run_extractor(run: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(run.join("summary.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["uncertainty"]["extractor"].as_str().map(PathBuf::from)
}
