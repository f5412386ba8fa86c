//! Single CPU convolutions at the ddpm-cifar10-32 and ADM layer shapes, ms per call and GFLOP/s
//! (`UQENGINE_CPU_WINOGRAD=0` for the direct convolution).
//!
//! `cargo bench --bench cpu_conv [-- adm]`: `adm` times the ADM-64 / ADM-128 shapes at batch 1.

use std::time::Instant;

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::{Backend, ConvSpec};

fn main() {
    let b = CpuBackend::new();
    let adm = std::env::args().any(|a| a == "adm");
    // (batch, h = w, cin, cout)
    let shapes: &[(usize, usize, usize, usize)] = if adm {
        &[
            (1, 64, 192, 192),
            (1, 32, 384, 384),
            (1, 16, 576, 576),
            (1, 8, 768, 768),
            (1, 128, 256, 256),
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
