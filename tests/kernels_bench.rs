//! Throughput of the main kernels on GPU 0 at UNet-sized shapes, as JSON (to the file named by
//! `UQENGINE_BENCH_JSON`, else stdout). Ignored by default (it times, asserts nothing); run with
//! `cargo test --release --test kernels_bench -- --ignored --nocapture` (tools/gpu-check.sh does,
//! next to PyTorch at the same shapes). Skips with a message when there is no GPU.

use std::sync::Arc;
use std::time::Instant;

use uqengine::backend::cuda::gpu::GpuDevice;
use uqengine::backend::cuda::CudaBackend;
use uqengine::backend::{Activation, Backend, ConvSpec};
use uqengine::Tensor;

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Seconds per call of `f` (median of `reps` timed calls after warm-up), synchronised.
fn time(b: &CudaBackend, reps: usize, mut f: impl FnMut() -> Tensor) -> f64 {
    for _ in 0..3 {
        f();
    }
    b.device().synchronize().unwrap();
    let mut t = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        let y = f();
        b.device().synchronize().unwrap();
        t.push(t0.elapsed().as_secs_f64());
        drop(y);
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

#[test]
#[ignore = "benchmark: run explicitly on a GPU machine"]
fn gpu_kernel_throughput() {
    let dev = match GpuDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping GPU benchmark: {e}");
            return;
        }
    };
    let b = CudaBackend::new(Arc::new(dev));
    let mut rows = Vec::new();
    let mut record = |name: &str, shape: String, secs: f64, flops: f64, bytes: f64| {
        let line = format!(
            "{{\"op\": \"{name}\", \"shape\": \"{shape}\", \"ms\": {:.4}, \"tflops\": {:.2}, \"gbps\": {:.1}}}",
            secs * 1e3,
            flops / secs / 1e12,
            bytes / secs / 1e9
        );
        eprintln!("{line}");
        rows.push(line);
    };

    for (n, hw, c) in [(8usize, 64usize, 128usize), (8, 32, 256), (8, 16, 512)] {
        let spec = ConvSpec::new(c, c, 3, 1, 1);
        let conv = b
            .prepare_conv(spec, &values(c * c * 9, 1, 0.02), Some(&values(c, 2, 0.1)))
            .unwrap();
        let norm = b
            .prepare_norm(32, 1e-5, &values(c, 3, 1.0), &values(c, 4, 0.1))
            .unwrap();
        let x = b
            .upload(&[n, hw, hw, c], &values(n * hw * hw * c, 5, 1.0))
            .unwrap();
        let flops = 2.0 * (n * hw * hw * c * c * 9) as f64;
        let bytes = 2.0 * (2 * n * hw * hw * c + c * c * 9) as f64;
        let shape = format!("n{n} {hw}x{hw} {c}->{c} 3x3");
        record(
            "conv2d",
            shape.clone(),
            time(&b, 20, || b.conv2d(&x, &conv, None).unwrap()),
            flops,
            bytes,
        );
        record(
            "norm_conv2d_silu",
            shape,
            time(&b, 20, || {
                b.norm_conv2d(&x, &norm, true, &conv, Some(&x)).unwrap()
            }),
            flops,
            bytes,
        );
        let gn_bytes = 2.0 * (3 * n * hw * hw * c) as f64;
        record(
            "group_norm_silu",
            format!("n{n} {hw}x{hw}x{c} g32"),
            time(&b, 20, || b.group_norm(&x, &norm, true).unwrap()),
            0.0,
            gn_bytes,
        );
    }
    {
        let (rows_, din, dout) = (8 * 1024, 512, 2048);
        let lin = b
            .prepare_linear(
                din,
                dout,
                &values(din * dout, 6, 0.04),
                Some(&values(dout, 7, 0.1)),
            )
            .unwrap();
        let x = b
            .upload(&[8, 1024, din], &values(rows_ * din, 8, 1.0))
            .unwrap();
        let flops = 2.0 * (rows_ * din * dout) as f64;
        let bytes = 2.0 * (rows_ * din + rows_ * dout + din * dout) as f64;
        record(
            "linear_gelu",
            format!("{rows_}x{din}->{dout}"),
            time(&b, 20, || {
                b.linear(&x, &lin, Activation::Gelu, None).unwrap()
            }),
            flops,
            bytes,
        );
    }
    for (n, len, heads, dh) in [(8usize, 1024usize, 8usize, 64usize), (8, 256, 4, 128)] {
        let d = heads * dh;
        let q = b
            .upload(&[n, len, d], &values(n * len * d, 9, 1.0))
            .unwrap();
        let k = b
            .upload(&[n, len, d], &values(n * len * d, 10, 1.0))
            .unwrap();
        let v = b
            .upload(&[n, len, d], &values(n * len * d, 11, 1.0))
            .unwrap();
        let flops = 4.0 * (n * heads * len * len * dh) as f64;
        let bytes = 2.0 * (4 * n * len * d) as f64;
        let scale = 1.0 / (dh as f32).sqrt();
        record(
            "attention",
            format!("n{n} len{len} heads{heads} dh{dh}"),
            time(&b, 10, || b.attention(&q, &k, &v, heads, scale).unwrap()),
            flops,
            bytes,
        );
    }
    let json = format!(
        "{{\"device\": \"{}\", \"results\": [\n  {}\n]}}\n",
        b.name(),
        rows.join(",\n  ")
    );
    match std::env::var("UQENGINE_BENCH_JSON") {
        Ok(path) => std::fs::write(&path, &json).unwrap_or_else(|e| panic!("{path}: {e}")),
        Err(_) => print!("{json}"),
    }
}
