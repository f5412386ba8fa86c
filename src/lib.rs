//! uqengine: diffusion sampling with generative uncertainty.
pub mod backend;
pub mod error;
pub mod io;
pub mod models;
pub mod rng;
pub mod sampler;
pub mod tensor;

pub use error::{Error, Result};
pub use tensor::Tensor;
