//! A bounded mutation-fuzz pass over every reader of untrusted files: `.npy`, safetensors
//! weights, posterior files, config JSON (UNet, CLIP vision, CLIP preprocessor, scheduler),
//! score tables and PNG member images. Seeds are the corpus in `tests/fixtures/fuzz/` plus small
//! fixtures of the other tests; each iteration applies random byte flips, insertions, deletions,
//! truncations and "interesting" values (0, 0xff, large lengths) and asserts the reader returns
//! (an array or an error) instead of panicking. Deterministic for a given iteration count
//! (`UQENGINE_FUZZ_ITERS`, default 2000 per reader and seed; CI runs a longer pass); a failing input is written to
//! `target/fuzz-failures/` and its path printed, to be added to the corpus once fixed.
//!
//! The corpus has one folder per reader, `tests/fixtures/fuzz/<target>/`, named as the
//! coverage-guided targets in `fuzz/` are (`npy`, `safetensors`, `posterior`, `config`, `scores`,
//! `png`); it holds valid seeds and the inputs that once made a reader panic, and
//! `corpus_files_replay_without_panic` feeds every file of it to its reader.

use crate::common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use common::fixture;
use uqengine::config::JsonConfig;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random mutation of `data`.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    let interesting: [&[u8]; 6] = [
        &[0],
        &[0xff],
        &[0xff, 0xff, 0xff, 0x7f],
        &[0, 0, 0, 0x80],
        b"(",
        b"'",
    ];
    match rng.below(6) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(data.len() + 1);
            data.insert(i, rng.next() as u8);
        }
        2 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below(16.min(data.len() - i));
            data.drain(i..i + n);
        }
        3 => {
            let n = rng.below(data.len() + 1);
            data.truncate(n);
        }
        4 if !data.is_empty() => {
            let v = interesting[rng.below(interesting.len())];
            let i = rng.below(data.len());
            for (k, b) in v.iter().enumerate() {
                if let Some(x) = data.get_mut(i + k) {
                    *x = *b;
                }
            }
        }
        _ if !data.is_empty() => {
            // Copy a random span over another (duplicates structure: keys, lengths).
            let (a, b) = (rng.below(data.len()), rng.below(data.len()));
            let n = rng.below(32).min(data.len() - a.max(b));
            let span = data[a..a + n].to_vec();
            data[b..b + n].copy_from_slice(&span);
        }
        _ => data.push(rng.next() as u8),
    }
}

fn iterations() -> usize {
    std::env::var("UQENGINE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Fuzz `reader` from every seed; panics (with the saved input's path) if the reader panics.
fn fuzz(name: &str, seeds: &[PathBuf], reader: impl Fn(&[u8])) {
    let mut rng = Rng(0x5eed ^ name.len() as u64);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    'all: for seed in seeds {
        let original = std::fs::read(seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        for _ in 0..iterations() {
            let mut data = original.clone();
            for _ in 0..1 + rng.below(4) {
                mutate(&mut rng, &mut data);
            }
            if catch_unwind(AssertUnwindSafe(|| reader(&data))).is_err() {
                failure = Some(data);
                break 'all;
            }
        }
    }
    std::panic::set_hook(hook);
    if let Some(data) = failure {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{name}-{:016x}",
            uqengine::models::weights::fnv1a64(&data)
        ));
        std::fs::write(&path, &data).unwrap();
        panic!("{name}: the reader panicked on {}", path.display());
    }
}

fn corpus(name: &str) -> PathBuf {
    fixture(&format!("fuzz/{name}"))
}

/// Every file of the corpus folder `tests/fixtures/fuzz/<target>/`, sorted.
fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

const WHAT: &str = "fuzzed";

/// Config text as the config target reads it: every config reader in turn; whether one of them
/// accepted it.
fn read_configs(b: &[u8]) -> bool {
    let Ok(c) = JsonConfig::parse(&String::from_utf8_lossy(b), Path::new(WHAT)) else {
        return false;
    };
    let unet = uqengine::models::unet::config::UNetConfig::from_json(&c).is_ok();
    let clip = uqengine::models::clip::ClipVisionConfig::from_json(&c).is_ok();
    let pre = uqengine::models::clip_preprocess::ClipPreprocess::from_json(&c).is_ok();
    let sched = uqengine::sampler::SchedulerConfig::from_json(&c).is_ok();
    unet || clip || pre || sched
}

/// A reader of one corpus folder: whether it read the input (`Ok`).
type Reader = fn(&[u8]) -> bool;

/// The corpus folders and their readers, as the targets in `fuzz/fuzz_targets/` call them.
const TARGETS: [(&str, Reader); 6] = [
    ("npy", |b| {
        uqengine::io::npy::parse(b, Path::new(WHAT)).is_ok()
    }),
    ("safetensors", |b| {
        uqengine::models::weights::Weights::from_bytes(b, Path::new(WHAT)).is_ok()
    }),
    ("posterior", |b| {
        uqengine::laplace::Posterior::from_bytes(b, Path::new(WHAT)).is_ok()
    }),
    ("config", read_configs),
    ("scores", |b| {
        uqengine::io::scores::parse_csv(&String::from_utf8_lossy(b), Path::new(WHAT)).is_ok()
    }),
    ("png", |b| {
        uqengine::io::members::decode_png_u8(b, Path::new(WHAT)).is_ok()
    }),
];

#[test]
fn corpus_files_replay_without_panic() {
    for (target, reader) in TARGETS {
        let files = corpus_files(target);
        assert!(!files.is_empty(), "no corpus files for `{target}`");
        let mut read = 0;
        for file in &files {
            let data = std::fs::read(file).unwrap();
            match catch_unwind(AssertUnwindSafe(|| reader(&data))) {
                Ok(ok) => read += usize::from(ok),
                Err(_) => panic!("{target}: the reader panicked on {}", file.display()),
            }
        }
        // The valid seeds still read, so the corpus exercises more than the first checks.
        assert!(read > 0, "{target}: no corpus file was read without error");
    }
}

#[test]
fn regression_inputs_are_errors_naming_the_file() {
    // Each `regress_*` file once made its reader panic; read from its path, it is an error that
    // names the file.
    let mut seen = 0;
    for (target, _) in TARGETS {
        for file in corpus_files(target) {
            let name = file.file_name().unwrap().to_str().unwrap().to_string();
            if !name.starts_with("regress_") {
                continue;
            }
            let e = match target {
                "posterior" => uqengine::laplace::Posterior::load(&file).map(|_| ()),
                "config" => {
                    uqengine::models::unet::config::UNetConfig::from_file(&file).map(|_| ())
                }
                other => panic!("no check for `{other}` inputs ({name})"),
            }
            .expect_err(&name)
            .to_string();
            assert!(e.contains(&name), "{name}: {e}");
            seen += 1;
        }
    }
    assert!(seen >= 3);
    let e = uqengine::laplace::Posterior::load(&corpus(
        "posterior/regress_empty_dim_cols_overflow.safetensors",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(
            "tensor `map.weight` has shape [0, 4194304, 4194304, 4194304], with an empty dimension"
        ),
        "{e}"
    );
}

#[test]
fn npy_reader_never_panics() {
    let seeds = [
        corpus("npy/f4_2x3.npy"),
        corpus("npy/i8_v2.npy"),
        corpus("npy/i8_forward_t.npy"),
    ];
    fuzz("npy", &seeds, |b| {
        let _ = uqengine::io::npy::parse(b, Path::new(WHAT));
    });
}

#[test]
fn safetensors_and_posterior_readers_never_panic() {
    let model = fixture("clip/gray_gelu_f16/model/model.safetensors");
    let posterior =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/demo/posterior.safetensors");
    fuzz("safetensors", &[model], |b| {
        let _ = uqengine::models::weights::Weights::from_bytes(b, Path::new(WHAT));
    });
    fuzz("posterior", &[posterior], |b| {
        let _ = uqengine::laplace::Posterior::from_bytes(b, Path::new(WHAT));
    });
}

#[test]
fn config_readers_never_panic() {
    let p = Path::new(WHAT);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    fuzz(
        "unet-config",
        &[fixture("unet/gray_cond_multihead_f16/model/config.json")],
        |b| {
            if let Ok(c) = JsonConfig::parse(&text(b), p) {
                let _ = uqengine::models::unet::config::UNetConfig::from_json(&c);
            }
        },
    );
    fuzz(
        "clip-config",
        &[fixture("clip/gray_gelu_f16/model/config.json")],
        |b| {
            if let Ok(c) = JsonConfig::parse(&text(b), p) {
                let _ = uqengine::models::clip::ClipVisionConfig::from_json(&c);
            }
        },
    );
    fuzz(
        "preprocessor-config",
        &[fixture("clip/gray_gelu_f16/model/preprocessor_config.json")],
        |b| {
            if let Ok(c) = JsonConfig::parse(&text(b), p) {
                let _ = uqengine::models::clip_preprocess::ClipPreprocess::from_json(&c);
            }
        },
    );
    fuzz(
        "scheduler-config",
        &[fixture(
            "unet/gray_cond_multihead_f16/model/scheduler/scheduler_config.json",
        )],
        |b| {
            if let Ok(c) = JsonConfig::parse(&text(b), p) {
                let _ = uqengine::sampler::SchedulerConfig::from_json(&c);
            }
        },
    );
}

#[test]
fn score_tables_and_member_images_never_panic() {
    fuzz(
        "scores-csv",
        &[corpus("scores/scores.csv"), corpus("scores/scores_old.csv")],
        |b| {
            let _ = uqengine::io::scores::parse_csv(&String::from_utf8_lossy(b), Path::new(WHAT));
        },
    );
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("seed.png");
    common::write_gray_png(&png, 6, 5, |x, y| (x * 40 + y) as u8);
    let target = tmp.path().join("m.png");
    fuzz("png", &[png], |b| {
        std::fs::write(&target, b).unwrap();
        let _ = uqengine::io::members::load_png_u8(&target);
    });
}
