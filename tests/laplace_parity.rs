//! The last-layer Laplace fit computes what PyTorch computes, the posterior file round-trips, and
//! weight draws follow the posterior.
//!
//! References: `tools/make_laplace_fixtures.py` — per-sample gradients of the summed squared
//! error w.r.t. `conv_out` by `torch.func` (`vmap(grad(functional_call(...)))` through the whole
//! diffusers UNet) for `ef-diag`, the explicit Gauss-Newton matrix from `jacrev` Jacobians
//! (checked there to be `I_out ⊗ A` and the Hessian of 0.5 x the loss) for `ggn-kron`, and PIL
//! for training-image loading.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{assert_close, fixture, npy};
use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::Backend;
use uqengine::io::images_in::{class_labels, list_images, load_training_image};
use uqengine::laplace::{
    fit, fit_draws, fit_with_inputs, FitInputs, FitOptions, FitSet, Hessian, Posterior,
    PosteriorParts,
};
use uqengine::layout::nchw_to_nhwc;
use uqengine::models::unet::UNet;
use uqengine::sampler::SchedulerConfig;

const MODELS: [&str; 2] = ["gray_cond_multihead_f16", "cifar_like_old_names_f32"];

struct Case {
    unet: UNet,
    sched: SchedulerConfig,
    inputs: FitInputs,
}

fn case(name: &str) -> Case {
    let b = CpuBackend::new();
    let dir = fixture(&format!("unet/{name}/model"));
    let unet = UNet::load(&b, &dir).unwrap();
    let sched = SchedulerConfig::from_file(&dir.join("scheduler/scheduler_config.json")).unwrap();
    let x0 = npy(&format!("laplace/{name}/x0.npy"));
    let (n, c, h, w) = (x0.shape[0], x0.shape[1], x0.shape[2], x0.shape[3]);
    let eps = npy(&format!("laplace/{name}/eps.npy")).to_f32();
    let class_file = fixture(&format!("laplace/{name}/class.npy"));
    let inputs = FitInputs {
        x0: nchw_to_nhwc(&x0.to_f32(), n, c, h, w),
        t: npy(&format!("laplace/{name}/t.npy")).to_usize(),
        eps: nchw_to_nhwc(&eps, n, c, h, w),
        class: class_file
            .exists()
            .then(|| npy(&format!("laplace/{name}/class.npy")).to_usize()),
    };
    Case {
        unet,
        sched,
        inputs,
    }
}

fn options(c: &Case, hessian: Hessian) -> FitOptions {
    FitOptions {
        hessian,
        prediction: c.sched.prediction_type,
        batch: 3,
        ..FitOptions::default()
    }
}

fn fit_case(c: &Case, opts: &FitOptions) -> Posterior {
    let b = CpuBackend::new();
    fit_with_inputs(
        &b,
        &c.unet,
        &c.sched.alphas_cumprod(),
        &c.inputs,
        opts,
        &mut |_, _| {},
    )
    .unwrap()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// max |got - want| <= 1e-4 x max |want|, printed.
fn assert_rel_max(what: &str, got: &[f32], want: &[f32]) {
    let scale = common::max_abs(want);
    let err = common::max_abs_diff(got, want);
    println!(
        "{what}: max abs err {err:.3e}, {:.3e} of max |ref| {scale:.3e}",
        err / scale
    );
    assert!(
        err <= 1e-4 * scale,
        "{what}: max abs err {err} > 1e-4 x {scale}"
    );
}

/// A fresh empty folder, removed when dropped.
fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write_png(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    common::write_gray_png(path, w, h, |x, y| {
        ((x * 31 + y * 17 + seed * 57) % 256) as u8
    });
}

#[test]
fn ef_diag_curvature_matches_torch_func() {
    for name in MODELS {
        let c = case(name);
        let t0 = Instant::now();
        let post = fit_case(&c, &options(&c, Hessian::EfDiag));
        let dt = t0.elapsed().as_secs_f64() / c.inputs.len() as f64;
        println!("{name}: ef-diag fit {:.2} ms per image", dt * 1e3);
        let want = npy(&format!("laplace/{name}/ef_diag.npy")).to_f32();
        assert_rel_max(&format!("{name} ef-diag"), &to_f32(post.curvature()), &want);
        assert_eq!(post.num_images(), c.inputs.len());
    }
}

#[test]
fn ef_diag_uses_only_the_channels_in_the_loss() {
    let name = "cifar_like_old_names_f32";
    let c = case(name);
    let opts = FitOptions {
        out_channels_in_loss: Some(2),
        ..options(&c, Hessian::EfDiag)
    };
    let post = fit_case(&c, &opts);
    let want = npy(&format!("laplace/{name}/ef_diag_loss2.npy")).to_f32();
    assert_rel_max(
        "cifar ef-diag, 2 channels in loss",
        &to_f32(post.curvature()),
        &want,
    );
}

#[test]
fn ggn_kron_factor_matches_explicit_gauss_newton() {
    for name in MODELS {
        let c = case(name);
        let t0 = Instant::now();
        let post = fit_case(&c, &options(&c, Hessian::GgnKron));
        let dt = t0.elapsed().as_secs_f64() / c.inputs.len() as f64;
        println!("{name}: ggn-kron fit {:.2} ms per image", dt * 1e3);
        let want = npy(&format!("laplace/{name}/ggn_a.npy")).to_f32();
        assert_rel_max(
            &format!("{name} ggn-kron A"),
            &to_f32(post.curvature()),
            &want,
        );

        // diag(I ⊗ A) / sigma^2 + prior, in weights-then-bias order, against diag(GN).
        let (prior, sigma) = (3.0, 2.0);
        let post = post.with_hyperparameters(prior, sigma).unwrap();
        let gn_diag = npy(&format!("laplace/{name}/ggn_diag.npy")).to_f32();
        let got: Vec<f32> = post
            .precision_diag()
            .iter()
            .map(|&p| ((p - prior) * sigma * sigma) as f32)
            .collect();
        assert_rel_max(&format!("{name} ggn-kron diagonal"), &got, &gn_diag);
    }
}

#[test]
fn ef_diag_precision_is_curvature_over_sigma_squared_plus_prior() {
    let c = case("gray_cond_multihead_f16");
    let opts = FitOptions {
        prior_precision: 0.5,
        sigma_noise: 0.25,
        ..options(&c, Hessian::EfDiag)
    };
    let post = fit_case(&c, &opts);
    let want: Vec<f32> = npy("laplace/gray_cond_multihead_f16/ef_diag.npy")
        .data
        .iter()
        .map(|&h| (h / 0.0625 + 0.5) as f32)
        .collect();
    assert_rel_max("ef-diag precision", &to_f32(&post.precision_diag()), &want);
}

#[test]
fn posterior_file_round_trips() {
    let tmp = temp_dir();
    let dir = tmp.path().to_path_buf();
    for (name, hessian) in [
        ("gray_cond_multihead_f16", Hessian::EfDiag),
        ("cifar_like_old_names_f32", Hessian::GgnKron),
    ] {
        let c = case(name);
        let post = fit_case(
            &c,
            &FitOptions {
                seed: 17,
                ..options(&c, hessian)
            },
        );
        let path = dir.join(format!("{name}.safetensors"));
        post.save(&path).unwrap();
        let back = Posterior::load(&path).unwrap();
        assert_eq!(back.parts(), post.parts(), "{name}");
        assert_eq!(back.source(), Some(path.as_path()));
        assert_eq!(back.layer(), "conv_out");
        assert_eq!(back.model_fingerprint(), c.unet.fingerprint());
        assert_eq!(back.draw(5, 2), post.draw(5, 2));
        back.check_model(&c.unet).unwrap();
        // No temporary file left behind by the atomic write.
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            if hessian == Hessian::EfDiag { 1 } else { 2 }
        );
    }
}

#[test]
fn posterior_of_another_model_is_rejected_naming_both_fingerprints_and_the_file() {
    let tmp = temp_dir();
    let dir = tmp.path().to_path_buf();
    let gray = case("gray_cond_multihead_f16");
    let cifar = case("cifar_like_old_names_f32");
    let path = dir.join("gray.safetensors");
    fit_case(&gray, &options(&gray, Hessian::EfDiag))
        .save(&path)
        .unwrap();
    let post = Posterior::load(&path).unwrap();
    let err = post.check_model(&cifar.unet).unwrap_err().to_string();
    assert!(err.contains(gray.unet.fingerprint()), "{err}");
    assert!(err.contains(cifar.unet.fingerprint()), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn damaged_posterior_files_give_errors_naming_the_file() {
    let tmp = temp_dir();
    let dir = tmp.path().to_path_buf();
    let c = case("gray_cond_multihead_f16");
    let good = dir.join("good.safetensors");
    fit_case(&c, &options(&c, Hessian::EfDiag))
        .save(&good)
        .unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let e = Posterior::load(&truncated).unwrap_err().to_string();
    assert!(e.contains("truncated.safetensors"), "{e}");

    // A safetensors file without posterior metadata (the model weights themselves).
    let weights = fixture("unet/gray_cond_multihead_f16/model/diffusion_pytorch_model.safetensors");
    let e = Posterior::load(&weights).unwrap_err().to_string();
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("format"),
        "{e}"
    );

    let missing = dir.join("missing.safetensors");
    let e = Posterior::load(&missing).unwrap_err().to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
}

#[test]
fn ef_diag_draws_have_map_mean_and_inverse_precision_variance() {
    let c = case("gray_cond_multihead_f16");
    let post = fit_case(&c, &options(&c, Hessian::EfDiag));
    let draws = 4000;
    let p = post.num_params();
    let map: Vec<f64> = post
        .map_weight()
        .iter()
        .chain(post.map_bias())
        .map(|&v| f64::from(v))
        .collect();
    let mut sum = vec![0.0f64; p];
    let mut sq = vec![0.0f64; p];
    for m in 0..draws {
        let (w, b) = post.draw(11, m);
        for (i, v) in w.iter().chain(&b).enumerate() {
            let d = f64::from(*v) - map[i];
            sum[i] += d;
            sq[i] += d * d;
        }
    }
    let var_want: Vec<f64> = post.precision_diag().iter().map(|p| 1.0 / p).collect();
    let n = draws as f64;
    let mut worst_mean = 0.0f64;
    let mut worst_var = 0.0f64;
    for i in 0..p {
        let mean = sum[i] / n;
        let var = sq[i] / n - mean * mean;
        // In standard errors: the mean's is sqrt(var / n), the variance's sqrt(2 / n) relative.
        worst_mean = worst_mean.max(mean.abs() / (var_want[i] / n).sqrt());
        worst_var = worst_var.max((var / var_want[i] - 1.0).abs() / (2.0 / n).sqrt());
    }
    println!("ef-diag draws: worst |mean - MAP| {worst_mean:.2} SE, worst |var / (1/precision) - 1| {worst_var:.2} SE over {p} parameters");
    assert!(worst_mean < 5.0 && worst_var < 5.0);
    // The curvature matters: the variances are not all the prior's.
    assert!(var_want.iter().any(|&v| v < 0.5));
}

/// Inverse of a small SPD matrix by Gauss-Jordan elimination with partial pivoting.
fn inverse(m: &[f64], n: usize) -> Vec<f64> {
    let mut a = m.to_vec();
    let mut inv: Vec<f64> = (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .unwrap();
        for k in 0..n {
            a.swap(col * n + k, piv * n + k);
            inv.swap(col * n + k, piv * n + k);
        }
        let d = a[col * n + col];
        for k in 0..n {
            a[col * n + k] /= d;
            inv[col * n + k] /= d;
        }
        for r in 0..n {
            if r != col {
                let f = a[r * n + col];
                for k in 0..n {
                    a[r * n + k] -= f * a[col * n + k];
                    inv[r * n + k] -= f * inv[col * n + k];
                }
            }
        }
    }
    inv
}

#[test]
fn ggn_kron_draws_have_inverse_precision_covariance() {
    // cout 2 (only channel 0 in the loss), cin 1, 3x3: one 10 x 10 factor A.
    let cols = 10;
    let mut a = vec![0.0f64; cols * cols];
    for p in 0..40 {
        let v: Vec<f64> = (0..cols)
            .map(|j| {
                if j == cols - 1 {
                    1.0
                } else {
                    ((p * 13 + j * 7) as f64 * 0.7).sin()
                }
            })
            .collect();
        for i in 0..cols {
            for j in 0..cols {
                a[i * cols + j] += v[i] * v[j];
            }
        }
    }
    let (prior, sigma) = (2.0, 0.5);
    let map_weight: Vec<f32> = (0..18).map(|i| i as f32 * 0.1 - 0.9).collect();
    let post = Posterior::from_parts(PosteriorParts {
        layer: "conv_out".into(),
        hessian: Hessian::GgnKron,
        weight_shape: [2, 1, 3, 3],
        map_weight: map_weight.clone(),
        map_bias: vec![0.3, -0.2],
        curvature: a.clone(),
        channels_in_loss: 1,
        num_images: 40,
        prior_precision: prior,
        sigma_noise: sigma,
        model_fingerprint: "test".into(),
        target: "epsilon".into(),
        fit_seed: 0,
    })
    .unwrap();
    let precision: Vec<f64> = (0..cols * cols)
        .map(|i| a[i] / (sigma * sigma) + if i / cols == i % cols { prior } else { 0.0 })
        .collect();
    let cov = inverse(&precision, cols);

    let draws = 20000;
    let mut x = vec![vec![0.0f64; 2 * cols]; draws];
    for (m, row) in x.iter_mut().enumerate() {
        let (w, b) = post.draw(3, m);
        for co in 0..2 {
            for j in 0..9 {
                row[co * cols + j] = f64::from(w[co * 9 + j] - map_weight[co * 9 + j]);
            }
            row[co * cols + 9] = f64::from(b[co] - [0.3f32, -0.2][co]);
        }
    }
    let n = draws as f64;
    let mut worst = 0.0f64;
    for i in 0..2 * cols {
        for j in 0..2 * cols {
            let emp = x.iter().map(|r| r[i] * r[j]).sum::<f64>() / n;
            let (ci, cj) = (i / cols, j / cols);
            if ci == 1 || cj == 1 {
                // The channel outside the loss is not in the posterior: it keeps the MAP.
                let k = if ci == 1 { i } else { j };
                assert!(x.iter().all(|r| r[k] == 0.0), "channel 1 moved");
                continue;
            }
            let want = cov[(i % cols) * cols + j % cols];
            let var = |k: usize| cov[k * cols + k];
            // Standard error of an empirical covariance of Gaussians: sqrt((s_ii s_jj + s_ij^2) / n).
            let se = ((var(i) * var(j) + want * want) / n).sqrt();
            worst = worst.max((emp - want).abs() / se);
        }
    }
    println!("ggn-kron draws: worst covariance entry {worst:.2} standard errors from the inverse precision");
    assert!(worst < 5.0, "{worst}");
}

#[test]
fn draws_are_deterministic_per_seed_and_index() {
    for name in MODELS {
        let c = case(name);
        for hessian in [Hessian::EfDiag, Hessian::GgnKron] {
            let post = fit_case(&c, &options(&c, hessian));
            assert_eq!(post.draw(7, 3), post.draw(7, 3));
            assert_ne!(post.draw(7, 3), post.draw(7, 4));
            assert_ne!(post.draw(7, 3), post.draw(8, 3));
            // Draw m does not depend on which draws were made before.
            let fresh = fit_case(&c, &options(&c, hessian));
            assert_eq!(fresh.draw(7, 4), post.draw(7, 4));
        }
    }
}

#[test]
fn training_images_load_as_the_pil_pipeline_does() {
    let files = [
        ("rgb_w11_h13.png", 0.0),
        ("gray_w10_h9.png", 0.0),
        ("nested/rgba_w8_h8.png", 0.0),
        // Different JPEG decoders may differ by an IDCT rounding step or two.
        ("smooth_w12_h12.jpg", 4.0 / 127.5),
    ];
    for (rel, atol) in files {
        for ch in [1usize, 3] {
            let want = npy(&format!(
                "laplace/images/{}.c{ch}.npy",
                rel.replace('/', "__")
            ))
            .to_f32();
            let per = 8 * 8 * ch;
            for (k, flip) in [false, true].into_iter().enumerate() {
                let got =
                    load_training_image(&fixture(&format!("laplace/images/{rel}")), 8, ch, flip)
                        .unwrap();
                if atol > 0.0 {
                    let err = common::max_abs_diff(&got, &want[k * per..(k + 1) * per]);
                    println!(
                        "{rel} c{ch} flip {flip}: max abs err {:.1} 8-bit levels",
                        err * 127.5
                    );
                }
                assert_close(
                    &format!("{rel} c{ch} flip {flip}"),
                    &got,
                    &want[k * per..(k + 1) * per],
                    atol + 1e-7,
                    0.0,
                );
            }
        }
    }
}

#[test]
fn image_folders_are_listed_recursively_and_sorted() {
    let dir = fixture("laplace/images");
    let got: Vec<String> = list_images(&dir)
        .unwrap()
        .iter()
        .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        got,
        [
            "gray_w10_h9.png",
            "nested/rgba_w8_h8.png",
            "rgb_w11_h13.png",
            "smooth_w12_h12.jpg"
        ]
    );
}

#[test]
fn empty_or_missing_image_folders_are_errors_naming_them() {
    let tmp = temp_dir();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let e = list_images(&dir).unwrap_err().to_string();
    assert!(
        e.contains(&dir.display().to_string()) && e.contains("no training images"),
        "{e}"
    );
    let missing = dir.join("absent");
    let e = list_images(&missing).unwrap_err().to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
}

#[test]
fn an_image_smaller_than_the_model_is_an_error_naming_file_and_sizes() {
    let tmp = temp_dir();
    let dir = tmp.path().to_path_buf();
    let path = dir.join("small.png");
    write_png(&path, 12, 7, 0);
    let e = load_training_image(&path, 8, 1, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("small.png") && e.contains("12x7") && e.contains("8x8"),
        "{e}"
    );
}

#[test]
fn class_labels_come_from_subfolders() {
    let tmp = temp_dir();
    let dir = tmp.path().to_path_buf();
    for (sub, file) in [
        ("cat", "a.png"),
        ("dog", "b.png"),
        ("cat", "c.png"),
        ("ant", "d.png"),
    ] {
        write_png(&dir.join(sub).join(file), 8, 8, 0);
    }
    let paths = list_images(&dir).unwrap();
    let (labels, names) = class_labels(&dir, &paths).unwrap();
    assert_eq!(names, ["ant", "cat", "dog"]);
    assert_eq!(labels, [0, 1, 1, 2]); // ant/d, cat/a, cat/c, dog/b
    write_png(&dir.join("loose.png"), 8, 8, 0);
    let paths = list_images(&dir).unwrap();
    let e = class_labels(&dir, &paths).unwrap_err().to_string();
    assert!(e.contains("loose.png"), "{e}");
}

#[test]
fn fit_from_a_folder_does_not_depend_on_the_batch_size() {
    let tmp = temp_dir();
    let dir = tmp.path().to_path_buf();
    for i in 0..5u32 {
        write_png(
            &dir.join(format!("{}", i % 3)).join(format!("img{i}.png")),
            10 + i,
            9 + i,
            i,
        );
    }
    let c = case("gray_cond_multihead_f16");
    let set = FitSet::from_folder(&dir, c.unet.config.num_class_embeds).unwrap();
    assert_eq!(set.classes.as_deref(), Some(&[0, 0, 1, 1, 2][..]));
    let abar = c.sched.alphas_cumprod();
    let b = CpuBackend::new();
    for hessian in [Hessian::EfDiag, Hessian::GgnKron] {
        let run = |batch: usize, images: Option<usize>| {
            let opts = FitOptions {
                batch,
                images,
                seed: 99,
                ..options(&c, hessian)
            };
            let mut calls = Vec::new();
            let post = fit(&b, &c.unet, &abar, &set, &opts, &mut |done, total| {
                calls.push((done, total))
            })
            .unwrap();
            (post, calls)
        };
        let (one, calls) = run(1, None);
        assert_eq!(calls, (1..=5).map(|d| (d, 5)).collect::<Vec<_>>());
        let (three, calls) = run(3, None);
        assert_eq!(calls, [(3, 5), (5, 5)]);
        assert_eq!(one.num_images(), 5);
        // The trunk's own float rounding may depend on the batch; the draws and images do not.
        assert_rel_max(
            &format!("{hessian} batch 3 vs 1"),
            &to_f32(three.curvature()),
            &to_f32(one.curvature()),
        );
        let (sub, _) = run(2, Some(2));
        assert_eq!(sub.num_images(), 2);
    }
    // The draws of image i depend only on (seed, i).
    let (t, eps, flip) = fit_draws(99, 3, 1000, 64);
    assert_eq!(fit_draws(99, 3, 1000, 64), (t, eps.clone(), flip));
    assert_ne!(fit_draws(99, 4, 1000, 64).1, eps);
    assert!(t < 1000);
}

#[test]
fn bad_fit_inputs_and_options_are_errors() {
    let c = case("gray_cond_multihead_f16");
    let b = CpuBackend::new();
    let abar = c.sched.alphas_cumprod();
    let mut no_class = c.inputs.clone();
    no_class.class = None;
    let e = fit_with_inputs(
        &b,
        &c.unet,
        &abar,
        &no_class,
        &options(&c, Hessian::EfDiag),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("class"), "{e}");
    let mut late = c.inputs.clone();
    late.t[0] = abar.len();
    let e = fit_with_inputs(
        &b,
        &c.unet,
        &abar,
        &late,
        &options(&c, Hessian::EfDiag),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("timestep"), "{e}");
    for opts in [
        FitOptions {
            prior_precision: 0.0,
            ..options(&c, Hessian::EfDiag)
        },
        FitOptions {
            sigma_noise: -1.0,
            ..options(&c, Hessian::EfDiag)
        },
        FitOptions {
            out_channels_in_loss: Some(2),
            ..options(&c, Hessian::EfDiag)
        },
        FitOptions {
            batch: 0,
            ..options(&c, Hessian::EfDiag)
        },
    ] {
        assert!(fit_with_inputs(&b, &c.unet, &abar, &c.inputs, &opts, &mut |_, _| {}).is_err());
    }
}

/// Fit time per image on a real-size model: set `UQENGINE_FIT_TIMING_MODEL` to a diffusers
/// UNet2DModel folder (with `scheduler/scheduler_config.json`) and run with `--ignored`.
#[test]
#[ignore]
fn fit_time_per_image_on_a_real_model() {
    let Ok(dir) = std::env::var("UQENGINE_FIT_TIMING_MODEL") else {
        println!("UQENGINE_FIT_TIMING_MODEL not set");
        return;
    };
    let dir = PathBuf::from(dir);
    let b = CpuBackend::new();
    let unet = UNet::load(&b, &dir).unwrap();
    let sched = SchedulerConfig::from_file(&dir.join("scheduler/scheduler_config.json")).unwrap();
    let cfg = &unet.config;
    let n = 8;
    let per = cfg.sample_size * cfg.sample_size * cfg.in_channels;
    let inputs = FitInputs {
        x0: (0..n * per)
            .map(|i| ((i * 7919 % 200) as f32 / 100.0) - 1.0)
            .collect(),
        t: (0..n).map(|i| i * 997 % 1000).collect(),
        eps: (0..n).flat_map(|i| fit_draws(1, i, 1000, per).1).collect(),
        class: cfg
            .num_class_embeds
            .map(|k| (0..n).map(|i| i % k).collect()),
    };
    let x = b
        .upload(
            &[4, cfg.sample_size, cfg.sample_size, cfg.in_channels],
            &inputs.x0[..4 * per],
        )
        .unwrap();
    let t4: Vec<f32> = inputs.t[..4].iter().map(|&t| t as f32).collect();
    let t0 = Instant::now();
    let _ = unet
        .trunk(&b, &x, &t4, inputs.class.as_ref().map(|c| &c[..4]))
        .unwrap();
    println!(
        "trunk alone: {:.1} ms per image",
        t0.elapsed().as_secs_f64() / 4.0 * 1e3
    );
    for hessian in [Hessian::EfDiag, Hessian::GgnKron] {
        let opts = FitOptions {
            hessian,
            batch: 4,
            prediction: sched.prediction_type,
            ..FitOptions::default()
        };
        let t0 = Instant::now();
        let post = fit_with_inputs(
            &b,
            &unet,
            &sched.alphas_cumprod(),
            &inputs,
            &opts,
            &mut |_, _| {},
        )
        .unwrap();
        let fit_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let _ = post.draw(0, 0);
        println!(
            "{hessian}: {:.1} ms per image ({n} images, batch 4, {} threads); factor + 1 draw {:.1} ms; {} parameters",
            fit_s / n as f64 * 1e3,
            rayon::current_num_threads(),
            t1.elapsed().as_secs_f64() * 1e3,
            post.num_params()
        );
        let t2 = Instant::now();
        let _ = post.with_hyperparameters(1.0, 1.0).unwrap();
        println!(
            "{hessian}: re-factoring the precision {:.1} ms",
            t2.elapsed().as_secs_f64() * 1e3
        );
    }
}
