//! Planning a run: fixed batch boundaries, and passes that fit the backend's memory.

use std::ops::Range;

use crate::error::{Error, Result};

/// Samples per pass so that `k` members of each fit in 80 % of `budget` bytes, given the
/// model's activation bytes per member; the whole `batch` when there is no budget.
pub fn plan_pass(budget: Option<u64>, bytes_per_member: u64, k: usize, batch: usize) -> usize {
    match budget {
        None => batch,
        Some(free) => {
            let per_sample = bytes_per_member.max(1) * k as u64;
            ((free / 10 * 8 / per_sample) as usize).clamp(1, batch)
        }
    }
}

/// The batches of a run: batch `j` holds samples `[j * batch, min((j + 1) * batch, num))`.
/// Boundaries depend on `num` and `batch` only, so a resumed run finds its finished batches
/// whatever pass size it plans, and a shard computes its batches exactly as the whole run does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchPlan {
    pub num: usize,
    pub batch: usize,
    /// Only this shard's batches.
    pub shard: Option<Shard>,
}

impl BatchPlan {
    fn num_batches(&self) -> usize {
        self.num.div_ceil(self.batch)
    }

    /// Sample ranges of the batches this plan runs (the shard's, or all), in order.
    pub fn batches(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let (lo, hi) = match self.shard {
            Some(s) => s.batch_range(self.num_batches()),
            None => (0, self.num_batches()),
        };
        (lo..hi).map(|j| j * self.batch..((j + 1) * self.batch).min(self.num))
    }

    /// Samples this plan runs.
    pub fn samples(&self) -> usize {
        self.batches().map(|r| r.len()).sum()
    }

    /// A shard that would hold no batch is an error naming the run's batch count.
    pub fn check(&self) -> Result<()> {
        if let Some(s) = self.shard {
            if s.count > self.num_batches() {
                return Err(Error::arg(format!(
                    "--shard {}/{}: the run has only {} batches of {} (--num {} / --batch {}), so some shards would be empty",
                    s.index,
                    s.count,
                    self.num_batches(),
                    self.batch,
                    self.num,
                    self.batch
                )));
            }
        }
        Ok(())
    }
}

/// Shard `index` of `count` of a run: a contiguous range of its batches, so the shards of a run
/// together compute exactly the samples of the whole run, batch for batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parse `i/n` (0 <= i < n).
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || {
            Error::arg(format!(
                "--shard {s}: expected i/n with 0 <= i < n, e.g. 0/4"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) =
            (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The shard's batches `[lo, hi)` of `batches`: as even a split as possible, in order.
    pub fn batch_range(&self, batches: usize) -> (usize, usize) {
        (
            self.index * batches / self.count,
            (self.index + 1) * batches / self.count,
        )
    }
}

/// Split `range` into passes of at most `pass` samples.
pub(crate) fn passes(range: Range<usize>, pass: usize) -> impl Iterator<Item = Range<usize>> {
    let end = range.end;
    range
        .clone()
        .step_by(pass)
        .map(move |lo| lo..(lo + pass).min(end))
}
