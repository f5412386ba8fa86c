//! Noise schedules and the scheduler configuration of a diffusers checkpoint
//! (`scheduler/scheduler_config.json`).
//!
//! Betas and cumulative alpha products are reproduced the way diffusers builds them: in f32, with
//! `torch.linspace` for the linear schedules, the cosine `betas_for_alpha_bar` (max beta 0.999) in
//! f64 rounded to f32, `alphas = 1 - betas` in f32 and `torch.cumprod` (which on the CPU
//! accumulates in f64 and rounds every partial product to f32). `torch.linspace` computes some
//! elements with vector instructions whose rounding depends on the CPU, so betas agree with
//! PyTorch to within one f32 ulp rather than bit for bit.

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::{show, JsonConfig};
use crate::error::{Error, Result};

/// How the betas of the forward process are laid out over the training timesteps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)` (diffusers `"linear"`).
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end), T)^2` (diffusers `"scaled_linear"`).
    ScaledLinear,
    /// The cosine schedule of improved DDPM, betas capped at 0.999 (diffusers `"squaredcos_cap_v2"`).
    SquaredCosCapV2,
}

/// What the denoiser predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum PredictionType {
    /// The added noise (diffusers `"epsilon"`).
    Epsilon = 0,
    /// The velocity `sqrt(abar) eps - sqrt(1 - abar) x0` (diffusers `"v_prediction"`).
    VPrediction = 1,
    /// The clean sample `x0` (diffusers `"sample"`).
    Sample = 2,
}

/// How the inference timesteps are picked from the training timesteps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `(0..steps).rev() * (T / steps) + steps_offset` (diffusers `"leading"`).
    Leading,
    /// `round(arange(T, 0, -T / steps)) - 1` (diffusers `"trailing"`).
    Trailing,
    /// `round(linspace(0, T - 1, steps))`, descending (diffusers `"linspace"`).
    Linspace,
    /// OpenAI guided-diffusion's `space_timesteps` (`"guided_diffusion"`): DDIM takes
    /// `range(0, T, stride)` with the smallest stride that gives exactly `steps` timesteps
    /// (`timestep_respacing="ddimN"`); DDPM takes `round(i * (T - 1) / (steps - 1))`
    /// (respacing `"N"`). Every step moves to the next timestep of the list, as the respaced
    /// process does.
    GuidedDiffusion,
}

/// The variance of the noise DDPM adds at each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarianceType {
    /// The posterior variance `beta~_t`, clamped at 1e-20 (diffusers `"fixed_small"`).
    FixedSmall,
    /// The forward-process beta of the step (diffusers `"fixed_large"`).
    FixedLarge,
    /// Learned by the model (diffusers `"learned_range"`, guided-diffusion `learn_sigma`): the
    /// model's second half of output channels `v` interpolates the log variance,
    /// `frac * ln(beta) + (1 - frac) * ln(beta~)` with `frac = (v + 1) / 2`.
    LearnedRange,
}

impl BetaSchedule {
    /// The diffusers spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::SquaredCosCapV2 => "squaredcos_cap_v2",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [Self::Linear, Self::ScaledLinear, Self::SquaredCosCapV2]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

impl PredictionType {
    /// The diffusers spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }
    /// The integer code stored in [`StepCoefficients::prediction`](super::StepCoefficients).
    pub fn code(self) -> u32 {
        self as u32
    }
    fn parse(s: &str) -> Option<Self> {
        [Self::Epsilon, Self::VPrediction, Self::Sample]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

impl TimestepSpacing {
    /// The diffusers spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Trailing => "trailing",
            TimestepSpacing::Linspace => "linspace",
            TimestepSpacing::GuidedDiffusion => "guided_diffusion",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [
            Self::Leading,
            Self::Trailing,
            Self::Linspace,
            Self::GuidedDiffusion,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

impl VarianceType {
    /// The diffusers spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VarianceType::FixedSmall => "fixed_small",
            VarianceType::FixedLarge => "fixed_large",
            VarianceType::LearnedRange => "learned_range",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [Self::FixedSmall, Self::FixedLarge, Self::LearnedRange]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// The scheduler settings shared by diffusers' DDIM and DDPM schedulers.
///
/// Field names are the diffusers config keys. `variance_type` is used by DDPM only.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub variance_type: VarianceType,
    /// DDIM re-derives `eps` from the clipped `x0` (diffusers' `step(...,
    /// use_clipped_model_output=True)`, guided-diffusion's `ddim_sample`); a config key of this
    /// engine, false by default as in diffusers' pipelines.
    pub use_clipped_model_output: bool,
}

impl Default for SchedulerConfig {
    /// The defaults of diffusers' `DDIMScheduler` (and `variance_type` of `DDPMScheduler`).
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            variance_type: VarianceType::FixedSmall,
            use_clipped_model_output: false,
        }
    }
}

/// The pseudo-path named in errors of [`SchedulerConfig::set_override`].
pub const OVERRIDE_PATH: &str = "<scheduler override>";

/// The config keys [`SchedulerConfig::set_override`] accepts.
pub const KNOWN_KEYS: &[&str] = &[
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "clip_sample",
    "clip_sample_range",
    "set_alpha_to_one",
    "steps_offset",
    "prediction_type",
    "thresholding",
    "rescale_betas_zero_snr",
    "timestep_spacing",
    "variance_type",
    "use_clipped_model_output",
];

impl SchedulerConfig {
    /// Parses a diffusers `scheduler_config.json` (DDIMScheduler, DDPMScheduler, PNDMScheduler, ...
    /// share these keys). Missing keys take the `DDIMScheduler` defaults, as
    /// `DDIMScheduler.from_config` does; unknown keys are ignored. Features this engine does not
    /// implement (`thresholding: true`, non-null `trained_betas`, `rescale_betas_zero_snr: true`,
    /// other schedule/prediction/spacing/variance names) give [`Error::Unsupported`]; a value of
    /// the wrong JSON type (`null` included) or out of range gives [`Error::Config`]. `path` is
    /// only used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        Self::from_json(&JsonConfig::parse(text, path)?)
    }

    /// Reads and parses a diffusers `scheduler_config.json` (see [`Self::from_json_str`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&JsonConfig::open(path)?)
    }

    /// Parses an already-read `scheduler_config.json` (see [`Self::from_json_str`]).
    pub fn from_json(c: &JsonConfig) -> Result<Self> {
        let mut config = SchedulerConfig::default();
        config.apply(c)?;
        config.validate(c)?;
        Ok(config)
    }

    /// Sets one field by its diffusers key from a command-line override `key=value`. `value` is
    /// read as JSON (`1000`, `0.02`, `true`, `"linear"`), or else as a bare string (`linear`).
    /// Unlike in a config file, an unknown key is an error. Errors name [`OVERRIDE_PATH`].
    pub fn set_override(&mut self, key: &str, value: &str) -> Result<()> {
        let parsed: Value =
            serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        let entry = Map::from_iter([(key.to_string(), parsed)]);
        let c = JsonConfig::from_map(entry, Path::new(OVERRIDE_PATH));
        c.deny_unknown(KNOWN_KEYS)?;
        let mut updated = self.clone();
        updated.apply(&c)?;
        updated.validate(&c)?;
        *self = updated;
        Ok(())
    }

    /// Applies the entries of `c` this engine reads, in key order; other keys are ignored.
    fn apply(&mut self, c: &JsonConfig) -> Result<()> {
        for (key, value) in c.entries() {
            match key {
                "num_train_timesteps" => self.num_train_timesteps = c.convert(key, value)?,
                "beta_start" => self.beta_start = c.convert(key, value)?,
                "beta_end" => self.beta_end = c.convert(key, value)?,
                "clip_sample_range" => self.clip_sample_range = c.convert(key, value)?,
                "clip_sample" => self.clip_sample = c.convert(key, value)?,
                "set_alpha_to_one" => self.set_alpha_to_one = c.convert(key, value)?,
                "use_clipped_model_output" => {
                    self.use_clipped_model_output = c.convert(key, value)?
                }
                "steps_offset" => self.steps_offset = c.convert(key, value)?,
                "beta_schedule" => self.beta_schedule = named(c, key, value, BetaSchedule::parse)?,
                "prediction_type" => {
                    self.prediction_type = named(c, key, value, PredictionType::parse)?
                }
                "timestep_spacing" => {
                    self.timestep_spacing = named(c, key, value, TimestepSpacing::parse)?
                }
                "variance_type" => self.variance_type = named(c, key, value, VarianceType::parse)?,
                "trained_betas" if !value.is_null() => {
                    return Err(c.unsupported(key, show(value)));
                }
                "thresholding" | "rescale_betas_zero_snr" if c.convert(key, value)? => {
                    return Err(c.unsupported(key, show(value)));
                }
                // A null `trained_betas` and disabled features need nothing.
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks ranges that the JSON types do not.
    fn validate(&self, c: &JsonConfig) -> Result<()> {
        let bad = |key: &str, msg: String| c.err(key, msg);
        if self.num_train_timesteps == 0 {
            return Err(bad("num_train_timesteps", "must be at least 1".into()));
        }
        if self.beta_schedule != BetaSchedule::SquaredCosCapV2 {
            for (key, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                if !(v > 0.0 && v < 1.0) {
                    return Err(bad(key, format!("must lie in (0, 1), got {v}")));
                }
            }
        }
        if self.clip_sample && !(self.clip_sample_range.is_finite() && self.clip_sample_range > 0.0)
        {
            return Err(bad(
                "clip_sample_range",
                format!(
                    "must be finite and positive, got {}",
                    self.clip_sample_range
                ),
            ));
        }
        Ok(())
    }

    /// The training betas as diffusers holds them (f32 values, widened to f64), length
    /// `num_train_timesteps`.
    pub fn betas(&self) -> Vec<f64> {
        self.betas_f32().into_iter().map(f64::from).collect()
    }

    /// `cumprod(1 - betas)` as diffusers holds it (f32 values, widened to f64).
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let mut acc = 1.0f64;
        self.betas_f32()
            .into_iter()
            .map(|beta| {
                // torch.cumprod keeps the running product in f64 and stores it as f32.
                acc *= f64::from(1.0f32 - beta);
                f64::from(acc as f32)
            })
            .collect()
    }

    fn betas_f32(&self) -> Vec<f32> {
        let t = self.num_train_timesteps;
        match self.beta_schedule {
            BetaSchedule::Linear => torch_linspace_f32(self.beta_start, self.beta_end, t),
            BetaSchedule::ScaledLinear => {
                torch_linspace_f32(self.beta_start.sqrt(), self.beta_end.sqrt(), t)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            BetaSchedule::SquaredCosCapV2 => betas_for_alpha_bar_cosine(t, 0.999),
        }
    }

    /// The inference timesteps diffusers' `set_timesteps(steps)` produces (DDIM and DDPM agree),
    /// in sampling order (descending).
    ///
    /// Errors ([`Error::InvalidArgument`]) when `steps` is 0 or exceeds `num_train_timesteps`, and
    /// when diffusers' own arithmetic yields a timestep outside `0..num_train_timesteps` (leading
    /// spacing with a `steps_offset` that pushes the first step to T or beyond; trailing spacing
    /// for step counts where `np.arange` produces one element too many, ending at timestep -1,
    /// e.g. T = 1000 with 61 steps).
    pub fn inference_timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let t_train = self.num_train_timesteps;
        if steps == 0 || steps > t_train {
            return Err(Error::InvalidArgument(format!(
                "number of inference steps must lie in 1..={t_train} (num_train_timesteps), got {steps}"
            )));
        }
        let raw: Vec<i64> = match self.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = (t_train / steps) as i64;
                (0..steps as i64)
                    .rev()
                    .map(|i| i * ratio + self.steps_offset as i64)
                    .collect()
            }
            TimestepSpacing::Linspace => numpy_linspace(0.0, (t_train - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|v| v.round_ties_even() as i64)
                .collect(),
            TimestepSpacing::Trailing => {
                let ratio = t_train as f64 / steps as f64;
                numpy_arange(t_train as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|v| v.round_ties_even() as i64 - 1)
                    .collect()
            }
            TimestepSpacing::GuidedDiffusion => {
                // space_timesteps(T, [steps]): one section, `frac_stride` accumulated in f64 and
                // each index rounded half to even (Python's round).
                let frac_stride = if steps > 1 {
                    (t_train - 1) as f64 / (steps - 1) as f64
                } else {
                    1.0
                };
                let mut cur = 0.0f64;
                let mut taken = Vec::with_capacity(steps);
                for _ in 0..steps {
                    taken.push(cur.round_ties_even() as i64);
                    cur += frac_stride;
                }
                taken.sort_unstable();
                taken.dedup();
                taken.reverse();
                taken
            }
        };
        if let Some(&bad) = raw.iter().find(|&&t| t < 0 || t >= t_train as i64) {
            return Err(Error::InvalidArgument(format!(
                "{} timestep spacing with {steps} steps (num_train_timesteps {t_train}, \
                 steps_offset {}) yields timestep {bad}, outside 0..{t_train} \
                 (diffusers would index out of range); choose another number of steps",
                self.timestep_spacing.as_str(),
                self.steps_offset
            )));
        }
        Ok(raw.into_iter().map(|t| t as usize).collect())
    }

    /// The timesteps DDIM runs at: [`Self::inference_timesteps`], except with guided-diffusion
    /// spacing, where `range(0, T, stride)` with the smallest stride giving exactly `steps`
    /// timesteps (`timestep_respacing="ddimN"`); an error when no stride does.
    pub fn ddim_timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        if self.timestep_spacing != TimestepSpacing::GuidedDiffusion {
            return self.inference_timesteps(steps);
        }
        let t_train = self.num_train_timesteps;
        if steps == 0 || steps > t_train {
            return Err(Error::InvalidArgument(format!(
                "number of inference steps must lie in 1..={t_train} (num_train_timesteps), got {steps}"
            )));
        }
        let stride = (1..t_train.max(2))
            .find(|&i| t_train.div_ceil(i) == steps)
            .or((steps == t_train).then_some(1))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "guided-diffusion DDIM spacing: no stride gives exactly {steps} of \
                     {t_train} timesteps (as timestep_respacing=\"ddim{steps}\"); choose another \
                     number of steps"
                ))
            })?;
        Ok((0..t_train).step_by(stride).rev().collect())
    }
}

/// The string value `value` of `key` as the variant `parse` names; an unknown name is
/// [`Error::Unsupported`].
fn named<T>(
    c: &JsonConfig,
    key: &str,
    value: &Value,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T> {
    let name: String = c.convert(key, value)?;
    parse(&name).ok_or_else(|| c.unsupported(key, show(value)))
}

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU (scalar path): the step is computed
/// in f32, the first half counts up from `start` and the second half down from `end`.
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                s + step * i as f32
            } else {
                e - step * (n - i - 1) as f32
            }
        })
        .collect()
}

/// diffusers `betas_for_alpha_bar(T, max_beta, "cosine")`: f64 arithmetic, result rounded to f32.
fn betas_for_alpha_bar_cosine(n: usize, max_beta: f64) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// `np.linspace(start, stop, n)` (float64, endpoint included).
fn numpy_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// `np.arange(start, stop, step)` for float64: length `ceil((stop - start) / step)`, elements
/// `start`, `start + step`, then `start + i * ((start + step) - start)` as numpy's fill does.
fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let mut v = Vec::with_capacity(len);
    v.push(start);
    if len > 1 {
        let second = start + step;
        v.push(second);
        let delta = second - start;
        for i in 2..len {
            v.push(start + i as f64 * delta);
        }
    }
    v
}
