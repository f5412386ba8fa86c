//! Planning a run: fixed batch boundaries, and passes that fit the backend's memory.

use std::ops::Range;

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
/// whatever pass size it plans.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchPlan {
    pub num: usize,
    pub batch: usize,
}

impl BatchPlan {
    /// Sample ranges of the batches, in order.
    pub fn batches(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.num)
            .step_by(self.batch)
            .map(|start| start..(start + self.batch).min(self.num))
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
