//! Samplers with diffusers' DDIM and DDPM semantics.
//!
//! A [`Sampler`] holds the inference timesteps and, for every step, a [`StepCoefficients`]
//! record. The update of one element is the pure function [`apply_step`]; [`Sampler::step`] is
//! that function mapped over a buffer. The CPU backend runs it as it is; the CUDA backend runs its
//! port, `sampler_step_f32` of `kernels/sampler.cu`, on the device state (bit-identical in the
//! emulation, `tests/device_sampler.rs`). The update is
//! elementwise and identical for every element, so a buffer may hold one sample or a whole batch
//! in any layout (NHWC in the engine).
//!
//! Precision: coefficients are computed in f64 from the f32 `alphas_cumprod` diffusers holds and
//! rounded once to f32; [`apply_step`] runs in f32 with every multiply and add rounded separately
//! (no fused multiply-add). A CUDA port would match bit for bit using `__fmul_rn`, `__fadd_rn`,
//! `__fdiv_rn` (or compiles with `--fmad=false` and IEEE division); diffusers itself computes in
//! f32 tensors, and agreement with it is within a few f32 ulps of the output scale.
//!
//! Both schedulers have `init_noise_sigma = 1` and an identity `scale_model_input`: the initial
//! sample is standard normal noise and the model sees `x_t` unscaled at timestep `timesteps()[i]`.

mod ddim;
mod ddpm;
pub mod schedule;

pub use schedule::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing, VarianceType};

use crate::error::{Error, Result};

/// Which reverse process to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerKind {
    /// diffusers `DDIMScheduler.step` with this `eta` (0 = deterministic DDIM, 1 = DDPM-like
    /// variance); `eta` must lie in [0, 1].
    Ddim { eta: f64 },
    /// diffusers `DDPMScheduler.step` with the config's `variance_type`.
    Ddpm,
}

/// Everything the elementwise update of one step needs, as plain scalars (`#[repr(C)]`, 4-byte
/// fields) so a GPU kernel can take it by value.
///
/// With `x` the current sample, `m` the model output and `z` the noise, [`apply_step`] computes
/// `x0`, `eps` from `prediction`, clamps `x0` to `[-clip_range, clip_range]` when `clip != 0`, and
/// returns `pred_original_coeff * x0 + pred_epsilon_coeff * eps + current_sample_coeff * x +
/// noise_scale * z`. DDIM uses `pred_original_coeff = sqrt(alpha_prod_t_prev)`,
/// `pred_epsilon_coeff = sqrt(1 - alpha_prod_t_prev - std_dev_t^2)`, `noise_scale = std_dev_t`;
/// DDPM uses its posterior-mean coefficients and `noise_scale = sqrt(variance)` (0 at `t = 0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoefficients {
    /// The timestep the model was evaluated at.
    pub timestep: u32,
    /// The timestep this step moves to (DDIM: `t - T / steps`; DDPM: the next inference
    /// timestep); negative after the last step.
    pub prev_timestep: i32,
    /// `alphas_cumprod[t]`.
    pub alpha_prod_t: f32,
    /// `alphas_cumprod[prev]`, or the final value (DDIM: `final_alpha_cumprod`, DDPM: 1) when
    /// `prev < 0`.
    pub alpha_prod_t_prev: f32,
    /// `1 - alpha_prod_t`.
    pub beta_prod_t: f32,
    /// `sqrt(alpha_prod_t)`, used to turn the model output into `x0` and `eps`.
    pub sqrt_alpha_prod_t: f32,
    /// `sqrt(beta_prod_t)`, used to turn the model output into `x0` and `eps`.
    pub sqrt_beta_prod_t: f32,
    /// [`PredictionType::code`]: 0 epsilon, 1 v_prediction, 2 sample.
    pub prediction: u32,
    /// 1 when `x0` is clamped to `[-clip_range, clip_range]`, else 0.
    pub clip: u32,
    /// `clip_sample_range`.
    pub clip_range: f32,
    /// The variance of the step: DDIM `_get_variance(t, prev)`; DDPM the variance of
    /// `variance_type` (fixed_small clamped at 1e-20).
    pub variance: f32,
    /// DDIM `eta * sqrt(variance)`; DDPM `sqrt(variance)`.
    pub std_dev_t: f32,
    /// Coefficient of the (clipped) predicted original sample `x0`.
    pub pred_original_coeff: f32,
    /// Coefficient of the predicted noise `eps` (DDIM's direction term; 0 for DDPM).
    pub pred_epsilon_coeff: f32,
    /// Coefficient of the current sample `x_t` (DDPM's posterior mean; 0 for DDIM).
    pub current_sample_coeff: f32,
    /// Coefficient of the fresh standard normal noise; 0 when the step adds none. With a
    /// learned variance it only marks that the step adds noise (1), whose scale comes from
    /// the model.
    pub noise_scale: f32,
    /// 1 when DDIM's `eps` is re-derived from the clipped `x0`, `(x - sqrt_alpha * x0) /
    /// sqrt_beta` (`use_clipped_model_output`, guided-diffusion's DDIM); else 0.
    pub eps_from_clipped: u32,
    /// 1 when the noise scale is learned: the model output has a second half of channels `v`
    /// and the step adds `exp(0.5 * (frac * max_log + (1 - frac) * min_log)) * z`, `frac = (v +
    /// 1) / 2` (`variance_type` "learned_range"); else 0.
    pub learned_range: u32,
    /// `ln(max(beta~_t, 1e-20))`, the posterior log variance (learned range only).
    pub min_log: f32,
    /// `ln(current_beta_t)` (learned range only).
    pub max_log: f32,
}

/// The update of one element at one step: `model_out` is the network output at `x`, `noise` a
/// standard normal draw (ignored when `c.noise_scale == 0`). f32 throughout, each operation
/// rounded separately; terms whose coefficient is 0 are skipped, so their inputs may be
/// non-finite (e.g. `eps` for a sample-predicting model at `beta_prod_t = 0`). For a learned
/// variance use [`apply_step_learned`].
#[inline]
pub fn apply_step(c: &StepCoefficients, model_out: f32, x: f32, noise: f32) -> f32 {
    apply_step_learned(c, model_out, 0.0, x, noise)
}

/// [`apply_step`] with the model's variance output `var_out` at the element (used when
/// `c.learned_range != 0`, ignored otherwise).
#[inline]
pub fn apply_step_learned(
    c: &StepCoefficients,
    model_out: f32,
    var_out: f32,
    x: f32,
    noise: f32,
) -> f32 {
    let sa = c.sqrt_alpha_prod_t;
    let sb = c.sqrt_beta_prod_t;
    let mut x0 = match c.prediction {
        0 => (x - sb * model_out) / sa,
        1 => sa * x - sb * model_out,
        _ => model_out,
    };
    // DDIM derives eps before x0 is clipped (unless it is re-derived from the clipped x0).
    let mut eps = if c.pred_epsilon_coeff != 0.0 {
        match c.prediction {
            0 => model_out,
            1 => sa * model_out + sb * x,
            _ => (x - sa * x0) / sb,
        }
    } else {
        0.0
    };
    if c.clip != 0 {
        x0 = x0.clamp(-c.clip_range, c.clip_range);
        if c.eps_from_clipped != 0 && c.pred_epsilon_coeff != 0.0 {
            eps = (x - sa * x0) / sb;
        }
    }
    let mut out = c.pred_original_coeff * x0;
    if c.pred_epsilon_coeff != 0.0 {
        out += c.pred_epsilon_coeff * eps;
    }
    if c.current_sample_coeff != 0.0 {
        out += c.current_sample_coeff * x;
    }
    if c.noise_scale != 0.0 {
        let scale = if c.learned_range != 0 {
            let frac = (var_out + 1.0) / 2.0;
            (0.5 * (frac * c.max_log + (1.0 - frac) * c.min_log)).exp()
        } else {
            c.noise_scale
        };
        out += scale * noise;
    }
    out
}

/// A configured sampler for a fixed number of inference steps.
#[derive(Clone, Debug)]
pub struct Sampler {
    kind: SamplerKind,
    timesteps: Vec<usize>,
    coefficients: Vec<StepCoefficients>,
}

impl Sampler {
    /// Builds the sampler for `steps` inference steps. Errors ([`Error::InvalidArgument`]) when
    /// `steps` is 0 or above `num_train_timesteps`, when the spacing yields a timestep out of
    /// range (see [`SchedulerConfig::inference_timesteps`]), or when `eta` is not in [0, 1].
    pub fn new(config: &SchedulerConfig, kind: SamplerKind, steps: usize) -> Result<Self> {
        if let SamplerKind::Ddim { eta } = kind {
            if !(0.0..=1.0).contains(&eta) {
                return Err(Error::InvalidArgument(format!(
                    "DDIM eta must lie in [0, 1], got {eta}"
                )));
            }
        }
        let timesteps = match kind {
            SamplerKind::Ddim { .. } => config.ddim_timesteps(steps)?,
            SamplerKind::Ddpm => config.inference_timesteps(steps)?,
        };
        let alphas_cumprod = config.alphas_cumprod();
        // diffusers' DDIM steps back by T / steps whatever the spacing; a respaced
        // (guided-diffusion) process moves to the next timestep of its list.
        let respaced = config.timestep_spacing == TimestepSpacing::GuidedDiffusion;
        let next = |i: usize| timesteps.get(i + 1).map_or(-1, |&t| t as i64);
        let coefficients = match kind {
            SamplerKind::Ddim { eta } => (0..steps)
                .map(|i| {
                    let t = timesteps[i];
                    let prev = if respaced {
                        next(i)
                    } else {
                        t as i64 - (config.num_train_timesteps / steps) as i64
                    };
                    ddim::coefficients(config, &alphas_cumprod, t, prev, eta)
                })
                .collect(),
            SamplerKind::Ddpm => (0..steps)
                .map(|i| ddpm::coefficients(config, &alphas_cumprod, timesteps[i], next(i)))
                .collect(),
        };
        Ok(Sampler {
            kind,
            timesteps,
            coefficients,
        })
    }

    /// The sampler kind it was built with.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The number of inference steps.
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The timesteps at which the model is evaluated, in sampling order; exactly diffusers'
    /// `set_timesteps` result.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// Whether the steps need the model's variance channels (a learned variance).
    pub fn learned_variance(&self) -> bool {
        self.coefficients.iter().any(|c| c.learned_range != 0)
    }

    /// Whether step `i` consumes fresh Gaussian noise: DDPM for `t > 0`, DDIM when `eta > 0` and
    /// the step's variance is positive. Panics if `i >= num_steps()`.
    pub fn needs_noise(&self, i: usize) -> bool {
        self.coefficients[i].noise_scale != 0.0
    }

    /// The scalar coefficients of step `i` (see [`apply_step`]). Panics if `i >= num_steps()`.
    pub fn step_coefficients(&self, i: usize) -> StepCoefficients {
        self.coefficients[i]
    }

    /// Updates `sample` (x_t, any layout, one sample or a batch) in place to x_prev, given the
    /// model output at step `i`. `noise` (same length) is required when [`Self::needs_noise`]
    /// holds and ignored otherwise.
    pub fn step(
        &self,
        i: usize,
        model_out: &[f32],
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) -> Result<()> {
        let c = self.coefficients.get(i).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "step index {i} out of range for a {}-step sampler",
                self.num_steps()
            ))
        })?;
        if c.learned_range != 0 {
            return Err(Error::InvalidArgument(
                "a learned variance needs the model's variance channels: use \
                 Backend::sampler_step with the whole model output"
                    .into(),
            ));
        }
        if model_out.len() != sample.len() {
            return Err(Error::InvalidArgument(format!(
                "model output has {} elements, sample has {}",
                model_out.len(),
                sample.len()
            )));
        }
        if let Some(z) = noise {
            if z.len() != sample.len() {
                return Err(Error::InvalidArgument(format!(
                    "noise has {} elements, sample has {}",
                    z.len(),
                    sample.len()
                )));
            }
        }
        match (c.noise_scale != 0.0, noise) {
            (true, None) => {
                return Err(Error::InvalidArgument(format!(
                    "step {i} (timestep {}) adds noise, but none was given",
                    c.timestep
                )))
            }
            (true, Some(z)) => {
                for ((x, &m), &n) in sample.iter_mut().zip(model_out).zip(z) {
                    *x = apply_step(c, m, *x, n);
                }
            }
            (false, _) => {
                for (x, &m) in sample.iter_mut().zip(model_out) {
                    *x = apply_step(c, m, *x, 0.0);
                }
            }
        }
        Ok(())
    }
}
