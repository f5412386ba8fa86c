//! One UNet forward on the CPU backend: the google/ddpm-cifar10-32 architecture (35.7M
//! parameters, synthetic weights), 32x32, batch 16 by default.
//!
//! `cargo bench --bench cpu_forward -- [--config FILE | --adm-flags FILE] [--batch N] [--iters N]
//! [--json OUT]`: `--adm-flags` takes a guided-diffusion flags string (e.g.
//! `tools/adm_128_flags.txt`) and builds the architecture `uqengine convert adm` makes of it.
//! `tools/bench-cpu.sh` runs this and the PyTorch reference (`tools/bench_torch_unet.py`,
//! `tools/bench_torch_adm.py`) on the same architecture in the same run and prints the ratio.

use std::path::PathBuf;
use std::time::Instant;

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::Backend;
use uqengine::config::JsonConfig;
use uqengine::convert::adm::{unet_config, AdmFlags};
use uqengine::models::unet::{UNet, UNetConfig};
use uqengine::models::weights::Weights;
use uqengine::rng::{Purpose, Stream};

fn main() {
    uqengine::backend::cpu::keep_freed_buffers();
    let mut config =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/ddpm_cifar10_32_config.json");
    let mut batch = 16usize;
    let mut iters = 5usize;
    let mut json: Option<PathBuf> = None;
    let mut adm_flags: Option<PathBuf> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--config" => {
                config = PathBuf::from(&args[i + 1]);
                i += 1;
            }
            "--batch" => {
                batch = args[i + 1].parse().expect("--batch N");
                i += 1;
            }
            "--iters" => {
                iters = args[i + 1].parse().expect("--iters N");
                i += 1;
            }
            "--adm-flags" => {
                adm_flags = Some(PathBuf::from(&args[i + 1]));
                i += 1;
            }
            "--json" => {
                json = Some(PathBuf::from(&args[i + 1]));
                i += 1;
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    let b = uqengine::backend::profile::Profiled::new(std::sync::Arc::new(CpuBackend::new()));
    let cfg = match &adm_flags {
        Some(path) => {
            let text = std::fs::read_to_string(path).expect("read --adm-flags");
            let spec = AdmFlags::parse(text.trim())
                .and_then(|f| f.resolve())
                .expect("guided-diffusion flags");
            let json = unet_config(&spec).to_string();
            config = path.clone();
            UNetConfig::from_json(&JsonConfig::parse(&json, path).expect("config")).expect("config")
        }
        None => UNetConfig::from_file(&config).expect("config"),
    };
    let unet = UNet::from_weights(&b, cfg.clone(), &Weights::synthetic(7)).expect("model");
    let (c, s) = (cfg.in_channels, cfg.sample_size);
    let mut x = vec![0.0f32; batch * s * s * c];
    Stream::new(1, 0, Purpose::InitialNoise, 0).fill_normal(&mut x);
    let xt = b.upload(&[batch, s, s, c], &x).unwrap();
    let t: Vec<f32> = (0..batch).map(|i| ((i * 997) % 1000) as f32).collect();
    let cls: Option<Vec<usize>> = cfg
        .num_class_embeds
        .map(|n| (0..batch).map(|i| i % n).collect());
    // Warm-up.
    let y = unet.forward(&b, &xt, &t, cls.as_deref()).unwrap();
    assert!(b.download(&y).unwrap().iter().all(|v| v.is_finite()));
    let mut times = Vec::new();
    for _ in 0..iters {
        let t0 = Instant::now();
        let _ = unet.forward(&b, &xt, &t, cls.as_deref()).unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let median = times[times.len() / 2];
    let threads = rayon::current_num_threads();
    println!(
        "uqengine cpu: {} batch {batch}, {threads} threads: {median:.1} ms/forward (median of {iters}; mean {mean:.1}, min {:.1}), {:.2} ms/image",
        config.display(),
        times[0],
        median / batch as f64
    );
    if std::env::var("UQENGINE_PROFILE").is_ok() {
        eprint!("{}", b.report());
    }
    if let Some(p) = json {
        let v = serde_json::json!({
            "engine": "uqengine-cpu",
            "config": config.display().to_string(),
            "batch": batch,
            "iters": iters,
            "threads": threads,
            "ms_per_forward_median": median,
            "ms_per_forward_mean": mean,
            "ms_per_forward_min": times[0],
            "ms_per_image": median / batch as f64,
        });
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).expect("write json");
    }
}
