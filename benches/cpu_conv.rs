use std::time::Instant;
use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::{Backend, ConvSpec};
use uqengine::linalg::matmul::sgemm;
fn main() {
    // Conv throughput of the CPU backend against single-thread GEMM on the same shapes.
    let b = CpuBackend::new();
    for (n, hw, c) in [
        (96usize, 32usize, 16usize),
        (96, 16, 32),
        (96, 8, 64),
        (16, 32, 128),
        (16, 16, 256),
    ] {
        let x = vec![0.5f32; n * hw * hw * c];
        let w = vec![0.01f32; c * c * 9];
        let conv = b
            .prepare_conv(ConvSpec::new(c, c, 3, 1, 1), &w, Some(&vec![0.0; c]))
            .unwrap();
        let xt = b.upload(&[n, hw, hw, c], &x).unwrap();
        let _ = b.conv2d(&xt, &conv, None).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            let _ = b.conv2d(&xt, &conv, None).unwrap();
        }
        let dt = t0.elapsed().as_secs_f64() / 3.0;
        let fl = 2.0 * 9.0 * (c * c * n * hw * hw) as f64;
        // raw gemm single-thread on a tile
        let m = 1024;
        let k = 9 * c;
        let a = vec![0.5f32; m * k];
        let wt = vec![0.01f32; k * c];
        let mut o = vec![0f32; m * c];
        let t1 = Instant::now();
        for _ in 0..10 {
            sgemm(m, c, k, &a, &wt, &mut o, true);
        }
        let dg = t1.elapsed().as_secs_f64() / 10.0;
        println!("n{n} hw{hw} c{c}: conv {:.1} ms = {:.1} GFLOP/s | 1-thread gemm {m}x{c}x{k}: {:.1} GFLOP/s", dt * 1e3, fl / dt / 1e9, 2.0 * (m * k * c) as f64 / dg / 1e9);
    }
}
