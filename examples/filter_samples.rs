//! Using uqengine as a library: generate samples with uncertainty and keep the most certain.
//!
//! `cargo run --release --example filter_samples -- MODEL_DIR POSTERIOR EXTRACTOR_DIR OUT_DIR`
//! (with no arguments: the built-in demo model, its posterior and its extractor).

use std::path::PathBuf;
use std::sync::Arc;

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::Backend;
use uqengine::io::scores::read_csv;
use uqengine::job::{Progress, SampleJob, UncertaintySettings};
use uqengine::pipeline::ClassChoice;
use uqengine::sampler::SamplerKind;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let (model, posterior, extractor, out) = match args.as_slice() {
        [m, p, e, o] => (m.clone(), p.clone(), e.clone(), o.clone()),
        [] => (
            demo.join("unet"),
            demo.join("posterior.safetensors"),
            demo.join("clip"),
            PathBuf::from("out-example"),
        ),
        _ => {
            return Err("usage: filter_samples [MODEL_DIR POSTERIOR EXTRACTOR_DIR OUT_DIR]".into())
        }
    };

    let mut uncertainty = UncertaintySettings::new(posterior, extractor);
    uncertainty.draws = 5;
    uncertainty.keep = Some(12);
    let job = SampleJob {
        model_dir: model,
        out_dir: out.clone(),
        num: 16,
        steps: 25,
        seed: 0,
        batch: 16,
        classes: ClassChoice::Balanced,
        noise_file: None,
        sampler: SamplerKind::Ddim { eta: 0.0 },
        scheduler_overrides: vec![],
        overwrite: true,
        uncertainty: Some(uncertainty),
        max_samples_per_pass: None,
        shard: None,
        on_non_finite: Default::default(),
    };
    let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    let report = job.run(backend, &mut |p| {
        if let Progress::Message(m) = p {
            eprintln!("{m}");
        }
    })?;
    println!(
        "{} samples x {} members in {:.1} s",
        report.num, report.members, report.seconds
    );

    // The score table, most certain first.
    let mut rows = read_csv(&out.join("scores.csv"))?;
    rows.sort_by_key(|r| r.rank);
    for r in rows.iter().take(5) {
        println!(
            "rank {:>2}: sample {:05} (class {:?}) uncertainty {:.3}",
            r.rank, r.index, r.class, r.uncertainty
        );
    }
    println!("kept: {}", out.join("keep").display());
    Ok(())
}
