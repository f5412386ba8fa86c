//! The batch loop. Every unfinished batch runs its samples' `K` member trajectories (in passes
//! that fit memory) and writes, in this order: the MAP member's images, the samples' scores
//! (computed where the extractor ran: the member features stay on the backend, only the scores
//! come back), with `save_members` the member features and every member's image, and last its
//! chunk file and record, which mark the batch finished. The readers at the end assemble a whole
//! run from the chunks.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use super::inputs::SampleInputs;
use super::plan::{passes, BatchPlan};
use super::run_dir::{io, RunDir};
use super::sample::UncertaintySettings;
use super::Progress;
use crate::error::{Error, Result};
use crate::io::fs::write_atomic;
use crate::io::{images_out, members, npy};
use crate::layout::nhwc_to_nchw;
use crate::models::clip_preprocess::PixelPlan;
use crate::pipeline::{BatchInput, Generator};

/// One run's batch loop.
pub(crate) struct BatchLoop<'a> {
    pub generator: &'a Generator<'a>,
    pub inputs: &'a SampleInputs,
    pub uncertainty: Option<&'a UncertaintySettings>,
    pub plan: BatchPlan,
    /// Samples per pass through the model.
    pub pass: usize,
    pub dir: &'a RunDir,
    /// Mark samples that are not finite invalid instead of failing the run.
    pub mark_non_finite: bool,
    /// With uncertainty: how final samples become the extractor's input, prepared once per run
    /// on the extractor's backend.
    pub pixels: Option<PixelPlan>,
}

impl BatchLoop<'_> {
    /// Which batches of the plan an interrupted run with the same settings finished: those whose
    /// record lists files that are all present with the recorded checksums. A batch with a
    /// damaged or missing file is reported and counts as unfinished (it is computed again).
    pub fn finished(&self, progress: &mut dyn FnMut(Progress)) -> Vec<bool> {
        self.plan
            .batches()
            .map(|r| match self.verify(r.start) {
                Ok(ok) => ok,
                Err(file) => {
                    progress(Progress::Message(format!(
                        "batch of samples {}..{}: {file} is damaged or missing; computing the batch again",
                        r.start,
                        r.end - 1
                    )));
                    false
                }
            })
            .collect()
    }

    /// `Ok(true)`: the batch's record and every file it lists check out; `Ok(false)`: no
    /// record; `Err(file)`: a listed file is missing or differs.
    fn verify(&self, start: usize) -> std::result::Result<bool, String> {
        let Ok(text) = std::fs::read_to_string(self.dir.batch_record(start)) else {
            return Ok(false);
        };
        let record: BTreeMap<String, String> = serde_json::from_str(&text)
            .map_err(|_| self.dir.batch_record(start).display().to_string())?;
        // A batch finished without its scores (by an engine that kept features instead) runs
        // again.
        let scores = self.dir.relative(&self.dir.score_chunk(start));
        if self.uncertainty.is_some() && !record.contains_key(&scores) {
            return Ok(false);
        }
        for (file, sum) in &record {
            match std::fs::read(self.dir.join(file)) {
                Ok(bytes) if &checksum(&bytes) == sum => {}
                _ => return Err(file.clone()),
            }
        }
        Ok(true)
    }

    /// Run every batch not `finished`. Returns the seconds spent in the feature extractor.
    pub fn run(&self, finished: &[bool], progress: &mut dyn FnMut(Progress)) -> Result<f64> {
        let mut feature_seconds = 0.0;
        for (range, &done) in self.plan.batches().zip(finished) {
            if !done {
                feature_seconds += self.run_batch(range, progress)?;
            }
        }
        Ok(feature_seconds)
    }

    fn run_batch(&self, range: Range<usize>, progress: &mut dyn FnMut(Progress)) -> Result<f64> {
        let cfg = &self.inputs.unet.config;
        let (c, s) = (cfg.in_channels, cfg.sample_size);
        let per = c * s * s;
        let k = self.generator.k();
        let n = range.len();
        let input = |r: Range<usize>| BatchInput {
            classes: cfg.num_class_embeds.map(|_| {
                r.clone()
                    .map(|i| self.inputs.classes[i].unwrap_or(0))
                    .collect()
            }),
            // Noise from the run's seed is generated where the batch runs.
            noise: match self.inputs.noise {
                super::inputs::NoiseSource::Seeded(seed) if seed == self.generator.seed => None,
                _ => Some(
                    r.clone()
                        .map(|i| self.inputs.noise.sample(i, c, s))
                        .collect(),
                ),
            },
            indices: r.collect(),
        };
        // Per pass: the final samples come back for the files; with uncertainty the extractor
        // embeds them where they are and the scores are reduced there.
        let scoring = match (self.uncertainty, &self.inputs.uncertainty, &self.pixels) {
            (Some(u), Some(uq), Some(plan)) => Some((u, uq, plan)),
            _ => None,
        };
        let mut x = Vec::with_capacity(n * k * per);
        let mut scores: Vec<f64> = Vec::with_capacity(n);
        let mut features: Vec<f32> = Vec::new();
        let mut feature_seconds = 0.0;
        for p in passes(range.clone(), self.pass) {
            let samples = p.len() as u64;
            let state = self
                .generator
                .run_state(&input(p), |_| progress(Progress::Advance(samples)))?;
            x.extend(self.generator.backend.state_to_host(&state)?);
            if let Some((u, uq, plan)) = scoring {
                let t0 = Instant::now();
                let f = uq.extractor.embed_state(&state, plan)?;
                let be = uq.extractor.backend().as_ref();
                scores.extend(u.estimator.score_on(be, &f, k)?);
                if u.save_members {
                    features.extend(be.download(&f)?);
                }
                feature_seconds += t0.elapsed().as_secs_f64();
            }
        }
        // Samples with a member that is not finite: an error naming the first, or (marking)
        // each is reported and its features are made NaN, which the report marks invalid.
        let mut invalid = Vec::new();
        for (j, rows) in x.chunks_exact(k * per).enumerate() {
            let Some(at) = rows.iter().position(|v| !v.is_finite()) else {
                continue;
            };
            let from_noise = if matches!(self.inputs.noise, super::inputs::NoiseSource::Given(_)) {
                " or the --noise file"
            } else {
                ""
            };
            let what = format!(
                "sample {} (member {}) is not finite ({}) after sampling",
                range.start + j,
                at / per,
                rows[at]
            );
            if !self.mark_non_finite {
                return Err(Error::arg(format!(
                    "{what}: check the model's config and weights{from_noise}, or pass --on-non-finite mark to mark such samples invalid"
                )));
            }
            progress(Progress::Message(format!(
                "{what}: marked invalid (never kept)"
            )));
            invalid.push(j);
        }
        let member = |j: usize, m: usize| &x[(j * k + m) * per..(j * k + m + 1) * per];
        let mut written: Vec<String> = Vec::new();
        for (j, i) in range.clone().enumerate() {
            let name = format!("images/{i:05}.png");
            images_out::write_png(
                &self.dir.join(&name),
                &images_out::to_u8(member(j, 0)),
                s,
                s,
                c,
            )?;
            written.push(name);
        }
        if let Some((u, uq, _)) = scoring {
            for &j in &invalid {
                scores[j] = f64::NAN;
            }
            let scores: Vec<f32> = scores.iter().map(|&v| v as f32).collect();
            npy::write_f32(&self.dir.score_chunk(range.start), &[n], &scores)?;
            written.push(self.dir.relative(&self.dir.score_chunk(range.start)));
            if u.save_members {
                let d = uq.extractor.dim();
                let mut f = features;
                for &j in &invalid {
                    f[j * k * d..(j + 1) * k * d].fill(f32::NAN);
                }
                written.push(self.dir.relative(&self.dir.feature_chunk(range.start)));
                npy::write_f32(&self.dir.feature_chunk(range.start), &[n * k, d], &f)?;
                let root = self.dir.join("members");
                for (j, i) in range.clone().enumerate() {
                    for m in 0..k {
                        let path = members::member_image_path(&root, m, i);
                        let folder = path.parent().expect("a member image has a folder");
                        io(folder, std::fs::create_dir_all(folder))?;
                        images_out::write_png(&path, &images_out::to_u8(member(j, m)), s, s, c)?;
                        written.push(self.dir.relative(&path));
                    }
                }
            }
        }
        npy::write_f32(
            &self.dir.chunk(range.start),
            &[n * k, c, s, s],
            &nhwc_to_nchw(&x, n * k, s, s, c),
        )?;
        written.push(self.dir.relative(&self.dir.chunk(range.start)));
        // The record, last: the batch's files with their checksums as they are on disk.
        let mut record = BTreeMap::new();
        for file in written {
            let path = self.dir.join(&file);
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            record.insert(file, checksum(&bytes));
        }
        let text = serde_json::to_string_pretty(&record).expect("a map of strings serialises");
        write_atomic(&self.dir.batch_record(range.start), text.as_bytes())?;
        Ok(feature_seconds)
    }
}

/// The MAP member (`k = 0`) of every sample of the plan, NCHW `[n, c, s, s]`, from the run's
/// chunks of `K = k` members.
pub(crate) fn read_map_samples(
    dir: &RunDir,
    plan: BatchPlan,
    k: usize,
    c: usize,
    s: usize,
) -> Result<Vec<f32>> {
    let per = c * s * s;
    let mut out = Vec::with_capacity(plan.samples() * per);
    for range in plan.batches() {
        let path = dir.chunk(range.start);
        let a = npy::read(&path)?;
        if a.shape != [range.len() * k, c, s, s] {
            return Err(Error::arg(format!(
                "{}: unexpected shape {:?}",
                path.display(),
                a.shape
            )));
        }
        let v = a.to_f32();
        for j in 0..range.len() {
            out.extend_from_slice(&v[(j * k) * per..(j * k + 1) * per]);
        }
    }
    Ok(out)
}

/// The score of every sample of the plan, from its score chunks.
pub(crate) fn read_scores(dir: &RunDir, plan: BatchPlan) -> Result<Vec<f64>> {
    let mut scores = Vec::with_capacity(plan.samples());
    for range in plan.batches() {
        let path = dir.score_chunk(range.start);
        let a = npy::read(&path)?;
        if a.shape != [range.len()] {
            return Err(Error::arg(format!(
                "{}: shape {:?}, expected [{}]",
                path.display(),
                a.shape,
                range.len()
            )));
        }
        scores.extend(a.to_f32().into_iter().map(f64::from));
    }
    Ok(scores)
}

/// Member features `[n, k, d]` of every sample of the plan, from its feature chunks (runs with
/// `save_members`).
pub(crate) fn read_features(dir: &RunDir, plan: BatchPlan, k: usize, d: usize) -> Result<Vec<f32>> {
    let n = plan.samples();
    let mut feats = Vec::with_capacity(n * k * d);
    for range in plan.batches() {
        feats.extend(npy::read(&dir.feature_chunk(range.start))?.to_f32());
    }
    if feats.len() != n * k * d {
        return Err(Error::arg(format!(
            "{}: feature chunks hold {} values, expected {}",
            dir.join("chunks").display(),
            feats.len(),
            n * k * d
        )));
    }
    Ok(feats)
}

/// Checksum of a finished batch's file (FNV-1a 64 of its bytes, hex).
fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", crate::models::weights::fnv1a64(bytes))
}
