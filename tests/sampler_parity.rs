//! Parity of the DDIM/DDPM samplers with diffusers, and properties of the Philox streams.
//!
//! References come from `tools/make_scheduler_fixtures.py` (diffusers' DDIMScheduler and
//! DDPMScheduler, PyTorch f32). Tolerance for samples: `|got - want| <= 1e-5 * max(1, max|want|)`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use uqengine::rng::{philox4x32_10, Purpose, Stream};
use uqengine::sampler::schedule::OVERRIDE_PATH;
use uqengine::sampler::{
    apply_step, BetaSchedule, PredictionType, Sampler, SamplerKind, SchedulerConfig,
    TimestepSpacing, VarianceType,
};
use uqengine::Error;

const SAMPLE_TOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scheduler")
        .join(name)
}

/// A little-endian `.npy` array (`<f4` or `<i4`, C order) as (shape, values widened to f64).
fn read_npy(name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(fixture(name)).expect("read npy fixture");
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{name}: not an npy file");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("npy header");
    assert!(
        header.contains("'fortran_order': False"),
        "{name}: {header}"
    );
    let descr = if header.contains("'<f4'") {
        "f4"
    } else if header.contains("'<i4'") {
        "i4"
    } else {
        panic!("{name}: unsupported dtype in {header}")
    };
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("npy shape");
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("npy dim"))
        .collect();
    let data = &bytes[start + header_len..];
    let values: Vec<f64> = data
        .chunks_exact(4)
        .map(|c| {
            let w = [c[0], c[1], c[2], c[3]];
            match descr {
                "f4" => f64::from(f32::from_le_bytes(w)),
                _ => f64::from(i32::from_le_bytes(w)),
            }
        })
        .collect();
    assert_eq!(values.len(), shape.iter().product::<usize>(), "{name}");
    (shape, values)
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture("cases.json")).expect("read cases.json");
    serde_json::from_str(&text).expect("parse cases.json")
}

fn case_config(case: &Value) -> SchedulerConfig {
    let text = case["config"].to_string();
    SchedulerConfig::from_json_str(&text, Path::new("cases.json")).expect("fixture config parses")
}

fn case_kind(case: &Value) -> SamplerKind {
    match case["kind"].as_str().unwrap() {
        "ddim" => SamplerKind::Ddim {
            eta: case["eta"].as_f64().unwrap(),
        },
        _ => SamplerKind::Ddpm,
    }
}

/// Largest `|got - want|` divided by `max(1, max|want|)`.
fn scaled_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / scale)
        .fold(0.0, f32::max)
}

fn as_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn betas_and_alphas_cumprod_match_torch_to_a_few_ulps() {
    let meta = cases();
    let (shape, values) = read_npy("schedules.npy");
    let t = shape[2];
    for (s, sched) in meta["schedules"].as_array().unwrap().iter().enumerate() {
        let config = SchedulerConfig::from_json_str(&sched.to_string(), Path::new("schedules"))
            .expect("schedule config");
        let want_betas = &values[(2 * s) * t..(2 * s + 1) * t];
        let want_acp = &values[(2 * s + 1) * t..(2 * s + 2) * t];
        let (betas, acp) = (config.betas(), config.alphas_cumprod());
        assert_eq!(betas.len(), t);
        let rel = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / y.abs())
                .fold(0.0f64, f64::max)
        };
        let (rb, ra) = (rel(&betas, want_betas), rel(&acp, want_acp));
        eprintln!("{sched}: max rel err betas {rb:.2e}, alphas_cumprod {ra:.2e}");
        // torch.linspace rounds some elements differently (CPU-dependent vector path): one ulp,
        // two after squaring for scaled_linear.
        assert!(rb <= 4e-7, "{sched}: betas rel err {rb}");
        assert!(ra <= 1e-6, "{sched}: alphas_cumprod rel err {ra}");
    }
}

#[test]
fn timesteps_match_diffusers_for_10_and_50_steps() {
    for case in cases()["cases"].as_array().unwrap() {
        let config = case_config(case);
        for (steps, want) in case["timesteps"].as_object().unwrap() {
            let steps: usize = steps.parse().unwrap();
            let want: Vec<usize> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let sampler = Sampler::new(&config, case_kind(case), steps).unwrap();
            assert_eq!(sampler.timesteps(), &want[..], "{} {steps}", case["name"]);
        }
    }
}

#[test]
fn timesteps_match_diffusers_for_every_step_count_up_to_1000() {
    let meta = cases();
    let (shape, digest) = read_npy("timestep_digest.npy");
    for (d, spec) in meta["digests"].as_array().unwrap().iter().enumerate() {
        let config = SchedulerConfig::from_json_str(&spec.to_string(), Path::new("digests"))
            .expect("digest config");
        for steps in 1..=shape[1] {
            let row = (d * shape[1] + steps - 1) * 2;
            let (len, wsum) = (digest[row] as i64, digest[row + 1] as i64);
            let got = config.inference_timesteps(steps);
            if len < 0 {
                assert!(
                    matches!(got, Err(Error::InvalidArgument(_))),
                    "{spec} steps {steps}: diffusers yields an out-of-range timestep, got {got:?}"
                );
                continue;
            }
            let ts = got.unwrap_or_else(|e| panic!("{spec} steps {steps}: {e}"));
            let got_wsum: i64 = ts
                .iter()
                .enumerate()
                .map(|(i, &t)| (i as i64 + 1) * t as i64)
                .sum();
            assert_eq!(
                (ts.len() as i64, got_wsum),
                (len, wsum),
                "{spec} steps {steps}"
            );
        }
    }
}

#[test]
fn single_steps_match_diffusers() {
    let meta = cases();
    let n = meta["elements"].as_u64().unwrap() as usize;
    let (_, rows) = read_npy("steps.npy");
    let mut worst = 0.0f32;
    for case in meta["cases"].as_array().unwrap() {
        let config = case_config(case);
        for probe in case["probes"].as_array().unwrap() {
            let steps = probe["steps"].as_u64().unwrap() as usize;
            let i = probe["index"].as_u64().unwrap() as usize;
            let base = probe["row"].as_u64().unwrap() as usize * 4 * n;
            let part = |k: usize| as_f32(&rows[base + k * n..base + (k + 1) * n]);
            let (mut x, model_out, noise, want) = (part(0), part(1), part(2), part(3));
            let sampler = Sampler::new(&config, case_kind(case), steps).unwrap();
            let what = format!("{} steps {steps} index {i}", case["name"]);
            assert_eq!(
                sampler.timesteps()[i] as u64,
                probe["timestep"].as_u64().unwrap(),
                "{what}"
            );
            let noise_used = probe["noise_used"].as_bool().unwrap();
            assert_eq!(sampler.needs_noise(i), noise_used, "{what}");
            let noise = noise_used.then_some(&noise[..]);
            sampler.step(i, &model_out, &mut x, noise).unwrap();
            let err = scaled_error(&x, &want);
            worst = worst.max(err);
            assert!(err <= SAMPLE_TOL, "{what}: scaled error {err:.3e}");
        }
    }
    eprintln!("single steps: worst scaled error {worst:.3e}");
}

/// The toy denoiser of `tools/make_scheduler_fixtures.py`, in the same f32 operation order.
fn toy_model(x: &[f32], t: usize) -> Vec<f32> {
    let bias = (0.05 * (t % 7) as f64 - 0.1) as f32;
    x.iter()
        .map(|&v| 0.7f32 * v + 0.2f32 * v / (1.0f32 + v * v) + bias)
        .collect()
}

#[test]
fn ten_step_runs_match_diffusers() {
    let meta = cases();
    let n = meta["elements"].as_u64().unwrap() as usize;
    let (shape, rows) = read_npy("trajectories.npy");
    let steps = shape[1] - 2;
    let mut worst = 0.0f32;
    for case in meta["cases"].as_array().unwrap() {
        let config = case_config(case);
        let sampler = Sampler::new(&config, case_kind(case), steps).unwrap();
        let base = case["trajectory_row"].as_u64().unwrap() as usize * shape[1] * n;
        let row = |k: usize| as_f32(&rows[base + k * n..base + (k + 1) * n]);
        let mut x = row(0);
        for i in 0..steps {
            let m = toy_model(&x, sampler.timesteps()[i]);
            let noise = row(1 + i);
            let noise = sampler.needs_noise(i).then_some(&noise[..]);
            sampler.step(i, &m, &mut x, noise).unwrap();
        }
        let err = scaled_error(&x, &row(steps + 1));
        worst = worst.max(err);
        assert!(
            err <= SAMPLE_TOL,
            "{}: scaled error {err:.3e}",
            case["name"]
        );
    }
    eprintln!("10-step runs: worst scaled error {worst:.3e}");
}

#[test]
fn step_is_apply_step_on_every_element_of_a_batch() {
    let config = SchedulerConfig {
        prediction_type: PredictionType::VPrediction,
        ..SchedulerConfig::default()
    };
    let sampler = Sampler::new(&config, SamplerKind::Ddim { eta: 0.5 }, 20).unwrap();
    let mut stream = Stream::new(9, 0, Purpose::InitialNoise, 0);
    let mut x = vec![0.0f32; 37];
    let mut m = vec![0.0f32; 37];
    let mut z = vec![0.0f32; 37];
    stream.fill_normal(&mut x);
    stream.fill_normal(&mut m);
    stream.fill_normal(&mut z);
    let i = 3;
    let c = sampler.step_coefficients(i);
    let want: Vec<f32> = (0..37).map(|j| apply_step(&c, m[j], x[j], z[j])).collect();
    sampler.step(i, &m, &mut x, Some(&z)).unwrap();
    assert_eq!(x, want);
    assert_eq!(c.timestep as usize, sampler.timesteps()[i]);
    assert_eq!(c.prev_timestep, c.timestep as i32 - 50);
}

#[test]
fn saved_diffusers_config_file_parses() {
    let path = fixture("scheduler_config.json");
    let config = SchedulerConfig::from_file(&path).unwrap();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        config.num_train_timesteps as u64,
        json["num_train_timesteps"].as_u64().unwrap()
    );
    assert_eq!(config.beta_start, json["beta_start"].as_f64().unwrap());
    assert_eq!(config.beta_end, json["beta_end"].as_f64().unwrap());
    assert_eq!(config.beta_schedule.as_str(), json["beta_schedule"]);
    assert_eq!(config.clip_sample, json["clip_sample"].as_bool().unwrap());
    assert_eq!(
        config.set_alpha_to_one,
        json["set_alpha_to_one"].as_bool().unwrap()
    );
    assert_eq!(
        config.steps_offset as u64,
        json["steps_offset"].as_u64().unwrap()
    );
    assert_eq!(config.prediction_type.as_str(), json["prediction_type"]);
    assert_eq!(config.timestep_spacing.as_str(), json["timestep_spacing"]);
}

#[test]
fn missing_keys_take_ddim_defaults_and_unknown_keys_are_ignored() {
    let text = r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true, "beta_end": 0.012}"#;
    let config = SchedulerConfig::from_json_str(text, Path::new("x.json")).unwrap();
    let want = SchedulerConfig {
        beta_end: 0.012,
        ..SchedulerConfig::default()
    };
    assert_eq!(config, want);
}

fn parse_err(text: &str) -> Error {
    SchedulerConfig::from_json_str(text, Path::new("sched.json")).unwrap_err()
}

fn assert_unsupported(err: Error, want_key: &str, want_value: &str) {
    match err {
        Error::Unsupported { path, key, value } => {
            assert_eq!(path, Path::new("sched.json"));
            assert_eq!(key, want_key);
            assert!(value.contains(want_value), "{value}");
        }
        other => panic!("expected Unsupported for {want_key}, got {other:?}"),
    }
}

#[test]
fn unsupported_config_values_name_key_and_value() {
    let cases = [
        (
            r#"{"beta_schedule": "sigmoid"}"#,
            "beta_schedule",
            "sigmoid",
        ),
        (r#"{"thresholding": true}"#, "thresholding", "true"),
        (r#"{"trained_betas": [0.1, 0.2]}"#, "trained_betas", "0.1"),
        (
            r#"{"rescale_betas_zero_snr": true}"#,
            "rescale_betas_zero_snr",
            "true",
        ),
        (r#"{"prediction_type": "flow"}"#, "prediction_type", "flow"),
        (
            r#"{"timestep_spacing": "karras"}"#,
            "timestep_spacing",
            "karras",
        ),
        (
            r#"{"variance_type": "learned"}"#,
            "variance_type",
            "learned",
        ),
    ];
    for (text, key, value) in cases {
        assert_unsupported(parse_err(text), key, value);
    }
    // Disabled features and a null trained_betas are fine.
    let ok = r#"{"thresholding": false, "rescale_betas_zero_snr": false, "trained_betas": null}"#;
    assert!(SchedulerConfig::from_json_str(ok, Path::new("sched.json")).is_ok());
}

#[test]
fn wrong_json_types_and_ranges_name_the_key() {
    let cases = [
        (r#"{"clip_sample": "yes"}"#, "clip_sample"),
        (r#"{"num_train_timesteps": 1000.5}"#, "num_train_timesteps"),
        (r#"{"num_train_timesteps": 0}"#, "num_train_timesteps"),
        (r#"{"beta_start": "0.1"}"#, "beta_start"),
        (r#"{"beta_end": 1.5}"#, "beta_end"),
        (r#"{"steps_offset": -1}"#, "steps_offset"),
        (r#"{"beta_schedule": 3}"#, "beta_schedule"),
        (r#"{"thresholding": null}"#, "thresholding"),
        (r#"{"clip_sample_range": -1}"#, "clip_sample_range"),
    ];
    for (text, want_key) in cases {
        match parse_err(text) {
            Error::Config { path, key, .. } => {
                assert_eq!(path, Path::new("sched.json"));
                assert_eq!(key, want_key, "{text}");
            }
            other => panic!("{text}: expected Config error, got {other:?}"),
        }
    }
    assert!(matches!(parse_err("{\"beta_end\": "), Error::Json { .. }));
    assert!(matches!(parse_err("[1, 2]"), Error::Json { .. }));
    let missing = SchedulerConfig::from_file(Path::new("/nonexistent/scheduler_config.json"));
    assert!(matches!(missing, Err(Error::Io { .. })));
}

#[test]
fn overrides_set_fields_by_diffusers_key() {
    let mut config = SchedulerConfig::default();
    config
        .set_override("beta_schedule", "scaled_linear")
        .unwrap();
    config.set_override("num_train_timesteps", "500").unwrap();
    config.set_override("clip_sample", "false").unwrap();
    config
        .set_override("prediction_type", "\"v_prediction\"")
        .unwrap();
    config.set_override("timestep_spacing", "trailing").unwrap();
    config.set_override("variance_type", "fixed_large").unwrap();
    config.set_override("beta_end", "0.012").unwrap();
    assert_eq!(config.beta_schedule, BetaSchedule::ScaledLinear);
    assert_eq!(config.num_train_timesteps, 500);
    assert!(!config.clip_sample);
    assert_eq!(config.prediction_type, PredictionType::VPrediction);
    assert_eq!(config.timestep_spacing, TimestepSpacing::Trailing);
    assert_eq!(config.variance_type, VarianceType::FixedLarge);
    assert_eq!(config.beta_end, 0.012);

    let before = config.clone();
    let err = config.set_override("beta_schedul", "linear").unwrap_err();
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "beta_schedul"),
        "{err}"
    );
    let err = config.set_override("prediction_type", "flow").unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { path, key, .. }
            if key == "prediction_type" && path == Path::new(OVERRIDE_PATH)),
        "{err}"
    );
    let err = config.set_override("steps_offset", "one").unwrap_err();
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "steps_offset"),
        "{err}"
    );
    let err = config.set_override("beta_start", "2").unwrap_err();
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "beta_start"),
        "{err}"
    );
    assert_eq!(
        config, before,
        "a rejected override leaves the config unchanged"
    );
}

#[test]
fn bad_sampler_arguments_are_rejected() {
    let config = SchedulerConfig::default();
    let invalid = |r: uqengine::Result<Sampler>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(invalid(Sampler::new(&config, SamplerKind::Ddpm, 0)));
    assert!(invalid(Sampler::new(
        &config,
        SamplerKind::Ddim { eta: 0.0 },
        1001
    )));
    assert!(invalid(Sampler::new(
        &config,
        SamplerKind::Ddim { eta: 1.5 },
        10
    )));
    assert!(invalid(Sampler::new(
        &config,
        SamplerKind::Ddim { eta: f64::NAN },
        10
    )));
    // diffusers' trailing spacing ends at timestep -1 for 61 of 1000 steps.
    let trailing = SchedulerConfig {
        timestep_spacing: TimestepSpacing::Trailing,
        ..SchedulerConfig::default()
    };
    assert!(invalid(Sampler::new(&trailing, SamplerKind::Ddpm, 61)));
    assert!(Sampler::new(&trailing, SamplerKind::Ddpm, 60).is_ok());
    // Leading spacing with steps_offset 1 and 1000 steps would start at timestep 1000.
    let offset = SchedulerConfig {
        steps_offset: 1,
        ..SchedulerConfig::default()
    };
    assert!(invalid(Sampler::new(&offset, SamplerKind::Ddpm, 1000)));

    let sampler = Sampler::new(&config, SamplerKind::Ddpm, 10).unwrap();
    let (m, mut x) = (vec![0.1f32; 8], vec![0.2f32; 8]);
    assert!(sampler.needs_noise(0));
    assert!(sampler.step(0, &m, &mut x, None).is_err(), "noise required");
    assert!(
        sampler.step(0, &m[..7], &mut x, Some(&m)).is_err(),
        "length"
    );
    assert!(
        sampler.step(0, &m, &mut x, Some(&m[..7])).is_err(),
        "noise length"
    );
    assert!(sampler.step(10, &m, &mut x, Some(&m)).is_err(), "index");
    assert!(!sampler.needs_noise(9), "no noise at t = 0");
    assert!(sampler.step(9, &m, &mut x, None).is_ok());
}

#[test]
fn philox_known_answers_of_random123() {
    assert_eq!(
        philox4x32_10([0; 4], [0; 2]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
    assert_eq!(
        philox4x32_10([0xffffffff; 4], [0xffffffff; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
    assert_eq!(
        philox4x32_10(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

#[test]
fn stream_for_sample_7_is_identical_however_it_is_created() {
    let seed = 0xdead_beef_1234;
    let draw = |s: &mut Stream| {
        let mut z = vec![0.0f32; 50];
        s.fill_normal(&mut z);
        (z, s.next_u32(), s.uniform(), s.below(1000))
    };
    let alone = draw(&mut Stream::new(seed, 7, Purpose::InitialNoise, 0));
    // Created among a batch, in reverse order, after the other samples' streams were used.
    let mut batch: Vec<(u64, Stream)> = (4..12)
        .rev()
        .map(|i| (i, Stream::new(seed, i, Purpose::InitialNoise, 0)))
        .collect();
    for (i, s) in batch.iter_mut() {
        if *i != 7 {
            draw(s);
        }
    }
    let (_, in_batch) = batch.iter_mut().find(|(i, _)| *i == 7).unwrap();
    let copy = in_batch.clone();
    assert_eq!(draw(in_batch), alone);
    assert_eq!(draw(&mut copy.clone()), alone);
    // Other purposes, indices, subs and seeds give other numbers.
    for other in [
        Stream::new(seed, 7, Purpose::StepNoise, 0),
        Stream::new(seed, 7, Purpose::InitialNoise, 1),
        Stream::new(seed, 8, Purpose::InitialNoise, 0),
        Stream::new(seed, 7 | (1 << 32), Purpose::InitialNoise, 0),
        Stream::new(seed + 1, 7, Purpose::InitialNoise, 0),
    ] {
        assert_ne!(draw(&mut other.clone()).0, alone.0, "{other:?}");
    }
}

#[test]
fn normals_have_zero_mean_unit_variance_and_gaussian_tails() {
    let n = 400_000;
    let mut z = vec![0.0f32; n];
    Stream::new(42, 0, Purpose::InitialNoise, 0).fill_normal(&mut z);
    let mean = z.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let var = z
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    let kurt = z
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(4))
        .sum::<f64>()
        / n as f64
        / (var * var);
    let tail = z.iter().filter(|v| v.abs() > 1.959_964).count() as f64 / n as f64;
    eprintln!("normals: mean {mean:.2e} var {var:.5} kurtosis {kurt:.4} P(|z|>1.96) {tail:.5}");
    // Standard errors: mean 1.6e-3, var 2.2e-3, kurtosis ~7.7e-3, tail 3.4e-4.
    assert!(mean.abs() < 8e-3);
    assert!((var - 1.0).abs() < 1.2e-2);
    assert!((kurt - 3.0).abs() < 4e-2);
    assert!((tail - 0.05).abs() < 1.8e-3);
    assert!(z.iter().all(|v| v.is_finite()));
}

#[test]
fn ddpm_run_of_sample_7_does_not_depend_on_its_batch() {
    let config = SchedulerConfig::default();
    let sampler = Sampler::new(&config, SamplerKind::Ddpm, 10).unwrap();
    let seed = 5;
    let numel = 24;
    let run = |indices: &[u64]| -> Vec<Vec<f32>> {
        // One buffer for the whole batch, as the engine holds it.
        let mut x = vec![0.0f32; numel * indices.len()];
        for (b, &idx) in indices.iter().enumerate() {
            Stream::new(seed, idx, Purpose::InitialNoise, 0)
                .fill_normal(&mut x[b * numel..(b + 1) * numel]);
        }
        for i in 0..sampler.num_steps() {
            let m = toy_model(&x, sampler.timesteps()[i]);
            let mut z = vec![0.0f32; x.len()];
            for (b, &idx) in indices.iter().enumerate() {
                Stream::new(seed, idx, Purpose::StepNoise, i as u32)
                    .fill_normal(&mut z[b * numel..(b + 1) * numel]);
            }
            let z = sampler.needs_noise(i).then_some(&z[..]);
            sampler.step(i, &m, &mut x, z).unwrap();
        }
        x.chunks(numel).map(<[f32]>::to_vec).collect()
    };
    let alone = run(&[7]);
    let batch = run(&[3, 9, 7, 0]);
    assert_eq!(batch[2], alone[0]);
    assert_ne!(batch[0], alone[0]);
}
