//! Linear algebra shared by the CPU backend and the Laplace fit: f32 matrix products on the
//! `gemm` crate ([`matmul`]) and the dense f64 Cholesky factorisation behind full-covariance
//! posterior draws ([`cholesky`]).
pub mod cholesky;
pub mod matmul;

pub use cholesky::{cholesky_lower, solve_lower_transpose_in_place};
