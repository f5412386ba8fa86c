//! guided-diffusion's samplers as this engine runs them: `space_timesteps` for `ddimN` and `N`,
//! DDIM with eps re-derived from the clipped x0 (`ddim_sample`), DDPM with the learned range
//! variance (`p_sample` of a `learn_sigma` model). The references are guided-diffusion's
//! formulas written out here in f64, independently of `uqengine::sampler`.

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::{Backend, StepNoise};
use uqengine::rng::{Purpose, Stream};
use uqengine::sampler::{Sampler, SamplerKind, SchedulerConfig, TimestepSpacing, VarianceType};

fn guided(variance: VarianceType) -> SchedulerConfig {
    SchedulerConfig {
        timestep_spacing: TimestepSpacing::GuidedDiffusion,
        use_clipped_model_output: true,
        variance_type: variance,
        ..SchedulerConfig::default()
    }
}

#[test]
fn respaced_timesteps_follow_space_timesteps() {
    let cfg = guided(VarianceType::LearnedRange);
    // "ddim10": stride 100; "ddim7": the smallest stride with len(range(0, 1000, i)) == 7 is 143.
    let ddim = |n| Sampler::new(&cfg, SamplerKind::Ddim { eta: 0.0 }, n).unwrap();
    assert_eq!(
        ddim(10).timesteps(),
        (0..10).rev().map(|i| i * 100).collect::<Vec<_>>()
    );
    assert_eq!(
        ddim(7).timesteps(),
        (0..7).rev().map(|i| i * 143).collect::<Vec<_>>()
    );
    // "10": round(i * 999 / 9) = i * 111.
    let ddpm = Sampler::new(&cfg, SamplerKind::Ddpm, 10).unwrap();
    assert_eq!(
        ddpm.timesteps(),
        (0..10).rev().map(|i| i * 111).collect::<Vec<_>>()
    );
    // "4" of 100: frac_stride 33, indices 0, 33, 66, 99; "3" of 100: 49.5 -> 0, round(49.5) = 50
    // (half to even: 50 is even), 99.
    let small = SchedulerConfig {
        num_train_timesteps: 100,
        ..cfg.clone()
    };
    let t = |n| {
        Sampler::new(&small, SamplerKind::Ddpm, n)
            .unwrap()
            .timesteps()
            .to_vec()
    };
    assert_eq!(t(4), vec![99, 66, 33, 0]);
    assert_eq!(t(3), vec![99, 50, 0]);
    // No stride gives 999 of 1000 DDIM steps.
    let e = Sampler::new(&cfg, SamplerKind::Ddim { eta: 0.0 }, 999).unwrap_err();
    assert!(e.to_string().contains("ddim999"), "{e}");
}

/// One element through guided-diffusion's `ddim_sample` (f64): x0 from eps, clipped, eps
/// re-derived from the clipped x0, `x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps +
/// sigma z`.
fn guided_ddim(a: f64, a_prev: f64, eta: f64, x: f64, eps: f64, z: f64, clip: bool) -> f64 {
    let mut x0 = (1.0 / a).sqrt() * x - (1.0 / a - 1.0).sqrt() * eps;
    let mut e = eps;
    if clip {
        x0 = x0.clamp(-1.0, 1.0);
        e = ((1.0 / a).sqrt() * x - x0) / (1.0 / a - 1.0).sqrt();
    }
    let sigma = eta * ((1.0 - a_prev) / (1.0 - a)).sqrt() * (1.0 - a / a_prev).sqrt();
    a_prev.sqrt() * x0 + (1.0 - a_prev - sigma * sigma).sqrt() * e + sigma * z
}

/// One element through guided-diffusion's `p_sample` with a learned range variance (f64).
fn guided_ddpm(a: f64, a_prev: f64, x: f64, eps: f64, v: f64, z: f64, last: bool) -> f64 {
    let beta = 1.0 - a / a_prev;
    let x0 = ((1.0 / a).sqrt() * x - (1.0 / a - 1.0).sqrt() * eps).clamp(-1.0, 1.0);
    let mean = beta * a_prev.sqrt() / (1.0 - a) * x0
        + (1.0 - a_prev) * (1.0 - beta).sqrt() / (1.0 - a) * x;
    if last {
        return mean;
    }
    let min_log = (beta * (1.0 - a_prev) / (1.0 - a)).ln();
    let max_log = beta.ln();
    let frac = (v + 1.0) / 2.0;
    mean + (0.5 * (frac * max_log + (1.0 - frac) * min_log)).exp() * z
}

#[test]
fn guided_updates_match_the_formulas() {
    let cpu = CpuBackend::new();
    let (s, c) = (4, 3);
    let indices = [3usize, 11];
    let streams = cpu.sample_streams(&indices).unwrap();
    let n = indices.len() * s * s * c;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 5.0)
        .collect();
    // Prediction channels then variance channels per pixel; large eps so that x0 clips.
    let m: Vec<f32> = (0..2 * n)
        .map(|i| ((i * 53 % 29) as f32 - 14.0) / 4.0)
        .collect();
    let cfg = guided(VarianceType::LearnedRange);
    let acp = cfg.alphas_cumprod();
    for kind in [
        SamplerKind::Ddim { eta: 0.0 },
        SamplerKind::Ddim { eta: 0.6 },
        SamplerKind::Ddpm,
    ] {
        let sampler = Sampler::new(&cfg, kind, 5).unwrap();
        let ts = sampler.timesteps().to_vec();
        for step in 0..ts.len() {
            let a = acp[ts[step]];
            let a_prev = ts.get(step + 1).map_or(1.0, |&t| acp[t]);
            let got = cpu
                .sampler_step(
                    &sampler.step_coefficients(step),
                    &cpu.upload(&[indices.len(), s, s, 2 * c], &m).unwrap(),
                    &cpu.state_from_host(&[indices.len(), s, s, c], &x).unwrap(),
                    Some(&StepNoise {
                        streams: &streams,
                        seed: 5,
                        step: step as u32,
                        rows_per_sample: 1,
                    }),
                )
                .unwrap();
            let got = cpu.state_to_host(&got).unwrap();
            // The step noise: each sample's stream in NCHW order.
            let mut z = Vec::new();
            for &i in &indices {
                let mut zi = vec![0.0f32; c * s * s];
                Stream::new(5, i as u64, Purpose::StepNoise, step as u32).fill_normal(&mut zi);
                z.extend(uqengine::layout::nchw_to_nhwc(&zi, 1, c, s, s));
            }
            for p in 0..n / c {
                for ch in 0..c {
                    let i = p * c + ch;
                    let (xv, e, v, zv) = (
                        x[i] as f64,
                        m[p * 2 * c + ch] as f64,
                        m[p * 2 * c + c + ch] as f64,
                        z[i] as f64,
                    );
                    let want = match kind {
                        SamplerKind::Ddim { eta } => guided_ddim(a, a_prev, eta, xv, e, zv, true),
                        SamplerKind::Ddpm => {
                            guided_ddpm(a, a_prev, xv, e, v, zv, step + 1 == ts.len())
                        }
                    };
                    let err = (got[i] as f64 - want).abs();
                    assert!(
                        err <= 2e-5 * (1.0 + want.abs()),
                        "{kind:?} step {step} element {i}: {} vs {want}",
                        got[i]
                    );
                }
            }
        }
    }
}
