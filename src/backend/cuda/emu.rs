//! The emulated device: host memory, and the kernels compiled for the host with
//! `kernels/uq_emu.h` (feature `emu`). Every kernel runs with the same launch geometry as on a
//! GPU; launches are synchronous.
//!
//! `UQENGINE_EMU_LIB=<file.so>` runs every kernel from a shared library holding the same
//! generated `uq_emu_<kernel>` wrappers instead of the copy linked into the binary:
//! `tools/emu-asan.sh` builds one with AddressSanitizer from the build's generated sources, so the
//! ASan check reuses the built tests instead of rebuilding the crate.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::device::{check_args, Device, EmuFn, KernelArg, KernelDef, LaunchCfg, RawBuf};
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

/// The variable naming a shared library to run the emulated kernels from.
pub const EMU_LIB_ENV: &str = "UQENGINE_EMU_LIB";

/// A shared library of emulated kernels (see the module documentation).
struct KernelLibrary {
    path: PathBuf,
    lib: libloading::Library,
    fns: Mutex<HashMap<&'static str, EmuFn>>,
}

impl KernelLibrary {
    fn get(&self, name: &'static str) -> Result<EmuFn> {
        let mut fns = self.fns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&f) = fns.get(name) {
            return Ok(f);
        }
        let symbol = format!("uq_emu_{name}\0");
        // SAFETY: the library was built from this build's generated wrappers, which all have the
        // `EmuFn` signature; the library lives as long as the process (a static).
        let f = unsafe { self.lib.get::<EmuFn>(symbol.as_bytes()) }
            .map(|sym| *sym)
            .map_err(|e| {
                err(format!(
                    "kernel `{name}` not in {EMU_LIB_ENV}={}: {e} (rebuild it with \
                     tools/emu-asan.sh after changing the kernels)",
                    self.path.display()
                ))
            })?;
        fns.insert(name, f);
        Ok(f)
    }
}

/// The library named by `UQENGINE_EMU_LIB`, loaded once; `None` when the variable is unset.
fn kernel_library() -> Result<Option<&'static KernelLibrary>> {
    static LIB: OnceLock<std::result::Result<Option<KernelLibrary>, String>> = OnceLock::new();
    let lib = LIB.get_or_init(|| {
        let Some(path) = std::env::var_os(EMU_LIB_ENV).filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let path = PathBuf::from(path);
        // SAFETY: loading runs the library's initialisers; it is a build of this crate's
        // kernels (tools/emu-asan.sh), with no other code.
        unsafe { libloading::Library::new(&path) }
            .map(|lib| {
                Some(KernelLibrary {
                    path: path.clone(),
                    lib,
                    fns: Mutex::new(HashMap::new()),
                })
            })
            .map_err(|e| format!("{EMU_LIB_ENV}={}: cannot load it: {e}", path.display()))
    });
    match lib {
        Ok(l) => Ok(l.as_ref()),
        Err(e) => Err(err(e.clone())),
    }
}

/// Where the emulated kernels run from: `Some(file)` when `UQENGINE_EMU_LIB` names a library
/// (an error when it cannot be loaded), `None` for the kernels linked into this binary.
pub fn kernel_library_path() -> Result<Option<&'static Path>> {
    Ok(kernel_library()?.map(|l| l.path.as_path()))
}

/// Whether the kernel library of `UQENGINE_EMU_LIB` is built with AddressSanitizer.
pub fn kernel_library_has_asan() -> Result<bool> {
    Ok(kernel_library()?.is_some_and(|l| {
        // SAFETY: only the symbol's presence is checked; it is never called.
        unsafe { l.lib.get::<unsafe extern "C" fn()>(b"__asan_init\0") }.is_ok()
    }))
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
        let f = match kernel_library()? {
            Some(lib) => lib.get(kernel.name)?,
            None => kernel
                .emu
                .ok_or_else(|| err(format!("kernel `{}` has no emulated twin", kernel.name)))?,
        };
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
