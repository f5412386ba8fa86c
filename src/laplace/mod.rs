//! The last-layer Laplace posterior (docs/ARCHITECTURE.md, "The method"): fitting its curvature on training
//! images, the posterior file, and weight draws.
//!
//! Only the denoiser's last layer (`conv_out`, a 3x3 convolution `cin -> cout` with bias) is
//! Bayesian. Around the pretrained weights `w*` the posterior is Gaussian with precision
//! `H / sigma_noise^2 + prior_precision * I`, `H` the curvature of the denoising loss
//! `loss_n = sum_{positions, channels} (out_n - target_n)^2` over a fit set, one random
//! `t ~ U{0..T-1}` and one `eps ~ N(0, I)` per image, `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`.
//! The target is what the model predicts (the scheduler's `prediction_type`): `eps` for
//! epsilon models (the method as published), `v = sqrt(abar) eps - sqrt(1 - abar) x0` for
//! v-prediction models, `x0` for sample-prediction models.
//!
//! Two curvature estimates ([`Hessian`]):
//! - `ef-diag`: `H = 0.5 * sum_n g_n^2`, `g_n = d loss_n / d(w, b)`, the diagonal empirical
//!   Fisher exactly as laplace-torch's `DiagLaplace` computes it for `likelihood="regression"`:
//!   it evaluates the loss as `MSELoss(reduction="sum")` and multiplies every curvature by
//!   `factor = 0.5` to convert that loss to the Gaussian negative log-likelihood
//!   `0.5 * (out - target)^2` (unit noise). The factor is applied to the squared gradients of the
//!   summed squared error, as the reference code does, so for residuals of unit variance its
//!   expectation is `2 diag(J^T J)`, twice the Gauss-Newton diagonal below.
//! - `ggn-kron`: the exact generalised Gauss-Newton matrix of the same Gaussian likelihood
//!   (laplace-torch's regression GGN, `sum_n J_n^T J_n`, i.e. the Hessian of `0.5 * sum_n loss_n`).
//!   The layer is linear in its parameters, so with parameters ordered per output channel as
//!   `(w[co, ci, kh, kw] flattened over (ci, kh, kw), b[co])` it is exactly `I_cout ⊗ A`,
//!   `A = sum_{n, p} a a^T` over the im2col patches `a` of the layer input (trailing 1 for the
//!   bias); `A` is `(cin*9 + 1)^2`. The posterior precision is `I_cout ⊗ (A / sigma^2 + prior I)`,
//!   a full covariance per output channel.
//!
//! With learned-variance models (ADM's `out.2`) only the first `channels_in_loss` output
//! channels enter the loss and the posterior; the other channels get zero curvature and keep
//! their MAP weights in every draw.

mod fit;
mod posterior;

pub use fit::{
    fit, fit_draws, fit_with_inputs, make_fit_inputs, patch_order, select_images,
    CurvatureAccumulator, FitInputs, FitSet,
};
pub use posterior::{Posterior, PosteriorParts, FORMAT, FORMAT_VERSION};

use crate::error::{Error, Result};
use crate::sampler::PredictionType;

/// The curvature estimate of the posterior.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hessian {
    /// Diagonal empirical Fisher, `0.5 * sum_n g_n^2` (the reference method's choice).
    EfDiag,
    /// Exact Gauss-Newton `I_out ⊗ A`: a full covariance per output channel.
    GgnKron,
}

impl Hessian {
    /// The name used on the command line and in posterior files.
    pub fn as_str(self) -> &'static str {
        match self {
            Hessian::EfDiag => "ef-diag",
            Hessian::GgnKron => "ggn-kron",
        }
    }
    /// Parses `ef-diag` or `ggn-kron`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ef-diag" => Ok(Hessian::EfDiag),
            "ggn-kron" => Ok(Hessian::GgnKron),
            other => Err(Error::arg(format!(
                "unknown Hessian `{other}` (expected ef-diag or ggn-kron)"
            ))),
        }
    }
}

impl std::fmt::Display for Hessian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of a fit.
#[derive(Clone, Debug)]
pub struct FitOptions {
    pub hessian: Hessian,
    /// Isotropic prior precision (> 0). Default 1.
    pub prior_precision: f64,
    /// Observation noise `sigma` of the Gaussian likelihood (> 0). Default 1.
    pub sigma_noise: f64,
    /// Number of training images to use (evenly spaced over the sorted folder listing); `None`:
    /// all.
    pub images: Option<usize>,
    /// Images per trunk evaluation.
    pub batch: usize,
    /// Seed of the per-image timestep, noise and flip draws.
    pub seed: u64,
    /// Output channels that enter the loss (the first ones); `None`: as many as the model has
    /// input channels, i.e. all of them, or the mean half of a learned-variance model whose
    /// output stacks mean and variance channels (3 of 6 for ADM).
    pub out_channels_in_loss: Option<usize>,
    /// What the model predicts; sets the loss target. Take it from the scheduler config.
    pub prediction: PredictionType,
    /// Random horizontal flips of training images (probability 1/2), as in training.
    pub flip: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            hessian: Hessian::EfDiag,
            prior_precision: 1.0,
            sigma_noise: 1.0,
            images: None,
            batch: 8,
            seed: 0,
            out_channels_in_loss: None,
            prediction: PredictionType::Epsilon,
            flip: true,
        }
    }
}

impl FitOptions {
    /// Checks the settings; returns the number of output channels in the loss.
    pub(crate) fn validate(&self, in_channels: usize, out_channels: usize) -> Result<usize> {
        if !(self.prior_precision.is_finite() && self.prior_precision > 0.0) {
            return Err(Error::arg(format!(
                "prior precision must be finite and > 0, got {}",
                self.prior_precision
            )));
        }
        if !(self.sigma_noise.is_finite() && self.sigma_noise > 0.0) {
            return Err(Error::arg(format!(
                "sigma_noise must be finite and > 0, got {}",
                self.sigma_noise
            )));
        }
        if self.batch == 0 {
            return Err(Error::arg("fit batch size must be at least 1"));
        }
        if self.images == Some(0) {
            return Err(Error::arg("the fit needs at least one image"));
        }
        let c = self
            .out_channels_in_loss
            .unwrap_or(in_channels.min(out_channels));
        if c == 0 || c > out_channels || c > in_channels {
            return Err(Error::arg(format!(
                "{c} output channels in the loss, but the model maps {in_channels} to {out_channels} channels \
                 (the loss compares output channel c with input channel c)"
            )));
        }
        Ok(c)
    }
}
