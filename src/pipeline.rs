//! Generation: starting noise `z` -> K member trajectories -> final samples, in batches.
//!
//! Every sample of a batch runs as `K` members (`K = 1` without a posterior): the same `z`, the
//! same class, the same sampler noise; only the last layer's weights differ by member. The trunk
//! runs once per step on all `B*K` inputs (or fewer, by the member schedule); the last layer runs
//! per member ([`Backend::conv2d_member_stack`]).
//! Random numbers come from Philox streams keyed by (seed, sample index, purpose), so a sample's
//! result does not depend on the batch size, the batch it ran in, or the backend.

use crate::backend::state::stream_normals;
use crate::backend::{Backend, LastLayer, Members, StepNoise};
use crate::error::{Error, Result};
use crate::member_schedule::{MemberSchedule, StepMode};
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
    stream_normals(seed, index as u64, Purpose::InitialNoise, 0, c, s)
}

/// The sampler noise of sample `index` at step `step` (NCHW generation order, NHWC result).
pub fn step_noise(seed: u64, index: usize, step: usize, c: usize, s: usize) -> Vec<f32> {
    stream_normals(seed, index as u64, Purpose::StepNoise, step as u32, c, s)
}

/// One batch of work: sample indices, their classes and starting noise.
pub struct BatchInput {
    pub indices: Vec<usize>,
    pub classes: Option<Vec<usize>>,
    /// `x_T` per sample (NHWC), or `None`: generated on the backend from the generator's seed
    /// (equal to [`initial_noise`]).
    pub noise: Option<Vec<Vec<f32>>>,
}

/// Runs the sampler for batches of samples with `K` last-layer members.
///
/// A batch's state lives on the backend from `x_T` to the final samples: on a device backend
/// the sample indices and class rows are uploaded once per batch, the starting noise, the step
/// noise, the timestep features and the sampler update are computed there, and only the final
/// samples come back; nothing crosses per step.
pub struct Generator<'a> {
    pub backend: &'a dyn Backend,
    pub unet: &'a UNet,
    pub sampler: &'a Sampler,
    /// Last layers per member, prepared once ([`Backend::prepare_members`]); member 0 is the
    /// MAP (the model's own `conv_out`).
    pub members: Members,
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
    ) -> Result<Self> {
        Ok(Generator {
            backend,
            unet,
            sampler,
            members: backend.prepare_members(std::slice::from_ref(&unet.conv_out))?,
            schedule: MemberSchedule::Full,
            seed,
        })
    }

    /// Number of members per sample.
    pub fn k(&self) -> usize {
        self.members.len()
    }

    /// Runs every step for one batch. Returns final samples NHWC `[B*K, s, s, c]` (sample-major:
    /// row `i*K + k` is member `k` of sample `i`), unclamped, as the sampler leaves them.
    /// `on_step` is called after each step.
    ///
    /// Until the schedule splits the members, the state holds one row per sample (the MAP
    /// trajectory); at the split every row is repeated `K` times.
    pub fn run(&self, input: &BatchInput, on_step: impl FnMut(usize)) -> Result<Vec<f32>> {
        let x = self.run_state(input, on_step)?;
        self.backend.state_to_host(&x)
    }

    /// [`Generator::run`] leaving the final samples where they were computed: a state tensor
    /// `[B*K, s, s, c]` on the backend.
    pub fn run_state(&self, input: &BatchInput, mut on_step: impl FnMut(usize)) -> Result<Tensor> {
        let be = self.backend;
        let cfg = &self.unet.config;
        let (c, s) = (cfg.in_channels, cfg.sample_size);
        let per = c * s * s;
        let k = self.k();
        let nb = input.indices.len();
        if k == 0 {
            return Err(Error::arg("a generator needs at least one member"));
        }
        let modes = if k == 1 {
            vec![StepMode::Map; self.sampler.num_steps()]
        } else {
            self.schedule.modes(self.sampler.num_steps())?
        };
        let streams = be.sample_streams(&input.indices)?;
        let mut x = match &input.noise {
            Some(noise) => {
                if noise.len() != nb || noise.iter().any(|z| z.len() != per) {
                    return Err(Error::arg(format!(
                        "batch noise must be {nb} arrays of {per} values"
                    )));
                }
                be.state_from_host(&[nb, s, s, c], &noise.concat())?
            }
            None => be.normal_state(&streams, self.seed, Purpose::InitialNoise, 0, c, s, 1)?,
        };
        // Class rows for B rows and, when some step runs the trunk on every member, B*K rows.
        let classes = input.classes.as_deref();
        let class_rows = self.unet.class_rows(be, classes, nb)?;
        let member_class_rows = if modes.contains(&StepMode::Full) {
            let rep: Option<Vec<usize>> =
                classes.map(|cl| cl.iter().flat_map(|&y| std::iter::repeat_n(y, k)).collect());
            self.unet.class_rows(be, rep.as_deref(), nb * k)?
        } else {
            None
        };
        let mut split = false;
        for (step, &mode) in modes.iter().enumerate() {
            if mode != StepMode::Map && !split {
                x = be.repeat_rows(&x, k)?;
                split = true;
            }
            let t = self.sampler.timesteps()[step] as f32;
            let (h, last) = match mode {
                StepMode::Map => self.last_features(&x, t, class_rows.as_ref(), LastLayers::Map)?,
                StepMode::SharedTrunk => {
                    let map_rows = be.every_kth_row(&x, k)?;
                    let rows = class_rows.as_ref();
                    self.last_features(&map_rows, t, rows, LastLayers::EveryMember)?
                }
                StepMode::Full => {
                    let rows = member_class_rows.as_ref();
                    self.last_features(&x, t, rows, LastLayers::PerRow)?
                }
            };
            let noise = StepNoise {
                streams: &streams,
                seed: self.seed,
                step: step as u32,
                rows_per_sample: if split { k } else { 1 },
            };
            let coeffs = self.sampler.step_coefficients(step);
            x = be.last_layer_step(&h, last, &coeffs, &x, Some(&noise))?;
            on_step(step);
        }
        if !split && k > 1 {
            x = be.repeat_rows(&x, k)?;
        }
        Ok(x)
    }

    /// The trunk's features at timestep `t` for the state rows `x` with their class rows, one
    /// row per row of the next state (repeated for every member with
    /// [`LastLayers::EveryMember`]), and the last layer that turns them into the model output
    /// (see [`LastLayers`]); sample-major, on the backend.
    fn last_features(
        &self,
        x: &Tensor,
        t: f32,
        class_rows: Option<&Tensor>,
        last: LastLayers,
    ) -> Result<(Tensor, LastLayer<'_>)> {
        let be = self.backend;
        let rows = x.shape()[0];
        let input = be.state_as_input(x, self.unet.config.center_input_sample)?;
        let feats = self.unet.step_features(be, t, rows)?;
        let temb = self.unet.embedding_from(be, &feats, class_rows)?;
        let h = self.unet.trunk_from(be, &input, &temb)?;
        Ok(match last {
            LastLayers::Map => (h, LastLayer::Single(&self.members.convs[0])),
            LastLayers::PerRow => (h, LastLayer::Members(&self.members)),
            LastLayers::EveryMember => (
                be.repeat_rows(&h, self.k())?,
                LastLayer::Members(&self.members),
            ),
        })
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
