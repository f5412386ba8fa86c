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
use crate::member_schedule::{MemberSchedule, StepMode};
use crate::models::unet::UNet;
use crate::rng::{Purpose, Stream};
use crate::sampler::Sampler;

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
    /// How the members share work along the steps (irrelevant with one member).
    pub schedule: MemberSchedule,
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
            schedule: MemberSchedule::Full,
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
    ///
    /// Until the schedule splits the members, `x` holds one row per sample (the MAP
    /// trajectory); at the split every row is repeated `K` times.
    pub fn run(&self, input: &BatchInput, mut on_step: impl FnMut(usize)) -> Result<Vec<f32>> {
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
        let modes = if k == 1 {
            vec![StepMode::Map; self.sampler.num_steps()]
        } else {
            self.schedule.modes(self.sampler.num_steps())?
        };
        let mut x: Vec<f32> = input.noise.concat();
        let mut split = false;
        for (step, &mode) in modes.iter().enumerate() {
            if mode != StepMode::Map && !split {
                x = repeat_rows(&x, per, k);
                split = true;
            }
            let eps = match mode {
                StepMode::Map => {
                    self.model_output(&x, nb, input.classes.as_deref(), step, LastLayers::Map)?
                }
                StepMode::SharedTrunk => {
                    let map_rows: Vec<f32> =
                        x.chunks_exact(per).step_by(k).flatten().copied().collect();
                    let classes = input.classes.as_deref();
                    self.model_output(&map_rows, nb, classes, step, LastLayers::EveryMember)?
                }
                StepMode::Full => {
                    let classes: Option<Vec<usize>> = input
                        .classes
                        .as_ref()
                        .map(|cl| cl.iter().flat_map(|&y| std::iter::repeat_n(y, k)).collect());
                    self.model_output(&x, nb * k, classes.as_deref(), step, LastLayers::PerRow)?
                }
            };
            let rows_per_sample = if split { k } else { 1 };
            if self.sampler.needs_noise(step) {
                let mut noise = Vec::with_capacity(x.len());
                for &idx in &input.indices {
                    let z = step_noise(self.seed, idx, step, c, s);
                    for _ in 0..rows_per_sample {
                        noise.extend_from_slice(&z);
                    }
                }
                self.sampler.step(step, &eps, &mut x, Some(&noise))?;
            } else {
                self.sampler.step(step, &eps, &mut x, None)?;
            }
            on_step(step);
        }
        if !split && k > 1 {
            x = repeat_rows(&x, per, k);
        }
        Ok(x)
    }

    /// The model output at `step` for `rows` inputs `x` (NHWC) with their classes, through
    /// `last` (see [`LastLayers`]); sample-major.
    fn model_output(
        &self,
        x: &[f32],
        rows: usize,
        classes: Option<&[usize]>,
        step: usize,
        last: LastLayers,
    ) -> Result<Vec<f32>> {
        let be = self.backend;
        let cfg = &self.unet.config;
        let (c, s) = (cfg.in_channels, cfg.sample_size);
        let t = vec![self.sampler.timesteps()[step] as f32; rows];
        let xt = be.upload(&[rows, s, s, c], x)?;
        let h = self.unet.trunk(be, &xt, &t, classes)?;
        match last {
            LastLayers::Map => be.download(&be.conv2d(&h, &self.members[0], None)?),
            LastLayers::PerRow => be.download(&be.conv2d_members(&h, &self.members)?),
            LastLayers::EveryMember => {
                let outs: Vec<Vec<f32>> = self
                    .members
                    .iter()
                    .map(|m| be.download(&be.conv2d(&h, m, None)?))
                    .collect::<Result<_>>()?;
                let per_out = outs[0].len() / rows;
                let mut eps = Vec::with_capacity(rows * outs.len() * per_out);
                for i in 0..rows {
                    for out in &outs {
                        eps.extend_from_slice(&out[i * per_out..(i + 1) * per_out]);
                    }
                }
                Ok(eps)
            }
        }
    }
}

/// Which last layers a step applies to the trunk features.
#[derive(Clone, Copy)]
enum LastLayers {
    /// The MAP member's only.
    Map,
    /// Rows are `B*K` member inputs: member `i % K` on row `i`.
    PerRow,
    /// Rows are `B` shared inputs: every member on every row, giving `B*K` outputs (row `i*K + m`
    /// is member `m` on input `i`).
    EveryMember,
}

/// Every `per`-element row of `x` repeated `k` times in place (sample-major).
fn repeat_rows(x: &[f32], per: usize, k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() * k);
    for row in x.chunks_exact(per) {
        for _ in 0..k {
            out.extend_from_slice(row);
        }
    }
    out
}
