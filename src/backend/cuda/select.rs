//! `--device auto|cpu|cuda[:N]|emu`: pick a backend by name.

use std::sync::Arc;

use super::backend::CudaBackend;
use super::gpu::GpuDevice;
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::error::{Error, Result};

/// The backend named by `spec` and a one-line message saying what was chosen (and why, when
/// `auto` fell back to the CPU):
/// - `cpu`: the CPU backend;
/// - `cuda` or `cuda:N`: GPU `N` (default 0); an error when there is no driver or no such GPU;
/// - `emu`: the CUDA kernels emulated on the host (builds with feature `emu` only; for tests);
/// - `auto`: GPU 0 when usable, otherwise the CPU.
pub fn select_backend(spec: &str) -> Result<(Arc<dyn Backend>, String)> {
    let spec = spec.trim();
    match spec {
        "cpu" => Ok((Arc::new(CpuBackend::new()), "device: cpu".into())),
        "auto" => match GpuDevice::new(0) {
            Ok(dev) => {
                let b = CudaBackend::new(Arc::new(dev));
                let msg = format!("device: {}", b.name());
                Ok((Arc::new(b), msg))
            }
            Err(e) => Ok((
                Arc::new(CpuBackend::new()),
                format!("device: cpu (no usable GPU: {e})"),
            )),
        },
        "emu" => emu_backend(),
        _ => {
            let ordinal = match spec.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| bad_spec(spec))?,
                None => return Err(bad_spec(spec)),
            };
            let b = CudaBackend::new(Arc::new(GpuDevice::new(ordinal)?));
            let msg = format!("device: {}", b.name());
            Ok((Arc::new(b), msg))
        }
    }
}

fn bad_spec(spec: &str) -> Error {
    Error::arg(format!(
        "unknown device `{spec}`: expected auto, cpu, cuda, cuda:N or emu"
    ))
}

#[cfg(feature = "emu")]
fn emu_backend() -> Result<(Arc<dyn Backend>, String)> {
    let b = CudaBackend::new(Arc::new(super::emu::EmuDevice::new()));
    Ok((
        Arc::new(b),
        "device: emu (CUDA kernels emulated on the host; slow, for tests)".into(),
    ))
}

#[cfg(not(feature = "emu"))]
fn emu_backend() -> Result<(Arc<dyn Backend>, String)> {
    Err(Error::DeviceUnavailable(
        "device `emu` needs a build with `--features emu`".into(),
    ))
}
