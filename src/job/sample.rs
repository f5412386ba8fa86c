//! The sample job: everything `uqengine sample` does, as a library call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::batches::{read_features, read_map_samples, read_scores, BatchLoop};
use super::inputs::{SampleInputs, UncertaintyInputs};
use super::plan::{plan_pass, BatchPlan, Shard};
use super::report::{write_report, write_summary, ReportOptions, ScoredSet, SetScores, Thumb};
use super::run_dir::RunDir;
use super::{JobReport, Progress};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::{images_out, npy};
use crate::keep::KeepPolicy;
use crate::layout::nchw_to_nhwc;
use crate::member_schedule::MemberSchedule;
use crate::pipeline::{ClassChoice, Generator};
use crate::sampler::SamplerKind;
use crate::uncertainty::Estimator;

/// The most samples one run may have (its per-sample tables are built up front).
pub const MAX_SAMPLES_PER_RUN: usize = 100_000_000;

/// Settings of a sample run.
#[derive(Clone, Debug)]
pub struct SampleJob {
    pub model_dir: PathBuf,
    pub out_dir: PathBuf,
    pub num: usize,
    pub steps: usize,
    pub seed: u64,
    pub batch: usize,
    pub classes: ClassChoice,
    /// Starting noise x_T as `.npy` `[num, c, s, s]` float32 (replaces the generated noise).
    pub noise_file: Option<PathBuf>,
    pub sampler: SamplerKind,
    /// diffusers scheduler-config keys overridden from the command line.
    pub scheduler_overrides: Vec<(String, String)>,
    /// Replace an existing output folder.
    pub overwrite: bool,
    /// Score every sample by its generative uncertainty (needs a posterior and an extractor).
    pub uncertainty: Option<UncertaintySettings>,
    /// Samples per pass through the model (each pass runs `K` members of each). `None`: plan it
    /// from the backend's memory budget ([`plan_pass`]): a whole batch where it fits, otherwise
    /// the batch is split into passes instead of running out of memory.
    pub max_samples_per_pass: Option<usize>,
    /// Run only this shard's batches (`uqengine merge` builds the run from all shards).
    pub shard: Option<Shard>,
    /// What a non-finite sample, member, feature or score does: fail the run (naming the
    /// sample), or mark the sample invalid and never keep it.
    pub on_non_finite: NonFinite,
}

/// What a non-finite value in a sample, member, feature or score does to the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonFinite {
    /// The run fails with an error naming the sample (and the input that caused it).
    #[default]
    Error,
    /// The sample is marked invalid: `nan` uncertainty in the score table, ranked last, never
    /// kept, listed in `summary.json` (`invalid_samples`).
    Mark,
}

impl NonFinite {
    /// Parse `error` or `mark`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "error" => Ok(NonFinite::Error),
            "mark" => Ok(NonFinite::Mark),
            _ => Err(Error::arg(format!(
                "--on-non-finite {s}: expected error or mark"
            ))),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            NonFinite::Error => "error",
            NonFinite::Mark => "mark",
        }
    }
}

/// Settings of the uncertainty part of a sample run.
#[derive(Clone, Debug)]
pub struct UncertaintySettings {
    /// Posterior file made by `uqengine fit` for this model.
    pub posterior: PathBuf,
    /// Weight draws `M`; every sample runs as `K = M + 1` members (MAP first).
    pub draws: usize,
    /// Seed of the posterior's weight draws; `None`: the run's seed. Another draw seed with the
    /// same run seed gives the same noise and other members.
    pub draw_seed: Option<u64>,
    /// Feature extractor: a Hugging Face `CLIPVisionModelWithProjection` directory.
    pub extractor: PathBuf,
    /// How member features become one score per sample.
    pub estimator: Estimator,
    /// Quantise member images to 8 bits before the extractor (as saving PNGs does).
    pub quantize: bool,
    /// Also list and copy the `N` most certain samples.
    pub keep: Option<usize>,
    /// How the kept set is chosen; `None`: per class for class-conditional models, global
    /// otherwise ([`KeepPolicy::default_for`]).
    pub keep_policy: Option<KeepPolicy>,
    /// Write all K member images (`members/<m>/imgs/NNNNN.png`) and `features.npy`.
    pub save_members: bool,
    /// How the members share work along the steps (`full`: the paper's method).
    pub schedule: MemberSchedule,
}

impl UncertaintySettings {
    /// Defaults: `M = 5`, the paper's Gaussian entropy with sigma^2 = 1e-3, quantised, nothing
    /// kept, no member images.
    pub fn new(posterior: PathBuf, extractor: PathBuf) -> Self {
        UncertaintySettings {
            posterior,
            draws: 5,
            draw_seed: None,
            extractor,
            estimator: Estimator::default(),
            quantize: true,
            keep: None,
            keep_policy: None,
            save_members: false,
            schedule: MemberSchedule::Full,
        }
    }
}

impl SampleJob {
    fn validate(&self) -> Result<()> {
        if self.num == 0 {
            return Err(Error::arg("--num must be at least 1 (got 0)"));
        }
        if self.num > MAX_SAMPLES_PER_RUN {
            return Err(Error::arg(format!(
                "--num {} is more than {MAX_SAMPLES_PER_RUN} samples in one run: split it into runs of different seeds",
                self.num
            )));
        }
        if self.batch == 0 {
            return Err(Error::arg("--batch must be at least 1 (got 0)"));
        }
        if self.steps == 0 {
            return Err(Error::arg("--steps must be at least 1 (got 0)"));
        }
        if let Some(u) = &self.uncertainty {
            u.schedule.modes(self.steps)?;
            u.estimator.validate()?;
            if self.shard.is_some() && u.keep.is_some() {
                return Err(Error::arg(
                    "--keep chooses from the whole run: give it to `uqengine merge`, not to a --shard run",
                ));
            }
        }
        self.plan().check()
    }

    fn plan(&self) -> BatchPlan {
        BatchPlan {
            num: self.num,
            batch: self.batch,
            shard: self.shard,
        }
    }

    /// The settings that must match for a partial run to be resumed (with the shard) and for
    /// shards to be merged (without it).
    fn identity(&self, inputs: &SampleInputs) -> Value {
        json!({
            "model_fingerprint": inputs.unet.fingerprint(),
            "num": self.num,
            "steps": self.steps,
            "seed": self.seed,
            "batch": self.batch,
            "classes": format!("{:?}", self.classes),
            "noise_file": self.noise_file.as_ref().map(|p| p.display().to_string()),
            "noise_file_fingerprint": inputs.noise.fingerprint(),
            "scheduler_config": inputs.scheduler_path.as_ref().map(|p| p.display().to_string()),
            "scheduler_fingerprint": format!(
                "{:016x}",
                crate::models::weights::fnv1a64(format!("{:?}", inputs.scheduler).as_bytes())
            ),
            "sampler": format!("{:?}", self.sampler),
            "scheduler_overrides": self.scheduler_overrides,
            "members": inputs.members.len(),
            "uncertainty": self.uncertainty.as_ref().map(|u| json!({
                "posterior": u.posterior.display().to_string(),
                "posterior_fingerprint": inputs.uncertainty.as_ref().map(|uq| uq.posterior_fingerprint.clone()),
                "extractor": u.extractor.display().to_string(),
                "extractor_fingerprint": inputs.uncertainty.as_ref().map(|uq| uq.extractor.fingerprint().to_string()),
                "draws": u.draws,
                "draw_seed": u.draw_seed.unwrap_or(self.seed),
                "quantize": u.quantize,
                "save_members": u.save_members,
                "uq_schedule": u.schedule.name(),
            })),
        })
    }

    /// Samples per pass: as set, or planned from the backend's memory budget (with a message
    /// when a batch does not fit in one pass).
    fn samples_per_pass(
        &self,
        backend: &dyn Backend,
        inputs: &SampleInputs,
        progress: &mut dyn FnMut(Progress),
    ) -> usize {
        let k = inputs.members.len();
        let per_member = inputs.unet.activation_elements_per_sample() * backend.activation_bytes();
        let pass = match self.max_samples_per_pass {
            Some(p) => p.clamp(1, self.batch),
            None => plan_pass(backend.memory_budget(), per_member, k, self.batch),
        };
        if pass < self.batch {
            progress(Progress::Message(format!(
                "batches of {} samples x {k} members need about {:.1} GB on {}; running them in passes of {pass}",
                self.batch,
                (per_member * (self.batch * k) as u64) as f64 / 1e9,
                backend.name()
            )));
        }
        pass
    }

    /// Run the job on `backend`, reporting progress through `progress`: load and check the
    /// inputs, open (or resume) the output folder, run the unfinished batches, then write the
    /// samples, the report and the summary, and publish the folder.
    pub fn run(
        &self,
        backend: Arc<dyn Backend>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<JobReport> {
        let started = Instant::now();
        self.validate()?;
        let mut inputs = SampleInputs::load(self, &backend)?;
        let pass = self.samples_per_pass(backend.as_ref(), &inputs, progress);
        let identity = self.identity(&inputs);
        let mut resume_identity = identity.clone();
        resume_identity["shard"] = json!(self.shard.map(|s| [s.index, s.count]));
        let dir = RunDir::resume_or_create(&self.out_dir, self.overwrite, &resume_identity)?;
        let generator = Generator {
            backend: backend.as_ref(),
            unet: &inputs.unet,
            sampler: &inputs.sampler,
            members: backend.prepare_members(&std::mem::take(&mut inputs.members))?,
            schedule: self
                .uncertainty
                .as_ref()
                .map(|u| u.schedule)
                .unwrap_or_default(),
            seed: self.seed,
        };
        let k = generator.k();
        let plan = self.plan();
        let pixels = match (&self.uncertainty, &inputs.uncertainty) {
            (Some(u), Some(uq)) => {
                let cfg = &inputs.unet.config;
                Some(
                    uq.extractor
                        .pixel_plan(cfg.sample_size, cfg.in_channels, u.quantize)?,
                )
            }
            _ => None,
        };
        let batches = BatchLoop {
            generator: &generator,
            inputs: &inputs,
            uncertainty: self.uncertainty.as_ref(),
            plan,
            pass,
            dir: &dir,
            mark_non_finite: self.on_non_finite == NonFinite::Mark,
            pixels,
        };
        let finished = batches.finished(progress);
        let done: usize = plan
            .batches()
            .zip(&finished)
            .filter(|(_, &f)| f)
            .map(|(r, _)| r.len())
            .sum();
        if done > 0 {
            progress(Progress::Message(format!(
                "resuming: {done} of {} samples already done",
                plan.samples()
            )));
        }
        progress(Progress::Start {
            total: (plan.samples() * self.steps) as u64,
            done: (done * self.steps) as u64,
        });
        let sample_started = Instant::now();
        let feature_seconds = batches.run(&finished, progress)?;
        let sample_seconds = sample_started.elapsed().as_secs_f64();

        let cfg = &inputs.unet.config;
        let (c, s) = (cfg.in_channels, cfg.sample_size);
        let map_samples = read_map_samples(&dir, plan, k, c, s)?;
        npy::write_f32(
            &dir.join("samples.npy"),
            &[plan.samples(), c, s, s],
            &map_samples,
        )?;

        // Samples whose MAP member is not finite (only a run that marks them gets here with any;
        // a member or feature that is not finite is in the score table's invalid rows).
        let mut invalid_samples: Vec<usize> = plan
            .batches()
            .flatten()
            .zip(map_samples.chunks_exact(c * s * s))
            .filter(|(_, x)| x.iter().any(|v| !v.is_finite()))
            .map(|(i, _)| i)
            .collect();
        let uncertainty_summary = match (&self.uncertainty, &inputs.uncertainty) {
            (Some(u), Some(uq)) => {
                let mut summary = self.uncertainty_inputs_summary(u, uq, k, feature_seconds)?;
                if self.shard.is_some() {
                    // A shard's ranks and kept set need the whole run: merge reports from the
                    // shards' scores (and features, when they were kept).
                    let scores: Vec<f32> =
                        read_scores(&dir, plan)?.iter().map(|&v| v as f32).collect();
                    npy::write_f32(&dir.join("scores.npy"), &[plan.samples()], &scores)?;
                    if u.save_members {
                        let d = uq.extractor.dim();
                        let features = read_features(&dir, plan, k, d)?;
                        npy::write_f32(
                            &dir.join("features.npy"),
                            &[plan.samples(), k, d],
                            &features,
                        )?;
                    }
                    summary.insert("estimator".into(), Value::Object(u.estimator.meta()));
                } else {
                    let scored = ScoredRun {
                        dir: &dir,
                        inputs: &inputs,
                        plan,
                        members: k,
                        map_samples: &map_samples,
                    };
                    summary.extend(self.report_uncertainty(u, uq, &scored)?);
                    if let Some(Value::Array(invalid)) = summary.get("invalid_samples") {
                        invalid_samples = invalid
                            .iter()
                            .filter_map(|v| v.as_u64().map(|i| i as usize))
                            .collect();
                    }
                }
                Value::Object(summary)
            }
            _ => Value::Null,
        };
        let summary = json!({
            "model": self.model_dir.display().to_string(),
            "model_fingerprint": inputs.unet.fingerprint(),
            "scheduler_config": inputs.scheduler_path.as_ref().map(|p| p.display().to_string()),
            "sampler": format!("{:?}", self.sampler),
            "timesteps": inputs.sampler.timesteps(),
            "num": self.num,
            "steps": self.steps,
            "seed": self.seed,
            "batch": self.batch,
            "members": k,
            "backend": backend.name(),
            "classes": inputs.classes,
            "resumed_samples": done,
            "on_non_finite": self.on_non_finite.as_str(),
            "invalid_samples": invalid_samples,
            "uncertainty": uncertainty_summary,
            "shard": self.shard.map(|s| json!({
                "index": s.index,
                "count": s.count,
                "samples": plan.batches().flatten().collect::<Vec<_>>(),
                "identity": identity,
            })),
            "seconds_sampling": sample_seconds,
            "seconds_total": started.elapsed().as_secs_f64(),
        });
        let mut summary = summary;
        if let Some(t) = backend.transfers() {
            // What crossed between host and device in this process (a resumed run counts only
            // the batches it computed).
            summary["device_transfers"] = json!({
                "host_to_device_bytes": t.host_to_device_bytes,
                "device_to_host_bytes": t.device_to_host_bytes,
                "launches": t.launches,
            });
        }
        write_summary(&dir, &summary)?;
        let out_dir = dir.publish()?;
        Ok(JobReport {
            out_dir,
            num: self.num,
            members: k,
            seconds: started.elapsed().as_secs_f64(),
            resumed_samples: done,
        })
    }

    /// The summary's description of a run's uncertainty inputs: posterior, extractor,
    /// schedule, feature time.
    fn uncertainty_inputs_summary(
        &self,
        u: &UncertaintySettings,
        uq: &UncertaintyInputs,
        k: usize,
        feature_seconds: f64,
    ) -> Result<Map<String, Value>> {
        let post = &uq.posterior;
        Ok(json!({
            "posterior": u.posterior.display().to_string(),
            "posterior_hessian": post.hessian().as_str(),
            "posterior_images": post.num_images(),
            "prior_precision": post.prior_precision(),
            "sigma_noise": post.sigma_noise(),
            "extractor": u.extractor.display().to_string(),
            "extractor_fingerprint": uq.extractor.fingerprint(),
            "feature_dim": uq.extractor.dim(),
            "seconds_features": feature_seconds,
            "draw_seed": u.draw_seed.unwrap_or(self.seed),
            "uq_schedule": u.schedule.name(),
            "trunk_rows_per_sample": u.schedule.trunk_rows_per_sample(self.steps, k)?,
        })
        .as_object()
        .cloned()
        .unwrap_or_default())
    }

    /// The report stage of a whole run with uncertainty: scores, tables, contact sheet, kept
    /// set; returns the summary's entries for them.
    fn report_uncertainty(
        &self,
        u: &UncertaintySettings,
        uq: &UncertaintyInputs,
        run: &ScoredRun,
    ) -> Result<Map<String, Value>> {
        let (k, dir) = (run.members, run.dir);
        let cfg = &run.inputs.unet.config;
        let (c, s) = (cfg.in_channels, cfg.sample_size);
        let d = uq.extractor.dim();
        let scores = read_scores(dir, run.plan)?;
        let features = if u.save_members {
            Some(read_features(dir, run.plan, k, d)?)
        } else {
            None
        };
        let classes = run.inputs.class_labels();
        let set = ScoredSet {
            indices: &(0..self.num).collect::<Vec<_>>(),
            seed: self.seed,
            classes: classes.as_deref(),
            scores: SetScores::Computed {
                scores: &scores,
                features: features.as_deref(),
            },
            members: k,
            dim: d,
            thumbs: &thumbnails(run.map_samples, c, s),
        };
        let keep_policy = u
            .keep_policy
            .unwrap_or(KeepPolicy::default_for(classes.is_some()));
        let opts = ReportOptions {
            estimator: &u.estimator,
            meta: json!({ "draws": u.draws, "quantize": u.quantize }),
            keep: u.keep,
            keep_policy,
            save_features: u.save_members,
            mark_non_finite: self.on_non_finite == NonFinite::Mark,
        };
        Ok(write_report(dir, &set, &opts)?.summary(u.keep, keep_policy))
    }
}

/// 8-bit thumbnails (HWC) of NCHW samples in [-1, 1] with `c` channels of `s x s`.
pub(crate) fn thumbnails(samples: &[f32], c: usize, s: usize) -> Vec<Thumb> {
    samples
        .chunks_exact(c * s * s)
        .map(|x| (images_out::to_u8(&nchw_to_nhwc(x, 1, c, s, s)), s, s, c))
        .collect()
}

/// A finished batch loop, as the report stage reads it.
struct ScoredRun<'a> {
    dir: &'a RunDir,
    inputs: &'a SampleInputs,
    plan: BatchPlan,
    members: usize,
    /// The MAP member of every sample, NCHW.
    map_samples: &'a [f32],
}
