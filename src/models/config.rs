//! Helpers to read typed values out of Hugging Face `config.json` files, with errors that name
//! the file and key.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// A parsed JSON object plus the file it came from.
pub struct JsonConfig {
    pub path: PathBuf,
    pub value: Value,
}

impl JsonConfig {
    /// Read and parse `path`; it must hold a JSON object.
    pub fn open(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parse `text`; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(Error::Json {
                path: path.to_path_buf(),
                msg: "top level is not an object".into(),
            });
        }
        Ok(JsonConfig {
            path: path.to_path_buf(),
            value,
        })
    }

    /// A view of the sub-object `key` (e.g. `vision_config`), if present.
    pub fn sub(&self, key: &str) -> Option<JsonConfig> {
        self.value
            .get(key)
            .filter(|v| v.is_object())
            .map(|v| JsonConfig {
                path: self.path.clone(),
                value: v.clone(),
            })
    }

    fn raw(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn err(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.clone(),
            key: key.into(),
            msg: msg.into(),
        }
    }

    pub fn unsupported(&self, key: &str, value: impl std::fmt::Display) -> Error {
        Error::Unsupported {
            path: self.path.clone(),
            key: key.into(),
            value: value.to_string(),
        }
    }

    /// Whether `key` is present and not null.
    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                self.err(key, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.usize_opt(key)?.unwrap_or(default))
    }
    pub fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(key, "required"))
    }
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(key, format!("expected a number, found {v}"))),
        }
    }
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("expected true/false, found {v}"))),
        }
    }
    pub fn str_opt(&self, key: &str) -> Result<Option<String>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.err(key, format!("expected a string, found {v}"))),
        }
    }
    pub fn str_or(&self, key: &str, default: &str) -> Result<String> {
        Ok(self.str_opt(key)?.unwrap_or_else(|| default.to_string()))
    }
    pub fn str_list(&self, key: &str) -> Result<Vec<String>> {
        let v = self.raw(key).ok_or_else(|| self.err(key, "required"))?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.err(key, format!("expected a list of strings, found {v}")))?;
        arr.iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| self.err(key, format!("expected a string, found {x}")))
            })
            .collect()
    }
    pub fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        let v = self.raw(key).ok_or_else(|| self.err(key, "required"))?;
        let arr = v
            .as_array()
            .ok_or_else(|| self.err(key, format!("expected a list of integers, found {v}")))?;
        arr.iter()
            .map(|x| {
                x.as_u64()
                    .map(|u| u as usize)
                    .ok_or_else(|| self.err(key, format!("expected an integer, found {x}")))
            })
            .collect()
    }
    pub fn f64_list(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        if let Some(x) = v.as_f64() {
            return Ok(Some(vec![x]));
        }
        let arr = v
            .as_array()
            .ok_or_else(|| self.err(key, format!("expected a list of numbers, found {v}")))?;
        arr.iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| self.err(key, format!("expected a number, found {x}")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}
