//! The CUDA backend: the op set of [`crate::backend::Backend`] as handwritten kernels
//! (`kernels/*.cu`) on a [`device::Device`]: a real GPU ([`gpu::GpuDevice`]) or, with feature
//! `emu`, the same kernels compiled for the host ([`emu::EmuDevice`]).

mod backend;
mod cuda_dirs;
pub mod device;
#[cfg(feature = "emu")]
pub mod emu;
pub mod gpu;
pub mod kernels;
mod select;

pub use backend::{CudaBackend, CudaStorage};
pub use select::select_backend;
