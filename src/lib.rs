//! uqengine: diffusion sampling with generative uncertainty.
pub mod backend;
pub mod error;
pub mod tensor;

pub use error::{Error, Result};
pub use tensor::Tensor;
