//! The merge job: a run built from the folders of its shards (`sample --shard i/n`), equal to
//! the run made in one piece: the same samples byte for byte, scores over the whole run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::report::{write_report, write_summary, ReportOptions, ScoredSet, SetScores};
use super::run_dir::{differences, io, RunDir};
use super::sample::thumbnails;
use super::JobReport;
use crate::error::{Error, Result};
use crate::io::npy;
use crate::keep::KeepPolicy;
use crate::uncertainty::Estimator;

/// Settings of a merge.
#[derive(Clone, Debug)]
pub struct MergeJob {
    /// The shard folders, in any order.
    pub shards: Vec<PathBuf>,
    pub out_dir: PathBuf,
    /// Also list and copy the `N` most certain samples of the whole run.
    pub keep: Option<usize>,
    /// How the kept set is chosen (default: per class for class-conditional runs).
    pub keep_policy: Option<KeepPolicy>,
    pub overwrite: bool,
}

/// One shard folder, read.
struct ShardRun {
    dir: PathBuf,
    summary: Value,
    index: usize,
    count: usize,
    samples: Vec<usize>,
}

fn bad(dir: &Path, msg: impl std::fmt::Display) -> Error {
    Error::arg(format!("shard {}: {msg}", dir.display()))
}

impl ShardRun {
    fn open(dir: &Path) -> Result<ShardRun> {
        let path = dir.join("summary.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let summary: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let shard = &summary["shard"];
        if !shard.is_object() {
            return Err(bad(
                dir,
                "is not a shard (its summary.json has no `shard`: made without --shard)",
            ));
        }
        let field = |k: &str| {
            shard[k]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| bad(dir, format!("summary.json: shard.{k} is not a number")))
        };
        let samples = shard["samples"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                bad(
                    dir,
                    "summary.json: shard.samples is not a list of sample indices",
                )
            })?;
        Ok(ShardRun {
            dir: dir.to_path_buf(),
            index: field("index")?,
            count: field("count")?,
            samples,
            summary,
        })
    }

    /// What must agree between shards of one run: the run's settings (file contents by their
    /// fingerprints: paths may differ between machines) and the estimator.
    fn identity(&self) -> Value {
        let mut settings = self.summary["shard"]["identity"].clone();
        for key in ["noise_file", "scheduler_config"] {
            settings[key] = Value::Null;
        }
        if settings["uncertainty"].is_object() {
            settings["uncertainty"]["posterior"] = Value::Null;
            settings["uncertainty"]["extractor"] = Value::Null;
        }
        json!({
            "settings": settings,
            "estimator": self.summary["uncertainty"]["estimator"],
            "count": self.count,
        })
    }
}

impl MergeJob {
    /// Read and check the shards (same settings, each shard once, all present), then write the
    /// whole run: images, samples.npy, and with uncertainty the report of the whole run.
    pub fn run(&self) -> Result<JobReport> {
        let started = Instant::now();
        if self.shards.is_empty() {
            return Err(Error::arg("merge needs the shard folders of a run"));
        }
        let mut shards = self
            .shards
            .iter()
            .map(|d| ShardRun::open(d))
            .collect::<Result<Vec<_>>>()?;
        shards.sort_by_key(|s| s.index);
        let num = check_shards(&shards)?;
        let first = &shards[0];
        let dir = RunDir::create(&self.out_dir, self.overwrite)?;
        let images = dir.create_dir("images")?;
        let mut samples = Vec::new();
        let mut shape = Vec::new();
        for s in &shards {
            let a = npy::read(&s.dir.join("samples.npy"))?;
            // [n, c, s, s], the same image shape in every shard.
            let square = a.shape.len() == 4 && a.shape[2] == a.shape[3];
            if a.shape.first() != Some(&s.samples.len())
                || !square
                || (!shape.is_empty() && shape[1..] != a.shape[1..])
            {
                return Err(bad(
                    &s.dir,
                    format!(
                        "samples.npy has shape {:?}, expected [{}, C, S, S]{}",
                        a.shape,
                        s.samples.len(),
                        if shape.is_empty() {
                            String::new()
                        } else {
                            format!(" as the other shards' {:?}", &shape[1..])
                        }
                    ),
                ));
            }
            shape = a.shape.clone();
            samples.extend(a.to_f32());
            for &i in &s.samples {
                let name = format!("{i:05}.png");
                io(
                    &images,
                    std::fs::copy(s.dir.join("images").join(&name), images.join(&name)),
                )?;
            }
            if s.dir.join("members").exists() {
                copy_tree(&s.dir.join("members"), &dir.join("members"))?;
            }
        }
        shape[0] = num;
        npy::write_f32(&dir.join("samples.npy"), &shape, &samples)?;

        let mut summary = first.summary.clone();
        let members = summary["members"].as_u64().unwrap_or(1) as usize;
        if first.summary["uncertainty"].is_object() {
            let report = self.report(&dir, &shards, &samples, &shape, members)?;
            let uq = summary["uncertainty"]
                .as_object_mut()
                .expect("checked above");
            uq.remove("estimator");
            uq.extend(report);
            uq.insert(
                "seconds_features".into(),
                json!(shards
                    .iter()
                    .map(|s| s.summary["uncertainty"]["seconds_features"]
                        .as_f64()
                        .unwrap_or(0.0))
                    .sum::<f64>()),
            );
        }
        let total = |key: &str| {
            shards
                .iter()
                .map(|s| s.summary[key].as_f64().unwrap_or(0.0))
                .sum::<f64>()
        };
        let obj = summary.as_object_mut().expect("a summary is an object");
        obj.remove("shard");
        obj.insert("seconds_sampling".into(), json!(total("seconds_sampling")));
        obj.insert(
            "seconds_total".into(),
            json!(total("seconds_total") + started.elapsed().as_secs_f64()),
        );
        obj.insert(
            "resumed_samples".into(),
            json!(total("resumed_samples") as usize),
        );
        obj.insert(
            "merged_from".into(),
            json!(shards
                .iter()
                .map(|s| s.dir.display().to_string())
                .collect::<Vec<_>>()),
        );
        write_summary(&dir, &summary)?;
        let out_dir = dir.publish()?;
        Ok(JobReport {
            out_dir,
            num,
            members,
            seconds: started.elapsed().as_secs_f64(),
            resumed_samples: 0,
        })
    }

    /// The report of the whole run from the shards' scores (`scores.npy`; a shard that has
    /// only `features.npy` is scored from them) and, when the run kept them, features.
    fn report(
        &self,
        dir: &RunDir,
        shards: &[ShardRun],
        samples: &[f32],
        shape: &[usize],
        members: usize,
    ) -> Result<Map<String, Value>> {
        let first = &shards[0].summary;
        let estimator = Estimator::from_meta(&first["uncertainty"]["estimator"])?;
        let settings = &first["shard"]["identity"]["uncertainty"];
        let save_features = settings["save_members"].as_bool().unwrap_or(false);
        let mut features = Vec::new();
        let mut scores = Vec::new();
        let mut dim = first["uncertainty"]["feature_dim"].as_u64().unwrap_or(0) as usize;
        for s in shards {
            let n = s.samples.len();
            let score_file = s.dir.join("scores.npy");
            let has_scores = score_file.exists();
            if save_features || !has_scores {
                let a = npy::read(&s.dir.join("features.npy"))?;
                if a.shape.len() != 3
                    || a.shape[0] != n
                    || a.shape[1] != members
                    || (dim != 0 && a.shape[2] != dim)
                {
                    return Err(bad(
                        &s.dir,
                        format!(
                            "features.npy has shape {:?}, expected [{n}, {members}, {}]",
                            a.shape,
                            if dim == 0 {
                                "D".to_string()
                            } else {
                                dim.to_string()
                            }
                        ),
                    ));
                }
                dim = a.shape[2];
                let f = a.to_f32();
                if !has_scores {
                    scores.extend(score_or_nan(&estimator, &f, n, members, dim));
                }
                if save_features {
                    features.extend(f);
                }
            }
            if has_scores {
                let a = npy::read(&score_file)?;
                if a.shape != [n] {
                    return Err(bad(
                        &s.dir,
                        format!("scores.npy has shape {:?}, expected [{n}]", a.shape),
                    ));
                }
                scores.extend(a.to_f32().into_iter().map(f64::from));
            }
        }
        let num = shape[0];
        let classes: Option<Vec<usize>> = first["classes"]
            .as_array()
            .and_then(|a| a.iter().map(|c| c.as_u64().map(|v| v as usize)).collect());
        let set = ScoredSet {
            indices: &(0..num).collect::<Vec<_>>(),
            seed: first["seed"].as_u64().unwrap_or(0),
            classes: classes.as_deref(),
            scores: SetScores::Computed {
                scores: &scores,
                features: save_features.then_some(&features[..]),
            },
            members,
            dim,
            thumbs: &thumbnails(samples, shape[1], shape[2]),
        };
        let keep_policy = self
            .keep_policy
            .unwrap_or(KeepPolicy::default_for(classes.is_some()));
        let opts = ReportOptions {
            estimator: &estimator,
            meta: json!({ "draws": settings["draws"], "quantize": settings["quantize"] }),
            keep: self.keep,
            keep_policy,
            save_features,
            // Shards that marked their non-finite samples invalid are merged the same way.
            mark_non_finite: first["on_non_finite"].as_str() == Some("mark"),
        };
        Ok(write_report(dir, &set, &opts)?.summary(self.keep, keep_policy))
    }
}

/// The shards (sorted by index) form one run: the same settings, each shard once, all present,
/// together samples `0..num` exactly once. Returns `num`.
fn check_shards(shards: &[ShardRun]) -> Result<usize> {
    let first = &shards[0];
    for s in &shards[1..] {
        let mut diff = Vec::new();
        differences(&first.identity(), &s.identity(), "", &mut diff);
        if !diff.is_empty() {
            return Err(Error::arg(format!(
                "shards {} and {} are not of the same run: they differ in {}",
                first.dir.display(),
                s.dir.display(),
                diff.join(", ")
            )));
        }
    }
    let count = first.count;
    let given: Vec<String> = shards
        .iter()
        .map(|s| format!("{}/{count}", s.index))
        .collect();
    if let Some(missing) = (0..count).find(|i| !shards.iter().any(|s| s.index == *i)) {
        return Err(Error::arg(format!(
            "shard {missing}/{count} is missing (given: {})",
            given.join(", ")
        )));
    }
    if shards.len() != count {
        return Err(Error::arg(format!(
            "a shard is given twice (given: {})",
            given.join(", ")
        )));
    }
    let num = first.summary["num"].as_u64().unwrap_or(0) as usize;
    let all: Vec<usize> = shards
        .iter()
        .flat_map(|s| s.samples.iter().copied())
        .collect();
    if all != (0..num).collect::<Vec<_>>() {
        return Err(Error::arg(format!(
            "the shards do not hold samples 0..{num} exactly once"
        )));
    }
    Ok(num)
}

/// Copy every file under `from` to the same place under `to`.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    io(to, std::fs::create_dir_all(to))?;
    for entry in io(from, std::fs::read_dir(from))? {
        let entry = io(from, entry)?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            io(&src, std::fs::copy(&src, &dst))?;
        }
    }
    Ok(())
}

/// Per-sample scores of `[n, k, d]` features; NaN for a sample whose features or score are not
/// finite (the report then marks it, or refuses it without `--on-non-finite mark`).
fn score_or_nan(estimator: &Estimator, f: &[f32], n: usize, k: usize, d: usize) -> Vec<f64> {
    f.chunks_exact((k * d).max(1))
        .take(n)
        .map(|one| match estimator.score(one, 1, k, d) {
            Ok(v) if v[0].is_finite() => v[0],
            _ => f64::NAN,
        })
        .collect()
}
