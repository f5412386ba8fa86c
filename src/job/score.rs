//! The score job: member images produced elsewhere, scored as a sample run scores its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::report::{write_report, ReportOptions, ScoredSet, SetScores};
use super::run_dir::RunDir;
use super::JobReport;
use crate::backend::Backend;
use crate::error::Result;
use crate::io::members;
use crate::keep::KeepPolicy;
use crate::models::clip::ClipVision;
use crate::uncertainty::Estimator;

/// Scores member images produced elsewhere, in the reference code's layout
/// (`DIR/<m>/imgs/<NNNNN>.png`, m = 0 the MAP model): the same extractor and estimator as a
/// sample run, the same score table.
#[derive(Clone, Debug)]
pub struct ScoreJob {
    pub members_dir: PathBuf,
    pub out_dir: PathBuf,
    pub extractor: PathBuf,
    pub estimator: Estimator,
    /// Seed written into the score table (the run that produced the images).
    pub seed: u64,
    pub overwrite: bool,
}

/// Member images sent through the extractor at once (times `K`).
const SAMPLES_PER_EXTRACTOR_BATCH: usize = 16;

impl ScoreJob {
    /// Run it: writes `scores.csv`, `scores.json`, `features.npy` and `contact_sheet.png` into
    /// `out_dir` (through `<out>.partial`, renamed when complete).
    pub fn run(&self, backend: Arc<dyn Backend>) -> Result<JobReport> {
        let started = Instant::now();
        let set = members::scan_members(&self.members_dir)?;
        let clip = ClipVision::load(backend, &self.extractor)?;
        let dir = RunDir::create(&self.out_dir, self.overwrite)?;
        let k = set.members;
        let n = set.indices.len();
        let d = clip.dim();
        let mut features = Vec::with_capacity(n * k * d);
        let mut thumbs = Vec::with_capacity(n);
        for chunk in set.indices.chunks(SAMPLES_PER_EXTRACTOR_BATCH) {
            let mut imgs = Vec::with_capacity(chunk.len() * k);
            for &i in chunk {
                for m in 0..k {
                    let img = members::load_member_image(&set, m, i)?;
                    if m == 0 {
                        thumbs.push(img.clone());
                    }
                    imgs.push(img);
                }
            }
            features.extend(clip.features_of_decoded(&imgs)?);
        }
        let scored = ScoredSet {
            indices: &set.indices,
            seed: self.seed,
            classes: None,
            scores: SetScores::Features(&features),
            members: k,
            dim: d,
            thumbs: &thumbs,
        };
        let opts = ReportOptions {
            estimator: &self.estimator,
            meta: json!({
                "members_dir": self.members_dir.display().to_string(),
                "extractor": self.extractor.display().to_string(),
                "extractor_fingerprint": clip.fingerprint(),
            }),
            keep: None,
            keep_policy: KeepPolicy::Global,
            save_features: true,
            mark_non_finite: false,
        };
        write_report(&dir, &scored, &opts)?;
        let out_dir = dir.publish()?;
        Ok(JobReport {
            out_dir,
            num: n,
            members: k,
            seconds: started.elapsed().as_secs_f64(),
            resumed_samples: 0,
        })
    }
}
