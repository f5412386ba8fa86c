//! Kernel benchmarks of the CUDA backend at the layer shapes of real models: the built-in demo
//! (K = 6 members of 16 samples), ddpm-cifar10-32 (batch 16) and ADM ImageNet-128 (batch 8).
//! Prints per kernel and shape the median time, the achieved TFLOP/s or GB/s and the fraction
//! of the device's peak (f16 dense tensor-core FLOP/s, equal to bf16's on these parts, and HBM
//! bandwidth, from a table keyed by the device name), and writes JSON (`UQENGINE_BENCH_JSON`, default
//! `target/kernels-bench.json`).
//!
//! Then whole sampling runs (`Generator::run`, x_T to the final samples) of the demo model and
//! the ddpm-cifar10-32 architecture at K = 1 and K = 6, in images/s.
//!
//! `cargo bench --bench kernels` runs on GPU 0. Without a GPU, built with `--features emu`, it
//! runs on the emulated device at smoke size (every shape divided down, one repetition): the
//! numbers then say nothing about speed, the run checks that every benchmark executes (CI runs
//! it).

use std::sync::Arc;
use std::time::Instant;

use uqengine::backend::cuda::gpu::GpuDevice;
use uqengine::backend::cuda::CudaBackend;
use uqengine::backend::{Activation, Backend, ConvSpec, LastLayer, StepNoise};
use uqengine::member_schedule::MemberSchedule;
use uqengine::models::unet::{UNet, UNetConfig};
use uqengine::models::weights::Weights;
use uqengine::pipeline::{BatchInput, Generator};
use uqengine::rng::Purpose;
use uqengine::sampler::{Sampler, SamplerKind, SchedulerConfig};
use uqengine::Tensor;

/// Dense f16 (= bf16) tensor-core TFLOP/s and HBM TB/s by device name (NVIDIA's data sheets).
const PEAKS: [(&str, f64, f64); 4] = [
    ("H200", 989.0, 4.8),
    ("H100 NVL", 835.0, 3.9),
    ("H100 PCIe", 756.0, 2.0),
    ("H100", 989.0, 3.35),
];

fn peak(name: &str) -> Option<(f64, f64)> {
    PEAKS
        .iter()
        .find(|(k, _, _)| name.contains(k))
        .map(|&(_, f, b)| (f, b))
}

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

struct Bench {
    b: CudaBackend,
    smoke: bool,
    peak: Option<(f64, f64)>,
    rows: Vec<serde_json::Value>,
}

impl Bench {
    /// Median seconds per call of `f` after warm-up, synchronised.
    fn time(&self, mut f: impl FnMut() -> Tensor) -> f64 {
        let (warm, reps) = if self.smoke { (0, 1) } else { (3, 20) };
        for _ in 0..warm {
            f();
        }
        self.b.device().synchronize().unwrap();
        let mut t = Vec::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            let y = f();
            self.b.device().synchronize().unwrap();
            t.push(t0.elapsed().as_secs_f64());
            drop(y);
        }
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        t[t.len() / 2]
    }

    fn record(&mut self, model: &str, op: &str, shape: String, secs: f64, flops: f64, bytes: f64) {
        let tflops = flops / secs / 1e12;
        let gbps = bytes / secs / 1e9;
        let (of_flops, of_bw) = match self.peak {
            Some((pf, pb)) => (tflops / pf, gbps / (pb * 1e3)),
            None => (f64::NAN, f64::NAN),
        };
        println!(
            "{model:<10} {op:<18} {shape:<34} {:>9.4} ms {tflops:>8.2} TFLOP/s {gbps:>8.1} GB/s  peak {:>5.1}% flop {:>5.1}% bw",
            secs * 1e3,
            100.0 * of_flops,
            100.0 * of_bw
        );
        let num = |v: f64| {
            if v.is_finite() {
                serde_json::json!(v)
            } else {
                serde_json::Value::Null
            }
        };
        self.rows.push(serde_json::json!({
            "model": model, "op": op, "shape": shape, "ms": secs * 1e3,
            "tflops": tflops, "gbps": gbps,
            "fraction_of_peak_flops": num(of_flops), "fraction_of_peak_bandwidth": num(of_bw),
        }));
    }

    /// A 3x3 convolution, its GroupNorm+SiLU-prologue form with a residual, and the GroupNorm.
    fn conv_level(&mut self, model: &str, n: usize, hw: usize, c: usize) {
        let b = self.b.clone();
        let spec = ConvSpec::new(c, c, 3, 1, 1);
        let conv = b
            .prepare_conv(spec, &values(c * c * 9, 1, 0.02), Some(&values(c, 2, 0.1)))
            .unwrap();
        let groups = if c.is_multiple_of(32) { 32 } else { 1 };
        let norm = b
            .prepare_norm(groups, 1e-5, &values(c, 3, 1.0), &values(c, 4, 0.1))
            .unwrap();
        let x = b
            .upload(&[n, hw, hw, c], &values(n * hw * hw * c, 5, 1.0))
            .unwrap();
        let flops = 2.0 * (n * hw * hw * c * c * 9) as f64;
        let bytes = 2.0 * (2 * n * hw * hw * c + c * c * 9) as f64;
        let shape = format!("n{n} {hw}x{hw} {c}->{c} 3x3");
        let t = self.time(|| b.conv2d(&x, &conv, None).unwrap());
        self.record(model, "conv2d", shape.clone(), t, flops, bytes);
        let t = self.time(|| b.norm_conv2d(&x, &norm, true, &conv, Some(&x)).unwrap());
        self.record(model, "norm_conv2d_silu", shape, t, flops, bytes * 1.5);
        let t = self.time(|| b.group_norm(&x, &norm, true).unwrap());
        let gn = format!("n{n} {hw}x{hw}x{c} g{groups}");
        self.record(
            model,
            "group_norm_silu",
            gn,
            t,
            0.0,
            2.0 * (3 * n * hw * hw * c) as f64,
        );
    }

    /// ADM's own ops at one level: the scale-shift GroupNorm(+SiLU) of every resnet and the
    /// average pooling of its downsampling resnets.
    fn adm_level(&mut self, model: &str, n: usize, hw: usize, c: usize) {
        let b = self.b.clone();
        let groups = if c.is_multiple_of(32) { 32 } else { 1 };
        let norm = b
            .prepare_norm(groups, 1e-5, &values(c, 3, 1.0), &values(c, 4, 0.1))
            .unwrap();
        let x = b
            .upload(&[n, hw, hw, c], &values(n * hw * hw * c, 5, 1.0))
            .unwrap();
        let ss = b.upload(&[n, 2 * c], &values(n * 2 * c, 6, 0.5)).unwrap();
        let elems = (n * hw * hw * c) as f64;
        let t = self.time(|| b.group_norm_scale_shift(&x, &norm, &ss, true).unwrap());
        let shape = format!("n{n} {hw}x{hw}x{c} g{groups}");
        // Statistics read the input twice, the apply reads it once and writes the output.
        self.record(
            model,
            "group_norm_scale_shift_silu",
            shape,
            t,
            0.0,
            2.0 * 4.0 * elems,
        );
        let t = self.time(|| b.avg_pool2x(&x).unwrap());
        let shape = format!("n{n} {hw}x{hw}x{c}");
        self.record(model, "avg_pool2x", shape, t, 0.0, 2.0 * 1.25 * elems);
    }

    fn attention(&mut self, model: &str, n: usize, len: usize, heads: usize, dh: usize) {
        let b = self.b.clone();
        let d = heads * dh;
        let up = |seed| {
            b.upload(&[n, len, d], &values(n * len * d, seed, 1.0))
                .unwrap()
        };
        let (q, k, v) = (up(9), up(10), up(11));
        let flops = 4.0 * (n * heads * len * len * dh) as f64;
        let bytes = 2.0 * (4 * n * len * d) as f64;
        let scale = 1.0 / (dh as f32).sqrt();
        let t = self.time(|| b.attention(&q, &k, &v, heads, scale).unwrap());
        let shape = format!("n{n} len{len} heads{heads} dh{dh}");
        self.record(model, "attention", shape, t, flops, bytes);
    }

    fn linear(&mut self, model: &str, rows: usize, din: usize, dout: usize) {
        let b = self.b.clone();
        let lin = b
            .prepare_linear(
                din,
                dout,
                &values(din * dout, 6, 0.04),
                Some(&values(dout, 7, 0.1)),
            )
            .unwrap();
        let x = b.upload(&[rows, din], &values(rows * din, 8, 1.0)).unwrap();
        let flops = 2.0 * (rows * din * dout) as f64;
        let bytes = 2.0 * (rows * din + rows * dout + din * dout) as f64;
        let t = self.time(|| b.linear(&x, &lin, Activation::Silu, None).unwrap());
        self.record(
            model,
            "linear_silu",
            format!("{rows}x{din}->{dout}"),
            t,
            flops,
            bytes,
        );
    }

    /// The per-step sampler kernels on a batch of `rows` member rows: the DDPM update with its
    /// noise, the same fused with the members' last layer (3x3 from `cin` trunk channels to `mc`
    /// model output channels), the starting noise, and the entropy reduction of `rows` member
    /// features.
    #[allow(clippy::too_many_arguments)]
    /// Whole sampling runs (`Generator::run`: trunk, K last layers, the sampler, from generated
    /// x_T to the final samples on the host) of `batch` samples with `k` members over `steps`
    /// DDIM steps; prints and records images/s (samples, each with its K members, per second).
    fn end_to_end(&mut self, model: &str, unet: &UNet, batch: usize, k: usize, steps: usize) {
        let b = self.b.clone();
        let spec = unet.conv_out.spec;
        // Member 0 stands in for the MAP, the others for posterior draws (timing only).
        let convs: Vec<_> = (0..k as u64)
            .map(|m| {
                let n = spec.cout * spec.cin * spec.kernel * spec.kernel;
                b.prepare_conv(
                    spec,
                    &values(n, 90 + m, 0.02),
                    Some(&values(spec.cout, 95 + m, 0.01)),
                )
                .unwrap()
            })
            .collect();
        let sampler = Sampler::new(
            &SchedulerConfig::default(),
            SamplerKind::Ddim { eta: 0.0 },
            steps,
        )
        .unwrap();
        let generator = Generator {
            backend: &b,
            unet,
            sampler: &sampler,
            members: b.prepare_members(&convs).unwrap(),
            schedule: MemberSchedule::Full,
            seed: 0,
        };
        let input = BatchInput {
            indices: (0..batch).collect(),
            classes: unet
                .config
                .num_class_embeds
                .map(|n| (0..batch).map(|i| i % n).collect()),
            noise: None,
        };
        let reps = if self.smoke { 1 } else { 3 };
        if !self.smoke {
            generator.run(&input, |_| {}).unwrap();
        }
        let mut t = Vec::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            let out = generator.run(&input, |_| {}).unwrap();
            t.push(t0.elapsed().as_secs_f64());
            assert!(
                out.iter().all(|v| v.is_finite()),
                "{model}: non-finite samples"
            );
        }
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let secs = t[t.len() / 2];
        let ips = batch as f64 / secs;
        let shape = format!("b{batch} K{k} {steps} steps");
        println!(
            "{model:10} {:18} {shape:36} {:10.2} ms {ips:10.1} images/s",
            "sample_end_to_end",
            secs * 1e3
        );
        self.rows.push(serde_json::json!({
            "model": model, "op": "sample_end_to_end", "shape": shape, "ms": secs * 1e3,
            "images_per_s": ips, "batch": batch, "members": k, "steps": steps,
        }));
    }

    fn sampler(
        &mut self,
        model: &str,
        samples: usize,
        k: usize,
        s: usize,
        c: usize,
        cin: usize,
        mc: usize,
    ) {
        let b = self.b.clone();
        let rows = samples * k;
        let n = rows * s * s * c;
        let indices: Vec<usize> = (0..samples).collect();
        let streams = b.sample_streams(&indices).unwrap();
        let x = b
            .state_from_host(&[rows, s, s, c], &values(n, 12, 1.0))
            .unwrap();
        let m = b.upload(&[rows, s, s, c], &values(n, 13, 1.0)).unwrap();
        let sampler = Sampler::new(&SchedulerConfig::default(), SamplerKind::Ddpm, 50).unwrap();
        let co = sampler.step_coefficients(10);
        let noise = StepNoise {
            streams: &streams,
            seed: 1,
            step: 10,
            rows_per_sample: k,
        };
        let shape = format!("{samples}x{k} members {s}x{s}x{c}");
        let t = self.time(|| b.sampler_step(&co, &m, &x, Some(&noise)).unwrap());
        self.record(
            model,
            "sampler_step_ddpm",
            shape.clone(),
            t,
            0.0,
            10.0 * n as f64,
        );
        let spec = ConvSpec::new(cin, mc, 3, 1, 1);
        let convs: Vec<_> = (0..k as u64)
            .map(|i| {
                b.prepare_conv(
                    spec,
                    &values(mc * cin * 9, 20 + i, 0.05),
                    Some(&values(mc, 30 + i, 0.1)),
                )
                .unwrap()
            })
            .collect();
        let members = b.prepare_members(&convs).unwrap();
        let h = b
            .upload(&[rows, s, s, cin], &values(rows * s * s * cin, 15, 1.0))
            .unwrap();
        let t = self.time(|| {
            b.last_layer_step(&h, LastLayer::Members(&members), &co, &x, Some(&noise))
                .unwrap()
        });
        self.record(
            model,
            "last_layer_step_ddpm",
            format!("{samples}x{k} members {s}x{s}x{cin}->{mc}"),
            t,
            2.0 * (rows * s * s * mc * 9 * cin) as f64,
            2.0 * (rows * s * s * cin) as f64 + 10.0 * n as f64,
        );
        let t = self.time(|| {
            b.normal_state(&streams, 1, Purpose::InitialNoise, 0, c, s, k)
                .unwrap()
        });
        self.record(model, "normal_state", shape, t, 0.0, 4.0 * n as f64);
        let d = 512;
        let f = b.upload(&[rows, d], &values(rows * d, 14, 1.0)).unwrap();
        let t0 = Instant::now();
        let reps = if self.smoke { 1 } else { 20 };
        for _ in 0..reps {
            b.member_entropy(&f, k, 1e-3).unwrap();
        }
        let t = t0.elapsed().as_secs_f64() / reps as f64;
        let shape = format!("{samples}x{k} members d{d} (with the copy back)");
        self.record(
            model,
            "gaussian_entropy",
            shape,
            t,
            0.0,
            2.0 * (rows * d) as f64,
        );
    }
}

fn main() {
    let (dev, smoke): (Arc<dyn uqengine::backend::cuda::device::Device>, bool) =
        match GpuDevice::new(0) {
            Ok(d) => (Arc::new(d), false),
            Err(e) => {
                #[cfg(feature = "emu")]
                {
                    eprintln!(
                        "no GPU ({e}): smoke run on the emulated device (times mean nothing)"
                    );
                    (
                        Arc::new(uqengine::backend::cuda::emu::EmuDevice::new()),
                        true,
                    )
                }
                #[cfg(not(feature = "emu"))]
                {
                    eprintln!("no GPU ({e}) and no emulated device (build with --features emu): nothing to run");
                    return;
                }
            }
        };
    let b = CudaBackend::new(dev);
    let name = b.name();
    let mut bench = Bench {
        peak: peak(&name),
        b,
        smoke,
        rows: Vec::new(),
    };
    println!(
        "device: {name}; peak {:?} (f16 TFLOP/s, HBM TB/s)",
        bench.peak
    );
    // (n, hw, c) divided down for the smoke run.
    let sz = |n: usize, hw: usize, c: usize| {
        if smoke {
            (1, (hw / 8).max(2), (c / 16).max(16))
        } else {
            (n, hw, c)
        }
    };
    // The demo: 16 samples x 6 members, channels 16/32/64 at 32/16/8, attention at 8x8.
    for (hw, c) in [(32, 16), (16, 32), (8, 64)] {
        let (n, hw, c) = sz(96, hw, c);
        bench.conv_level("demo", n, hw, c);
    }
    let (n, len) = if smoke { (1, 16) } else { (96, 64) };
    bench.attention("demo", n, len, 2, 32);
    let (smp, s) = if smoke { (2, 8) } else { (16, 32) };
    bench.sampler("demo", smp, 6, s, 1, 16, 1);
    // ddpm-cifar10-32 at batch 16: 128/256/256/256 channels at 32/16/8/4, attention at 16x16.
    for (hw, c) in [(32, 128), (16, 256), (8, 256), (4, 256)] {
        let (n, hw, c) = sz(16, hw, c);
        bench.conv_level("cifar10-32", n, hw, c);
    }
    let (n, len, dh) = if smoke { (1, 16, 32) } else { (16, 256, 256) };
    bench.attention("cifar10-32", n, len, 1, dh);
    let (rows, din) = if smoke { (4, 32) } else { (16, 512) };
    bench.linear("cifar10-32", rows, din, din);
    // ADM ImageNet-128 at batch 8: 256 x (1, 1, 2, 3, 4) channels at 128/64/32/16/8,
    // attention with 4 heads (num_heads 4: 128, 192 and 256 channels per head) at 32, 16 and 8.
    for (hw, c) in [(128, 256), (64, 256), (32, 512), (16, 768), (8, 1024)] {
        let (n, hw, c) = sz(8, hw, c);
        bench.conv_level("adm-128", n, hw, c);
        bench.adm_level("adm-128", n, hw, c);
    }
    for (len, ch) in [(1024, 512), (256, 768), (64, 1024)] {
        let (n, len, dh) = if smoke { (1, 16, 32) } else { (8, len, ch / 4) };
        bench.attention("adm-128", n, len, 4, dh);
    }
    let (smp, s) = if smoke { (1, 8) } else { (8, 128) };
    bench.sampler("adm-128", smp, 6, s, 3, if smoke { 16 } else { 256 }, 6);
    // End to end: the demo model (its own weights) and the ddpm-cifar10-32 architecture
    // (synthetic weights) at K = 1 and K = 6, 16 samples, 50 steps; smoke size: 1 sample, 1
    // step, K = 1 and 2 (the demo) and K = 1 (cifar).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = UNet::load(&bench.b.clone(), &root.join("assets/demo/unet")).unwrap();
    for k in [1, 6] {
        let (batch, steps) = if smoke { (1, 1) } else { (16, 50) };
        bench.end_to_end(
            "demo",
            &demo,
            batch,
            if smoke { k.min(2) } else { k },
            steps,
        );
    }
    let cfg = UNetConfig::from_file(&root.join("tools/ddpm_cifar10_32_config.json")).unwrap();
    let cifar = UNet::from_weights(&bench.b.clone(), cfg, &Weights::synthetic(7)).unwrap();
    // Smoke size: K = 1 only (a 35.7M-parameter step takes ~15 s emulated); it still checks
    // that the architecture's activations stay finite in f16.
    for k in if smoke { vec![1] } else { vec![1, 6] } {
        let (batch, steps) = if smoke { (1, 1) } else { (16, 50) };
        bench.end_to_end("cifar10-32", &cifar, batch, k, steps);
    }
    let json = serde_json::json!({"device": name, "smoke": smoke, "peak": bench.peak, "results": bench.rows});
    let path = std::env::var("UQENGINE_BENCH_JSON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/kernels-bench.json").into()
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap() + "\n")
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    println!("wrote {path}");
}
