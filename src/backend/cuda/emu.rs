//! The emulated device: host memory, and the kernels compiled for the host with
//! `kernels/uq_emu.h` (feature `emu`). Every kernel runs with the same launch geometry as on a
//! GPU; launches are synchronous.

use std::alloc::{alloc_zeroed, dealloc, Layout};

use super::device::{check_args, Device, KernelArg, KernelDef, LaunchCfg, RawBuf};
use crate::error::{Error, Result};

/// The host-emulated CUDA device.
#[derive(Debug, Default)]
pub struct EmuDevice;

impl EmuDevice {
    pub fn new() -> Self {
        EmuDevice
    }
}

struct HostAlloc {
    ptr: *mut u8,
    layout: Layout,
}
// The allocation is plain memory owned by this value.
unsafe impl Send for HostAlloc {}
unsafe impl Sync for HostAlloc {}
impl Drop for HostAlloc {
    fn drop(&mut self) {
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn err(msg: String) -> Error {
    Error::Backend {
        backend: "emu".into(),
        msg,
    }
}

fn check_range(buf: &RawBuf, offset: usize, len: usize) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > buf.bytes()) {
        return Err(err(format!(
            "copy of {len} bytes at offset {offset} outside {buf:?}"
        )));
    }
    Ok(())
}

impl Device for EmuDevice {
    fn name(&self) -> String {
        "emu".into()
    }
    fn alloc(&self, bytes: usize) -> Result<RawBuf> {
        let layout = Layout::from_size_align(bytes.max(1), 256).map_err(|e| err(e.to_string()))?;
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(err(format!("out of host memory allocating {bytes} bytes")));
        }
        Ok(RawBuf::new(
            ptr as u64,
            bytes,
            Box::new(HostAlloc { ptr, layout }),
        ))
    }
    fn upload(&self, dst: &RawBuf, offset: usize, src: &[u8]) -> Result<()> {
        check_range(dst, offset, src.len())?;
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                (dst.addr() as *mut u8).add(offset),
                src.len(),
            )
        };
        Ok(())
    }
    fn download(&self, src: &RawBuf, offset: usize, dst: &mut [u8]) -> Result<()> {
        check_range(src, offset, dst.len())?;
        unsafe {
            std::ptr::copy_nonoverlapping(
                (src.addr() as *const u8).add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }
    fn launch(&self, kernel: &KernelDef, cfg: LaunchCfg, args: &[KernelArg]) -> Result<()> {
        check_args(kernel, args)?;
        let f = kernel
            .emu
            .ok_or_else(|| err(format!("kernel `{}` has no emulated twin", kernel.name)))?;
        let threads = cfg.block.0 * cfg.block.1 * cfg.block.2;
        if threads == 0 || threads > 1024 {
            return Err(err(format!(
                "kernel `{}`: block of {threads} threads",
                kernel.name
            )));
        }
        let mut vals = args.to_vec();
        let ptrs: Vec<*mut std::ffi::c_void> = vals.iter_mut().map(|a| a.as_void_ptr()).collect();
        let (g, b) = (cfg.grid, cfg.block);
        // The wrapper reads each argument through its pointer and runs the grid to completion.
        unsafe { f(g.0, g.1, g.2, b.0, b.1, b.2, cfg.smem_bytes, ptrs.as_ptr()) };
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn grid_stride_blocks(&self) -> u32 {
        2
    }
}

extern "C" {
    fn uq_emu_f32_to_bf16(x: *const f32, y: *mut u16, n: usize);
    fn uq_emu_f32_to_f16(x: *const f32, y: *mut u16, n: usize);
    fn uq_emu_f16_to_f32(x: *const u16, y: *mut f32, n: usize);
}

/// The emulation header's f32 -> bf16 conversion (bits), for tests.
pub fn emu_f32_to_bf16_bits(x: &[f32]) -> Vec<u16> {
    let mut y = vec![0u16; x.len()];
    unsafe { uq_emu_f32_to_bf16(x.as_ptr(), y.as_mut_ptr(), x.len()) };
    y
}
/// The emulation header's f32 -> f16 conversion (bits), for tests.
pub fn emu_f32_to_f16_bits(x: &[f32]) -> Vec<u16> {
    let mut y = vec![0u16; x.len()];
    unsafe { uq_emu_f32_to_f16(x.as_ptr(), y.as_mut_ptr(), x.len()) };
    y
}
/// The emulation header's f16 -> f32 conversion, for tests.
pub fn emu_f16_bits_to_f32(x: &[u16]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    unsafe { uq_emu_f16_to_f32(x.as_ptr(), y.as_mut_ptr(), x.len()) };
    y
}
