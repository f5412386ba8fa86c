//! Score tables: one row per sample with its uncertainty and rank, as CSV and JSON.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::fs::write_atomic;

/// One sample's score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    /// Sample index (also the image file name `NNNNN.png`).
    pub index: usize,
    /// Seed of the job the sample belongs to.
    pub seed: u64,
    /// Class label; `None` for unconditional models.
    pub class: Option<usize>,
    /// Uncertainty in nats (lower = more certain); NaN for a sample marked invalid (written
    /// `NaN` in CSV, `null` in JSON).
    #[serde(serialize_with = "nan_as_null", deserialize_with = "null_as_nan")]
    pub uncertainty: f64,
    /// Position in ascending uncertainty order (0 = most certain).
    pub rank: usize,
    /// Whether the sample is in the kept set; `None` when the run kept no set.
    pub kept: Option<bool>,
}

fn nan_as_null<S: serde::Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_none()
    } else {
        s.serialize_f64(*v)
    }
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Header line of the CSV table.
pub const CSV_HEADER: &str = "index,seed,class,uncertainty,rank,kept";

/// Header of tables written before the `kept` column existed (still read).
const CSV_HEADER_WITHOUT_KEPT: &str = "index,seed,class,uncertainty,rank";

/// The table as CSV text: header `index,seed,class,uncertainty,rank,kept`, `class` empty when
/// unconditional, uncertainty written with the shortest digits that read back to the same f64,
/// `kept` 1 or 0 (empty when the run kept no set).
pub fn to_csv(rows: &[ScoreRow]) -> String {
    let mut s = String::with_capacity(32 * (rows.len() + 1));
    s.push_str(CSV_HEADER);
    s.push('\n');
    for r in rows {
        let class = r.class.map(|c| c.to_string()).unwrap_or_default();
        let kept = r
            .kept
            .map(|k| if k { "1" } else { "0" })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{},{},{},{},{},{kept}",
            r.index, r.seed, class, r.uncertainty, r.rank
        );
    }
    s
}

/// Write the table as CSV (see [`to_csv`]), atomically.
pub fn write_csv(path: &Path, rows: &[ScoreRow]) -> Result<()> {
    write_atomic(path, to_csv(rows).as_bytes())
}

/// Parse CSV text written by [`to_csv`] (or an older table without the `kept` column). `what`
/// names the source in errors.
pub fn parse_csv(text: &str, what: &Path) -> Result<Vec<ScoreRow>> {
    let bad = |line: usize, msg: String| Error::Image {
        path: what.to_path_buf(),
        msg: format!("score table line {line}: {msg}"),
    };
    let mut lines = text.lines().enumerate();
    let fields = match lines.next() {
        Some((_, h)) if h.trim_end() == CSV_HEADER => 6,
        Some((_, h)) if h.trim_end() == CSV_HEADER_WITHOUT_KEPT => 5,
        Some((_, h)) => return Err(bad(1, format!("header is `{h}`, expected `{CSV_HEADER}`"))),
        None => return Err(bad(1, "empty file".into())),
    };
    let mut rows = Vec::new();
    for (i, line) in lines {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != fields {
            return Err(bad(i + 1, format!("{} fields, expected {fields}", f.len())));
        }
        let field = |j: usize, name: &str| -> Result<&str> {
            let v = f[j].trim();
            if v.is_empty() && name != "class" && name != "kept" {
                return Err(bad(i + 1, format!("empty `{name}`")));
            }
            Ok(v)
        };
        let num = |j: usize, name: &str| -> Result<u64> {
            field(j, name)?.parse::<u64>().map_err(|_| {
                bad(
                    i + 1,
                    format!("`{name}` = `{}` is not a non-negative integer", f[j]),
                )
            })
        };
        let class = match field(2, "class")? {
            "" => None,
            _ => Some(num(2, "class")? as usize),
        };
        let uncertainty = field(3, "uncertainty")?
            .parse::<f64>()
            .map_err(|_| bad(i + 1, format!("`uncertainty` = `{}` is not a number", f[3])))?;
        let kept = match fields {
            6 => match field(5, "kept")? {
                "" => None,
                "1" => Some(true),
                "0" => Some(false),
                other => {
                    return Err(bad(
                        i + 1,
                        format!("`kept` = `{other}` is not 1, 0 or empty"),
                    ))
                }
            },
            _ => None,
        };
        rows.push(ScoreRow {
            index: num(0, "index")? as usize,
            seed: num(1, "seed")?,
            class,
            uncertainty,
            rank: num(4, "rank")? as usize,
            kept,
        });
    }
    Ok(rows)
}

/// Read a CSV table written by [`write_csv`].
pub fn read_csv(path: &Path) -> Result<Vec<ScoreRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_csv(&text, path)
}

/// The table as JSON: `{"meta": extra, "rows": [{index, seed, class, uncertainty, rank, kept},
/// ...]}`, `class` `null` when unconditional, `kept` `null` when the run kept no set,
/// `uncertainty` `null` for a sample marked invalid (NaN). JSON has no infinity: such scores are
/// refused.
pub fn to_json(rows: &[ScoreRow], extra: serde_json::Value) -> Result<String> {
    if let Some(r) = rows.iter().find(|r| r.uncertainty.is_infinite()) {
        return Err(Error::arg(format!(
            "score of sample {} is {}, which JSON cannot represent",
            r.index, r.uncertainty
        )));
    }
    let doc = serde_json::json!({ "meta": extra, "rows": rows });
    serde_json::to_string_pretty(&doc).map_err(|e| Error::arg(format!("score table to JSON: {e}")))
}

/// Write the table as JSON (see [`to_json`]), atomically.
pub fn write_json(path: &Path, rows: &[ScoreRow], extra: serde_json::Value) -> Result<()> {
    let mut text = to_json(rows, extra).map_err(|e| Error::Image {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Read a JSON table written by [`write_json`]: `(rows, meta)`.
pub fn read_json(path: &Path) -> Result<(Vec<ScoreRow>, serde_json::Value)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json_err = |msg: String| Error::Json {
        path: path.to_path_buf(),
        msg,
    };
    let mut doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| json_err(e.to_string()))?;
    let rows = doc
        .get_mut("rows")
        .map(serde_json::Value::take)
        .ok_or_else(|| json_err("no `rows` array".into()))?;
    let rows: Vec<ScoreRow> =
        serde_json::from_value(rows).map_err(|e| json_err(format!("`rows`: {e}")))?;
    let meta = doc
        .get_mut("meta")
        .map(serde_json::Value::take)
        .unwrap_or_default();
    Ok((rows, meta))
}

/// Build rows from per-sample scores: `rank` from [`crate::uncertainty::rank_ascending`].
/// `indices`, `classes` (if given) and `scores` run in parallel.
pub fn rows_from_scores(
    indices: &[usize],
    seed: u64,
    classes: Option<&[usize]>,
    scores: &[f64],
) -> Result<Vec<ScoreRow>> {
    if indices.len() != scores.len() || classes.is_some_and(|c| c.len() != scores.len()) {
        return Err(Error::arg(format!(
            "score rows: {} indices, {} classes, {} scores",
            indices.len(),
            classes.map_or(scores.len(), <[usize]>::len),
            scores.len()
        )));
    }
    let rank = crate::uncertainty::rank_ascending(scores);
    Ok((0..scores.len())
        .map(|i| ScoreRow {
            index: indices[i],
            seed,
            class: classes.map(|c| c[i]),
            uncertainty: scores[i],
            rank: rank[i],
            kept: None,
        })
        .collect())
}
