//! `uqengine`: sample diffusion models and score every image with its generative uncertainty.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use uqengine::backend::cpu::CpuBackend;
use uqengine::backend::Backend;
use uqengine::job::{
    scheduler_config, NonFinite, Progress, SampleJob, ScoreJob, Shard, UncertaintySettings,
};
use uqengine::keep::KeepPolicy;
use uqengine::laplace::{FitOptions, FitSet, Hessian};
use uqengine::member_schedule::MemberSchedule;
use uqengine::models::unet::UNet;
use uqengine::pipeline::ClassChoice;
use uqengine::sampler::SamplerKind;
use uqengine::uncertainty::{EntropyOptions, Estimator};

/// The built-in demo: a class-conditional MNIST diffusion model shipped with the crate.
fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("demo")
}

#[derive(Parser)]
#[command(
    name = "uqengine",
    version,
    about = "Diffusion sampling with generative uncertainty"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images (and, with a posterior, score each by its uncertainty).
    Sample(SampleArgs),
    /// Build the last-layer Laplace posterior of a model from a folder of training images.
    Fit(FitArgs),
    /// Score member images produced elsewhere (DIR/<m>/imgs/<NNNNN>.png, m = 0 the MAP model).
    Score(ScoreArgs),
    /// Print a model's parsed architecture, parameter count and scheduler.
    Info(InfoArgs),
    /// Fréchet distance, precision, recall, density and coverage of a generated set against a
    /// reference set (features, or image folders through an extractor); with --run, a finished
    /// run's kept, first-N and least-certain sets side by side.
    Eval(EvalArgs),
    /// Build a run from the folders of its shards (`sample --shard i/n`): the same samples as
    /// the run made in one piece, scores and kept set over the whole run.
    Merge(MergeArgs),
    /// Convert another project's checkpoint into a model directory `sample` and `fit` read.
    #[command(subcommand)]
    Convert(ConvertCommand),
}

#[derive(Subcommand)]
enum ConvertCommand {
    /// An OpenAI guided-diffusion (ADM) UNetModel checkpoint into a diffusers UNet2DModel
    /// directory.
    #[command(after_help = uqengine::convert::adm::HELP)]
    Adm(ConvertAdmArgs),
}

#[derive(Args)]
struct ConvertAdmArgs {
    /// The checkpoint: a torch.save file of the UNetModel state dict (.pt).
    #[arg(long)]
    checkpoint: PathBuf,
    /// guided-diffusion's flags for the checkpoint, as one string (see below).
    #[arg(long, allow_hyphen_values = true)]
    flags: String,
    /// The model directory to create (it must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Storage type of the written weights.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
}

#[derive(Args)]
struct MergeArgs {
    /// The shard folders (any order).
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// Output folder of the merged run.
    #[arg(long)]
    out: PathBuf,
    /// Also list (keep.txt) and copy (keep/) the N most certain samples of the whole run.
    #[arg(long)]
    keep: Option<usize>,
    /// How --keep chooses: per-class or global (default: per-class for class-conditional runs).
    #[arg(long, value_name = "global|per-class")]
    keep_policy: Option<String>,
    /// Replace the output folder if it exists.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Reference images (a folder, searched recursively), encoded with --extractor.
    #[arg(long, conflicts_with = "real_features")]
    real: Option<PathBuf>,
    /// Reference features: float32 .npy [N, D].
    #[arg(long)]
    real_features: Option<PathBuf>,
    /// Cache of the reference folder's features (FILE.npy + FILE.json): reused while the
    /// extractor and the folder's files are the same, so a large folder is encoded once.
    #[arg(long, requires = "real")]
    real_cache: Option<PathBuf>,
    /// Generated images (a folder), encoded with --extractor.
    #[arg(long, conflicts_with_all = ["fake_features", "run"])]
    fake: Option<PathBuf>,
    /// Generated features: float32 .npy [N, D].
    #[arg(long, conflicts_with = "run")]
    fake_features: Option<PathBuf>,
    /// A finished `uqengine sample` run: evaluate its kept set, its first N samples and its N
    /// least certain (N = its keep count or --keep).
    #[arg(long)]
    run: Option<PathBuf>,
    /// With --run: the set size N (default: the run's keep.txt count).
    #[arg(long, requires = "run")]
    keep: Option<usize>,
    /// With --run: how the kept and least-certain sets are chosen (default: the run's policy).
    #[arg(long, value_name = "global|per-class", requires = "run")]
    keep_policy: Option<String>,
    /// Feature extractor (a CLIPVisionModelWithProjection directory) for image folders
    /// (default with --run: the run's extractor).
    #[arg(long)]
    extractor: Option<PathBuf>,
    /// Nearest neighbours of precision, recall, density and coverage.
    #[arg(long, default_value_t = 3)]
    k: usize,
    /// Where to write the metrics.
    #[arg(long, default_value = "metrics.json")]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct DeviceArgs {
    /// Compute device: auto (a GPU when one is usable, else the CPU), cpu, cuda[:N], or emu
    /// (the CUDA kernels emulated on the CPU; builds with the `emu` feature).
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
    /// Posterior file (`uqengine fit`): score every sample by its generative uncertainty.
    /// Default with the built-in model: its shipped posterior.
    #[arg(long)]
    posterior: Option<PathBuf>,
    /// Sample without uncertainty even where a default posterior exists.
    #[arg(long, conflicts_with = "posterior")]
    no_uncertainty: bool,
    /// Weight draws M (K = M + 1 members per sample, MAP first).
    #[arg(long, default_value_t = 5)]
    draws: usize,
    /// Seed of the posterior's weight draws (default: --seed). Another draw seed with the same
    /// --seed keeps the noise and draws other members: how much a score depends on the draws.
    #[arg(long, value_name = "SEED")]
    draw_seed: Option<u64>,
    #[command(flatten)]
    features: FeatureArgs,
    /// Also list (keep.txt) and copy (keep/) the N most certain samples.
    #[arg(long)]
    keep: Option<usize>,
    /// How --keep chooses: per-class (each class's most certain, in proportion to its share of
    /// the run) or global (the N most certain of the run, the reference code's policy). Default:
    /// per-class for class-conditional models, global otherwise.
    #[arg(long, value_name = "global|per-class")]
    keep_policy: Option<String>,
    /// How the K members share work along the steps: full (the paper's method: every member its
    /// own trajectory), branch:F (share the MAP trajectory for a fraction F, e.g. 0.5, or a step
    /// index, then full), shared-trunk (one trunk per sample and step on the MAP input, K last
    /// layers), shared-trunk:L (the MAP trajectory, then shared-trunk for the last L steps),
    /// early-full:F (full for the first fraction F or F steps, then shared-trunk), interleaved:R
    /// (full on every R-th step, shared-trunk on the others).
    #[arg(long, value_name = "NAME", default_value = "full")]
    uq_schedule: String,
    /// What a sample whose member, feature or score is not finite (NaN, Inf) does: error (stop,
    /// naming the sample) or mark (nan in the score table, ranked last, never kept, listed as
    /// invalid_samples in summary.json).
    #[arg(long, value_name = "error|mark", default_value = "error")]
    on_non_finite: String,
    /// Run only shard i of n (i/n, 0 <= i < n): a contiguous range of the run's batches, computed
    /// exactly as in the whole run. `uqengine merge` builds the run from the n shard folders.
    /// One process per GPU: --shard i/n --device cuda:i.
    #[arg(long, value_name = "i/n")]
    shard: Option<String>,
    /// Write all K member images (members/<m>/imgs/NNNNN.png) and features.npy.
    #[arg(long)]
    save_members: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct FeatureArgs {
    /// Feature extractor: a CLIPVisionModelWithProjection directory (`sample` with the built-in
    /// model: its shipped extractor by default; required otherwise).
    #[arg(long)]
    extractor: Option<PathBuf>,
    /// sigma^2 of the Gaussian entropy.
    #[arg(long, default_value_t = 1e-3)]
    sigma2: f64,
    /// Feed the extractor float images instead of 8-bit quantised ones.
    #[arg(long)]
    no_quantize: bool,
}

#[derive(Args)]
struct FitArgs {
    /// diffusers UNet2DModel directory (default: the built-in demo model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Folder of training images (PNG/JPEG, searched recursively; class-conditional models: one
    /// subfolder per class, named by its index).
    #[arg(long)]
    data: PathBuf,
    /// Posterior file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Curvature: ef-diag (diagonal empirical Fisher) or ggn-kron (exact Gauss-Newton, full covariance).
    #[arg(long, default_value = "ef-diag")]
    hessian: String,
    #[arg(long, default_value_t = 1.0)]
    prior_precision: f64,
    #[arg(long, default_value_t = 1.0)]
    sigma_noise: f64,
    /// Number of training images to use (evenly spaced over the folder; default all).
    #[arg(long)]
    images: Option<usize>,
    /// Images per trunk evaluation.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output channels in the loss (learned-variance models: 3; default all).
    #[arg(long)]
    loss_channels: Option<usize>,
    /// Replace an existing posterior file.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct ScoreArgs {
    /// Member images: DIR/<m>/imgs/<NNNNN>.png for m = 0..M (m = 0 the MAP model).
    #[arg(long)]
    members: PathBuf,
    /// Output folder for scores.csv, scores.json, contact_sheet.png.
    #[arg(long, default_value = "scores")]
    out: PathBuf,
    #[command(flatten)]
    features: FeatureArgs,
    /// Seed written into the score table.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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

/// With `UQENGINE_PROFILE=1`, every op of the run is timed and the table printed at exit.
static PROFILE: std::sync::OnceLock<Arc<uqengine::backend::profile::Profiled>> =
    std::sync::OnceLock::new();

fn backend(args: &DeviceArgs) -> Result<Arc<dyn Backend>> {
    let b = select_device(args)?;
    if std::env::var("UQENGINE_PROFILE").is_ok_and(|v| v != "0") {
        let p = Arc::new(uqengine::backend::profile::Profiled::new(b));
        PROFILE.set(p.clone()).ok();
        return Ok(p);
    }
    Ok(b)
}

fn select_device(args: &DeviceArgs) -> Result<Arc<dyn Backend>> {
    if let Some(mut t) = args.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if t > 4 * cores {
            eprintln!(
                "--threads {t}: this machine has {cores} cores; using {}",
                4 * cores
            );
            t = 4 * cores;
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .ok();
    }
    let (b, msg) = uqengine::backend::cuda::select_backend(&args.device)?;
    if args.device == "auto" || args.device.starts_with("cuda") {
        eprintln!("{msg}");
    }
    Ok(b)
}

fn model_dir(m: &Option<PathBuf>) -> Result<PathBuf> {
    match m {
        Some(p) => Ok(p.clone()),
        None => {
            let d = demo_dir().join("unet");
            if !d.join("config.json").exists() {
                bail!(
                    "no --model given and the built-in demo model is missing at {}",
                    d.display()
                );
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
        // Messages reach the user also when stderr is not a terminal (the bar is hidden then).
        Progress::Message(m) if b.is_hidden() => eprintln!("{m}"),
        Progress::Message(m) => b.println(m),
    })
}

fn cmd_sample(a: SampleArgs) -> Result<()> {
    let be = backend(&a.device)?;
    let classes = match &a.class {
        Some(c) => {
            let list: Vec<usize> = c
                .split(',')
                .map(|x| {
                    x.trim()
                        .parse::<usize>()
                        .with_context(|| format!("--class {c}: `{x}` is not a class index"))
                })
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
    let builtin = a.model.is_none();
    let uncertainty = if a.no_uncertainty {
        None
    } else {
        let posterior = match (&a.posterior, builtin) {
            (Some(p), _) => Some(p.clone()),
            (None, true) if demo_dir().join("posterior.safetensors").exists() => {
                Some(demo_dir().join("posterior.safetensors"))
            }
            _ => None,
        };
        match posterior {
            None => None,
            Some(p) => {
                let mut u =
                    UncertaintySettings::new(p, extractor_dir(&a.features.extractor, builtin)?);
                u.draws = a.draws;
                u.draw_seed = a.draw_seed;
                u.estimator = Estimator::GaussianEntropy(EntropyOptions {
                    sigma2: a.features.sigma2,
                });
                u.quantize = !a.features.no_quantize;
                u.keep = a.keep;
                u.keep_policy = a
                    .keep_policy
                    .as_deref()
                    .map(KeepPolicy::parse)
                    .transpose()?;
                u.schedule = MemberSchedule::parse(&a.uq_schedule)?;
                u.save_members = a.save_members;
                Some(u)
            }
        }
    };
    if uncertainty.is_none() && (a.keep.is_some() || a.save_members || a.draw_seed.is_some()) {
        bail!("--keep, --save-members and --draw-seed need a posterior (--posterior FILE)");
    }
    if uncertainty.is_none() && a.uq_schedule != "full" {
        bail!("--uq-schedule {} schedules the posterior's members: it needs a posterior (--posterior FILE)", a.uq_schedule);
    }
    if a.keep_policy.is_some() && a.keep.is_none() {
        bail!("--keep-policy chooses the kept set: it needs --keep N");
    }
    let on_non_finite = NonFinite::parse(&a.on_non_finite)?;
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
        uncertainty,
        max_samples_per_pass: None,
        shard: a.shard.as_deref().map(Shard::parse).transpose()?,
        on_non_finite,
    };
    let (bar, mut on_progress) = progress_bar();
    let report = job.run(be.clone(), &mut on_progress)?;
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

fn extractor_dir(e: &Option<PathBuf>, builtin: bool) -> Result<PathBuf> {
    match (e, builtin) {
        (Some(p), _) => Ok(p.clone()),
        (None, true) => Ok(demo_dir().join("clip")),
        (None, false) => {
            bail!("--extractor DIR is required (a CLIPVisionModelWithProjection directory)")
        }
    }
}

fn cmd_fit(a: FitArgs) -> Result<()> {
    let be = backend(&a.device)?;
    let dir = model_dir(&a.model)?;
    if a.out.exists() && !a.overwrite {
        bail!(
            "{} already exists (use --overwrite to replace it)",
            a.out.display()
        );
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let unet = UNet::load(be.as_ref(), &dir)?;
    let (sched, _) = scheduler_config(&dir, &[])?;
    let set = FitSet::from_folder(&a.data, unet.config.num_class_embeds)?;
    let opts = FitOptions {
        hessian: Hessian::parse(&a.hessian)?,
        prior_precision: a.prior_precision,
        sigma_noise: a.sigma_noise,
        images: a.images,
        batch: a.batch,
        seed: a.seed,
        out_channels_in_loss: a.loss_channels,
        prediction: sched.prediction_type,
        ..FitOptions::default()
    };
    let started = std::time::Instant::now();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images ({eta})",
        )
        .unwrap(),
    );
    let post = uqengine::laplace::fit(
        be.as_ref(),
        &unet,
        &sched.alphas_cumprod(),
        &set,
        &opts,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    post.save(&a.out)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {} ({}, {} images, prior precision {}, sigma {}) in {:.1} s ({:.1} ms/image) on {}",
        a.out.display(),
        post.hessian().as_str(),
        post.num_images(),
        post.prior_precision(),
        post.sigma_noise(),
        secs,
        1e3 * secs / post.num_images().max(1) as f64,
        be.name()
    );
    Ok(())
}

fn cmd_score(a: ScoreArgs) -> Result<()> {
    let be = backend(&a.device)?;
    if a.features.no_quantize {
        bail!("--no-quantize does not apply to score: member images are 8-bit PNG files already");
    }
    let job = ScoreJob {
        members_dir: a.members.clone(),
        out_dir: a.out.clone(),
        extractor: extractor_dir(&a.features.extractor, false)?,
        estimator: Estimator::GaussianEntropy(EntropyOptions {
            sigma2: a.features.sigma2,
        }),
        seed: a.seed,
        overwrite: a.overwrite,
    };
    let r = job.run(be.clone())?;
    println!(
        "scored {} samples ({} members each) into {}",
        r.num,
        r.members,
        r.out_dir.display()
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

fn cmd_eval(a: EvalArgs) -> Result<()> {
    use uqengine::eval::{
        evaluate, load_features, run_extractor, run_sets, FeatureCache, FeatureSet,
    };
    use uqengine::models::clip::ClipVision;

    let policy = a
        .keep_policy
        .as_deref()
        .map(KeepPolicy::parse)
        .transpose()?;
    let sets = a
        .run
        .as_ref()
        .map(|run| run_sets(run, a.keep, policy))
        .transpose()?;
    // One extractor for every image folder of the evaluation (the run's own by default).
    let clip: Option<ClipVision> = if a.real.is_some() || a.fake.is_some() || a.run.is_some() {
        let dir = match (&a.extractor, a.run.as_ref().and_then(|r| run_extractor(r))) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => p,
            (None, None) => bail!("--extractor DIR is required to encode image folders"),
        };
        Some(ClipVision::load(backend(&a.device)?, &dir)?)
    } else {
        None
    };
    let clip_ref = || {
        clip.as_ref()
            .expect("an extractor is loaded whenever a folder is encoded")
    };
    let real: FeatureSet = match (&a.real, &a.real_features) {
        (_, Some(p)) => load_features(p)?,
        (Some(dir), None) => {
            let c = clip_ref();
            match &a.real_cache {
                Some(cache) => {
                    let (set, hit) = FeatureCache {
                        path: cache.clone(),
                    }
                    .features_of_folder(c, dir)?;
                    eprintln!(
                        "reference features: {} ({})",
                        cache.display(),
                        if hit { "cached" } else { "encoded and cached" }
                    );
                    set
                }
                None => {
                    uqengine::eval::encode_images(c, &uqengine::io::images_in::list_images(dir)?)?
                }
            }
        }
        (None, None) => bail!("give the reference set: --real DIR or --real-features FILE"),
    };
    let text = if let (Some(run), Some(sets)) = (&a.run, &sets) {
        let all = uqengine::eval::encode_images(clip_ref(), &sets.images)?;
        let mut doc = serde_json::json!({
            "run": run.display().to_string(),
            "keep": sets.keep,
            "keep_policy": sets.policy.as_str(),
        });
        println!(
            "{} samples of {}; sets of {} ({} keep), k = {}:",
            sets.indices.len(),
            run.display(),
            sets.keep,
            sets.policy.as_str(),
            a.k
        );
        println!("| set | FD | precision | recall | density | coverage |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (key, label, set) in [
            ("kept", "most certain (kept)", &sets.kept),
            ("first", "first N", &sets.first),
            ("least_certain", "least certain", &sets.least_certain),
        ] {
            let m = evaluate(&real, &all.select(&sets.positions(set)), a.k)?;
            println!(
                "| {label} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |",
                m.fd, m.precision, m.recall, m.density, m.coverage
            );
            doc[key] = serde_json::to_value(&m)?;
        }
        serde_json::to_string_pretty(&doc)?
    } else {
        let fake = match (&a.fake, &a.fake_features) {
            (_, Some(p)) => load_features(p)?,
            (Some(dir), None) => uqengine::eval::encode_images(
                clip_ref(),
                &uqengine::io::images_in::list_images(dir)?,
            )?,
            (None, None) => {
                bail!("give the generated set: --fake DIR, --fake-features FILE or --run RUN")
            }
        };
        let m = evaluate(&real, &fake, a.k)?;
        println!(
            "fd {:.6}  precision {:.6}  recall {:.6}  density {:.6}  coverage {:.6}  (k = {}, {} reference, {} generated, D = {})",
            m.fd, m.precision, m.recall, m.density, m.coverage, m.k, m.n_real, m.n_fake, m.dim
        );
        serde_json::to_string_pretty(&m)?
    };
    uqengine::io::fs::write_atomic(&a.out, format!("{text}\n").as_bytes())?;
    println!("wrote {}", a.out.display());
    Ok(())
}

fn cmd_merge(a: MergeArgs) -> Result<()> {
    if a.keep_policy.is_some() && a.keep.is_none() {
        bail!("--keep-policy chooses the kept set: it needs --keep N");
    }
    let job = uqengine::job::MergeJob {
        shards: a.shards,
        out_dir: a.out,
        keep: a.keep,
        keep_policy: a
            .keep_policy
            .as_deref()
            .map(KeepPolicy::parse)
            .transpose()?,
        overwrite: a.overwrite,
    };
    let r = job.run()?;
    println!(
        "merged {} samples ({} members each) into {}",
        r.num,
        r.members,
        r.out_dir.display()
    );
    Ok(())
}

fn cmd_convert(c: ConvertCommand) -> Result<()> {
    match c {
        ConvertCommand::Adm(a) => {
            let job = uqengine::convert::adm::AdmConvert {
                checkpoint: a.checkpoint,
                flags: a.flags,
                out_dir: a.out,
                dtype: uqengine::convert::OutDtype::parse(&a.dtype)?,
            };
            let r = job.run()?;
            println!(
                "wrote {} tensors ({} parameters, {}) to {}",
                r.tensors,
                r.params,
                r.dtype.as_str(),
                r.out_dir.display()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    uqengine::backend::cpu::keep_freed_buffers();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Sample(a) => cmd_sample(a),
        Command::Fit(a) => cmd_fit(a),
        Command::Score(a) => cmd_score(a),
        Command::Info(a) => cmd_info(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Merge(a) => cmd_merge(a),
        Command::Convert(c) => cmd_convert(c),
    };
    if let Some(p) = PROFILE.get() {
        eprint!("{}", p.report());
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
