//! Single CPU convolutions at the ddpm-cifar10-32 and ADM layer shapes, ms per call and GFLOP/s
//! (`UQENGINE_CPU_WINOGRAD=0` for the direct convolution).
//!
//! `cargo bench --bench cpu_conv [-- adm | gemm]`: `adm` times the ADM-64 / ADM-128 shapes at
//! batch 1, `gemm` single-thread GEMMs at the Winograd product shapes.

use std::time::Instant;

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::{Backend, ConvSpec};

fn main() {
    let b = CpuBackend::new();
    let adm = std::env::args().any(|a| a == "adm");
    if std::env::args().any(|a| a == "gemm") {
        gemm_rate();
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
            (1, 64, 256, 256),
            (1, 32, 512, 512),
            (1, 16, 1024, 1024),
            (1, 8, 1024, 1024),
        ]
    } else {
        &[
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
    use uqengine::linalg::matmul::sgemm;
    for (m, k, n) in [
        (170, 192, 192),
        (64, 384, 384),
        (64, 576, 576),
        (16, 768, 768),
        (512, 192, 192),
        (1024, 1728, 192),
    ] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.01f32; k * n];
        let mut c = vec![0f32; m * n];
        let reps = (4e9 / (2.0 * (m * k * n) as f64)) as usize;
        let t = Instant::now();
        for _ in 0..reps {
            sgemm(m, n, k, &a, &b, &mut c, false);
        }
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "gemm 1 thread {m}x{k}x{n}: {:.1} GFLOP/s",
            2.0 * (m * k * n) as f64 / dt / 1e9
        );
    }
}
