//! Typed errors of the library. Every variant names the file, key, shape or value that was wrong.

use std::path::PathBuf;

/// Errors returned by the uqengine library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is part of the message (and not also a `source`, which would print it twice).
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: malformed JSON: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("{path}: unreadable safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: missing tensor `{key}`")]
    MissingTensor { path: PathBuf, key: String },
    #[error("{path}: tensor `{key}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: tensor `{key}` has dtype {dtype}, only F32, F16 and BF16 are supported")]
    DType {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: tensor `{key}` contains a non-finite value")]
    NonFinite { path: PathBuf, key: String },
    #[error("{path}: unsupported config `{key}` = {value}")]
    Unsupported {
        path: PathBuf,
        key: String,
        value: String,
    },
    #[error("{path}: config key `{key}`: {msg}")]
    Config {
        path: PathBuf,
        key: String,
        msg: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{path}: {msg}")]
    Image { path: PathBuf, msg: String },
    #[error("backend `{backend}`: {msg}")]
    Backend { backend: String, msg: String },
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
}

/// Result alias of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }
    /// A bad argument or input value.
    pub fn arg(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}
