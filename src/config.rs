//! The reader of the JSON configuration files a model directory holds (diffusers `config.json`
//! and `scheduler_config.json`, transformers `config.json` and `preprocessor_config.json`), and
//! of command-line overrides of their keys.
//!
//! Every config is read through [`JsonConfig`], so its errors read the same everywhere. They
//! name the file and the key (with the path of a nested object, as in `vision_config.hidden_act`)
//! and, as [`Error::Config`], say one of:
//!
//! - a missing required key: `required key is absent`;
//! - a value of the wrong type: `expected <type>, found <value>` (e.g.
//!   `expected a positive integer, found "big"`);
//! - a key a strict reader does not know: `unknown key; known keys: <key>, <key>, ...`.
//!
//! A key that is present with the value `null` counts as absent for [`JsonConfig::opt`],
//! [`JsonConfig::or`] and [`JsonConfig::req`], as transformers and diffusers read `None`;
//! [`JsonConfig::present`] and [`JsonConfig::convert`] read it as a value of the wrong type.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A JSON object read from a config file: its entries, the file it came from, and the key path
/// of the object inside that file (empty at the top level).
#[derive(Clone, Debug)]
pub struct JsonConfig {
    path: PathBuf,
    prefix: String,
    map: Map<String, Value>,
}

/// A type a config value can be read as.
pub trait ConfigValue: Sized {
    /// The type as wrong-type errors name it, e.g. `a positive integer`.
    const EXPECTED: &'static str;
    /// The value `v` holds, or `None` when `v` has another type or lies outside this type's
    /// range.
    fn from_json(v: &Value) -> Option<Self>;
}

/// A value that must be greater than zero (a positive integer or number).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Positive<T>(pub T);

impl ConfigValue for usize {
    const EXPECTED: &'static str = "a non-negative integer";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_u64().and_then(|x| usize::try_from(x).ok())
    }
}

impl ConfigValue for i64 {
    const EXPECTED: &'static str = "an integer";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_i64()
    }
}

impl ConfigValue for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_f64()
    }
}

impl ConfigValue for bool {
    const EXPECTED: &'static str = "true or false";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_bool()
    }
}

impl ConfigValue for String {
    const EXPECTED: &'static str = "a string";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_str().map(String::from)
    }
}

impl ConfigValue for Positive<usize> {
    const EXPECTED: &'static str = "a positive integer";
    fn from_json(v: &Value) -> Option<Self> {
        usize::from_json(v).filter(|&x| x > 0).map(Positive)
    }
}

impl ConfigValue for Positive<f64> {
    const EXPECTED: &'static str = "a positive number";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_f64().filter(|&x| x > 0.0).map(Positive)
    }
}

impl ConfigValue for Vec<usize> {
    const EXPECTED: &'static str = "a list of non-negative integers";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_array()?.iter().map(usize::from_json).collect()
    }
}

impl ConfigValue for Vec<String> {
    const EXPECTED: &'static str = "a list of strings";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_array()?.iter().map(String::from_json).collect()
    }
}

impl JsonConfig {
    /// Read and parse the config file `path`; it must hold a JSON object.
    pub fn open(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parse the config text `text`, which must hold a JSON object; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        match value {
            Value::Object(map) => Ok(Self::from_map(map, path)),
            _ => Err(Error::Json {
                path: path.to_path_buf(),
                msg: "top level is not an object".into(),
            }),
        }
    }

    /// A config of the entries `map`, as if read from `path` (e.g. a pseudo-path naming
    /// command-line overrides).
    pub fn from_map(map: Map<String, Value>, path: &Path) -> Self {
        JsonConfig {
            path: path.to_path_buf(),
            prefix: String::new(),
            map,
        }
    }

    /// The file the config came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name errors give `key`: its path from the top of the file (`vision_config.hidden_act`).
    pub fn key_name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The entries in key order, `null` values included.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, when present and not `null`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Whether `key` is present with the value `null`.
    pub fn is_null(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(Value::is_null)
    }

    /// The nested object `key` (e.g. `vision_config`), whose errors name its keys as
    /// `key.inner`; `None` when `key` is absent or `null`.
    pub fn sub(&self, key: &str) -> Result<Option<JsonConfig>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(self.nested(key, map))),
            Some(v) => Err(self.wrong_type(key, "an object", v)),
        }
    }

    /// The object `map` found under `key`, as a config whose errors name its keys as
    /// `key.inner`.
    pub fn nested(&self, key: &str, map: &Map<String, Value>) -> JsonConfig {
        JsonConfig {
            path: self.path.clone(),
            prefix: format!("{}.", self.key_name(key)),
            map: map.clone(),
        }
    }

    /// `v`, the value found under `key`, read as a `T`.
    pub fn convert<T: ConfigValue>(&self, key: &str, v: &Value) -> Result<T> {
        T::from_json(v).ok_or_else(|| self.wrong_type(key, T::EXPECTED, v))
    }

    /// The value of `key` as a `T`; `None` when `key` is absent or `null`.
    pub fn opt<T: ConfigValue>(&self, key: &str) -> Result<Option<T>> {
        self.get(key).map(|v| self.convert(key, v)).transpose()
    }

    /// The value of `key` as a `T`; `default` when `key` is absent or `null`.
    pub fn or<T: ConfigValue>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.opt(key)?.unwrap_or(default))
    }

    /// The value of `key` as a `T`; an error when `key` is absent or `null`.
    pub fn req<T: ConfigValue>(&self, key: &str) -> Result<T> {
        self.opt(key)?.ok_or_else(|| self.missing(key))
    }

    /// The value of `key` as a `T`; `None` when `key` is absent (`null` is a value of the wrong
    /// type).
    pub fn present<T: ConfigValue>(&self, key: &str) -> Result<Option<T>> {
        self.map.get(key).map(|v| self.convert(key, v)).transpose()
    }

    /// An error unless every key is one of `known`.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<()> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(self.unknown(k, known)),
            None => Ok(()),
        }
    }

    /// The error for the required key `key`, absent.
    pub fn missing(&self, key: &str) -> Error {
        self.err(key, "required key is absent")
    }

    /// The error for the value `found` of `key`, which is not `expected` (`a positive integer`).
    pub fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> Error {
        self.err(key, format!("expected {expected}, found {}", show(found)))
    }

    /// The error for the key `key`, which is none of `known`.
    pub fn unknown(&self, key: &str, known: &[&str]) -> Error {
        self.err(
            key,
            format!("unknown key; known keys: {}", known.join(", ")),
        )
    }

    /// The error for an invalid value of `key`, explained by `msg`.
    pub fn err(&self, key: &str, msg: impl Into<String>) -> Error {
        invalid(&self.path, &self.key_name(key), msg)
    }

    /// The error for a value of `key` the engine does not implement.
    pub fn unsupported(&self, key: &str, value: impl Display) -> Error {
        Error::Unsupported {
            path: self.path.clone(),
            key: self.key_name(key),
            value: value.to_string(),
        }
    }
}

/// The error for an invalid value of `key` in the config file `path`, explained by `msg`; for
/// checks that span several configs, outside any one [`JsonConfig`].
pub fn invalid(path: &Path, key: &str, msg: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        key: key.into(),
        msg: msg.into(),
    }
}

/// A JSON value as errors show it: its JSON text, cut to 60 characters.
pub fn show(value: &Value) -> String {
    let s = value.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}
