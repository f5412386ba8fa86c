//! Generation: starting noise `z` -> K member trajectories -> final samples, in batches.
//!
//! Every sample of a batch runs as `K` members (`K = 1` without a posterior): the same `z`, the
//! same class, the same sampler noise; only the last layer's weights differ by member. The trunk
//! runs once per step on all `B*K` inputs; the last layer runs per member ([`Backend::conv2d_members`]).
//! Random numbers come from Philox streams keyed by (seed, sample index, purpose), so a sample's
//! result does not depend on the batch size, the batch it ran in, or the backend.

use crate::backend::{Backend, Conv2d};
use crate::error::{Error, Result};
use crate::layout::nchw_to_nhwc;
use crate::models::unet::UNet;
use crate::rng::{Purpose, Stream};
use crate::sampler::Sampler;
use crate::tensor::Tensor;

/// How class labels are chosen for a conditional model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassChoice {
    /// Every sample gets this class.
    Fixed(usize),
    /// Sample `i` gets entry `i` (the list must have one entry per sample).
    List(Vec<usize>),
    /// Sample `i` gets class `i mod num_classes` (balanced).
    Balanced,
    /// Drawn uniformly from the seeded generator, keyed by sample index.
    Random,
}

/// The class label of sample `index`, or `None` for an unconditional model.
pub fn class_of(
    unet: &UNet,
    choice: &ClassChoice,
    seed: u64,
    index: usize,
) -> Result<Option<usize>> {
    let Some(n) = unet.config.num_class_embeds else {
        return match choice {
            ClassChoice::Fixed(c) => Err(Error::arg(format!(
                "--class {c} given, but the model is not class-conditional"
            ))),
            ClassChoice::List(_) => Err(Error::arg(
                "--class given, but the model is not class-conditional",
            )),
            _ => Ok(None),
        };
    };
    Ok(Some(match choice {
        ClassChoice::Fixed(c) => {
            crate::models::unet::config::check_class(&unet.config, *c)?;
            *c
        }
        ClassChoice::List(l) => {
            let c = *l.get(index).ok_or_else(|| {
                Error::arg(format!(
                    "--class lists {} classes; sample {index} has none",
                    l.len()
                ))
            })?;
            crate::models::unet::config::check_class(&unet.config, c)?;
            c
        }
        ClassChoice::Balanced => index % n,
        ClassChoice::Random => {
            Stream::new(seed, index as u64, Purpose::Class, 0).below(n as u32) as usize
        }
    }))
}

/// The starting noise of sample `index`: `c*h*w` standard normals generated in NCHW order,
/// returned NHWC.
pub fn initial_noise(seed: u64, index: usize, c: usize, s: usize) -> Vec<f32> {
    let mut z = vec![0.0f32; c * s * s];
    Stream::new(seed, index as u64, Purpose::InitialNoise, 0).fill_normal(&mut z);
    nchw_to_nhwc(&z, 1, c, s, s)
}

/// The sampler noise of sample `index` at step `step` (NCHW generation order, NHWC result).
pub fn step_noise(seed: u64, index: usize, step: usize, c: usize, s: usize) -> Vec<f32> {
    let mut z = vec![0.0f32; c * s * s];
    Stream::new(seed, index as u64, Purpose::StepNoise, step as u32).fill_normal(&mut z);
    nchw_to_nhwc(&z, 1, c, s, s)
}

/// One batch of work: sample indices, their classes and starting noise (NHWC per sample).
pub struct BatchInput {
    pub indices: Vec<usize>,
    pub classes: Option<Vec<usize>>,
    pub noise: Vec<Vec<f32>>,
}

/// Runs the sampler for batches of samples with `K` last-layer members.
pub struct Generator<'a> {
    pub backend: &'a dyn Backend,
    pub unet: &'a UNet,
    pub sampler: &'a Sampler,
    /// Last-layer weights per member; member 0 is the MAP (the model's own `conv_out`).
    pub members: Vec<Conv2d>,
    pub seed: u64,
}

impl<'a> Generator<'a> {
    /// A plain generator (one member: the model's own last layer).
    pub fn plain(
        backend: &'a dyn Backend,
        unet: &'a UNet,
        sampler: &'a Sampler,
        seed: u64,
    ) -> Self {
        Generator {
            backend,
            unet,
            sampler,
            members: vec![unet.conv_out.clone()],
            seed,
        }
    }

    /// Number of members per sample.
    pub fn k(&self) -> usize {
        self.members.len()
    }

    /// Runs every step for one batch. Returns final samples NHWC `[B*K, s, s, c]` (sample-major:
    /// row `i*K + k` is member `k` of sample `i`), unclamped, as the sampler leaves them.
    /// `on_step` is called after each step.
    pub fn run(&self, input: &BatchInput, mut on_step: impl FnMut(usize)) -> Result<Vec<f32>> {
        let b = self.backend;
        let cfg = &self.unet.config;
        let (c, s) = (cfg.in_channels, cfg.sample_size);
        let per = c * s * s;
        let k = self.k();
        let nb = input.indices.len();
        if input.noise.len() != nb || input.noise.iter().any(|z| z.len() != per) {
            return Err(Error::arg(format!(
                "batch noise must be {nb} arrays of {per} values"
            )));
        }
        let mut x = Vec::with_capacity(nb * k * per);
        for z in &input.noise {
            for _ in 0..k {
                x.extend_from_slice(z);
            }
        }
        let classes: Option<Vec<usize>> = input
            .classes
            .as_ref()
            .map(|cl| cl.iter().flat_map(|&y| std::iter::repeat_n(y, k)).collect());
        for step in 0..self.sampler.num_steps() {
            let t = vec![self.sampler.timesteps()[step] as f32; nb * k];
            let xt = b.upload(&[nb * k, s, s, c], &x)?;
            let h = self.unet.trunk(b, &xt, &t, classes.as_deref())?;
            let out: Tensor = if k == 1 {
                b.conv2d(&h, &self.members[0], None)?
            } else {
                b.conv2d_members(&h, &self.members)?
            };
            let eps = b.download(&out)?;
            if self.sampler.needs_noise(step) {
                let mut noise = Vec::with_capacity(x.len());
                for &idx in &input.indices {
                    let z = step_noise(self.seed, idx, step, c, s);
                    for _ in 0..k {
                        noise.extend_from_slice(&z);
                    }
                }
                self.sampler.step(step, &eps, &mut x, Some(&noise))?;
            } else {
                self.sampler.step(step, &eps, &mut x, None)?;
            }
            on_step(step);
        }
        Ok(x)
    }
}
