//! OpenAI guided-diffusion (ADM) checkpoints through the engine: converted from the `.pt` files
//! `torch.save` wrote, the UNet forward, `ddim_sample_loop` (respacing `ddimN`, clipped or not)
//! and `p_sample_loop` (respacing `N`, learned or fixed variance), and the Laplace curvature on
//! `out.2` (only the eps channels in the loss), against guided-diffusion's own outputs
//! (`tools/make_adm_fixtures.py`, random weights, float32). Tolerances: forward <= 1e-4 x
//! max|out|, 10-step samplers <= 1e-3 x max(1, max|out|), curvature <= 1e-4 x max|ref|. The
//! emulated CUDA backend runs the same models against the CPU backend.

use crate::common;

use common::{fixture, npy};
use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::Backend;
use uqengine::convert::adm::AdmConvert;
use uqengine::convert::OutDtype;
use uqengine::laplace::{fit_with_inputs, FitInputs, FitOptions, Hessian};
use uqengine::layout::{nchw_to_nhwc, nhwc_to_nchw};
use uqengine::models::unet::UNet;
use uqengine::sampler::{apply_step_learned, Sampler, SamplerKind, SchedulerConfig};

const CONFIGS: [&str; 4] = [
    "cond_learned_updown",
    "uncond_newattn",
    "heads_upsample",
    "half_first_level",
];

/// A fixture model converted into a temporary directory.
struct Converted {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
}

fn convert(name: &str, dtype: OutDtype) -> Converted {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    let flags = std::fs::read_to_string(fixture(&format!("adm/{name}/flags.txt"))).unwrap();
    AdmConvert {
        checkpoint: fixture(&format!("adm/{name}/model.pt")),
        flags: flags.trim().to_string(),
        out_dir: dir.clone(),
        dtype,
    }
    .run()
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    Converted { _tmp: tmp, dir }
}

fn scheduler(dir: &std::path::Path) -> SchedulerConfig {
    SchedulerConfig::from_file(&dir.join("scheduler/scheduler_config.json")).unwrap()
}

/// An NCHW fixture array as NHWC values with its NCHW shape.
fn nhwc(rel: &str) -> (Vec<f32>, [usize; 4]) {
    let a = npy(rel);
    let s = [a.shape[0], a.shape[1], a.shape[2], a.shape[3]];
    (nchw_to_nhwc(&a.to_f32(), s[0], s[1], s[2], s[3]), s)
}

fn labels(rel: &str) -> Option<Vec<usize>> {
    fixture(rel).exists().then(|| npy(rel).to_usize())
}

/// Asserts max |got - want| <= tol x max(floor, max|want|), printed.
fn assert_scaled(what: &str, got: &[f32], want: &[f32], tol: f32, floor: f32) {
    let scale = common::max_abs(want).max(floor);
    let err = common::max_abs_diff(got, want);
    println!(
        "{what}: max abs err {err:.3e} ({:.3e} of {scale:.3})",
        err / scale
    );
    assert!(
        err <= tol * scale,
        "{what}: max abs err {err} > {tol} x {scale}"
    );
}

#[test]
fn forward_matches_guided_diffusion() {
    let b = CpuBackend::new();
    for name in CONFIGS {
        let m = convert(name, OutDtype::F32);
        let unet = UNet::load(&b, &m.dir).unwrap();
        let (x, s) = nhwc(&format!("adm/{name}/forward_x.npy"));
        let t: Vec<f32> = npy(&format!("adm/{name}/forward_t.npy"))
            .to_usize()
            .iter()
            .map(|&t| t as f32)
            .collect();
        let y = labels(&format!("adm/{name}/forward_y.npy"));
        let xt = b.upload(&[s[0], s[2], s[3], s[1]], &x).unwrap();
        let out = unet.forward(&b, &xt, &t, y.as_deref()).unwrap();
        let sh = out.shape().to_vec();
        let got = nhwc_to_nchw(&b.download(&out).unwrap(), sh[0], sh[1], sh[2], sh[3]);
        let want = npy(&format!("adm/{name}/forward_out.npy"));
        assert_eq!(
            [sh[0], sh[3], sh[1], sh[2]],
            [want.shape[0], want.shape[1], want.shape[2], want.shape[3]]
        );
        assert_scaled(&format!("{name} forward"), &got, &want.to_f32(), 1e-4, 0.0);
    }
}

/// Runs `steps` steps of `kind` from the fixture's `x_T` on the CPU, with the fixture's step
/// noise (`[steps, n, C, H, W]`) when given, and returns the final samples NCHW.
fn sample_loop(
    unet: &UNet,
    sampler: &Sampler,
    x_t: &[f32],
    shape: [usize; 4],
    y: Option<&[usize]>,
    step_noise: Option<&[f32]>,
) -> Vec<f32> {
    let b = CpuBackend::new();
    let [n, c, h, w] = shape;
    let per = n * c * h * w;
    let mut x = x_t.to_vec();
    for (i, &t) in sampler.timesteps().iter().enumerate() {
        let xt = b.upload(&[n, h, w, c], &x).unwrap();
        let out = unet.forward(&b, &xt, &vec![t as f32; n], y).unwrap();
        let mc = out.shape()[3];
        let m = b.download(&out).unwrap();
        let z = step_noise.map(|z| nchw_to_nhwc(&z[i * per..(i + 1) * per], n, c, h, w));
        let co = sampler.step_coefficients(i);
        for p in 0..n * h * w {
            for ch in 0..c {
                let v = if mc == 2 * c { m[p * mc + c + ch] } else { 0.0 };
                let zv = z.as_ref().map_or(0.0, |z| z[p * c + ch]);
                x[p * c + ch] = apply_step_learned(&co, m[p * mc + ch], v, x[p * c + ch], zv);
            }
        }
    }
    nhwc_to_nchw(&x, n, h, w, c)
}

#[test]
fn ddim_and_ddpm_match_guided_diffusion_sample_loops() {
    let b = CpuBackend::new();
    for name in CONFIGS {
        let m = convert(name, OutDtype::F32);
        let unet = UNet::load(&b, &m.dir).unwrap();
        let sched = scheduler(&m.dir);
        let f = |file: &str| format!("adm/{name}/{file}");
        let mut runs = vec![
            (
                "ddim",
                SamplerKind::Ddim { eta: 0.0 },
                10,
                sched.clone(),
                "ddim_out.npy",
            ),
            ("ddpm", SamplerKind::Ddpm, 10, sched.clone(), "ddpm_out.npy"),
        ];
        let noclip = SchedulerConfig {
            clip_sample: false,
            ..sched.clone()
        };
        runs.push((
            "ddim clip_denoised False",
            SamplerKind::Ddim { eta: 0.0 },
            10,
            noclip,
            "ddim_noclip_out.npy",
        ));
        if fixture(&f("ddim7_out.npy")).exists() {
            runs.push((
                "ddim7",
                SamplerKind::Ddim { eta: 0.0 },
                7,
                sched.clone(),
                "ddim7_out.npy",
            ));
        }
        if fixture(&f("ddim_eta_out.npy")).exists() {
            runs.push((
                "ddim eta 0.5",
                SamplerKind::Ddim { eta: 0.5 },
                10,
                sched.clone(),
                "ddim_eta_out.npy",
            ));
        }
        for (what, kind, steps, cfg, out_file) in runs {
            let sampler = Sampler::new(&cfg, kind, steps).unwrap();
            let (prefix, noise_file) = match (what, kind) {
                (_, SamplerKind::Ddpm) => ("ddpm", Some(f("ddpm_step_noise.npy"))),
                ("ddim eta 0.5", _) => ("ddim", Some(f("ddim_eta_step_noise.npy"))),
                _ => ("ddim", None),
            };
            let ts_file = f(&out_file
                .replace("_out.npy", "_timesteps.npy")
                .replace("_noclip", "")
                .replace("_eta", ""));
            let want_ts = npy(&ts_file).to_usize();
            assert_eq!(sampler.timesteps(), want_ts, "{name} {what}: timesteps");
            let x_t = npy(&f(&format!("{prefix}_noise.npy")));
            let shape = [x_t.shape[0], x_t.shape[1], x_t.shape[2], x_t.shape[3]];
            let x_t = nchw_to_nhwc(&x_t.to_f32(), shape[0], shape[1], shape[2], shape[3]);
            // Both loops use the DDIM run's labels.
            let y = labels(&f("ddim_y.npy"));
            let noise = noise_file.map(|p| npy(&p).to_f32());
            let got = sample_loop(&unet, &sampler, &x_t, shape, y.as_deref(), noise.as_deref());
            let want = npy(&f(out_file)).to_f32();
            assert_scaled(&format!("{name} {what}"), &got, &want, 1e-3, 1.0);
        }
    }
}

#[test]
fn f16_and_bf16_conversions_round_the_f32_weights() {
    let b = CpuBackend::new();
    let name = "uncond_newattn";
    let (x, s) = nhwc(&format!("adm/{name}/forward_x.npy"));
    let xt = b.upload(&[s[0], s[2], s[3], s[1]], &x).unwrap();
    let t = vec![500.0f32; s[0]];
    let reference = {
        let m = convert(name, OutDtype::F32);
        b.download(
            &UNet::load(&b, &m.dir)
                .unwrap()
                .forward(&b, &xt, &t, None)
                .unwrap(),
        )
        .unwrap()
    };
    for (dtype, tol) in [(OutDtype::F16, 5e-3), (OutDtype::Bf16, 4e-2)] {
        let m = convert(name, dtype);
        let unet = UNet::load(&b, &m.dir).unwrap();
        println!("{dtype:?}: weights stored as {}", unet.weights_dtype());
        let got = b
            .download(&unet.forward(&b, &xt, &t, None).unwrap())
            .unwrap();
        assert_scaled(
            &format!("{name} forward, {dtype:?} weights"),
            &got,
            &reference,
            tol,
            0.0,
        );
    }
}

#[test]
fn laplace_curvature_on_out_2_uses_only_the_eps_channels() {
    let b = CpuBackend::new();
    let name = "cond_learned_updown";
    let m = convert(name, OutDtype::F32);
    let unet = UNet::load(&b, &m.dir).unwrap();
    let sched = scheduler(&m.dir);
    let l = |file: &str| format!("adm/{name}/laplace/{file}");
    let (x0, s) = nhwc(&l("x0.npy"));
    let (eps, _) = nhwc(&l("eps.npy"));
    let inputs = FitInputs {
        x0,
        t: npy(&l("t.npy")).to_usize(),
        eps,
        class: labels(&l("class.npy")),
    };
    assert_eq!(inputs.x0.len(), s.iter().product::<usize>());
    let fit = |hessian| {
        let opts = FitOptions {
            hessian,
            prediction: sched.prediction_type,
            batch: 3,
            ..FitOptions::default()
        };
        fit_with_inputs(
            &b,
            &unet,
            &sched.alphas_cumprod(),
            &inputs,
            &opts,
            &mut |_, _| {},
        )
        .unwrap()
    };
    let to_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    let ef = fit(Hessian::EfDiag);
    assert_eq!(
        ef.parts().channels_in_loss,
        3,
        "learned sigma: eps channels only"
    );
    let want = npy(&l("ef_diag.npy")).to_f32();
    assert_scaled(
        "ADM ef-diag on out.2",
        &to_f32(ef.curvature()),
        &want,
        1e-4,
        0.0,
    );
    let gk = fit(Hessian::GgnKron);
    let want = npy(&l("ggn_a.npy")).to_f32();
    assert_scaled(
        "ADM ggn-kron A on out.2",
        &to_f32(gk.curvature()),
        &want,
        1e-4,
        0.0,
    );
    // Draws move only the eps channels; the variance channels keep the MAP weights.
    let (w, bias) = ef.draw(3, 0);
    let per = w.len() / 6;
    assert_eq!(&w[3 * per..], &unet.conv_out_weight[3 * per..]);
    assert_eq!(&bias[3..], &unet.conv_out_bias[3..]);
    assert_ne!(&w[..3 * per], &unet.conv_out_weight[..3 * per]);
}

/// The emulated CUDA backend against the CPU backend on the ADM models: the forward within
/// f16 activations' error, and a whole batch of DDPM with the learned variance (noise from the
/// engine's own streams on both) within the sampler's amplification of it.
#[cfg(feature = "emu")]
#[test]
fn emulated_cuda_runs_adm_models_like_the_cpu() {
    use std::sync::Arc;
    use uqengine::backend::cuda::{emu::EmuDevice, CudaBackend};
    use uqengine::pipeline::{BatchInput, Generator};
    let cpu = CpuBackend::new();
    let emu = CudaBackend::new(Arc::new(EmuDevice::new()));
    for name in ["cond_learned_updown", "heads_upsample"] {
        let m = convert(name, OutDtype::F32);
        let (uc, ue) = (
            UNet::load(&cpu, &m.dir).unwrap(),
            UNet::load(&emu, &m.dir).unwrap(),
        );
        let (x, s) = nhwc(&format!("adm/{name}/forward_x.npy"));
        let t: Vec<f32> = npy(&format!("adm/{name}/forward_t.npy"))
            .to_usize()
            .iter()
            .map(|&t| t as f32)
            .collect();
        let y = labels(&format!("adm/{name}/forward_y.npy"));
        let shape = [s[0], s[2], s[3], s[1]];
        let want = cpu
            .download(
                &uc.forward(&cpu, &cpu.upload(&shape, &x).unwrap(), &t, y.as_deref())
                    .unwrap(),
            )
            .unwrap();
        let got = emu
            .download(
                &ue.forward(&emu, &emu.upload(&shape, &x).unwrap(), &t, y.as_deref())
                    .unwrap(),
            )
            .unwrap();
        assert_scaled(
            &format!("{name} forward, emu vs cpu"),
            &got,
            &want,
            5e-3,
            0.0,
        );

        let sampler = Sampler::new(&scheduler(&m.dir), SamplerKind::Ddpm, 2).unwrap();
        assert!(sampler.learned_variance());
        let input = BatchInput {
            indices: vec![0, 1],
            classes: y.as_ref().map(|_| vec![3, 7]),
            noise: None,
        };
        let run = |be: &dyn Backend, unet: &UNet| {
            Generator::plain(be, unet, &sampler, 11)
                .unwrap()
                .run(&input, |_| {})
                .unwrap()
        };
        let (want, got) = (run(&cpu, &uc), run(&emu, &ue));
        assert!(got.iter().all(|v| v.is_finite()));
        // f16 activations change eps and the learned variance by ~1e-3 of their scale. These
        // untrained models put the variance channel far outside [-1, 1], where the step noise's
        // exp(...) of it amplifies a 1e-3 change of one element up to the sample range (and a
        // later step spreads it over the sample), so two steps (one with learned noise) and the
        // typical element: the median must agree closely and the mean stay far below what
        // dropping or misreading the variance channels moves every noisy element by (the noise
        // scale, ~0.1-1).
        let mean = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .sum::<f32>()
            / got.len() as f32;
        let max = common::max_abs_diff(&got, &want);
        let mut diffs: Vec<f32> = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).collect();
        diffs.sort_by(f32::total_cmp);
        let median = diffs[diffs.len() / 2];
        println!(
            "{name} 2-step DDPM, emu vs cpu: median abs err {median:.3e}, mean {mean:.3e}, max {max:.3e}"
        );
        assert!(
            median <= 1e-3 && mean <= 2e-2,
            "{name}: median {median}, mean {mean}, max {max}"
        );
    }
}
