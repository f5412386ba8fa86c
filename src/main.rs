//! `uqengine`: sample diffusion models and score every image with its generative uncertainty.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::Backend;
use uqengine::job::{scheduler_config, Progress, SampleJob};
use uqengine::models::unet::UNet;
use uqengine::pipeline::ClassChoice;
use uqengine::sampler::SamplerKind;

/// The built-in demo: a class-conditional MNIST diffusion model shipped with the crate.
fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets").join("demo")
}

#[derive(Parser)]
#[command(name = "uqengine", version, about = "Diffusion sampling with generative uncertainty")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images (and, with a posterior, score each by its uncertainty).
    Sample(SampleArgs),
    /// Print a model's parsed architecture, parameter count and scheduler.
    Info(InfoArgs),
}

#[derive(Args)]
struct DeviceArgs {
    /// Compute device: auto, cpu, cuda[:N].
    #[arg(long, default_value = "auto")]
    device: String,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct SampleArgs {
    /// diffusers UNet2DModel directory (default: the built-in MNIST demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Number of samples.
    #[arg(long, default_value_t = 16)]
    num: usize,
    /// Sampler steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Seed of every random number of the run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Samples per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Class of every sample, or a comma-separated list with one class per sample (conditional models).
    #[arg(long)]
    class: Option<String>,
    /// How classes are chosen when --class is not given: balanced (i mod classes) or random.
    #[arg(long, default_value = "balanced")]
    classes: String,
    /// Start from this x_T (.npy, float32, [num, C, H, W]) instead of generated noise.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Sampler: ddim or ddpm.
    #[arg(long, default_value = "ddim")]
    sampler: String,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Override a scheduler-config value, e.g. --scheduler timestep_spacing=trailing (repeatable).
    #[arg(long = "scheduler", value_name = "KEY=VALUE")]
    scheduler: Vec<String>,
    /// Replace the output folder if it exists.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct InfoArgs {
    /// diffusers UNet2DModel directory (default: the built-in demo model).
    #[arg(long)]
    model: Option<PathBuf>,
}

fn backend(args: &DeviceArgs) -> Result<Box<dyn Backend>> {
    if let Some(t) = args.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().ok();
    }
    match args.device.as_str() {
        "cpu" => Ok(Box::new(CpuBackend::new())),
        "auto" => {
            eprintln!("device auto: no usable CUDA device in this build; using the CPU backend");
            Ok(Box::new(CpuBackend::new()))
        }
        d if d == "cuda" || d.starts_with("cuda:") => {
            bail!("--device {d}: this build has no CUDA backend yet; use --device cpu")
        }
        d => bail!("--device {d}: unknown device (expected auto, cpu or cuda[:N])"),
    }
}

fn model_dir(m: &Option<PathBuf>) -> Result<PathBuf> {
    match m {
        Some(p) => Ok(p.clone()),
        None => {
            let d = demo_dir().join("unet");
            if !d.join("config.json").exists() {
                bail!("no --model given and the built-in demo model is missing at {}", d.display());
            }
            Ok(d)
        }
    }
}

fn parse_overrides(v: &[String]) -> Result<Vec<(String, String)>> {
    v.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--scheduler {s}: expected KEY=VALUE"))
        })
        .collect()
}

fn progress_bar() -> (ProgressBar, impl FnMut(Progress)) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} sample-steps ({per_sec}, eta {eta})")
            .unwrap(),
    );
    let b = bar.clone();
    (bar, move |p: Progress| match p {
        Progress::Start { total, done } => {
            b.set_length(total);
            b.set_position(done);
            b.reset_eta();
        }
        Progress::Advance(n) => b.inc(n),
        Progress::Message(m) => b.println(m),
    })
}

fn cmd_sample(a: SampleArgs) -> Result<()> {
    let be = backend(&a.device)?;
    let classes = match &a.class {
        Some(c) => {
            let list: Vec<usize> = c
                .split(',')
                .map(|x| x.trim().parse::<usize>().with_context(|| format!("--class {c}: `{x}` is not a class index")))
                .collect::<Result<_>>()?;
            if list.len() == 1 {
                ClassChoice::Fixed(list[0])
            } else {
                if list.len() != a.num {
                    bail!("--class lists {} classes for --num {}", list.len(), a.num);
                }
                ClassChoice::List(list)
            }
        }
        None => match a.classes.as_str() {
            "balanced" => ClassChoice::Balanced,
            "random" => ClassChoice::Random,
            other => bail!("--classes {other}: expected balanced or random"),
        },
    };
    let sampler = match a.sampler.as_str() {
        "ddim" => SamplerKind::Ddim { eta: a.eta },
        "ddpm" => {
            if a.eta != 0.0 {
                bail!("--eta applies to the ddim sampler only");
            }
            SamplerKind::Ddpm
        }
        other => bail!("--sampler {other}: expected ddim or ddpm"),
    };
    let job = SampleJob {
        model_dir: model_dir(&a.model)?,
        out_dir: a.out.clone(),
        num: a.num,
        steps: a.steps,
        seed: a.seed,
        batch: a.batch,
        classes,
        noise_file: a.noise.clone(),
        sampler,
        scheduler_overrides: parse_overrides(&a.scheduler)?,
        overwrite: a.overwrite,
    };
    let (bar, mut on_progress) = progress_bar();
    let report = job.run(be.as_ref(), &mut on_progress)?;
    bar.finish_and_clear();
    println!(
        "wrote {} samples ({} member{} each) to {} in {:.1} s on {}",
        report.num,
        report.members,
        if report.members == 1 { "" } else { "s" },
        report.out_dir.display(),
        report.seconds,
        be.name()
    );
    Ok(())
}

fn cmd_info(a: InfoArgs) -> Result<()> {
    let dir = model_dir(&a.model)?;
    let unet = UNet::load(&CpuBackend::new(), &dir)?;
    print!("{}", unet.describe());
    let (sched, path) = scheduler_config(&dir, &[])?;
    match path {
        Some(p) => println!("scheduler        {}", p.display()),
        None => println!("scheduler        (none in the model folder: diffusers DDIM defaults)"),
    }
    println!("  {sched:?}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Sample(a) => cmd_sample(a),
        Command::Info(a) => cmd_info(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
