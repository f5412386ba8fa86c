//! The sample job: everything `uqengine sample` does, as a library call.
//!
//! Outputs go to `<out>.partial/` while the job runs (finished batches are kept there, so an
//! interrupted run resumes where it stopped when started again with the same settings) and the
//! folder is renamed to `<out>` only when every file is written: a folder named `<out>` is
//! always complete.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::backend::{Backend, Conv2d};
use crate::error::{Error, Result};
use crate::image::HwcImage;
use crate::io::npy::{self, nchw_to_nhwc, nhwc_to_nchw};
use crate::io::{contact_sheet, images_out, members, scores};
use crate::laplace::Posterior;
use crate::models::clip::ClipVision;
use crate::models::unet::UNet;
use crate::pipeline::{class_of, initial_noise, BatchInput, ClassChoice, Generator};
use crate::sampler::{Sampler, SamplerKind, SchedulerConfig};
use crate::uncertainty::{gaussian_entropy, order_ascending, EntropyOptions};

/// Where the scheduler config of a model directory lives, if anywhere.
pub fn find_scheduler_config(model_dir: &Path) -> Option<PathBuf> {
    [
        model_dir.join("scheduler").join("scheduler_config.json"),
        model_dir.join("scheduler_config.json"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// Load the model's scheduler config (diffusers defaults when it has none) and apply
/// `key=value` overrides.
pub fn scheduler_config(
    model_dir: &Path,
    overrides: &[(String, String)],
) -> Result<(SchedulerConfig, Option<PathBuf>)> {
    let path = find_scheduler_config(model_dir);
    let mut cfg = match &path {
        Some(p) => SchedulerConfig::from_file(p)?,
        None => SchedulerConfig::default(),
    };
    for (k, v) in overrides {
        cfg.set_override(k, v)?;
    }
    Ok((cfg, path))
}

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
}

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

/// Settings of the uncertainty part of a sample run.
#[derive(Clone, Debug)]
pub struct UncertaintySettings {
    /// Posterior file made by `uqengine fit` for this model.
    pub posterior: PathBuf,
    /// Weight draws `M`; every sample runs as `K = M + 1` members (MAP first).
    pub draws: usize,
    /// Feature extractor: a Hugging Face `CLIPVisionModelWithProjection` directory.
    pub extractor: PathBuf,
    /// Entropy options (`sigma^2`).
    pub entropy: EntropyOptions,
    /// Quantise member images to 8 bits before the extractor (as saving PNGs does).
    pub quantize: bool,
    /// Also list and copy the `N` most certain samples.
    pub keep: Option<usize>,
    /// Write all K member images (`members/<m>/imgs/NNNNN.png`) and `features.npy`.
    pub save_members: bool,
}

impl UncertaintySettings {
    /// Defaults: `M = 5`, sigma^2 = 1e-3, quantised, nothing kept, no member images.
    pub fn new(posterior: PathBuf, extractor: PathBuf) -> Self {
        UncertaintySettings {
            posterior,
            draws: 5,
            extractor,
            entropy: EntropyOptions::default(),
            quantize: true,
            keep: None,
            save_members: false,
        }
    }
}

/// Features `[n, D]` of final samples (NHWC, model space [-1, 1]) from the extractor: 8-bit
/// quantised first when `quantize`, otherwise mapped to [0, 1] in float.
pub fn extract_features(
    clip: &ClipVision,
    x: &[f32],
    n: usize,
    s: usize,
    c: usize,
    quantize: bool,
) -> Result<Vec<f32>> {
    let per = s * s * c;
    let t = if quantize {
        let bytes: Vec<Vec<u8>> = (0..n)
            .map(|i| images_out::to_u8(&x[i * per..(i + 1) * per]))
            .collect();
        let imgs = bytes
            .iter()
            .map(|b| HwcImage::new(s, s, c, b))
            .collect::<Result<Vec<_>>>()?;
        clip.embed_images_u8(&imgs)?
    } else {
        let floats: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                x[i * per..(i + 1) * per]
                    .iter()
                    .map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
                    .collect()
            })
            .collect();
        let imgs = floats
            .iter()
            .map(|b| HwcImage::new(s, s, c, b))
            .collect::<Result<Vec<_>>>()?;
        clip.embed_images_f32(&imgs)?
    };
    clip.backend().download(&t)
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

fn partial_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// An existing non-empty output folder is an error unless `overwrite` (finished work is never
/// replaced by accident).
fn check_output_free(out: &Path, overwrite: bool) -> Result<()> {
    let nonempty = out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
    if nonempty && !overwrite {
        return Err(Error::arg(format!(
            "output folder {} already exists and is not empty (use --overwrite to replace it)",
            out.display()
        )));
    }
    Ok(())
}

/// Move the finished `<out>.partial` folder to `out`, replacing what was there.
fn publish(part: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        io(out, std::fs::remove_dir_all(out))?;
    }
    io(out, std::fs::rename(part, out))
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io(path, e))
}

impl SampleJob {
    fn validate(&self) -> Result<()> {
        if self.num == 0 {
            return Err(Error::arg("--num must be at least 1 (got 0)"));
        }
        if self.batch == 0 {
            return Err(Error::arg("--batch must be at least 1 (got 0)"));
        }
        if self.steps == 0 {
            return Err(Error::arg("--steps must be at least 1 (got 0)"));
        }
        Ok(())
    }

    /// The settings that must match for a partial run to be resumed.
    fn identity(&self, unet: &UNet, k: usize) -> serde_json::Value {
        json!({
            "model_fingerprint": unet.fingerprint(),
            "num": self.num,
            "steps": self.steps,
            "seed": self.seed,
            "batch": self.batch,
            "classes": format!("{:?}", self.classes),
            "noise_file": self.noise_file.as_ref().map(|p| p.display().to_string()),
            "sampler": format!("{:?}", self.sampler),
            "scheduler_overrides": self.scheduler_overrides,
            "members": k,
            "uncertainty": self.uncertainty.as_ref().map(|u| json!({
                "posterior": u.posterior.display().to_string(),
                "extractor": u.extractor.display().to_string(),
                "draws": u.draws,
                "quantize": u.quantize,
                "save_members": u.save_members,
            })),
        })
    }

    /// Run the job on `backend`, reporting progress through `progress`.
    pub fn run(
        &self,
        backend: Arc<dyn Backend>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<JobReport> {
        let started = Instant::now();
        self.validate()?;
        let unet = UNet::load(backend.as_ref(), &self.model_dir)?;
        let (sched, sched_path) = scheduler_config(&self.model_dir, &self.scheduler_overrides)?;
        let sampler = Sampler::new(&sched, self.sampler, self.steps)?;
        let cfg = unet.config.clone();
        let (c, s) = (cfg.in_channels, cfg.sample_size);
        let per = c * s * s;

        // Starting noise given by the user.
        let given_noise = match &self.noise_file {
            Some(p) => {
                let a = npy::read(p)?;
                if a.shape != [self.num, c, s, s] {
                    return Err(Error::arg(format!(
                        "{}: noise has shape {:?}, expected [{}, {c}, {s}, {s}] (--num, channels, size, size)",
                        p.display(),
                        a.shape,
                        self.num
                    )));
                }
                Some(a.to_f32())
            }
            None => None,
        };
        // Classes are resolved (and checked) before any work starts.
        let classes: Vec<Option<usize>> = (0..self.num)
            .map(|i| class_of(&unet, &self.classes, self.seed, i))
            .collect::<Result<_>>()?;

        // Uncertainty: posterior members and the feature extractor, checked before any work.
        let mut gen = Generator::plain(backend.as_ref(), &unet, &sampler, self.seed);
        let uq = match &self.uncertainty {
            None => None,
            Some(u) => {
                if u.draws == 0 {
                    return Err(Error::arg("--draws must be at least 1 (got 0): the score needs K = M + 1 >= 2 members"));
                }
                let post = Posterior::load(&u.posterior)?;
                post.check_model(&unet)?;
                let mut convs: Vec<Conv2d> = vec![unet.conv_out.clone()];
                for m in 0..u.draws {
                    let (w, bias) = post.draw(self.seed, m);
                    convs.push(backend.prepare_conv(unet.conv_out.spec, &w, Some(&bias))?);
                }
                gen.members = convs;
                let clip = ClipVision::load(backend.clone(), &u.extractor)?;
                Some((u, post, clip))
            }
        };
        let k = gen.k();
        let per_member = unet.activation_elements_per_sample() * backend.activation_bytes();
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

        // Output folders.
        let out = &self.out_dir;
        check_output_free(out, self.overwrite)?;
        let part = partial_dir(out);
        let identity = self.identity(&unet, k);
        let run_json = part.join("run.json");
        if part.exists() {
            let same = std::fs::read_to_string(&run_json)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v == identity);
            if !same {
                if self.overwrite {
                    io(&part, std::fs::remove_dir_all(&part))?;
                } else {
                    return Err(Error::arg(format!(
                        "{} holds an unfinished run with other settings; remove it or use --overwrite",
                        part.display()
                    )));
                }
            }
        }
        let chunks = part.join("chunks");
        io(&chunks, std::fs::create_dir_all(&chunks))?;
        io(
            &part.join("images"),
            std::fs::create_dir_all(part.join("images")),
        )?;
        npy::write_atomic(
            &run_json,
            serde_json::to_string_pretty(&identity).unwrap().as_bytes(),
        )?;

        // Batches (fixed boundaries, so a resumed run finds its finished chunks).
        let starts: Vec<usize> = (0..self.num).step_by(self.batch).collect();
        let chunk_path = |start: usize| chunks.join(format!("{start:06}.npy"));
        let done: usize = starts
            .iter()
            .filter(|&&st| chunk_path(st).exists())
            .map(|&st| (st + self.batch).min(self.num) - st)
            .sum();
        if done > 0 {
            progress(Progress::Message(format!(
                "resuming: {done} of {} samples already done",
                self.num
            )));
        }
        progress(Progress::Start {
            total: (self.num * self.steps) as u64,
            done: (done * self.steps) as u64,
        });
        let sample_started = Instant::now();
        let mut feature_seconds = 0.0;
        let feat_path = |start: usize| chunks.join(format!("{start:06}.features.npy"));
        for &st in &starts {
            let path = chunk_path(st);
            if path.exists() {
                continue;
            }
            let end = (st + self.batch).min(self.num);
            let indices: Vec<usize> = (st..end).collect();
            let noise = indices
                .iter()
                .map(|&i| match &given_noise {
                    Some(z) => nchw_to_nhwc(&z[i * per..(i + 1) * per], 1, c, s, s),
                    None => initial_noise(self.seed, i, c, s),
                })
                .collect();
            let input = BatchInput {
                classes: cfg
                    .num_class_embeds
                    .map(|_| indices.iter().map(|&i| classes[i].unwrap_or(0)).collect()),
                indices: indices.clone(),
                noise,
            };
            let mut x = Vec::with_capacity(indices.len() * k * per);
            for lo in (0..indices.len()).step_by(pass) {
                let hi = (lo + pass).min(indices.len());
                let part_input = BatchInput {
                    indices: input.indices[lo..hi].to_vec(),
                    classes: input.classes.as_ref().map(|c| c[lo..hi].to_vec()),
                    noise: input.noise[lo..hi].to_vec(),
                };
                let nb = (hi - lo) as u64;
                x.extend(gen.run(&part_input, |_| progress(Progress::Advance(nb)))?);
            }
            // Images of the MAP member, features and member images, then the chunk (its
            // presence marks the batch done).
            for (j, &i) in indices.iter().enumerate() {
                let img = &x[(j * k) * per..(j * k + 1) * per];
                images_out::write_png(
                    &part.join("images").join(format!("{i:05}.png")),
                    &images_out::to_u8(img),
                    s,
                    s,
                    c,
                )?;
            }
            if let Some((u, _, clip)) = &uq {
                let t0 = Instant::now();
                let f = extract_features(clip, &x, indices.len() * k, s, c, u.quantize)?;
                feature_seconds += t0.elapsed().as_secs_f64();
                npy::write_f32(&feat_path(st), &[indices.len() * k, clip.dim()], &f)?;
                if u.save_members {
                    for (j, &i) in indices.iter().enumerate() {
                        for m in 0..k {
                            let p = members::member_image_path(&part.join("members"), m, i);
                            let dir = p.parent().unwrap();
                            io(dir, std::fs::create_dir_all(dir))?;
                            let img = &x[(j * k + m) * per..(j * k + m + 1) * per];
                            images_out::write_png(&p, &images_out::to_u8(img), s, s, c)?;
                        }
                    }
                }
            }
            npy::write_f32(
                &path,
                &[indices.len() * k, c, s, s],
                &nhwc_to_nchw(&x, indices.len() * k, s, s, c),
            )?;
        }
        let sample_seconds = sample_started.elapsed().as_secs_f64();

        // Assemble the final outputs from the chunks.
        let mut map_samples = Vec::with_capacity(self.num * per);
        for &st in &starts {
            let a = npy::read(&chunk_path(st))?;
            let n = (st + self.batch).min(self.num) - st;
            if a.shape != [n * k, c, s, s] {
                return Err(Error::arg(format!(
                    "{}: unexpected shape {:?}",
                    chunk_path(st).display(),
                    a.shape
                )));
            }
            let v = a.to_f32();
            for j in 0..n {
                map_samples.extend_from_slice(&v[(j * k) * per..(j * k + 1) * per]);
            }
        }
        npy::write_f32(
            &part.join("samples.npy"),
            &[self.num, c, s, s],
            &map_samples,
        )?;

        // Scores over [N, K, D] in one reduction, tables, contact sheet, kept set.
        let mut uq_summary = serde_json::Value::Null;
        if let Some((u, post, clip)) = &uq {
            let d = clip.dim();
            let mut feats = Vec::with_capacity(self.num * k * d);
            for &st in &starts {
                let a = npy::read(&feat_path(st))?;
                feats.extend(a.to_f32());
            }
            if feats.len() != self.num * k * d {
                return Err(Error::arg(format!(
                    "{}: feature chunks hold {} values, expected {}",
                    chunks.display(),
                    feats.len(),
                    self.num * k * d
                )));
            }
            let scores_v = gaussian_entropy(&feats, self.num, k, d, &u.entropy)?;
            let indices: Vec<usize> = (0..self.num).collect();
            let cls: Option<Vec<usize>> = cfg
                .num_class_embeds
                .map(|_| classes.iter().map(|c| c.unwrap_or(0)).collect());
            let rows = scores::rows_from_scores(&indices, self.seed, cls.as_deref(), &scores_v)?;
            let meta = json!({
                "estimator": "gaussian_entropy",
                "sigma2": u.entropy.sigma2,
                "members": k,
                "draws": u.draws,
                "feature_dim": d,
                "quantize": u.quantize,
            });
            scores::write_csv(&part.join("scores.csv"), &rows)?;
            scores::write_json(&part.join("scores.json"), &rows, meta.clone())?;
            let thumbs: Vec<(Vec<u8>, usize, usize, usize)> = (0..self.num)
                .map(|i| {
                    (
                        images_out::to_u8(&nchw_to_nhwc(
                            &map_samples[i * per..(i + 1) * per],
                            1,
                            c,
                            s,
                            s,
                        )),
                        s,
                        s,
                        c,
                    )
                })
                .collect();
            let order = order_ascending(&scores_v);
            let columns = (self.num as f64).sqrt().ceil().clamp(1.0, 16.0) as usize;
            contact_sheet::write_contact_sheet(
                &part.join("contact_sheet.png"),
                &thumbs,
                &scores_v,
                &order,
                columns,
                64,
                Some("most certain first"),
            )?;
            if let Some(n) = u.keep {
                let kept = scores::keep_list(&rows, n);
                let text: String = kept.iter().map(|i| format!("{i:05}.png\n")).collect();
                npy::write_atomic(&part.join("keep.txt"), text.as_bytes())?;
                let kd = part.join("keep");
                io(&kd, std::fs::create_dir_all(&kd))?;
                for i in &kept {
                    let name = format!("{i:05}.png");
                    io(
                        &kd,
                        std::fs::copy(part.join("images").join(&name), kd.join(&name)),
                    )?;
                }
            }
            if u.save_members {
                npy::write_f32(&part.join("features.npy"), &[self.num, k, d], &feats)?;
            }
            uq_summary = json!({
                "posterior": u.posterior.display().to_string(),
                "posterior_hessian": post.hessian().as_str(),
                "posterior_images": post.num_images(),
                "prior_precision": post.prior_precision(),
                "sigma_noise": post.sigma_noise(),
                "extractor": u.extractor.display().to_string(),
                "extractor_fingerprint": clip.fingerprint(),
                "score": meta,
                "keep": u.keep,
                "seconds_features": feature_seconds,
                "uncertainty_min": scores_v.iter().cloned().fold(f64::INFINITY, f64::min),
                "uncertainty_max": scores_v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            });
        }
        let summary = json!({
            "model": self.model_dir.display().to_string(),
            "model_fingerprint": unet.fingerprint(),
            "scheduler_config": sched_path.map(|p| p.display().to_string()),
            "sampler": format!("{:?}", self.sampler),
            "timesteps": sampler.timesteps(),
            "num": self.num,
            "steps": self.steps,
            "seed": self.seed,
            "batch": self.batch,
            "members": k,
            "backend": backend.name(),
            "classes": classes,
            "resumed_samples": done,
            "uncertainty": uq_summary,
            "seconds_sampling": sample_seconds,
            "seconds_total": started.elapsed().as_secs_f64(),
        });
        npy::write_atomic(
            &part.join("summary.json"),
            serde_json::to_string_pretty(&summary).unwrap().as_bytes(),
        )?;
        io(&chunks, std::fs::remove_dir_all(&chunks))?;
        io(&run_json, std::fs::remove_file(&run_json))?;
        publish(&part, out)?;
        Ok(JobReport {
            out_dir: out.clone(),
            num: self.num,
            members: k,
            seconds: started.elapsed().as_secs_f64(),
            resumed_samples: done,
        })
    }
}

/// Scores member images produced elsewhere, in the reference code's layout
/// (`DIR/<m>/imgs/<NNNNN>.png`, m = 0 the MAP model): the same extractor and estimator as a
/// sample run, the same score table.
#[derive(Clone, Debug)]
pub struct ScoreJob {
    pub members_dir: PathBuf,
    pub out_dir: PathBuf,
    pub extractor: PathBuf,
    pub entropy: EntropyOptions,
    /// Seed written into the score table (the run that produced the images).
    pub seed: u64,
    pub overwrite: bool,
}

impl ScoreJob {
    /// Run it: writes `scores.csv`, `scores.json`, `contact_sheet.png` into `out_dir` (through
    /// `<out>.partial`, renamed when complete).
    pub fn run(&self, backend: Arc<dyn Backend>) -> Result<JobReport> {
        let started = Instant::now();
        let set = members::scan_members(&self.members_dir)?;
        let clip = ClipVision::load(backend, &self.extractor)?;
        let out = &self.out_dir;
        check_output_free(out, self.overwrite)?;
        let part = partial_dir(out);
        if part.exists() {
            io(&part, std::fs::remove_dir_all(&part))?;
        }
        io(&part, std::fs::create_dir_all(&part))?;
        let k = set.members;
        let n = set.indices.len();
        let d = clip.dim();
        let mut feats = Vec::with_capacity(n * k * d);
        let mut thumbs = Vec::with_capacity(n);
        for chunk in set.indices.chunks(16) {
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
            let views = imgs
                .iter()
                .map(|(p, h, w, c)| HwcImage::new(*h, *w, *c, p))
                .collect::<Result<Vec<_>>>()?;
            let t = clip.embed_images_u8(&views)?;
            feats.extend(clip.backend().download(&t)?);
        }
        let scores_v = gaussian_entropy(&feats, n, k, d, &self.entropy)?;
        let rows = scores::rows_from_scores(&set.indices, self.seed, None, &scores_v)?;
        let meta = json!({
            "estimator": "gaussian_entropy",
            "sigma2": self.entropy.sigma2,
            "members": k,
            "feature_dim": d,
            "members_dir": self.members_dir.display().to_string(),
            "extractor": self.extractor.display().to_string(),
            "extractor_fingerprint": clip.fingerprint(),
        });
        scores::write_csv(&part.join("scores.csv"), &rows)?;
        scores::write_json(&part.join("scores.json"), &rows, meta)?;
        npy::write_f32(&part.join("features.npy"), &[n, k, d], &feats)?;
        let order = order_ascending(&scores_v);
        let columns = (n as f64).sqrt().ceil().clamp(1.0, 16.0) as usize;
        contact_sheet::write_contact_sheet(
            &part.join("contact_sheet.png"),
            &thumbs,
            &scores_v,
            &order,
            columns,
            64,
            Some("most certain first"),
        )?;
        publish(&part, out)?;
        Ok(JobReport {
            out_dir: out.clone(),
            num: n,
            members: k,
            seconds: started.elapsed().as_secs_f64(),
            resumed_samples: 0,
        })
    }
}
