//! Every op of the CUDA backend against the CPU backend (the reference), on small shapes with odd
//! sizes (channels not a multiple of the tiles, batch 1, 1x1 spatial). Runs on the emulated
//! device (feature `emu`) and, when present, on GPU 0; each is skipped with a message otherwise.
//!
//! Inputs and weights are rounded to f16 before both backends see them, so the differences are
//! the device's own: f16 storage of the result (relative 2^-12), f16 rounding of fused
//! intermediates (the GroupNorm prologue), and f32 summation order. The tolerances are sized for
//! f16, about an eighth of what bf16 storage (relative 2^-9) needed. Tolerance per op:
//! `|got - want| <= atol * max|want| + rtol * |want|`, the constants written next to each test.

use crate::common;

use std::sync::Arc;

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::cuda::gpu::GpuDevice;
use uqengine::backend::cuda::CudaBackend;
use uqengine::backend::{Activation, Backend, ConvSpec};
use uqengine::Tensor;

/// The device backends under test.
fn devices() -> Vec<Arc<dyn Backend>> {
    let mut v: Vec<Arc<dyn Backend>> = Vec::new();
    #[cfg(feature = "emu")]
    v.push(Arc::new(CudaBackend::new(Arc::new(
        uqengine::backend::cuda::emu::EmuDevice::new(),
    ))));
    #[cfg(not(feature = "emu"))]
    eprintln!("skipping the emulated device: build with --features emu");
    match GpuDevice::new(0) {
        Ok(d) => v.push(Arc::new(CudaBackend::new(Arc::new(d)))),
        Err(e) => eprintln!("skipping GPU: {e}"),
    }
    v
}

/// Deterministic values in [-scale, scale), rounded to f16.
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

/// Compare with a tolerance relative to the output's scale.
fn check(what: &str, dev: &dyn Backend, got: &Tensor, want: &Tensor, atol: f32, rtol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what} on {}: shape", dev.name());
    let g = dev.download(got).unwrap();
    let w = CpuBackend::new().download(want).unwrap();
    let scale = common::max_abs(&w).max(1e-6);
    common::assert_close(
        &format!("{what} on {}", dev.name()),
        &g,
        &w,
        atol * scale,
        rtol,
    );
}

struct Pair {
    cpu: CpuBackend,
    dev: Arc<dyn Backend>,
}

impl Pair {
    fn up(&self, shape: &[usize], data: &[f32]) -> (Tensor, Tensor) {
        (
            self.cpu.upload(shape, data).unwrap(),
            self.dev.upload(shape, data).unwrap(),
        )
    }
    fn rand(&self, shape: &[usize], seed: u64, scale: f32) -> (Tensor, Tensor) {
        let n = shape.iter().product();
        self.up(shape, &values(n, seed, scale))
    }
}

fn pairs() -> Vec<Pair> {
    devices()
        .into_iter()
        .map(|dev| Pair {
            cpu: CpuBackend::new(),
            dev,
        })
        .collect()
}

// Convolutions: f16 output rounding plus summation order. atol 1.5e-3 of the output scale,
// rtol 2.5e-3.
const CONV_ATOL: f32 = 1.5e-3;
const CONV_RTOL: f32 = 2.5e-3;

/// One convolution case: input [n, h, w, cin], spec, with/without bias and residual.
#[allow(clippy::too_many_arguments)]
fn conv_case(
    p: &Pair,
    n: usize,
    h: usize,
    w: usize,
    spec: ConvSpec,
    bias: bool,
    residual: bool,
    seed: u64,
) {
    let k = spec.kernel;
    let wts = values(
        spec.cout * spec.cin * k * k,
        seed,
        1.0 / ((spec.cin * k * k) as f32).sqrt(),
    );
    let b = values(spec.cout, seed + 1, 0.5);
    let bias = bias.then_some(b.as_slice());
    let cc = p.cpu.prepare_conv(spec, &wts, bias).unwrap();
    let dc = p.dev.prepare_conv(spec, &wts, bias).unwrap();
    let (xc, xd) = p.rand(&[n, h, w, spec.cin], seed + 2, 1.0);
    let (ho, wo) = spec.out_hw(h, w);
    let (rc, rd) = p.rand(&[n, ho, wo, spec.cout], seed + 3, 1.0);
    let (rc, rd) = if residual {
        (Some(&rc), Some(&rd))
    } else {
        (None, None)
    };
    let want = p.cpu.conv2d(&xc, &cc, rc).unwrap();
    let got = p.dev.conv2d(&xd, &dc, rd).unwrap();
    check(
        &format!("conv2d {spec:?} on [{n},{h},{w},{}]", spec.cin),
        p.dev.as_ref(),
        &got,
        &want,
        CONV_ATOL,
        CONV_RTOL,
    );
}

#[test]
fn conv3x3_tensor_core_path_matches_cpu_with_odd_channels() {
    for p in pairs() {
        // cin 24: scalar tile loads; cout 40: a partial column tile; 5x7 image: partial row tile.
        conv_case(&p, 2, 5, 7, ConvSpec::new(24, 40, 3, 1, 1), true, true, 10);
        // cin 32: vector tile loads; cout 70: two column tiles; 81 pixels: two row tiles.
        conv_case(&p, 1, 9, 9, ConvSpec::new(32, 70, 3, 1, 1), true, false, 20);
    }
}

#[test]
fn conv_strided_and_asymmetric_padding_match_cpu() {
    for p in pairs() {
        // diffusers Downsample2D with padding 0: pad (0, 1, 0, 1), stride 2.
        let mut spec = ConvSpec::new(16, 24, 3, 2, 0);
        spec.pad_end = 1;
        conv_case(&p, 2, 8, 6, spec, true, false, 30);
        // Symmetric padding 1, stride 2, odd input.
        conv_case(
            &p,
            1,
            7,
            5,
            ConvSpec::new(40, 16, 3, 2, 1),
            false,
            false,
            40,
        );
    }
}

#[test]
fn conv1x1_and_one_pixel_images_match_cpu() {
    for p in pairs() {
        conv_case(&p, 3, 1, 1, ConvSpec::new(48, 24, 1, 1, 0), true, true, 50);
        conv_case(&p, 1, 1, 1, ConvSpec::new(32, 16, 3, 1, 1), true, false, 60);
    }
}

#[test]
fn conv_f32_edge_path_matches_cpu() {
    for p in pairs() {
        // K = 27 (conv_in of an RGB image) and cout = 3 (conv_out): the plain f32 kernel.
        conv_case(&p, 2, 6, 5, ConvSpec::new(3, 32, 3, 1, 1), true, false, 70);
        conv_case(&p, 1, 4, 7, ConvSpec::new(32, 3, 3, 1, 1), true, true, 80);
    }
}

/// norm_conv2d: the GroupNorm(+SiLU) prologue fused into the convolution's tile loads. Its input
/// to the GEMM is rounded to f16, so a little looser than a plain convolution.
#[test]
fn norm_conv2d_fused_prologue_matches_composition() {
    for p in pairs() {
        for (cin, cout, groups, silu, seed) in [
            (32, 32, 8, true, 90),
            (24, 20, 4, false, 100),
            (32, 5, 4, true, 110),
        ] {
            let spec = ConvSpec::new(cin, cout, 3, 1, 1);
            let wts = values(cout * cin * 9, seed, 1.0 / ((cin * 9) as f32).sqrt());
            let b = values(cout, seed + 1, 0.5);
            let gamma = values(cin, seed + 2, 1.0);
            let beta = values(cin, seed + 3, 0.5);
            let (nc, nd) = (
                p.cpu.prepare_norm(groups, 1e-5, &gamma, &beta).unwrap(),
                p.dev.prepare_norm(groups, 1e-5, &gamma, &beta).unwrap(),
            );
            let cc = p.cpu.prepare_conv(spec, &wts, Some(&b)).unwrap();
            let dc = p.dev.prepare_conv(spec, &wts, Some(&b)).unwrap();
            // A non-zero mean per channel makes the normalisation matter.
            let x: Vec<f32> = values(2 * 6 * 5 * cin, seed + 4, 1.0)
                .iter()
                .enumerate()
                .map(|(i, v)| v + (i % cin) as f32 * 0.1)
                .collect();
            let (xc, xd) = p.up(&[2, 6, 5, cin], &x);
            let (rc, rd) = p.rand(&[2, 6, 5, cout], seed + 5, 1.0);
            let want = p.cpu.norm_conv2d(&xc, &nc, silu, &cc, Some(&rc)).unwrap();
            let got = p.dev.norm_conv2d(&xd, &nd, silu, &dc, Some(&rd)).unwrap();
            check(
                &format!("norm_conv2d cin {cin} cout {cout} silu {silu}"),
                p.dev.as_ref(),
                &got,
                &want,
                2e-3,
                4e-3,
            );
        }
    }
}

#[test]
fn conv2d_members_uses_each_members_weights() {
    for p in pairs() {
        for (cout, seed) in [(3, 120), (16, 130)] {
            let (members, b) = (3, 2);
            let spec = ConvSpec::new(32, cout, 3, 1, 1);
            let mut cc = Vec::new();
            let mut dc = Vec::new();
            for m in 0..members {
                let wts = values(cout * 32 * 9, seed + 10 * m as u64, 0.06);
                let bias = values(cout, seed + 10 * m as u64 + 1, 0.5);
                cc.push(p.cpu.prepare_conv(spec, &wts, Some(&bias)).unwrap());
                dc.push(p.dev.prepare_conv(spec, &wts, Some(&bias)).unwrap());
            }
            let (xc, xd) = p.rand(&[b * members, 5, 4, 32], seed + 7, 1.0);
            let want = p.cpu.conv2d_members(&xc, &cc).unwrap();
            let got = p.dev.conv2d_members(&xd, &dc).unwrap();
            check(
                &format!("conv2d_members cout {cout}"),
                p.dev.as_ref(),
                &got,
                &want,
                CONV_ATOL,
                CONV_RTOL,
            );
        }
    }
}

/// GroupNorm: f32 statistics, f16 output. atol 1.5e-3 of scale, rtol 2.5e-3.
#[test]
fn group_norm_matches_cpu_with_and_without_silu() {
    for p in pairs() {
        for (n, h, w, c, groups, silu) in [
            (2, 3, 5, 12, 4, false),
            (1, 1, 1, 32, 8, true),
            (3, 4, 4, 20, 5, true),
        ] {
            let gamma = values(c, 140, 1.0);
            let beta = values(c, 141, 0.5);
            let nc = p.cpu.prepare_norm(groups, 1e-5, &gamma, &beta).unwrap();
            let nd = p.dev.prepare_norm(groups, 1e-5, &gamma, &beta).unwrap();
            let x: Vec<f32> = values(n * h * w * c, 142, 2.0)
                .iter()
                .map(|v| v + 3.0)
                .collect();
            let (xc, xd) = p.up(&[n, h, w, c], &x);
            let want = p.cpu.group_norm(&xc, &nc, silu).unwrap();
            let got = p.dev.group_norm(&xd, &nd, silu).unwrap();
            check(
                &format!("group_norm [{n},{h},{w},{c}] g{groups} silu {silu}"),
                p.dev.as_ref(),
                &got,
                &want,
                1.5e-3,
                2.5e-3,
            );
        }
    }
}

#[test]
fn layer_norm_matches_cpu() {
    for p in pairs() {
        for (rows, dim) in [(7, 40), (1, 300), (3, 1)] {
            let gamma = values(dim, 150, 1.0);
            let beta = values(dim, 151, 0.5);
            let nc = p.cpu.prepare_norm(1, 1e-5, &gamma, &beta).unwrap();
            let nd = p.dev.prepare_norm(1, 1e-5, &gamma, &beta).unwrap();
            let (xc, xd) = p.rand(&[rows, dim], 152, 2.0);
            let want = p.cpu.layer_norm(&xc, &nc).unwrap();
            let got = p.dev.layer_norm(&xd, &nd).unwrap();
            check(
                &format!("layer_norm [{rows},{dim}]"),
                p.dev.as_ref(),
                &got,
                &want,
                1.5e-3,
                2.5e-3,
            );
        }
    }
}

/// Linear layers run the convolution kernels as 1x1 convolutions (tensor cores for
/// dout >= 16 and din >= 32, f32 otherwise).
#[test]
fn linear_matches_cpu_for_every_activation_and_residual() {
    for p in pairs() {
        let cases = [
            (10, 40, 24, Activation::None, true),
            (10, 40, 24, Activation::Silu, false),
            (3, 64, 70, Activation::Gelu, true),
            (5, 33, 17, Activation::QuickGelu, false),
            (4, 12, 5, Activation::Silu, true),
        ];
        for (i, (rows, din, dout, act, res)) in cases.into_iter().enumerate() {
            let seed = 160 + 10 * i as u64;
            let wts = values(dout * din, seed, 1.0 / (din as f32).sqrt());
            let b = values(dout, seed + 1, 0.5);
            let lc = p.cpu.prepare_linear(din, dout, &wts, Some(&b)).unwrap();
            let ld = p.dev.prepare_linear(din, dout, &wts, Some(&b)).unwrap();
            let (xc, xd) = p.rand(&[1, rows, din], seed + 2, 1.0);
            let (rc, rd) = p.rand(&[1, rows, dout], seed + 3, 1.0);
            let (rc, rd) = if res {
                (Some(&rc), Some(&rd))
            } else {
                (None, None)
            };
            let want = p.cpu.linear(&xc, &lc, act, rc).unwrap();
            let got = p.dev.linear(&xd, &ld, act, rd).unwrap();
            check(
                &format!("linear {rows}x{din}->{dout} {act:?}"),
                p.dev.as_ref(),
                &got,
                &want,
                CONV_ATOL,
                CONV_RTOL,
            );
        }
    }
}

/// Element-wise ops: one f16 rounding of the result (relative 2^-12). atol 2e-4, rtol 1e-3.
#[test]
fn elementwise_ops_match_cpu() {
    for p in pairs() {
        let (xc, xd) = p.rand(&[2, 3, 5, 7], 200, 4.0);
        let (yc, yd) = p.rand(&[2, 3, 5, 7], 201, 4.0);
        for act in [
            Activation::None,
            Activation::Silu,
            Activation::QuickGelu,
            Activation::Gelu,
        ] {
            let want = p.cpu.activation(&xc, act).unwrap();
            let got = p.dev.activation(&xd, act).unwrap();
            check(
                &format!("activation {act:?}"),
                p.dev.as_ref(),
                &got,
                &want,
                2e-4,
                1e-3,
            );
        }
        check(
            "add",
            p.dev.as_ref(),
            &p.dev.add(&xd, &yd).unwrap(),
            &p.cpu.add(&xc, &yc).unwrap(),
            2e-4,
            1e-3,
        );
        let (vc, vd) = p.rand(&[2, 7], 202, 1.0);
        let want = p.cpu.add_per_sample(&xc, &vc).unwrap();
        check(
            "add_per_sample NHWC",
            p.dev.as_ref(),
            &p.dev.add_per_sample(&xd, &vd).unwrap(),
            &want,
            2e-4,
            1e-3,
        );
        let (sc, sd) = p.rand(&[2, 15, 7], 203, 1.0);
        let want = p.cpu.add_per_sample(&sc, &vc).unwrap();
        check(
            "add_per_sample [n,l,c]",
            p.dev.as_ref(),
            &p.dev.add_per_sample(&sd, &vd).unwrap(),
            &want,
            2e-4,
            1e-3,
        );
    }
}

/// Resampling, channel concatenation and batch concatenation are exact (pure copies of f16).
#[test]
fn resampling_concat_and_batch_ops_match_cpu() {
    for p in pairs() {
        let (xc, xd) = p.rand(&[2, 3, 5, 7], 210, 2.0);
        let (ac, ad) = p.rand(&[2, 3, 5, 4], 211, 2.0);
        let d = p.dev.as_ref();
        check(
            "upsample_nearest2x",
            d,
            &d.upsample_nearest2x(&xd).unwrap(),
            &p.cpu.upsample_nearest2x(&xc).unwrap(),
            0.0,
            0.0,
        );
        check(
            "concat_channels",
            d,
            &d.concat_channels(&xd, &ad).unwrap(),
            &p.cpu.concat_channels(&xc, &ac).unwrap(),
            0.0,
            0.0,
        );
        let (bc, bd) = p.rand(&[3, 3, 5, 7], 212, 2.0);
        let want = p
            .cpu
            .concat_batch(&[xc.clone(), bc.clone(), xc.clone()])
            .unwrap();
        let got = d
            .concat_batch(&[xd.clone(), bd.clone(), xd.clone()])
            .unwrap();
        check("concat_batch", d, &got, &want, 0.0, 0.0);
    }
}

/// Attention: f32 scores and softmax, f16 output. atol 1.5e-3 of scale, rtol 2.5e-3.
#[test]
fn attention_matches_cpu_for_ragged_lengths_and_head_sizes() {
    for p in pairs() {
        // (n, lq, lk, heads, dh): partial query blocks and key tiles, a 1-token sequence, dh 64.
        for (i, (n, lq, lk, heads, dh)) in [(2, 19, 37, 2, 24), (1, 16, 16, 1, 64), (3, 1, 5, 4, 8)]
            .into_iter()
            .enumerate()
        {
            let seed = 220 + 10 * i as u64;
            let (qc, qd) = p.rand(&[n, lq, heads * dh], seed, 2.0);
            let (kc, kd) = p.rand(&[n, lk, heads * dh], seed + 1, 2.0);
            let (vc, vd) = p.rand(&[n, lk, heads * dh], seed + 2, 1.0);
            let scale = 1.0 / (dh as f32).sqrt();
            let want = p.cpu.attention(&qc, &kc, &vc, heads, scale).unwrap();
            let got = p.dev.attention(&qd, &kd, &vd, heads, scale).unwrap();
            check(
                &format!("attention n{n} lq{lq} lk{lk} h{heads} dh{dh}"),
                p.dev.as_ref(),
                &got,
                &want,
                1.5e-3,
                2.5e-3,
            );
        }
    }
}

/// No float atomics: the same launch twice gives bit-identical results.
#[test]
fn kernels_are_deterministic() {
    for p in pairs() {
        let d = p.dev.as_ref();
        let spec = ConvSpec::new(32, 24, 3, 1, 1);
        let wts = values(24 * 32 * 9, 300, 0.06);
        let conv = d.prepare_conv(spec, &wts, None).unwrap();
        let norm = d
            .prepare_norm(8, 1e-5, &values(32, 301, 1.0), &values(32, 302, 1.0))
            .unwrap();
        let x = d
            .upload(&[2, 6, 6, 32], &values(2 * 36 * 32, 303, 1.0))
            .unwrap();
        let a = d
            .download(&d.norm_conv2d(&x, &norm, true, &conv, None).unwrap())
            .unwrap();
        let b = d
            .download(&d.norm_conv2d(&x, &norm, true, &conv, None).unwrap())
            .unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{}: two runs differ",
            d.name()
        );
    }
}

#[test]
fn mismatched_shapes_are_errors_not_panics() {
    for p in pairs() {
        let d = p.dev.as_ref();
        let a = d.upload(&[1, 2, 2, 3], &[0.0; 12]).unwrap();
        let b = d.upload(&[1, 2, 2, 4], &[0.0; 16]).unwrap();
        assert!(d.add(&a, &b).is_err());
        let conv = d
            .prepare_conv(ConvSpec::new(4, 8, 3, 1, 1), &[0.0; 8 * 4 * 9], None)
            .unwrap();
        assert!(d.conv2d(&a, &conv, None).is_err());
        let host = Tensor::host(vec![1, 2, 2, 3], vec![0.0; 12]);
        assert!(
            d.add(&host, &a).is_err(),
            "host tensors must be uploaded first"
        );
    }
}

/// f16 storage: a finite value beyond its range (|v| >= 65520 rounds to infinity) is an error
/// naming what held it, for activations uploaded and for tensor-core weights; the largest f16
/// and the plain path's f32 weights pass; infinities stay infinities (the non-finite checks
/// downstream name the sample).
#[test]
fn values_beyond_the_f16_range_are_errors_naming_them() {
    for p in pairs() {
        let d = p.dev.as_ref();
        let e = d
            .upload(&[1, 1, 1, 2], &[1.0, 7.0e4])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upload") && e.contains("f16 range") && e.contains("index 1"),
            "{e}"
        );
        assert!(d.upload(&[1, 1, 1, 2], &[65504.0, -65504.0]).is_ok());
        assert!(d.upload(&[1, 1, 1, 1], &[f32::INFINITY]).is_ok());
        // 16 outputs x K 36: the tensor-core path, f16 weights.
        let mut w = vec![0.01; 16 * 4 * 9];
        w[5] = -1.0e5;
        let e = d
            .prepare_conv(ConvSpec::new(4, 16, 3, 1, 1), &w, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv weights") && e.contains("f16 range"), "{e}");
        let e = d
            .prepare_linear(32, 16, &[1.0e6; 32 * 16], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linear weights") && e.contains("f16 range"),
            "{e}"
        );
        // 3 outputs: the plain path keeps f32 weights, so the same value is accepted and used.
        let mut w = vec![0.0; 3 * 4 * 9];
        w[4] = 1.0e5; // [cout][cin][ky][kx]: output 0, input 0, centre tap
        let conv = d
            .prepare_conv(ConvSpec::new(4, 3, 3, 1, 1), &w, None)
            .unwrap();
        let x = d.upload(&[1, 1, 1, 4], &[1.0e-3, 0.0, 0.0, 0.0]).unwrap();
        let y = d.download(&d.conv2d(&x, &conv, None).unwrap()).unwrap();
        assert!((y[0] - 100.0).abs() < 0.1, "{y:?}");
    }
}

#[test]
fn device_selection_falls_back_to_cpu_and_rejects_unknown_names() {
    use uqengine::backend::cuda::select_backend;
    let (b, msg) = select_backend("auto").unwrap();
    if GpuDevice::new(0).is_err() {
        assert_eq!(b.name(), "cpu");
        assert!(msg.contains("no usable GPU"), "{msg}");
    } else {
        assert!(b.name().starts_with("cuda:0"), "{}", b.name());
    }
    assert_eq!(select_backend("cpu").unwrap().0.name(), "cpu");
    assert!(select_backend("cuda:x").is_err());
    assert!(select_backend("tpu").is_err());
    assert!(
        select_backend("cuda:99").is_err(),
        "a missing GPU is an error, never a panic"
    );
    assert_eq!(select_backend("emu").is_ok(), cfg!(feature = "emu"));
}

/// The scale-shift norm (ADM's `use_scale_shift_norm`): on the CPU it is GroupNorm followed by
/// `v * (1 + scale) + shift` and SiLU, computed here from the plain GroupNorm; on the device it
/// matches the CPU with GroupNorm's tolerance.
#[test]
fn group_norm_scale_shift_matches_cpu_and_the_composition() {
    for p in pairs() {
        for (n, h, w, c, groups, silu) in [
            (2, 3, 5, 12, 4, true),
            (1, 1, 1, 32, 8, false),
            (3, 4, 2, 20, 5, true),
        ] {
            let gamma = values(c, 150, 1.0);
            let beta = values(c, 151, 0.5);
            let nc = p.cpu.prepare_norm(groups, 1e-5, &gamma, &beta).unwrap();
            let nd = p.dev.prepare_norm(groups, 1e-5, &gamma, &beta).unwrap();
            let x: Vec<f32> = values(n * h * w * c, 152, 2.0)
                .iter()
                .map(|v| v - 1.0)
                .collect();
            let ss = values(n * 2 * c, 153, 1.5);
            let (xc, xd) = p.up(&[n, h, w, c], &x);
            let (sc, sd) = p.up(&[n, 2 * c], &ss);
            let want = p.cpu.group_norm_scale_shift(&xc, &nc, &sc, silu).unwrap();
            // The composition, by hand.
            let plain = p
                .cpu
                .download(&p.cpu.group_norm(&xc, &nc, false).unwrap())
                .unwrap();
            let per = h * w * c;
            let manual: Vec<f32> = plain
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let (b, ch) = (i / per, i % c);
                    let u = v * (1.0 + ss[b * 2 * c + ch]) + ss[b * 2 * c + c + ch];
                    if silu {
                        u / (1.0 + (-u).exp())
                    } else {
                        u
                    }
                })
                .collect();
            let cpu_vals = p.cpu.download(&want).unwrap();
            common::assert_close("cpu group_norm_scale_shift", &cpu_vals, &manual, 1e-5, 1e-5);
            let got = p.dev.group_norm_scale_shift(&xd, &nd, &sd, silu).unwrap();
            check(
                &format!("group_norm_scale_shift [{n},{h},{w},{c}] g{groups} silu {silu}"),
                p.dev.as_ref(),
                &got,
                &want,
                1.5e-3,
                2.5e-3,
            );
        }
        // A scale-shift of the wrong width is an error, not a panic.
        let nd = p.dev.prepare_norm(2, 1e-5, &[1.0; 4], &[0.0; 4]).unwrap();
        let (_, xd) = p.up(&[1, 2, 2, 4], &[0.5; 16]);
        let (_, bad) = p.up(&[1, 4], &[0.0; 4]);
        assert!(p.dev.group_norm_scale_shift(&xd, &nd, &bad, true).is_err());
    }
}

/// 2x2 average pooling: the CPU against the window means computed here (odd sizes drop the last
/// row and column, as `F.avg_pool2d`), the device against the CPU within f16 rounding.
#[test]
fn avg_pool2x_matches_window_means() {
    for p in pairs() {
        for (n, h, w, c) in [(2, 5, 7, 3), (1, 2, 2, 33), (3, 4, 6, 8)] {
            let x = values(n * h * w * c, 160, 2.0);
            let (xc, xd) = p.up(&[n, h, w, c], &x);
            let want = p.cpu.avg_pool2x(&xc).unwrap();
            assert_eq!(want.shape(), [n, h / 2, w / 2, c]);
            let at = |b: usize, i: usize, j: usize, ch: usize| x[((b * h + i) * w + j) * c + ch];
            let mut manual = Vec::new();
            for b in 0..n {
                for i in 0..h / 2 {
                    for j in 0..w / 2 {
                        for ch in 0..c {
                            let s = at(b, 2 * i, 2 * j, ch)
                                + at(b, 2 * i, 2 * j + 1, ch)
                                + at(b, 2 * i + 1, 2 * j, ch)
                                + at(b, 2 * i + 1, 2 * j + 1, ch);
                            manual.push(s / 4.0);
                        }
                    }
                }
            }
            common::assert_close(
                "cpu avg_pool2x",
                &p.cpu.download(&want).unwrap(),
                &manual,
                0.0,
                0.0,
            );
            let got = p.dev.avg_pool2x(&xd).unwrap();
            check(
                &format!("avg_pool2x [{n},{h},{w},{c}]"),
                p.dev.as_ref(),
                &got,
                &want,
                0.0,
                5e-4,
            );
        }
    }
}

/// The extractor's preprocessing on the device (`kernels/pixels.cu`) equals the host's
/// definition (`PixelPlan::host_pixels`, itself bit-identical to `CLIPImageProcessor`) rounded to
/// the device's f16 input, value for value: 8-bit and float images, up- and downscaling with
/// every PIL filter, a resize of one axis only, no resize, crops smaller and larger than the
/// image (zero padding), one channel to RGB or kept, rescale and normalise on or off, and
/// samples outside [-1, 1] and NaN.
#[test]
fn extractor_preprocessing_on_the_device_equals_the_host_definition() {
    use uqengine::image::Resample;
    use uqengine::models::clip_preprocess::{ClipPreprocess, ResizeTarget};
    let base = ClipPreprocess::default();
    let exact = |height, width| ResizeTarget::Exact { height, width };
    let shortest = |shortest| ResizeTarget::ShortestEdge {
        shortest,
        longest: None,
    };
    let cases: Vec<(&str, ClipPreprocess)> = vec![
        ("default 224", base.clone()),
        (
            "downscale lanczos, crop inside",
            ClipPreprocess {
                size: shortest(5),
                resample: Resample::Lanczos,
                crop_size: (4, 3),
                ..base.clone()
            },
        ),
        (
            "exact bilinear, crop larger than the image",
            ClipPreprocess {
                size: exact(6, 13),
                resample: Resample::Bilinear,
                crop_size: (9, 10),
                ..base.clone()
            },
        ),
        (
            "one axis only, box, no crop, no rescale",
            ClipPreprocess {
                size: exact(11, 17),
                resample: Resample::Box,
                do_center_crop: false,
                do_rescale: false,
                ..base.clone()
            },
        ),
        (
            "hamming upscale, gray kept, no normalise",
            ClipPreprocess {
                size: shortest(23),
                resample: Resample::Hamming,
                crop_size: (21, 22),
                do_convert_rgb: false,
                do_normalize: false,
                image_mean: vec![0.5],
                image_std: vec![0.25],
                ..base.clone()
            },
        ),
        (
            "no resize, single mean and std",
            ClipPreprocess {
                do_resize: false,
                crop_size: (8, 6),
                image_mean: vec![0.3],
                image_std: vec![0.7],
                ..base.clone()
            },
        ),
    ];
    for dev in devices() {
        for (name, pre) in &cases {
            for (s, c) in [(17usize, 1usize), (11, 3)] {
                if !pre.do_convert_rgb && c == 3 {
                    continue;
                }
                let n = 3;
                let mut x = values(n * s * s * c, (s * 31 + c) as u64, 1.3);
                x[5] = f32::NAN;
                for quantize in [true, false] {
                    let what = format!("{name}, {s}x{s}x{c}, quantize {quantize}");
                    let plan = pre.pixel_plan(s, s, c, quantize).unwrap();
                    let want = plan.host_pixels(&x, n).unwrap();
                    let want: Vec<f32> = want
                        .host_data()
                        .unwrap()
                        .iter()
                        .map(|&v| half::f16::from_f32(v).to_f32())
                        .collect();
                    let dplan = dev.prepare_pixels(plan.clone()).unwrap();
                    let state = dev.state_from_host(&[n, s, s, c], &x).unwrap();
                    let got = dev.extractor_pixels(&state, &dplan).unwrap();
                    assert_eq!(got.shape(), plan.output_shape(n), "{what}");
                    let got = dev.download(&got).unwrap();
                    let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
                    if let Some(i) = (0..want.len()).find(|&i| !same(got[i], want[i])) {
                        panic!(
                            "{what} on {}: element {i} is {} on the device, {} on the host",
                            dev.name(),
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
        // A plan made for other samples, or not prepared on the device, is an error.
        let plan = base.pixel_plan(8, 8, 1, true).unwrap();
        let state = dev.state_from_host(&[1, 8, 8, 1], &[0.0; 64]).unwrap();
        assert!(dev.extractor_pixels(&state, &plan).is_err());
        let other = dev
            .prepare_pixels(base.pixel_plan(9, 9, 1, true).unwrap())
            .unwrap();
        let e = dev
            .extractor_pixels(&state, &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("8x8x1") && e.contains("9x9x1"), "{e}");
    }
}

/// The AddressSanitizer check of CI runs these tests with `UQENGINE_EMU_LIB` naming the kernels
/// built with ASan (tools/emu-asan.sh) and the ASan runtime preloaded. That check is only worth
/// something if a kernel that writes outside its buffer makes the run fail: a child process
/// copies 1001 floats into a buffer of 1000 with the `copy_f32` kernel and must die with ASan's
/// report. `UQENGINE_REQUIRE_ASAN=1` (set by CI's ASan stage) turns a missing ASan library into a
/// failure instead of a skip.
#[cfg(feature = "emu")]
#[test]
fn an_out_of_bounds_kernel_write_is_caught_under_asan() {
    use uqengine::backend::cuda::device::{DevBuf, LaunchCfg};
    use uqengine::backend::cuda::emu::{kernel_library_has_asan, kernel_library_path, EmuDevice};
    use uqengine::backend::cuda::kernels;

    const CHILD: &str = "UQENGINE_ASAN_OOB_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let d = EmuDevice::new();
        let x = DevBuf::<f32>::from_host(&d, &[1.5f32; 1001]).unwrap();
        let mut y = DevBuf::<f32>::zeros(&d, 1000).unwrap();
        let args = kernels::CopyF32Args {
            x: x.ptr(),
            y: y.ptr_mut(),
            n: 1001,
        };
        kernels::copy_f32(&d, LaunchCfg::linear(1, 64), args).unwrap();
        eprintln!("the out-of-bounds write went unnoticed");
        return;
    }
    let required = std::env::var("UQENGINE_REQUIRE_ASAN").is_ok_and(|v| v == "1");
    let asan = kernel_library_has_asan().unwrap();
    if !asan {
        assert!(
            !required,
            "UQENGINE_REQUIRE_ASAN=1 but the emulated kernels are not an ASan build \
             (UQENGINE_EMU_LIB = {:?})",
            kernel_library_path().unwrap()
        );
        eprintln!("skipping: the emulated kernels are not an ASan build (see tools/emu-asan.sh)");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kernels_emu::an_out_of_bounds_kernel_write_is_caught_under_asan",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the child run passed: ASan did not stop the out-of-bounds write\n{stderr}"
    );
    assert!(
        stderr.contains("AddressSanitizer: heap-buffer-overflow") && stderr.contains("WRITE"),
        "the child failed, but not with ASan's heap-buffer-overflow on a write:\n{stderr}"
    );
}

/// A kernel library that cannot be loaded is an error naming the variable and the file, not a
/// crash and not a silent fall-back to the built-in kernels.
#[cfg(feature = "emu")]
#[test]
fn an_unloadable_kernel_library_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let bogus = tmp.path().join("not-a-library.so");
    std::fs::write(&bogus, b"not an ELF file").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uqengine"))
        .args(["sample", "--model"])
        .arg(common::fixture("unet/gray_cond_multihead_f16/model"))
        .args(["--num", "1", "--steps", "1", "--device", "emu", "--out"])
        .arg(tmp.path().join("out"))
        .env("UQENGINE_EMU_LIB", &bogus)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "sampling ran without its kernels: {stderr}"
    );
    assert!(
        stderr.contains("UQENGINE_EMU_LIB") && stderr.contains("not-a-library.so"),
        "the error names neither the variable nor the file: {stderr}"
    );
    assert!(
        !tmp.path().join("out/summary.json").exists(),
        "a failed run left a summary that looks complete"
    );
}
