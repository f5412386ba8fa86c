//! The sampler on the device (kernels/sampler.cu) against the host definitions of
//! `uqengine::backend::state` and `uqengine::rng`: the Philox noise streams, the DDIM/DDPM update
//! for every prediction type, clipping and sampler, the state/input conversion, the member
//! schedules' row copies, the timestep features and the members prepared once; and the transfer
//! accounting of a whole run: the same bytes cross between host and device for 4 and for 8
//! steps. Runs on the emulated device (feature `emu`) and, when present, on GPU 0.
//!
//! The emulation computes with the host's math library, so it must agree bit for bit; a GPU's
//! `logf`/`sinf`/`cosf` differ from the host's by an ulp or two, which the noise tolerance allows.

use crate::common;

use std::sync::Arc;

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::cuda::gpu::GpuDevice;
use uqengine::backend::cuda::CudaBackend;
use uqengine::backend::{Backend, ConvSpec, StepNoise};
use uqengine::rng::{Purpose, Stream};
use uqengine::sampler::{PredictionType, Sampler, SamplerKind, SchedulerConfig, VarianceType};
use uqengine::Tensor;

/// The device backends under test, each with whether it must agree bit for bit.
fn devices() -> Vec<(Arc<dyn Backend>, bool)> {
    let mut v: Vec<(Arc<dyn Backend>, bool)> = Vec::new();
    #[cfg(feature = "emu")]
    v.push((
        Arc::new(CudaBackend::new(Arc::new(
            uqengine::backend::cuda::emu::EmuDevice::new(),
        ))),
        true,
    ));
    #[cfg(not(feature = "emu"))]
    eprintln!("skipping the emulated device: build with --features emu");
    match GpuDevice::new(0) {
        Ok(d) => v.push((Arc::new(CudaBackend::new(Arc::new(d))), false)),
        Err(e) => eprintln!("skipping GPU: {e}"),
    }
    v
}

/// Distance in units in the last place (0 for two NaNs).
fn ulps(a: f32, b: f32) -> u32 {
    if a.is_nan() && b.is_nan() {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u32::MAX;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i32::MIN - i
        } else {
            i
        }
    };
    key(a).abs_diff(key(b))
}

fn max_ulps(got: &[f32], want: &[f32]) -> u32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&a, &b)| ulps(a, b))
        .max()
        .unwrap_or(0)
}

/// Deterministic values in [-scale, scale), rounded to f16 (what a model output holds).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            half::f16::from_f32(u * scale).to_f32()
        })
        .collect()
}

/// Sample indices with odd gaps, one above 2^32 (its high word shares the purpose word).
const INDICES: [usize; 3] = [0, 7, (1 << 33) + 5];

#[test]
fn device_noise_equals_the_host_streams() {
    let (c, s, repeat) = (3, 5, 2);
    for (dev, exact) in devices() {
        let streams = dev.sample_streams(&INDICES).unwrap();
        for (purpose, sub) in [(Purpose::InitialNoise, 0), (Purpose::StepNoise, 17)] {
            let got = dev
                .state_to_host(
                    &dev.normal_state(&streams, 0xdead_beef_0123, purpose, sub, c, s, repeat)
                        .unwrap(),
                )
                .unwrap();
            // The host streams, by `Stream::fill_normal` in NCHW order, rows repeated.
            let mut want = Vec::new();
            for &i in &INDICES {
                let mut z = vec![0.0f32; c * s * s];
                Stream::new(0xdead_beef_0123, i as u64, purpose, sub).fill_normal(&mut z);
                let nhwc = uqengine::layout::nchw_to_nhwc(&z, 1, c, s, s);
                for _ in 0..repeat {
                    want.extend_from_slice(&nhwc);
                }
            }
            let d = max_ulps(&got, &want);
            println!("{} {purpose:?}: max {d} ulp", dev.name());
            assert!(
                d <= if exact { 0 } else { 4 },
                "{} {purpose:?}: noise differs from the host streams by {d} ulp",
                dev.name()
            );
        }
    }
}

/// Sampler configurations covering every branch of the update.
fn samplers() -> Vec<(String, Sampler)> {
    let mut v = Vec::new();
    for pred in [
        PredictionType::Epsilon,
        PredictionType::VPrediction,
        PredictionType::Sample,
    ] {
        for clip in [true, false] {
            let cfg = SchedulerConfig {
                prediction_type: pred,
                clip_sample: clip,
                clip_sample_range: 0.8,
                variance_type: VarianceType::FixedLarge,
                ..SchedulerConfig::default()
            };
            for (name, kind) in [
                ("ddim", SamplerKind::Ddim { eta: 0.0 }),
                ("ddim eta 0.7", SamplerKind::Ddim { eta: 0.7 }),
                ("ddpm", SamplerKind::Ddpm),
            ] {
                v.push((
                    format!("{name} {pred:?} clip {clip}"),
                    Sampler::new(&cfg, kind, 5).unwrap(),
                ));
            }
        }
    }
    v
}

#[test]
fn device_sampler_step_equals_apply_step() {
    let cpu = CpuBackend::new();
    let (rows_per_sample, s, c) = (2, 3, 5);
    let rows = INDICES.len() * rows_per_sample;
    let shape = [rows, s, s, c];
    let n = rows * s * s * c;
    let mut x = values(n, 1, 1.5);
    x[4] = f32::NAN; // a diverged element stays NaN (never clamped into range)
    let m = values(n, 2, 2.0);
    for (dev, exact) in devices() {
        let (sd, sc) = (
            dev.sample_streams(&INDICES).unwrap(),
            cpu.sample_streams(&INDICES).unwrap(),
        );
        for (name, sampler) in samplers() {
            for step in 0..sampler.num_steps() {
                let co = sampler.step_coefficients(step);
                let noise = |streams| StepNoise {
                    streams,
                    seed: 42,
                    step: step as u32,
                    rows_per_sample,
                };
                let want = cpu
                    .sampler_step(
                        &co,
                        &cpu.upload(&shape, &m).unwrap(),
                        &cpu.state_from_host(&shape, &x).unwrap(),
                        Some(&noise(&sc)),
                    )
                    .unwrap();
                let got = dev
                    .sampler_step(
                        &co,
                        &dev.upload(&shape, &m).unwrap(),
                        &dev.state_from_host(&shape, &x).unwrap(),
                        Some(&noise(&sd)),
                    )
                    .unwrap();
                let (g, w) = (
                    dev.state_to_host(&got).unwrap(),
                    cpu.state_to_host(&want).unwrap(),
                );
                // The NaN survives the clamp (compared as equal by `ulps`, a number against it is
                // the largest distance).
                if name.contains("Epsilon clip true") {
                    assert!(
                        w[4].is_nan() && g[4].is_nan(),
                        "{name} step {step}: NaN lost"
                    );
                }
                let d = max_ulps(&g, &w);
                // A GPU's noise differs by a few ulp; scaled and added, the sum by a few more.
                assert!(
                    d <= if exact { 0 } else { 16 },
                    "{name} step {step} on {}: {d} ulp from apply_step",
                    dev.name()
                );
            }
            // A step that adds noise without any is an error.
            let noisy = (0..sampler.num_steps()).find(|&i| sampler.needs_noise(i));
            if let Some(i) = noisy {
                let co = sampler.step_coefficients(i);
                let r = dev.sampler_step(
                    &co,
                    &dev.upload(&shape, &m).unwrap(),
                    &dev.state_from_host(&shape, &x).unwrap(),
                    None,
                );
                assert!(r.is_err(), "{name}: a noisy step without noise ran");
            }
        }
    }
}

#[test]
fn state_conversions_and_row_copies_match_the_host() {
    let cpu = CpuBackend::new();
    let (rows, s, c, k) = (6, 3, 2, 3);
    let shape = [rows, s, s, c];
    let x = values(rows * s * s * c, 3, 1.2);
    for (dev, _) in devices() {
        let xd = dev.state_from_host(&shape, &x).unwrap();
        let xc = cpu.state_from_host(&shape, &x).unwrap();
        let host = |b: &dyn Backend, t: &Tensor| b.state_to_host(t).unwrap();
        let rep = dev.repeat_rows(&xd, k).unwrap();
        assert_eq!(rep.shape(), [rows * k, s, s, c]);
        assert_eq!(
            host(&*dev, &rep),
            host(&cpu, &cpu.repeat_rows(&xc, k).unwrap())
        );
        let every = dev.every_kth_row(&xd, k).unwrap();
        assert_eq!(every.shape(), [rows / k, s, s, c]);
        assert_eq!(
            host(&*dev, &every),
            host(&cpu, &cpu.every_kth_row(&xc, k).unwrap())
        );
        assert!(
            dev.every_kth_row(&xd, 4).is_err(),
            "6 rows are not 4-aligned"
        );
        // The trunk's input: f16 of x, or of 2x - 1 (computed in f32, rounded once).
        for center in [false, true] {
            let got = dev
                .download(&dev.state_as_input(&xd, center).unwrap())
                .unwrap();
            let want: Vec<f32> = x
                .iter()
                .map(|&v| half::f16::from_f32(if center { 2.0 * v - 1.0 } else { v }).to_f32())
                .collect();
            assert_eq!(got, want, "state_as_input center {center}");
        }
        // Activations repeat too (trunk features shared by the members).
        let a = values(2 * 4 * 3, 4, 1.0);
        let ad = dev.upload(&[2, 4, 3], &a).unwrap();
        let got = dev.download(&dev.repeat_rows(&ad, 2).unwrap()).unwrap();
        let want: Vec<f32> = a
            .chunks(12)
            .flat_map(|r| r.iter().chain(r).copied().collect::<Vec<_>>())
            .collect();
        assert_eq!(got, want, "repeat_rows on f16 activations");
    }
}

#[test]
fn timestep_features_match_the_host() {
    // diffusers' frequencies for 12 features, flip and not, a large timestep (range reduction).
    let freqs: Vec<f32> = (0..6)
        .map(|i| ((-(10000f64.ln() as f32) * i as f32) / 6.0).exp())
        .collect();
    for (dev, exact) in devices() {
        let fd = dev.upload_params(&[6], &freqs).unwrap();
        for (t, flip) in [(999.0f32, false), (3.0, true), (0.0, false)] {
            let got = dev
                .download(&dev.timestep_features(&fd, t, 3, flip).unwrap())
                .unwrap();
            let want: Vec<f32> = uqengine::backend::state::timestep_features(&freqs, t, 3, flip)
                .iter()
                .map(|&v| half::f16::from_f32(v).to_f32())
                .collect();
            if exact {
                assert_eq!(got, want, "t {t} flip {flip} on {}", dev.name());
            } else {
                common::assert_close(&format!("t {t} flip {flip}"), &got, &want, 8e-3, 0.0);
            }
        }
    }
}

#[test]
fn members_prepared_once_equal_members_per_call() {
    let spec = ConvSpec::new(5, 3, 3, 1, 1);
    for (dev, _) in devices() {
        let convs: Vec<_> = (0..3)
            .map(|m| {
                let w = values(3 * 5 * 9, 10 + m, 0.5);
                let b = values(3, 20 + m, 0.5);
                dev.prepare_conv(spec, &w, (m != 1).then_some(&b[..]))
                    .unwrap()
            })
            .collect();
        let x = dev
            .upload(&[6, 4, 4, 5], &values(6 * 16 * 5, 5, 1.0))
            .unwrap();
        let once = dev.prepare_members(&convs).unwrap();
        assert!(
            once.stacked.is_some(),
            "the CUDA backend stacks the members"
        );
        let a = dev
            .download(&dev.conv2d_member_stack(&x, &once).unwrap())
            .unwrap();
        let b = dev
            .download(&dev.conv2d_members(&x, &convs).unwrap())
            .unwrap();
        assert_eq!(a, b);
    }
}

/// `sample` on the emulated device, 4 and 8 DDPM steps with members: everything per step stays on
/// the device, so the bytes that cross are the same; launches grow with the steps.
#[cfg(feature = "emu")]
#[test]
fn nothing_crosses_between_host_and_device_per_step() {
    use common::{arg, fixture, uqengine_cli};
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("unet/gray_cond_multihead_f16/model");
    let clip = fixture("clip/gray_gelu_f16/model");
    let data = tmp.path().join("data");
    for i in 0..2u32 {
        std::fs::create_dir_all(data.join(format!("{i}"))).unwrap();
        common::write_gray_png(&data.join(format!("{i}/{i}.png")), 8, 8, |x, y| {
            ((x * 29 + y * 13 + i * 70) % 256) as u8
        });
    }
    let post = tmp.path().join("post.safetensors");
    let (ok, err) = uqengine_cli(&[
        "fit",
        "--model",
        arg(&model),
        "--data",
        arg(&data),
        "--out",
        arg(&post),
        "--device",
        "cpu",
    ]);
    assert!(ok, "fit: {err}");
    let mut counts = Vec::new();
    for steps in ["4", "8"] {
        let out = tmp.path().join(format!("steps{steps}"));
        let (ok, err) = uqengine_cli(&[
            "sample",
            "--model",
            arg(&model),
            "--posterior",
            arg(&post),
            "--extractor",
            arg(&clip),
            "--num",
            "3",
            "--batch",
            "2",
            "--steps",
            steps,
            "--sampler",
            "ddpm",
            "--draws",
            "2",
            "--uq-schedule",
            "branch:1",
            "--device",
            "emu",
            "--out",
            arg(&out),
        ]);
        assert!(ok, "sample: {err}");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        let t = &summary["device_transfers"];
        println!("{steps} steps: {t}");
        counts.push((
            t["host_to_device_bytes"].as_u64().unwrap(),
            t["device_to_host_bytes"].as_u64().unwrap(),
            t["launches"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        counts[0].0, counts[1].0,
        "host-to-device bytes depend on the steps"
    );
    assert_eq!(
        counts[0].1, counts[1].1,
        "device-to-host bytes depend on the steps"
    );
    assert!(
        counts[1].2 > counts[0].2,
        "launches must grow with the steps"
    );
    // The final samples come back (3 samples x 3 members x 8x8x1 f32), nothing much else.
    assert!(counts[0].1 >= 3 * 3 * 64 * 4);
}

/// The on-device entropy reduction against the host's f64 `gaussian_entropy`, with features of
/// magnitude ~1e3 whose variance (~1e-2) f32 accumulation of e and e^2 would lose entirely; a
/// non-finite feature gives NaN for its sample only.
#[test]
fn device_entropy_keeps_the_variance_of_large_features() {
    let (n, k, d) = (5, 6, 37);
    let noise = values(n * k * d, 30, 0.2);
    let mut f: Vec<f32> = noise
        .iter()
        .enumerate()
        .map(|(i, &e)| 1000.0 + (i % d) as f32 * 3.0 + e * (1 + i / (k * d)) as f32)
        .collect();
    let opts = uqengine::uncertainty::EntropyOptions { sigma2: 1e-3 };
    let want = uqengine::uncertainty::gaussian_entropy(&f, n, k, d, &opts).unwrap();
    // What f32 sums of e and e^2 give: the variance cancels away (a different score).
    let naive: f32 = {
        let one = &f[..k * d];
        (0..d)
            .map(|j| {
                let (mut s1, mut s2) = (0.0f32, 0.0f32);
                for m in 0..k {
                    s1 += one[m * d + j];
                    s2 += one[m * d + j] * one[m * d + j];
                }
                let v = (s2 / k as f32 - (s1 / k as f32).powi(2)).max(0.0);
                0.5 * (v + 1e-3).ln()
            })
            .sum::<f32>()
            + 0.5 * d as f32 * ((2.0 * std::f32::consts::PI).ln() + 1.0)
    };
    println!("f64 {:.4} vs f32 accumulation {naive:.4}", want[0]);
    assert!(
        (naive as f64 - want[0]).abs() > 1.0,
        "the test features must defeat f32 sums"
    );
    f[3 * k * d + 5] = f32::INFINITY;
    for (dev, _) in devices() {
        let ft = dev.state_from_host(&[n * k, d], &f).unwrap();
        let got = dev.member_entropy(&ft, k, 1e-3).unwrap();
        assert_eq!(got.len(), n);
        for i in 0..n {
            if i == 3 {
                assert!(got[i].is_nan(), "sample 3 has an infinite feature");
            } else {
                assert!(
                    (got[i] as f64 - want[i]).abs() <= 1e-5 * want[i].abs().max(1.0),
                    "sample {i} on {}: {} vs {}",
                    dev.name(),
                    got[i],
                    want[i]
                );
            }
        }
        // f16 features (the extractor's output on the device): the host on the same values.
        let fb: Vec<f32> = values(n * k * d, 31, 2.0);
        let want_b = uqengine::uncertainty::gaussian_entropy(&fb, n, k, d, &opts).unwrap();
        let got_b = dev
            .member_entropy(&dev.upload(&[n * k, d], &fb).unwrap(), k, 1e-3)
            .unwrap();
        for i in 0..n {
            assert!((got_b[i] as f64 - want_b[i]).abs() <= 1e-5 * want_b[i].abs().max(1.0));
        }
        assert!(
            dev.member_entropy(&ft, 4, 1e-3).is_err(),
            "30 rows are not 4-aligned"
        );
    }
}

/// guided-diffusion samplers (respaced timesteps, DDIM's eps from the clipped x0, DDPM's learned
/// variance): the device update with a model output of twice the state's channels (prediction,
/// then variance) equals the host definition; with as many channels as the state a learned
/// variance is an error.
#[test]
fn device_sampler_step_with_learned_variance_and_clipped_eps() {
    let cpu = CpuBackend::new();
    let (s, c) = (3, 3);
    let rows = INDICES.len();
    let shape = [rows, s, s, c];
    let mshape = [rows, s, s, 2 * c];
    let x = values(rows * s * s * c, 5, 1.5);
    let m = values(rows * s * s * 2 * c, 6, 3.0);
    let cfg = SchedulerConfig {
        timestep_spacing: uqengine::sampler::TimestepSpacing::GuidedDiffusion,
        use_clipped_model_output: true,
        variance_type: VarianceType::LearnedRange,
        ..SchedulerConfig::default()
    };
    for (dev, exact) in devices() {
        let (sd, sc) = (
            dev.sample_streams(&INDICES).unwrap(),
            cpu.sample_streams(&INDICES).unwrap(),
        );
        for kind in [
            SamplerKind::Ddpm,
            SamplerKind::Ddim { eta: 0.0 },
            SamplerKind::Ddim { eta: 0.5 },
        ] {
            let sampler = Sampler::new(&cfg, kind, 7).unwrap();
            for step in 0..sampler.num_steps() {
                let co = sampler.step_coefficients(step);
                let noise = |streams| StepNoise {
                    streams,
                    seed: 9,
                    step: step as u32,
                    rows_per_sample: 1,
                };
                let want = cpu
                    .sampler_step(
                        &co,
                        &cpu.upload(&mshape, &m).unwrap(),
                        &cpu.state_from_host(&shape, &x).unwrap(),
                        Some(&noise(&sc)),
                    )
                    .unwrap();
                let got = dev
                    .sampler_step(
                        &co,
                        &dev.upload(&mshape, &m).unwrap(),
                        &dev.state_from_host(&shape, &x).unwrap(),
                        Some(&noise(&sd)),
                    )
                    .unwrap();
                let d = max_ulps(
                    &dev.state_to_host(&got).unwrap(),
                    &cpu.state_to_host(&want).unwrap(),
                );
                assert!(
                    d <= if exact { 0 } else { 16 },
                    "{kind:?} step {step} on {}: {d} ulp from the host",
                    dev.name()
                );
            }
        }
        let ddpm = Sampler::new(&cfg, SamplerKind::Ddpm, 7).unwrap();
        let r = dev.sampler_step(
            &ddpm.step_coefficients(0),
            &dev.upload(&shape, &x).unwrap(),
            &dev.state_from_host(&shape, &x).unwrap(),
            Some(&StepNoise {
                streams: &sd,
                seed: 9,
                step: 0,
                rows_per_sample: 1,
            }),
        );
        let e = r.expect_err("learned variance without variance channels");
        assert!(e.to_string().contains("learned_range"), "{e}");
    }
}

/// The fused last layer + step (`last_layer_step_f32`) against the CPU backend's two ops (the
/// convolution in f32, then `apply_step`), for every sampler branch, two members on rows `r % 2`
/// and the MAP convolution alone, with and without learned variance channels, in one launch.
/// Inputs are f16 values, so only the summation order differs from the CPU.
#[test]
fn fused_last_layer_step_equals_the_convolution_then_the_step() {
    use uqengine::backend::LastLayer;
    let cpu = CpuBackend::new();
    let (k, s, cin) = (2, 5, 7);
    let rows = INDICES.len() * k;
    let learned = SchedulerConfig {
        timestep_spacing: uqengine::sampler::TimestepSpacing::GuidedDiffusion,
        use_clipped_model_output: true,
        variance_type: VarianceType::LearnedRange,
        ..SchedulerConfig::default()
    };
    let mut cases: Vec<(String, Sampler, usize)> =
        samplers().into_iter().map(|(n, s)| (n, s, 1)).collect();
    for kind in [SamplerKind::Ddpm, SamplerKind::Ddim { eta: 0.5 }] {
        cases.push((
            format!("learned range {kind:?}"),
            Sampler::new(&learned, kind, 7).unwrap(),
            3,
        ));
    }
    let h = values(rows * s * s * cin, 31, 1.0);
    for (dev, _) in devices() {
        let (sd, sc) = (
            dev.sample_streams(&INDICES).unwrap(),
            cpu.sample_streams(&INDICES).unwrap(),
        );
        let hd = dev.upload(&[rows, s, s, cin], &h).unwrap();
        let hc = cpu.upload(&[rows, s, s, cin], &h).unwrap();
        for (name, sampler, c) in &cases {
            let c = *c;
            let mc = if name.starts_with("learned") {
                2 * c
            } else {
                c
            };
            let spec = ConvSpec::new(cin, mc, 3, 1, 1);
            let weights: Vec<(Vec<f32>, Vec<f32>)> = (0..k as u64)
                .map(|m| (values(mc * cin * 9, 40 + m, 0.3), values(mc, 50 + m, 0.2)))
                .collect();
            let prep = |be: &dyn Backend| {
                let convs: Vec<_> = weights
                    .iter()
                    .map(|(w, b)| be.prepare_conv(spec, w, Some(b)).unwrap())
                    .collect();
                be.prepare_members(&convs).unwrap()
            };
            let (md, mcpu) = (prep(dev.as_ref()), prep(&cpu));
            let shape = [rows, s, s, c];
            let x = values(rows * s * s * c, 60, 1.5);
            for step in 0..sampler.num_steps() {
                let co = sampler.step_coefficients(step);
                let noise = |streams| StepNoise {
                    streams,
                    seed: 42,
                    step: step as u32,
                    rows_per_sample: k,
                };
                for single in [false, true] {
                    let (ld, lc) = if single {
                        (
                            LastLayer::Single(&md.convs[0]),
                            LastLayer::Single(&mcpu.convs[0]),
                        )
                    } else {
                        (LastLayer::Members(&md), LastLayer::Members(&mcpu))
                    };
                    let want = cpu
                        .last_layer_step(
                            &hc,
                            lc,
                            &co,
                            &cpu.state_from_host(&shape, &x).unwrap(),
                            Some(&noise(&sc)),
                        )
                        .unwrap();
                    let xd = dev.state_from_host(&shape, &x).unwrap();
                    let before = dev.transfers().unwrap().launches;
                    let got = dev
                        .last_layer_step(&hd, ld, &co, &xd, Some(&noise(&sd)))
                        .unwrap();
                    let launches = dev.transfers().unwrap().launches - before;
                    assert_eq!(
                        launches, 1,
                        "{name}: the last layer and the step in one launch"
                    );
                    let (g, w) = (
                        dev.state_to_host(&got).unwrap(),
                        cpu.state_to_host(&want).unwrap(),
                    );
                    let worst = g
                        .iter()
                        .zip(&w)
                        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                        .fold(0.0f32, f32::max);
                    assert!(
                        worst <= 2e-4,
                        "{name} step {step} single {single} on {}: {worst} from the CPU",
                        dev.name()
                    );
                }
            }
        }
    }
}

/// The members' last layers keep f32 weights on the device: two members whose weights differ by
/// 2^-13 of their size (below f16's spacing, which would merge them into one) give outputs that
/// differ by what the CPU's differ by. The same features and state on both rows, so the
/// difference is the weights' alone.
#[test]
fn member_weights_finer_than_f16_stay_distinct() {
    use uqengine::backend::LastLayer;
    let cpu = CpuBackend::new();
    let (s, cin) = (4, 8);
    let one = values(s * s * cin, 71, 1.0);
    let h: Vec<f32> = one.iter().chain(&one).copied().collect();
    let x1 = values(s * s, 73, 1.0);
    let x: Vec<f32> = x1.iter().chain(&x1).copied().collect();
    let spec = ConvSpec::new(cin, 1, 3, 1, 1);
    let w0 = values(cin * 9, 72, 0.3);
    let w1: Vec<f32> = w0.iter().map(|v| v * (1.0 + 1.0 / 8192.0)).collect();
    let sampler = Sampler::new(
        &SchedulerConfig::default(),
        SamplerKind::Ddim { eta: 0.0 },
        4,
    )
    .unwrap();
    let co = sampler.step_coefficients(1);
    let run = |be: &dyn Backend| {
        let convs: Vec<_> = [&w0, &w1]
            .iter()
            .map(|w| be.prepare_conv(spec, w, Some(&[0.1])).unwrap())
            .collect();
        let members = be.prepare_members(&convs).unwrap();
        let hb = be.upload(&[2, s, s, cin], &h).unwrap();
        let xb = be.state_from_host(&[2, s, s, 1], &x).unwrap();
        let y = be
            .last_layer_step(&hb, LastLayer::Members(&members), &co, &xb, None)
            .unwrap();
        let y = be.state_to_host(&y).unwrap();
        let per = s * s;
        (0..per).map(|i| y[per + i] - y[i]).collect::<Vec<f32>>()
    };
    let want = run(&cpu);
    let scale = common::max_abs(&want);
    assert!(scale > 1e-6, "the members must differ on the CPU: {want:?}");
    for (dev, _) in devices() {
        let got = run(dev.as_ref());
        let err = common::max_abs_diff(&got, &want);
        assert!(
            err <= 2e-2 * scale,
            "{}: member difference {got:?} against the CPU's {want:?}",
            dev.name()
        );
    }
}
