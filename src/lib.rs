//! uqengine: diffusion sampling with generative uncertainty.
pub mod backend;
pub mod config;
pub mod convert;
pub mod error;
pub mod eval;
pub mod image;
pub mod io;
pub mod job;
pub mod keep;
pub mod laplace;
pub mod layout;
pub mod linalg;
pub mod member_schedule;
pub mod models;
pub mod pipeline;
pub mod rng;
pub mod sampler;
pub mod tensor;
pub mod uncertainty;

pub use error::{Error, Result};
pub use tensor::Tensor;
