//! Which samples a run keeps: the `N` most certain, globally or class by class.
//!
//! The score depends on the class (some digits are harder than others), so keeping the `N` most
//! certain samples of the whole run shifts the class mix of the kept set away from the run's.
//! [`KeepPolicy::PerClass`] keeps each class's most certain samples in proportion to its share of
//! the run; [`KeepPolicy::Global`] is the reference code's policy.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::io::scores::ScoreRow;

/// How the kept set is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepPolicy {
    /// The `N` most certain samples of the run (the reference code's policy).
    Global,
    /// In each class, that class's most certain samples, as many as its share of the run
    /// (largest remainders, so the total is `N`). Needs a class-conditional run.
    PerClass,
}

impl KeepPolicy {
    /// `global` or `per-class`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "global" => Ok(KeepPolicy::Global),
            "per-class" => Ok(KeepPolicy::PerClass),
            other => Err(Error::arg(format!(
                "--keep-policy {other}: expected global or per-class"
            ))),
        }
    }

    /// The name [`KeepPolicy::parse`] reads.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeepPolicy::Global => "global",
            KeepPolicy::PerClass => "per-class",
        }
    }

    /// The default: per class for class-conditional runs, global otherwise.
    pub fn default_for(class_conditional: bool) -> Self {
        if class_conditional {
            KeepPolicy::PerClass
        } else {
            KeepPolicy::Global
        }
    }
}

/// Sample indices of the `n` most certain rows (smallest `rank`, ties by row order), most certain
/// first. `n` larger than the table keeps every row.
pub fn keep_list(rows: &[ScoreRow], n: usize) -> Vec<usize> {
    let mut by_rank: Vec<&ScoreRow> = rows.iter().collect();
    by_rank.sort_by_key(|r| r.rank);
    by_rank.into_iter().take(n).map(|r| r.index).collect()
}

/// How many of `n` kept samples each class gets, for classes with `counts[c]` samples in the run:
/// `floor(n * count / total)` each, and the samples left over one each to the classes with the
/// largest remainders `n * count mod total` (ties: smaller class first). `n` is capped at the
/// total; no quota exceeds its class's count.
pub fn class_quotas(counts: &BTreeMap<usize, usize>, n: usize) -> BTreeMap<usize, usize> {
    let total: usize = counts.values().sum();
    let n = n.min(total);
    if total == 0 {
        return counts.keys().map(|&c| (c, 0)).collect();
    }
    let mut quotas: BTreeMap<usize, usize> = BTreeMap::new();
    let mut remainders: Vec<(usize, usize)> = Vec::with_capacity(counts.len());
    for (&class, &count) in counts {
        let share = n as u128 * count as u128;
        quotas.insert(class, (share / total as u128) as usize);
        remainders.push(((share % total as u128) as usize, class));
    }
    let left = n - quotas.values().sum::<usize>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, class) in remainders.iter().take(left) {
        *quotas.get_mut(&class).expect("every class has a quota") += 1;
    }
    quotas
}

/// Sample indices of the kept set under `policy`, most certain first (ascending `rank`).
/// Per class needs every row to have a class.
/// Rows whose uncertainty is NaN (samples marked invalid) are never kept.
pub fn select(rows: &[ScoreRow], n: usize, policy: KeepPolicy) -> Result<Vec<usize>> {
    let valid: Vec<ScoreRow> = rows
        .iter()
        .filter(|r| !r.uncertainty.is_nan())
        .cloned()
        .collect();
    let rows = &valid[..];
    match policy {
        KeepPolicy::Global => Ok(keep_list(rows, n)),
        KeepPolicy::PerClass => {
            let mut by_class: BTreeMap<usize, Vec<&ScoreRow>> = BTreeMap::new();
            for r in rows {
                let class = r.class.ok_or_else(|| {
                    Error::arg(format!(
                        "--keep-policy per-class needs class labels, but sample {} has none (the model is not class-conditional); use --keep-policy global",
                        r.index
                    ))
                })?;
                by_class.entry(class).or_default().push(r);
            }
            let counts = by_class.iter().map(|(&c, v)| (c, v.len())).collect();
            let quotas = class_quotas(&counts, n);
            let mut kept: Vec<&ScoreRow> = Vec::with_capacity(n.min(rows.len()));
            for (class, mut members) in by_class {
                members.sort_by_key(|r| r.rank);
                kept.extend(members.into_iter().take(quotas[&class]));
            }
            kept.sort_by_key(|r| r.rank);
            Ok(kept.into_iter().map(|r| r.index).collect())
        }
    }
}
