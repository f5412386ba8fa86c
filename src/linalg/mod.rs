//! Linear algebra shared by the CPU backend, the Laplace fit and the evaluation: f32 matrix
//! products on the `gemm` crate ([`matmul`]), the dense f64 Cholesky factorisation behind
//! full-covariance posterior draws ([`cholesky`]), and symmetric eigen-decompositions for
//! covariance square roots ([`symeig`]).
pub mod cholesky;
pub mod matmul;
pub mod panel;
pub mod symeig;

pub use cholesky::{cholesky_lower, solve_lower_transpose_in_place};
