//! Member schedules: how the `K` members of a sample (MAP + posterior draws of the last layer)
//! share work along the sampler's steps.
//!
//! Each step runs in one of three modes ([`StepMode`]):
//! - `Map`: the members have not split yet; one trajectory per sample (the MAP's), the trunk and
//!   the MAP last layer on `B` rows.
//! - `SharedTrunk`: the trunk runs once per sample on the MAP member's input; every member `k`
//!   keeps its own `x_t` and steps with `eps_k = last_layer_k(trunk(x_t of the MAP member))`.
//!   Exact while all members still have the same input (the first step after a split).
//! - `Full`: the trunk runs on every member's own input (`B*K` rows), the paper's method.
//!
//! Schedules:
//! - `full`: the paper's method; its first step (all members at `x_T`) is `SharedTrunk`, which
//!   is exact there.
//! - `branch:F`: the members share the MAP trajectory for the first `round(F * steps)` steps
//!   (`F` a fraction in [0, 1), written with a decimal point) or for the first `F` steps (`F` an
//!   integer step index), then split and run `full` for the rest.
//! - `shared-trunk`: `SharedTrunk` at every step: one trunk plus `K` last layers per step.
//! - `shared-trunk:L`: the MAP trajectory for all but the last `L` steps, `SharedTrunk` for them.
//! - `early-full:F`: `full` for the first `round(F * steps)` steps (a fraction in (0, 1)) or
//!   the first `F` steps (an index), then `SharedTrunk` for the rest: the members diverge where
//!   the trunk's response to their own inputs matters most (high noise), and the late steps cost
//!   one trunk per sample.
//! - `interleaved:R`: `full` on every `R`-th step, `SharedTrunk` on the others: the members'
//!   own trunk evaluations pull them back towards the data every `R` steps, at about `1/R` of
//!   `full`'s extra trunk work.

use crate::error::{Error, Result};

/// How one sampler step treats the members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepMode {
    Map,
    SharedTrunk,
    Full,
}

/// Where the members split off the MAP trajectory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SplitPoint {
    /// A fraction of the steps, in [0, 1).
    Fraction(f64),
    /// A step index.
    Step(usize),
}

/// A member schedule (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum MemberSchedule {
    /// The paper's method: every member runs its own trajectory from `x_T`.
    #[default]
    Full,
    /// Share the MAP trajectory until the split point, then `full`.
    Branch(SplitPoint),
    /// One trunk per sample and step on the MAP member's input; `Some(L)`: only for the last
    /// `L` steps, the MAP trajectory before.
    SharedTrunk(Option<usize>),
    /// `full` until the split point, `SharedTrunk` after it.
    EarlyFull(SplitPoint),
    /// `full` on every `R`-th step, `SharedTrunk` on the others.
    Interleaved(usize),
}

impl MemberSchedule {
    /// Parse `full`, `branch:F`, `shared-trunk`, `shared-trunk:L`, `early-full:F` or
    /// `interleaved:R`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::arg(format!(
                "--uq-schedule {s}: {why} (expected full, branch:F with F a fraction in [0, 1) or a step index, shared-trunk, shared-trunk:L, early-full:F with F a fraction in (0, 1) or a step index, or interleaved:R with R >= 2)"
            ))
        };
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        match (name, arg) {
            ("full", None) => Ok(MemberSchedule::Full),
            ("branch", Some(a)) if a.contains('.') => {
                let f: f64 = a.parse().map_err(|_| bad("the fraction is not a number"))?;
                if !(0.0..1.0).contains(&f) {
                    return Err(bad("the fraction must lie in [0, 1)"));
                }
                Ok(MemberSchedule::Branch(SplitPoint::Fraction(f)))
            }
            ("branch", Some(a)) => {
                let step: usize = a
                    .parse()
                    .map_err(|_| bad("the step index is not a non-negative integer"))?;
                Ok(MemberSchedule::Branch(SplitPoint::Step(step)))
            }
            ("early-full", Some(a)) if a.contains('.') => {
                let f: f64 = a.parse().map_err(|_| bad("the fraction is not a number"))?;
                if !(f > 0.0 && f < 1.0) {
                    return Err(bad("the fraction must lie in (0, 1)"));
                }
                Ok(MemberSchedule::EarlyFull(SplitPoint::Fraction(f)))
            }
            ("early-full", Some(a)) => {
                let step: usize = a
                    .parse()
                    .map_err(|_| bad("the step index is not a positive integer"))?;
                if step == 0 {
                    return Err(bad("the step index must be at least 1"));
                }
                Ok(MemberSchedule::EarlyFull(SplitPoint::Step(step)))
            }
            ("interleaved", Some(a)) => {
                let r: usize = a.parse().map_err(|_| bad("R is not a positive integer"))?;
                if r < 2 {
                    return Err(bad("R must be at least 2 (interleaved:1 is full)"));
                }
                Ok(MemberSchedule::Interleaved(r))
            }
            ("shared-trunk", None) => Ok(MemberSchedule::SharedTrunk(None)),
            ("shared-trunk", Some(a)) => {
                let last: usize = a.parse().map_err(|_| bad("L is not a positive integer"))?;
                if last == 0 {
                    return Err(bad("L must be at least 1"));
                }
                Ok(MemberSchedule::SharedTrunk(Some(last)))
            }
            _ => Err(bad("unknown schedule")),
        }
    }

    /// The name [`MemberSchedule::parse`] reads back.
    pub fn name(&self) -> String {
        match self {
            MemberSchedule::Full => "full".into(),
            MemberSchedule::Branch(SplitPoint::Fraction(f)) => format!("branch:{f:?}"),
            MemberSchedule::Branch(SplitPoint::Step(s)) => format!("branch:{s}"),
            MemberSchedule::SharedTrunk(None) => "shared-trunk".into(),
            MemberSchedule::SharedTrunk(Some(l)) => format!("shared-trunk:{l}"),
            MemberSchedule::EarlyFull(SplitPoint::Fraction(f)) => format!("early-full:{f:?}"),
            MemberSchedule::EarlyFull(SplitPoint::Step(s)) => format!("early-full:{s}"),
            MemberSchedule::Interleaved(r) => format!("interleaved:{r}"),
        }
    }

    /// The mode of every step of a `steps`-step sampler. A split point or `L` outside the
    /// schedule is an error naming both.
    pub fn modes(&self, steps: usize) -> Result<Vec<StepMode>> {
        let outside = |what: String| {
            Error::arg(format!(
                "--uq-schedule {}: {what} lies outside the {steps}-step schedule",
                self.name()
            ))
        };
        let at = |point: SplitPoint| match point {
            SplitPoint::Fraction(f) => (f * steps as f64).round() as usize,
            SplitPoint::Step(s) => s,
        };
        if let MemberSchedule::Interleaved(r) = *self {
            if r >= steps {
                return Err(outside(format!("R = {r}")));
            }
            return Ok((0..steps)
                .map(|i| {
                    if i > 0 && i % r == 0 {
                        StepMode::Full
                    } else {
                        StepMode::SharedTrunk
                    }
                })
                .collect());
        }
        // Map before `map_steps`; the split step (all members at the same input: one trunk
        // serves them all); Full before `full_end`; SharedTrunk after.
        let (map_steps, full_end) = match *self {
            MemberSchedule::Full => (0, steps),
            MemberSchedule::Branch(point) => {
                let at = at(point);
                if at >= steps {
                    return Err(outside(format!("the branch point (step {at})")));
                }
                (at, steps)
            }
            MemberSchedule::SharedTrunk(None) => (0, 0),
            MemberSchedule::SharedTrunk(Some(last)) => {
                if last > steps {
                    return Err(outside(format!("L = {last}")));
                }
                (steps - last, 0)
            }
            MemberSchedule::EarlyFull(point) => {
                let end = at(point);
                if end >= steps || end == 0 {
                    return Err(outside(format!("the end of the full part (step {end})")));
                }
                (0, end)
            }
            MemberSchedule::Interleaved(_) => (0, 0), // returned above
        };
        Ok((0..steps)
            .map(|i| {
                if i < map_steps {
                    StepMode::Map
                } else if i > map_steps && i < full_end {
                    StepMode::Full
                } else {
                    StepMode::SharedTrunk
                }
            })
            .collect())
    }

    /// Trunk rows evaluated per sample over a `steps`-step run with `k` members, relative to
    /// `full` without its first-step saving (`steps * k`): the schedule's trunk cost.
    pub fn trunk_rows_per_sample(&self, steps: usize, k: usize) -> Result<usize> {
        Ok(self
            .modes(steps)?
            .iter()
            .map(|m| match m {
                StepMode::Map | StepMode::SharedTrunk => 1,
                StepMode::Full => k,
            })
            .sum())
    }
}
