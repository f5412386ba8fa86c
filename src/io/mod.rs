//! File formats: .npy arrays, images, score tables, contact sheets.
pub mod npy;
