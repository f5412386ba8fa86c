//! Jobs: what `uqengine sample` and `uqengine score` do, as library calls.
//!
//! A sample run is a sequence of stages, one file each:
//!
//! 1. [`inputs`]: load and check everything before any work starts (model, scheduler, starting
//!    noise, classes; with uncertainty the posterior's members and the feature extractor);
//! 2. [`plan`]: fixed batch boundaries, and passes sized to the backend's memory;
//! 3. [`run_dir`]: the output folder's lifecycle: `<out>.partial/` while the job runs, resumed
//!    when the same settings start again, renamed to `<out>` only when every file is written (a
//!    folder named `<out>` is always complete);
//! 4. [`batches`]: the batch loop: K member trajectories per sample, images, member features,
//!    one chunk file per finished batch;
//! 5. [`report`]: scores (`scores.csv`, `scores.json`), the contact sheet, the kept set and the
//!    summary, from features of a whole set; shared by the sample, score and merge jobs.
//!
//! A run can also be made in shards (`SampleJob::shard`: contiguous batch ranges, computed
//! exactly as in the whole run) and assembled by [`MergeJob`].

mod batches;
mod features;
mod inputs;
mod merge;
mod plan;
mod report;
mod run_dir;
mod sample;
mod score;

use std::path::PathBuf;

pub use features::extract_features;
pub use inputs::{find_scheduler_config, scheduler_config};
pub use merge::MergeJob;
pub use plan::{plan_pass, Shard};
pub use sample::{NonFinite, SampleJob, UncertaintySettings};
pub use score::ScoreJob;

/// Progress of a running job.
#[derive(Clone, Debug)]
pub enum Progress {
    /// The job starts: total sample-steps to run (`num * steps`), and how many are already done
    /// (resumed).
    Start { total: u64, done: u64 },
    /// `n` more sample-steps finished.
    Advance(u64),
    /// A message for the user.
    Message(String),
}

/// What a finished job reports.
#[derive(Clone, Debug)]
pub struct JobReport {
    pub out_dir: PathBuf,
    pub num: usize,
    pub members: usize,
    pub seconds: f64,
    pub resumed_samples: usize,
}
