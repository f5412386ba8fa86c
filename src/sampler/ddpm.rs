//! Step coefficients of diffusers' `DDPMScheduler.step` (posterior mean of formula (7) of Ho et
//! al. 2020, plus fixed-variance noise).

use super::schedule::{SchedulerConfig, VarianceType};
use super::StepCoefficients;

/// The coefficients of the DDPM step from timestep `t` to `prev` (the next inference timestep,
/// or -1 after the last one, as diffusers' `previous_timestep`).
///
/// With `a_prev = alphas_cumprod[prev]` (1 when `prev < 0`), `current_beta_t = 1 - a_t / a_prev`:
/// the mean is `sqrt(a_prev) * current_beta_t / (1 - a_t) * x0 + sqrt(a_t / a_prev) * (1 - a_prev)
/// / (1 - a_t) * x_t`; the variance is `max((1 - a_prev) / (1 - a_t) * current_beta_t, 1e-20)`
/// (fixed_small) or `current_beta_t` (fixed_large), and `sqrt(variance) * z` is added for `t > 0`;
/// with learned_range the model's variance channels interpolate between the logs of those two
/// (see [`StepCoefficients::learned_range`]).
pub(super) fn coefficients(
    config: &SchedulerConfig,
    alphas_cumprod: &[f64],
    t: usize,
    prev: i64,
) -> StepCoefficients {
    let alpha_prod_t = alphas_cumprod[t];
    let alpha_prod_t_prev = if prev >= 0 {
        alphas_cumprod[prev as usize]
    } else {
        1.0
    };
    let beta_prod_t = 1.0 - alpha_prod_t;
    let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
    let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
    let current_beta_t = 1.0 - current_alpha_t;
    let small = ((beta_prod_t_prev / beta_prod_t) * current_beta_t).max(1e-20);
    let learned = config.variance_type == VarianceType::LearnedRange;
    let variance = match config.variance_type {
        VarianceType::FixedSmall | VarianceType::LearnedRange => small,
        VarianceType::FixedLarge => current_beta_t,
    };
    let std_dev_t = variance.max(0.0).sqrt();
    let noise_scale = match (t > 0, learned) {
        (false, _) => 0.0,
        (true, false) => std_dev_t as f32,
        (true, true) => 1.0,
    };
    StepCoefficients {
        timestep: t as u32,
        prev_timestep: prev as i32,
        alpha_prod_t: alpha_prod_t as f32,
        alpha_prod_t_prev: alpha_prod_t_prev as f32,
        beta_prod_t: beta_prod_t as f32,
        sqrt_alpha_prod_t: alpha_prod_t.sqrt() as f32,
        sqrt_beta_prod_t: beta_prod_t.sqrt() as f32,
        prediction: config.prediction_type.code(),
        clip: u32::from(config.clip_sample),
        clip_range: config.clip_sample_range as f32,
        variance: variance as f32,
        std_dev_t: std_dev_t as f32,
        pred_original_coeff: (alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t) as f32,
        pred_epsilon_coeff: 0.0,
        current_sample_coeff: (current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t) as f32,
        noise_scale,
        eps_from_clipped: 0,
        learned_range: u32::from(learned),
        min_log: small.ln() as f32,
        max_log: current_beta_t.ln() as f32,
    }
}
