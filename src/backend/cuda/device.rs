//! The device layer under the CUDA backend: memory and kernel launches on one device. Two
//! implementations: [`super::gpu::GpuDevice`] (a real GPU through cudarc) and, with feature `emu`,
//! [`super::emu::EmuDevice`] (the same kernels compiled for the host).
//!
//! Device memory is addressed by plain 64-bit device addresses (host addresses on the emulated
//! device); [`DevBuf`] owns an allocation, [`DevPtr`]/[`DevPtrMut`] are typed addresses passed
//! to the generated launchers.

use std::any::Any;
use std::marker::PhantomData;

use crate::error::Result;

pub type Bf16 = half::bf16;
pub type F16 = half::f16;

/// Element types that live in device memory.
pub trait DeviceElem: bytemuck::Pod + Send + Sync + 'static {}
impl DeviceElem for f32 {}
impl DeviceElem for f64 {}
impl DeviceElem for Bf16 {}
impl DeviceElem for F16 {}
impl DeviceElem for i32 {}
impl DeviceElem for u32 {}
impl DeviceElem for u8 {}

/// Grid, block and dynamic shared memory of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem_bytes: u32,
}

impl LaunchCfg {
    /// 1-D launch: `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchCfg {
            grid: (blocks.max(1), 1, 1),
            block: (threads, 1, 1),
            smem_bytes: 0,
        }
    }
    /// Enough blocks of `threads` threads to cover `n` items, one per thread.
    pub fn for_items(n: usize, threads: u32) -> Self {
        Self::linear(n.div_ceil(threads as usize) as u32, threads)
    }
    pub fn grid(grid: (u32, u32, u32), block: (u32, u32, u32)) -> Self {
        LaunchCfg {
            grid,
            block,
            smem_bytes: 0,
        }
    }
    pub fn with_smem(mut self, bytes: u32) -> Self {
        self.smem_bytes = bytes;
        self
    }
}

/// One kernel parameter value, as `cuLaunchKernel` receives it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg {
    Ptr(u64),
    I32(i32),
    U32(u32),
    F32(f32),
    I64(i64),
}

impl KernelArg {
    /// Address of the value, the form `cuLaunchKernel` and the emulation wrappers take.
    pub fn as_void_ptr(&mut self) -> *mut std::ffi::c_void {
        match self {
            KernelArg::Ptr(v) => v as *mut u64 as *mut _,
            KernelArg::I32(v) => v as *mut i32 as *mut _,
            KernelArg::U32(v) => v as *mut u32 as *mut _,
            KernelArg::F32(v) => v as *mut f32 as *mut _,
            KernelArg::I64(v) => v as *mut i64 as *mut _,
        }
    }
}

/// Host entry of an emulated kernel (generated `extern "C"` wrapper).
pub type EmuFn =
    unsafe extern "C" fn(u32, u32, u32, u32, u32, u32, u32, *const *mut std::ffi::c_void);

/// A kernel source file: embedded source (own headers inlined) and PTX when NVRTC ran at build.
#[derive(Debug)]
pub struct ModuleDef {
    pub name: &'static str,
    pub source: &'static str,
    pub ptx: Option<&'static str>,
}

/// One `extern "C" __global__` function.
#[derive(Debug)]
pub struct KernelDef {
    /// Index into `MODULES`.
    pub module: usize,
    pub name: &'static str,
    pub nparams: usize,
    /// The emulated twin (feature `emu`).
    pub emu: Option<EmuFn>,
}

/// A device allocation. Freed when dropped (stream-ordered on a GPU).
pub struct RawBuf {
    addr: u64,
    bytes: usize,
    _owner: Box<dyn Any + Send + Sync>,
}

impl RawBuf {
    /// Wrap an allocation; `owner` frees it when dropped.
    pub fn new(addr: u64, bytes: usize, owner: Box<dyn Any + Send + Sync>) -> Self {
        RawBuf {
            addr,
            bytes,
            _owner: owner,
        }
    }
    pub fn addr(&self) -> u64 {
        self.addr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl std::fmt::Debug for RawBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawBuf({:#x}, {} bytes)", self.addr, self.bytes)
    }
}

/// Memory and launches on one device. Launches are ordered; `download` waits for them.
pub trait Device: Send + Sync {
    /// "cuda:0 (NVIDIA H200)", "emu".
    fn name(&self) -> String;
    /// A zero-filled allocation of `bytes` bytes (at least 1), 256-byte aligned.
    fn alloc(&self, bytes: usize) -> Result<RawBuf>;
    /// Copy `src` into `dst` starting at byte `offset`.
    fn upload(&self, dst: &RawBuf, offset: usize, src: &[u8]) -> Result<()>;
    /// Copy `dst.len()` bytes from `src` starting at byte `offset`, after all earlier launches.
    fn download(&self, src: &RawBuf, offset: usize, dst: &mut [u8]) -> Result<()>;
    /// Launch `kernel` with `args` (checked against its parameter count).
    fn launch(&self, kernel: &KernelDef, cfg: LaunchCfg, args: &[KernelArg]) -> Result<()>;
    /// Wait until every launch has finished.
    fn synchronize(&self) -> Result<()>;
    /// Free device memory in bytes, when the device can tell (a GPU); `None` otherwise.
    fn free_memory(&self) -> Option<u64> {
        None
    }
    /// Most blocks worth launching for a grid-stride kernel (any grid is correct for those).
    /// A GPU wants many; the emulated device runs blocks one after another and pays for each.
    fn grid_stride_blocks(&self) -> u32 {
        8192
    }
}

/// A typed device address of a read-only kernel parameter.
#[derive(Debug)]
pub struct DevPtr<T> {
    addr: u64,
    _t: PhantomData<fn() -> T>,
}
impl<T> Clone for DevPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevPtr<T> {}

impl<T> DevPtr<T> {
    /// The null pointer (an absent optional input).
    pub fn null() -> Self {
        DevPtr {
            addr: 0,
            _t: PhantomData,
        }
    }
    /// `self + elems` elements.
    pub fn offset(self, elems: usize) -> Self {
        DevPtr {
            addr: self.addr + (elems * std::mem::size_of::<T>()) as u64,
            _t: PhantomData,
        }
    }
    pub fn arg(self) -> KernelArg {
        KernelArg::Ptr(self.addr)
    }
}

/// A typed device address of a kernel parameter the kernel writes.
#[derive(Debug)]
pub struct DevPtrMut<T> {
    addr: u64,
    _t: PhantomData<fn() -> T>,
}
impl<T> Clone for DevPtrMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevPtrMut<T> {}

impl<T> DevPtrMut<T> {
    pub fn null() -> Self {
        DevPtrMut {
            addr: 0,
            _t: PhantomData,
        }
    }
    pub fn offset(self, elems: usize) -> Self {
        DevPtrMut {
            addr: self.addr + (elems * std::mem::size_of::<T>()) as u64,
            _t: PhantomData,
        }
    }
    pub fn arg(self) -> KernelArg {
        KernelArg::Ptr(self.addr)
    }
}

/// An owned, typed device array of `len` elements.
#[derive(Debug)]
pub struct DevBuf<T> {
    raw: RawBuf,
    len: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeviceElem> DevBuf<T> {
    /// `len` zeros.
    pub fn zeros(dev: &dyn Device, len: usize) -> Result<Self> {
        let raw = dev.alloc((len * std::mem::size_of::<T>()).max(1))?;
        Ok(DevBuf {
            raw,
            len,
            _t: PhantomData,
        })
    }
    /// A copy of `data` on the device.
    pub fn from_host(dev: &dyn Device, data: &[T]) -> Result<Self> {
        let b = Self::zeros(dev, data.len())?;
        if !data.is_empty() {
            dev.upload(&b.raw, 0, bytemuck::cast_slice(data))?;
        }
        Ok(b)
    }
    /// The contents, copied to the host.
    pub fn to_host(&self, dev: &dyn Device) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); self.len];
        if self.len > 0 {
            dev.download(&self.raw, 0, bytemuck::cast_slice_mut(&mut out))?;
        }
        Ok(out)
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ptr(&self) -> DevPtr<T> {
        DevPtr {
            addr: self.raw.addr,
            _t: PhantomData,
        }
    }
    /// Writable address. Taking it needs `&mut`, so an input and an output of one launch cannot
    /// be the same buffer by accident.
    pub fn ptr_mut(&mut self) -> DevPtrMut<T> {
        DevPtrMut {
            addr: self.raw.addr,
            _t: PhantomData,
        }
    }
    pub fn raw(&self) -> &RawBuf {
        &self.raw
    }
}

/// Check a launch's argument count against the kernel (the generated launchers always match;
/// this guards hand-built calls).
pub fn check_args(kernel: &KernelDef, args: &[KernelArg]) -> Result<()> {
    if kernel.nparams != args.len() {
        return Err(crate::error::Error::Backend {
            backend: "cuda".into(),
            msg: format!(
                "kernel `{}` takes {} parameters, got {}",
                kernel.name,
                kernel.nparams,
                args.len()
            ),
        });
    }
    Ok(())
}

/// A [`Device`] that counts what crosses between host and device: bytes uploaded and
/// downloaded, and kernel launches (`summary.json` `device_transfers`).
pub struct Counted {
    inner: std::sync::Arc<dyn Device>,
    h2d: std::sync::atomic::AtomicU64,
    d2h: std::sync::atomic::AtomicU64,
    launches: std::sync::atomic::AtomicU64,
}

impl Counted {
    pub fn new(inner: std::sync::Arc<dyn Device>) -> Self {
        Counted {
            inner,
            h2d: Default::default(),
            d2h: Default::default(),
            launches: Default::default(),
        }
    }
    /// The counts so far.
    pub fn transfers(&self) -> crate::backend::Transfers {
        use std::sync::atomic::Ordering::Relaxed;
        crate::backend::Transfers {
            host_to_device_bytes: self.h2d.load(Relaxed),
            device_to_host_bytes: self.d2h.load(Relaxed),
            launches: self.launches.load(Relaxed),
        }
    }
}

impl Device for Counted {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn alloc(&self, bytes: usize) -> Result<RawBuf> {
        self.inner.alloc(bytes)
    }
    fn upload(&self, dst: &RawBuf, offset: usize, src: &[u8]) -> Result<()> {
        self.inner.upload(dst, offset, src)?;
        self.h2d
            .fetch_add(src.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn download(&self, src: &RawBuf, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.inner.download(src, offset, dst)?;
        self.d2h
            .fetch_add(dst.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn launch(&self, kernel: &KernelDef, cfg: LaunchCfg, args: &[KernelArg]) -> Result<()> {
        self.inner.launch(kernel, cfg, args)?;
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn free_memory(&self) -> Option<u64> {
        self.inner.free_memory()
    }
    fn grid_stride_blocks(&self) -> u32 {
        self.inner.grid_stride_blocks()
    }
}
