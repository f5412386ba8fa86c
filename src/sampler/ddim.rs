//! Step coefficients of diffusers' `DDIMScheduler.step` (`use_clipped_model_output` from the
//! config), which is also guided-diffusion's `ddim_sample` with the respaced timesteps.

use super::schedule::SchedulerConfig;
use super::StepCoefficients;

/// The coefficients of the DDIM step from timestep `t` to `prev`.
///
/// diffusers' previous timestep is `t - T / steps` (integer division) whatever the spacing;
/// guided-diffusion's is the next respaced timestep (the caller decides). `alpha_prod_t_prev` is `final_alpha_cumprod` (1 with `set_alpha_to_one`, else
/// `alphas_cumprod[0]`) when it is negative. `variance = (1 - a_prev) / (1 - a_t) * (1 - a_t /
/// a_prev)`, `std_dev_t = eta * sqrt(variance)`, and the noise term `std_dev_t * z` is added when
/// `eta > 0`. The direction coefficient `sqrt(1 - a_prev - std_dev_t^2)` is clamped at 0 from
/// below, where f32 rounding could make diffusers' value NaN at `eta = 1`.
pub(super) fn coefficients(
    config: &SchedulerConfig,
    alphas_cumprod: &[f64],
    t: usize,
    prev: i64,
    eta: f64,
) -> StepCoefficients {
    let final_alpha_cumprod = if config.set_alpha_to_one {
        1.0
    } else {
        alphas_cumprod[0]
    };
    let alpha_prod_t = alphas_cumprod[t];
    let alpha_prod_t_prev = if prev >= 0 {
        alphas_cumprod[prev as usize]
    } else {
        final_alpha_cumprod
    };
    let beta_prod_t = 1.0 - alpha_prod_t;
    let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
    let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
    let std_dev_t = eta * variance.max(0.0).sqrt();
    let direction = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t)
        .max(0.0)
        .sqrt();
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
        pred_original_coeff: alpha_prod_t_prev.sqrt() as f32,
        pred_epsilon_coeff: direction as f32,
        current_sample_coeff: 0.0,
        noise_scale: if eta > 0.0 { std_dev_t as f32 } else { 0.0 },
        eps_from_clipped: u32::from(config.use_clipped_model_output),
        learned_range: 0,
        min_log: 0.0,
        max_log: 0.0,
    }
}
