//! The sample job: everything `uqengine sample` does, as a library call.
//!
//! Outputs go to `<out>.partial/` while the job runs (finished batches are kept there, so an
//! interrupted run resumes where it stopped when started again with the same settings) and the
//! folder is renamed to `<out>` only when every file is written: a folder named `<out>` is
//! always complete.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::images_out;
use crate::io::npy::{self, nchw_to_nhwc, nhwc_to_nchw};
use crate::models::unet::UNet;
use crate::pipeline::{class_of, initial_noise, BatchInput, ClassChoice, Generator};
use crate::sampler::{Sampler, SamplerKind, SchedulerConfig};

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
pub fn scheduler_config(model_dir: &Path, overrides: &[(String, String)]) -> Result<(SchedulerConfig, Option<PathBuf>)> {
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
        })
    }

    /// Run the job on `backend`, reporting progress through `progress`.
    pub fn run(&self, backend: &dyn Backend, progress: &mut dyn FnMut(Progress)) -> Result<JobReport> {
        let started = Instant::now();
        self.validate()?;
        let unet = UNet::load(backend, &self.model_dir)?;
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
        let classes: Vec<Option<usize>> =
            (0..self.num).map(|i| class_of(&unet, &self.classes, self.seed, i)).collect::<Result<_>>()?;

        let gen = Generator::plain(backend, &unet, &sampler, self.seed);
        let k = gen.k();

        // Output folders.
        let out = &self.out_dir;
        if out.exists() && !self.overwrite {
            let nonempty = std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true);
            if nonempty {
                return Err(Error::arg(format!(
                    "output folder {} already exists and is not empty (use --overwrite to replace it)",
                    out.display()
                )));
            }
        }
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
        io(&part.join("images"), std::fs::create_dir_all(part.join("images")))?;
        npy::write_atomic(&run_json, serde_json::to_string_pretty(&identity).unwrap().as_bytes())?;

        // Batches (fixed boundaries, so a resumed run finds its finished chunks).
        let starts: Vec<usize> = (0..self.num).step_by(self.batch).collect();
        let chunk_path = |start: usize| chunks.join(format!("{start:06}.npy"));
        let done: usize = starts
            .iter()
            .filter(|&&st| chunk_path(st).exists())
            .map(|&st| (st + self.batch).min(self.num) - st)
            .sum();
        if done > 0 {
            progress(Progress::Message(format!("resuming: {done} of {} samples already done", self.num)));
        }
        progress(Progress::Start {
            total: (self.num * self.steps) as u64,
            done: (done * self.steps) as u64,
        });
        let sample_started = Instant::now();
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
                classes: cfg.num_class_embeds.map(|_| indices.iter().map(|&i| classes[i].unwrap_or(0)).collect()),
                indices: indices.clone(),
                noise,
            };
            let nb = indices.len() as u64;
            let x = gen.run(&input, |_| progress(Progress::Advance(nb)))?;
            // Images of the MAP member, then the chunk (its presence marks the batch done).
            for (j, &i) in indices.iter().enumerate() {
                let img = &x[(j * k) * per..(j * k + 1) * per];
                images_out::write_png(&part.join("images").join(format!("{i:05}.png")), &images_out::to_u8(img), s, s, c)?;
            }
            npy::write_f32(&path, &[indices.len() * k, c, s, s], &nhwc_to_nchw(&x, indices.len() * k, s, s, c))?;
        }
        let sample_seconds = sample_started.elapsed().as_secs_f64();

        // Assemble the final outputs from the chunks.
        let mut map_samples = Vec::with_capacity(self.num * per);
        for &st in &starts {
            let a = npy::read(&chunk_path(st))?;
            let n = (st + self.batch).min(self.num) - st;
            if a.shape != [n * k, c, s, s] {
                return Err(Error::arg(format!("{}: unexpected shape {:?}", chunk_path(st).display(), a.shape)));
            }
            let v = a.to_f32();
            for j in 0..n {
                map_samples.extend_from_slice(&v[(j * k) * per..(j * k + 1) * per]);
            }
        }
        npy::write_f32(&part.join("samples.npy"), &[self.num, c, s, s], &map_samples)?;
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
            "seconds_sampling": sample_seconds,
            "seconds_total": started.elapsed().as_secs_f64(),
        });
        npy::write_atomic(&part.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap().as_bytes())?;
        io(&chunks, std::fs::remove_dir_all(&chunks))?;
        io(&run_json, std::fs::remove_file(&run_json))?;
        if out.exists() {
            io(out, std::fs::remove_dir_all(out))?;
        }
        io(out, std::fs::rename(&part, out))?;
        Ok(JobReport {
            out_dir: out.clone(),
            num: self.num,
            members: k,
            seconds: started.elapsed().as_secs_f64(),
            resumed_samples: done,
        })
    }
}
