//! The CPU backend runs diffusers `UNet2DModel` checkpoints exactly as diffusers does.
//! References: `tools/make_unet_fixtures.py` (diffusers forward passes and 10-step DDIM / DDPM
//! trajectories on three tiny random-weight models covering every supported block type,
//! class conditioning, one and several heads, old and new attention names, f32/f16/bf16).

use crate::common;

use common::{assert_close, fixture, max_abs, max_abs_diff, npy};
use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::Backend;
use uqengine::layout::{nchw_to_nhwc, nhwc_to_nchw};
use uqengine::models::unet::UNet;
use uqengine::sampler::{Sampler, SamplerKind, SchedulerConfig};

const MODELS: [&str; 3] = [
    "cifar_like_old_names_f32",
    "gray_cond_multihead_f16",
    "attn_first_cosine_bf16",
];

fn load(name: &str) -> UNet {
    UNet::load(&CpuBackend::new(), &fixture(&format!("unet/{name}/model"))).unwrap()
}

fn classes(name: &str, file: &str) -> Option<Vec<usize>> {
    let p = fixture(&format!("unet/{name}/{file}"));
    p.exists()
        .then(|| npy(&format!("unet/{name}/{file}")).to_usize())
}

/// One forward pass at several timesteps: max abs error <= 1e-4 x max |output|.
#[test]
fn forward_matches_diffusers() {
    let b = CpuBackend::new();
    for name in MODELS {
        let m = load(name);
        let x = npy(&format!("unet/{name}/forward_x.npy"));
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let t: Vec<f32> = npy(&format!("unet/{name}/forward_t.npy")).to_f32();
        let cls = classes(name, "forward_class.npy");
        let xt = b
            .upload(&[n, h, w, c], &nchw_to_nhwc(&x.to_f32(), n, c, h, w))
            .unwrap();
        let y = m.forward(&b, &xt, &t, cls.as_deref()).unwrap();
        let (_, _, _, co) = y.nhwc();
        let got = nhwc_to_nchw(&b.download(&y).unwrap(), n, h, w, co);
        let want = npy(&format!("unet/{name}/forward_out.npy")).to_f32();
        let err = max_abs_diff(&got, &want);
        let tol = 1e-4 * max_abs(&want);
        println!("{name}: forward max abs err {err:.3e} (tolerance {tol:.3e})");
        assert!(err <= tol, "{name}: forward max abs err {err} > {tol}");
    }
}

fn run_trajectory(
    name: &str,
    kind: SamplerKind,
    sched_file: &str,
    noise_file: Option<&str>,
) -> Vec<f32> {
    let b = CpuBackend::new();
    let m = load(name);
    let cfg = SchedulerConfig::from_file(&fixture(&format!("unet/{name}/{sched_file}"))).unwrap();
    let s = Sampler::new(&cfg, kind, 10).unwrap();
    let x0 = npy(&format!("unet/{name}/ddim_noise.npy"));
    let (n, c, h, w) = (x0.shape[0], x0.shape[1], x0.shape[2], x0.shape[3]);
    let cls = classes(name, "ddim_class.npy");
    let step_noise = noise_file.map(|f| npy(&format!("unet/{name}/{f}")).to_f32());
    let per = n * c * h * w;
    let mut x = nchw_to_nhwc(&x0.to_f32(), n, c, h, w);
    for i in 0..s.num_steps() {
        let t = vec![s.timesteps()[i] as f32; n];
        let xt = b.upload(&[n, h, w, c], &x).unwrap();
        let eps = b
            .download(&m.forward(&b, &xt, &t, cls.as_deref()).unwrap())
            .unwrap();
        let z = step_noise
            .as_ref()
            .map(|z| nchw_to_nhwc(&z[i * per..(i + 1) * per], n, c, h, w));
        s.step(i, &eps, &mut x, z.as_deref()).unwrap();
    }
    nhwc_to_nchw(&x, n, h, w, c)
}

/// 10-step DDIM (eta 0) from given noise: final sample within 1e-3 of diffusers.
#[test]
fn ddim_10_steps_matches_diffusers() {
    for name in MODELS {
        let got = run_trajectory(
            name,
            SamplerKind::Ddim { eta: 0.0 },
            "model/scheduler/scheduler_config.json",
            None,
        );
        let want = npy(&format!("unet/{name}/ddim_out.npy")).to_f32();
        println!("{name}: DDIM max abs err {:.3e}", max_abs_diff(&got, &want));
        assert_close(name, &got, &want, 1e-3, 0.0);
    }
}

/// DDIM with eta 0.5 and injected variance noise.
#[test]
fn ddim_eta_with_injected_noise_matches_diffusers() {
    let name = "cifar_like_old_names_f32";
    let got = run_trajectory(
        name,
        SamplerKind::Ddim { eta: 0.5 },
        "model/scheduler/scheduler_config.json",
        Some("ddim_eta_variance_noise.npy"),
    );
    let want = npy(&format!("unet/{name}/ddim_eta_out.npy")).to_f32();
    println!(
        "{name}: DDIM eta 0.5 max abs err {:.3e}",
        max_abs_diff(&got, &want)
    );
    assert_close(name, &got, &want, 1e-3, 0.0);
}

/// 10-step DDPM ancestral sampling with injected per-step noise.
#[test]
fn ddpm_10_steps_matches_diffusers() {
    for name in MODELS {
        let got = run_trajectory(
            name,
            SamplerKind::Ddpm,
            "ddpm_scheduler_config.json",
            Some("ddpm_step_noise.npy"),
        );
        let want = npy(&format!("unet/{name}/ddpm_out.npy")).to_f32();
        println!("{name}: DDPM max abs err {:.3e}", max_abs_diff(&got, &want));
        assert_close(name, &got, &want, 1e-3, 0.0);
    }
}

/// The CPU backend runs a batch's trunk in row pieces on its threads
/// (`Backend::run_in_pieces`, pieces of at most half the batch on two or more threads): a 7-row
/// batch gives what the whole batch run at once gives.
#[test]
fn trunk_in_pieces_equals_the_whole_batch() {
    let (pieces, whole) = (CpuBackend::new(), CpuBackend::without_pieces());
    for name in MODELS {
        let m = load(name);
        let (s, c) = (m.config.sample_size, m.config.in_channels);
        let n = 7;
        let x: Vec<f32> = (0..n * s * s * c)
            .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let t: Vec<f32> = (0..n).map(|i| (50 + 130 * i) as f32).collect();
        let cls: Option<Vec<usize>> = m
            .config
            .num_class_embeds
            .map(|k| (0..n).map(|i| i % k).collect());
        let run = |b: &CpuBackend| {
            let xt = b.upload(&[n, s, s, c], &x).unwrap();
            b.download(&m.trunk(b, &xt, &t, cls.as_deref()).unwrap())
                .unwrap()
        };
        let (got, want) = (run(&pieces), run(&whole));
        // Rows are computed alike either way; only a GEMM's blocking over a different row count
        // may round differently.
        assert_close(name, &got, &want, 1e-5 * max_abs(&want), 1e-5);
    }
}
