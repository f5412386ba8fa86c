//! Single CPU convolutions at the ddpm-cifar10-32 and ADM layer shapes, ms per call and GFLOP/s
//! (`UQENGINE_CPU_WINOGRAD=0` for the direct convolution).
//!
//! `cargo bench --bench cpu_conv [-- adm | demo | gemm]`: `adm` times the ADM-64 / ADM-128 shapes
//! at batch 1, `demo` the built-in demo's GroupNorm+SiLU+3x3 convolutions at batch 96 (16 digits
//! x 6 members) split into the norm, the convolution and the fused op, `gemm` single-thread
//! GEMMs at the Winograd product shapes.

use std::time::Instant;

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::{Backend, ConvSpec};

fn main() {
    uqengine::backend::cpu::keep_freed_buffers();
    let b = CpuBackend::new();
    let adm = std::env::args().any(|a| a == "adm");
    if std::env::args().any(|a| a == "gemm") {
        gemm_rate();
        return;
    }
    if std::env::args().any(|a| a == "demo") {
        demo_norm_conv(&b);
        return;
    }
    // (batch, h = w, cin, cout)
    let shapes: &[(usize, usize, usize, usize)] = if adm {
        &[
            (1, 64, 192, 192),
            (1, 32, 384, 384),
            (1, 16, 576, 576),
            (1, 8, 768, 768),
            (1, 128, 256, 256),
            (1, 128, 512, 256),
            (1, 128, 256, 6),
            (1, 64, 256, 256),
            (1, 32, 512, 512),
            (1, 16, 1024, 1024),
            (1, 8, 1024, 1024),
        ]
    } else {
        &[
            (16, 32, 128, 3),
            (1, 32, 128, 3),
            (16, 32, 128, 128),
            (16, 16, 256, 256),
            (16, 8, 256, 256),
            (16, 4, 256, 256),
            (1, 32, 128, 128),
            (1, 16, 256, 256),
        ]
    };
    for &(n, hw, cin, cout) in shapes {
        let x: Vec<f32> = (0..n * hw * hw * cin)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..cout * cin * 9)
            .map(|i| ((i * 104729) % 1000) as f32 / 1e5 - 0.005)
            .collect();
        let conv = b
            .prepare_conv(
                ConvSpec::new(cin, cout, 3, 1, 1),
                &w,
                Some(&vec![0.0; cout]),
            )
            .unwrap();
        let xt = b.upload(&[n, hw, hw, cin], &x).unwrap();
        let _ = b.conv2d(&xt, &conv, None).unwrap();
        let reps = (2e9 / (18.0 * (cin * cout * n * hw * hw) as f64)).clamp(3.0, 50.0) as usize;
        let t0 = Instant::now();
        for _ in 0..reps {
            let _ = b.conv2d(&xt, &conv, None).unwrap();
        }
        let dt = t0.elapsed().as_secs_f64() / reps as f64;
        let fl = 18.0 * (cin * cout * n * hw * hw) as f64;
        println!(
            "n{n} {hw}x{hw} {cin}->{cout}: {:.2} ms = {:.1} GFLOP/s (direct-equivalent)",
            dt * 1e3,
            fl / dt / 1e9
        );
    }
}

/// Single-thread GEMM rate at the Winograd product shapes (`-- gemm`).
fn gemm_rate() {
    use uqengine::linalg::panel;
    for (m, k, n) in [
        (170, 192, 192),
        (64, 384, 384),
        (64, 576, 576),
        (16, 768, 768),
        (4, 256, 256),
        (16, 512, 256),
        (64, 256, 256),
        (256, 128, 128),
        (512, 192, 192),
    ] {
        // Enough distinct weight matrices to fill 96 MiB, cycled through as a Winograd
        // convolution's products are: they come from memory, not cache.
        let mats = ((96usize << 20) / (4 * k * n)).clamp(1, 64);
        let a = vec![0.5f32; m * k];
        let bs: Vec<Vec<f32>> = (0..mats).map(|i| vec![0.01 * i as f32; k * n]).collect();
        let bps: Vec<Vec<f32>> = bs.iter().map(|b| panel::pack(k, n, b)).collect();
        let mut c = vec![0f32; m * n];
        let reps = ((2e9 / (2.0 * (m * k * n) as f64)) as usize).max(mats);
        let flops = 2.0 * (m * k * n) as f64 * reps as f64;
        // Fastest of 5 alternating rounds, general GEMM (packs at each call) and packed once.
        let (mut general, mut packed) = (0.0f64, 0.0f64);
        for _ in 0..5 {
            let t = Instant::now();
            for r in 0..reps {
                uqengine::linalg::matmul::sgemm(m, n, k, &a, &bs[r % mats], &mut c, false);
            }
            general = general.max(flops / t.elapsed().as_secs_f64() / 1e9);
            let t = Instant::now();
            for r in 0..reps {
                panel::sgemm(m, n, k, &a, k, &bps[r % mats], &mut c, n, false);
            }
            packed = packed.max(flops / t.elapsed().as_secs_f64() / 1e9);
        }
        println!(
            "gemm 1 thread {m}x{k}x{n} ({mats} weight matrices): general {general:.1} GFLOP/s, \
             packed once {packed:.1} GFLOP/s"
        );
    }
}

/// The demo UNet's `norm_conv2d` shapes at batch 96: GroupNorm(8)+SiLU alone, the 3x3
/// convolution alone and the fused op, fastest of 15 calls each (`-- demo`).
fn demo_norm_conv(b: &CpuBackend) {
    use uqengine::backend::Backend;
    // (h = w, cin, cout)
    let shapes = [
        (32, 16, 16),
        (32, 48, 16),
        (32, 32, 16),
        (16, 32, 32),
        (16, 96, 32),
        (8, 64, 64),
        (8, 128, 64),
    ];
    // UQENGINE_BENCH_BATCH: another batch (4 with RAYON_NUM_THREADS=1: one piece of the demo's
    // trunk, as CpuBackend::run_in_pieces runs it).
    let n: usize = std::env::var("UQENGINE_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    for (hw, cin, cout) in shapes {
        let x: Vec<f32> = (0..n * hw * hw * cin)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..cout * cin * 9)
            .map(|i| ((i * 104729) % 1000) as f32 / 1e4 - 0.05)
            .collect();
        let conv = b
            .prepare_conv(
                ConvSpec::new(cin, cout, 3, 1, 1),
                &w,
                Some(&vec![0.1; cout]),
            )
            .unwrap();
        let g: Vec<f32> = (0..cin).map(|i| 1.0 + i as f32 / cin as f32).collect();
        let norm = b.prepare_norm(8, 1e-5, &g, &vec![0.05; cin]).unwrap();
        let xt = b.upload(&[n, hw, hw, cin], &x).unwrap();
        // The fastest of 15 calls (the machine may be shared).
        let time = |f: &dyn Fn()| {
            f();
            (0..15)
                .map(|_| {
                    let t0 = Instant::now();
                    f();
                    t0.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min)
        };
        let tn = time(&|| {
            b.group_norm(&xt, &norm, true).unwrap();
        });
        let hn = b.group_norm(&xt, &norm, true).unwrap();
        let tc = time(&|| {
            b.conv2d(&hn, &conv, None).unwrap();
        });
        let tf = time(&|| {
            b.norm_conv2d(&xt, &norm, true, &conv, None).unwrap();
        });
        let fl = 18.0 * (cin * cout * n * hw * hw) as f64;
        println!(
            "n{n} {hw}x{hw} {cin}->{cout}: norm {tn:.2} ms, conv {tc:.2} ms, fused {tf:.2} ms = {:.1} GFLOP/s",
            fl / (tf * 1e-3) / 1e9
        );
    }
}
