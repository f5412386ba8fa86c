//! A sample run's inputs, loaded and checked before any work starts: the model and its
//! scheduler, the starting noise, the classes, and with uncertainty the posterior's members and
//! the feature extractor.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::sample::SampleJob;
use crate::backend::{Backend, Conv2d};
use crate::error::{Error, Result};
use crate::io::npy;
use crate::laplace::Posterior;
use crate::layout::nchw_to_nhwc;
use crate::models::clip::ClipVision;
use crate::models::unet::UNet;
use crate::pipeline::{class_of, initial_noise};
use crate::sampler::{Sampler, SchedulerConfig};

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

/// Where every sample's starting noise `x_T` comes from.
pub(crate) enum NoiseSource {
    /// Generated from the run's seed, keyed by sample index.
    Seeded(u64),
    /// Given by the user: `[num, c, s, s]` NCHW.
    Given(Vec<f32>),
}

/// Content fingerprint of a file (FNV-1a 64 of its bytes, hex).
pub(crate) fn file_fingerprint(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:016x}", crate::models::weights::fnv1a64(&bytes)))
}

impl NoiseSource {
    /// Content fingerprint of a given noise array (`None` for generated noise).
    pub fn fingerprint(&self) -> Option<String> {
        match self {
            NoiseSource::Seeded(_) => None,
            NoiseSource::Given(z) => Some(format!(
                "{:016x}",
                crate::models::weights::fnv1a64(bytemuck::cast_slice(z))
            )),
        }
    }

    /// `x_T` of sample `index`, NHWC.
    pub fn sample(&self, index: usize, c: usize, s: usize) -> Vec<f32> {
        let per = c * s * s;
        match self {
            NoiseSource::Seeded(seed) => initial_noise(*seed, index, c, s),
            NoiseSource::Given(z) => nchw_to_nhwc(&z[index * per..(index + 1) * per], 1, c, s, s),
        }
    }
}

/// The uncertainty part of a run's inputs.
pub(crate) struct UncertaintyInputs {
    pub posterior: Posterior,
    /// Content fingerprint of the posterior file.
    pub posterior_fingerprint: String,
    pub extractor: ClipVision,
}

/// Everything a sample run reads, checked.
pub(crate) struct SampleInputs {
    pub unet: UNet,
    /// The scheduler config after overrides.
    pub scheduler: SchedulerConfig,
    pub sampler: Sampler,
    /// The scheduler config file the sampler came from (`None`: diffusers defaults).
    pub scheduler_path: Option<PathBuf>,
    pub noise: NoiseSource,
    /// Class of every sample (`None` for an unconditional model).
    pub classes: Vec<Option<usize>>,
    /// Last-layer weights of the `K` members; member 0 is the MAP (the model's own `conv_out`).
    pub members: Vec<Conv2d>,
    pub uncertainty: Option<UncertaintyInputs>,
}

impl SampleInputs {
    /// Load the job's model, scheduler, noise, classes and (with uncertainty) posterior members
    /// and extractor, so that bad input fails before any sample is drawn.
    pub fn load(job: &SampleJob, backend: &Arc<dyn Backend>) -> Result<Self> {
        let unet = UNet::load(backend.as_ref(), &job.model_dir)?;
        let (sched, scheduler_path) = scheduler_config(&job.model_dir, &job.scheduler_overrides)?;
        let sampler = Sampler::new(&sched, job.sampler, job.steps)?;
        let (c, s) = (unet.config.in_channels, unet.config.sample_size);
        let out = unet.config.out_channels;
        if out != c && out != 2 * c {
            return Err(Error::arg(format!(
                "{}: the model maps {c} to {out} channels; sampling needs {c} (a prediction) or \
                 {} (a prediction and a learned variance)",
                job.model_dir.display(),
                2 * c
            )));
        }
        if sampler.learned_variance() && out != 2 * c {
            return Err(Error::arg(format!(
                "scheduler variance_type learned_range needs a model with {} output channels \
                 (prediction and variance); {} has {out}",
                2 * c,
                job.model_dir.display()
            )));
        }
        let noise = match &job.noise_file {
            Some(p) => NoiseSource::Given(read_noise(p, job.num, c, s)?),
            None => NoiseSource::Seeded(job.seed),
        };
        let classes: Vec<Option<usize>> = (0..job.num)
            .map(|i| class_of(&unet, &job.classes, job.seed, i))
            .collect::<Result<_>>()?;
        let mut members = vec![unet.conv_out.clone()];
        let uncertainty = match &job.uncertainty {
            None => None,
            Some(u) => {
                if u.draws == 0 {
                    return Err(Error::arg(
                        "--draws must be at least 1 (got 0): the score needs K = M + 1 >= 2 members",
                    ));
                }
                let posterior = Posterior::load(&u.posterior)?;
                let posterior_fingerprint = file_fingerprint(&u.posterior)?;
                posterior.check_model(&unet)?;
                let draw_seed = u.draw_seed.unwrap_or(job.seed);
                for m in 0..u.draws {
                    let (w, bias) = posterior.draw(draw_seed, m);
                    members.push(backend.prepare_conv(unet.conv_out.spec, &w, Some(&bias))?);
                }
                let extractor = ClipVision::load(backend.clone(), &u.extractor)?;
                Some(UncertaintyInputs {
                    posterior,
                    posterior_fingerprint,
                    extractor,
                })
            }
        };
        Ok(SampleInputs {
            unet,
            scheduler: sched,
            sampler,
            scheduler_path,
            noise,
            classes,
            members,
            uncertainty,
        })
    }

    /// The class of every sample as the score table records it (`None`: unconditional model).
    pub fn class_labels(&self) -> Option<Vec<usize>> {
        self.unet
            .config
            .num_class_embeds
            .map(|_| self.classes.iter().map(|c| c.unwrap_or(0)).collect())
    }
}

/// The user's starting noise: `.npy` of shape `[num, c, s, s]`.
fn read_noise(path: &Path, num: usize, c: usize, s: usize) -> Result<Vec<f32>> {
    let a = npy::read(path)?;
    if a.shape != [num, c, s, s] {
        return Err(Error::arg(format!(
            "{}: noise has shape {:?}, expected [{num}, {c}, {s}, {s}] (--num, channels, size, size)",
            path.display(),
            a.shape,
        )));
    }
    let z = a.to_f32();
    if let Some(i) = z.iter().position(|v| !v.is_finite()) {
        return Err(Error::arg(format!(
            "{}: noise value {} of sample {} (element {}) is not finite",
            path.display(),
            z[i],
            i / (c * s * s),
            i % (c * s * s)
        )));
    }
    Ok(z)
}
