//! A real GPU through cudarc's driver API. The driver library is loaded dynamically: its absence
//! is an [`Error::DeviceUnavailable`], never a panic. Kernels come from the PTX embedded at build
//! time; when the driver rejects it (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`) or none was built, the
//! embedded source is compiled with the run-time NVRTC for the device's architecture.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cudarc::driver::{result as cu, sys, CudaContext, CudaStream};

use super::cuda_dirs;
use super::device::{check_args, Device, KernelArg, KernelDef, LaunchCfg, RawBuf};
use super::kernels::MODULES;
use crate::error::{Error, Result};

/// One CUDA device with one stream; every launch and copy is ordered on it.
pub struct GpuDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    label: String,
    arch: String,
    modules: Mutex<Vec<Option<Module>>>,
    functions: Mutex<HashMap<&'static str, Func>>,
}

struct Module(sys::CUmodule);
#[derive(Clone, Copy)]
struct Func(sys::CUfunction);
// CUDA module and function handles are usable from any thread once the context is current.
unsafe impl Send for Module {}
unsafe impl Send for Func {}

struct GpuAlloc {
    addr: sys::CUdeviceptr,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}
impl Drop for GpuAlloc {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            let _ = unsafe { cu::free_async(self.addr, self.stream.cu_stream()) };
        }
    }
}

fn drv(what: &str) -> impl Fn(cu::DriverError) -> Error + '_ {
    move |e| Error::Backend {
        backend: "cuda".into(),
        msg: format!("{what}: {e}"),
    }
}

/// Whether the CUDA driver library can be loaded (checked before any cudarc driver call).
pub fn driver_present() -> bool {
    unsafe { sys::is_culib_present() }
}

impl GpuDevice {
    /// Open device `ordinal`. Errors (never panics) when there is no driver or no such device.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::DeviceUnavailable(
                "the CUDA driver library (libcuda.so) is not installed or not on the loader path"
                    .into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| {
            Error::DeviceUnavailable(format!("CUDA driver present but unusable: {e}"))
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::DeviceUnavailable(format!(
                "cuda:{ordinal} requested, {count} CUDA device(s) present"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::DeviceUnavailable(format!("cuda:{ordinal}: {e}")))?;
        let stream = ctx.new_stream().map_err(drv("creating a stream"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(drv("compute capability"))?;
        let gpu = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        Ok(GpuDevice {
            label: format!("cuda:{ordinal} ({gpu}, sm_{major}{minor})"),
            arch: format!("compute_{major}{minor}"),
            ctx,
            stream,
            modules: Mutex::new((0..MODULES.len()).map(|_| None).collect()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(drv("binding the context"))
    }

    fn load_module(&self, index: usize) -> Result<Module> {
        let def = &MODULES[index];
        if let Some(ptx) = def.ptx {
            let image = CString::new(ptx).expect("PTX has no NUL");
            match unsafe { cu::module::load_data(image.as_ptr() as *const _) } {
                Ok(m) => return Ok(Module(m)),
                Err(e) if e.0 == sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => {}
                Err(e) => return Err(drv(&format!("loading PTX of kernels/{}.cu", def.name))(e)),
            }
        }
        let ptx = compile_at_runtime(def.name, def.source, &self.arch)?;
        let image = CString::new(ptx).expect("PTX has no NUL");
        let m = unsafe { cu::module::load_data(image.as_ptr() as *const _) }.map_err(drv(
            &format!("loading run-time PTX of kernels/{}.cu", def.name),
        ))?;
        Ok(Module(m))
    }

    fn function(&self, kernel: &KernelDef) -> Result<Func> {
        if let Some(f) = self.functions.lock().unwrap().get(kernel.name) {
            return Ok(*f);
        }
        let mut modules = self.modules.lock().unwrap();
        if modules[kernel.module].is_none() {
            modules[kernel.module] = Some(self.load_module(kernel.module)?);
        }
        let module = modules[kernel.module].as_ref().unwrap().0;
        let name = CString::new(kernel.name).expect("kernel names have no NUL");
        let f = unsafe { cu::module::get_function(module, name) }
            .map_err(drv(&format!("kernel `{}`", kernel.name)))?;
        let f = Func(f);
        self.functions.lock().unwrap().insert(kernel.name, f);
        Ok(f)
    }
}

impl Device for GpuDevice {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn alloc(&self, bytes: usize) -> Result<RawBuf> {
        self.bind()?;
        let bytes = bytes.max(1);
        let s = self.stream.cu_stream();
        let addr = unsafe {
            if self.ctx.has_async_alloc() {
                cu::malloc_async(s, bytes)
            } else {
                cu::malloc_sync(bytes)
            }
        }
        .map_err(|e| Error::Backend {
            backend: "cuda".into(),
            msg: format!("allocating {bytes} bytes of GPU memory: {e}"),
        })?;
        unsafe { cu::memset_d8_async(addr, 0, bytes, s) }.map_err(drv("memset"))?;
        let owner = GpuAlloc {
            addr,
            ctx: self.ctx.clone(),
            stream: self.stream.clone(),
        };
        Ok(RawBuf::new(addr, bytes, Box::new(owner)))
    }
    fn upload(&self, dst: &RawBuf, offset: usize, src: &[u8]) -> Result<()> {
        if offset + src.len() > dst.bytes() {
            return Err(drv("upload")(cu::DriverError(
                sys::CUresult::CUDA_ERROR_INVALID_VALUE,
            )));
        }
        self.bind()?;
        unsafe { cu::memcpy_htod_async(dst.addr() + offset as u64, src, self.stream.cu_stream()) }
            .map_err(drv("copy to GPU"))?;
        // `src` is borrowed only for this call.
        self.synchronize()
    }
    fn download(&self, src: &RawBuf, offset: usize, dst: &mut [u8]) -> Result<()> {
        if offset + dst.len() > src.bytes() {
            return Err(drv("download")(cu::DriverError(
                sys::CUresult::CUDA_ERROR_INVALID_VALUE,
            )));
        }
        self.bind()?;
        unsafe { cu::memcpy_dtoh_async(dst, src.addr() + offset as u64, self.stream.cu_stream()) }
            .map_err(drv("copy from GPU"))?;
        self.synchronize()
    }
    fn launch(&self, kernel: &KernelDef, cfg: LaunchCfg, args: &[KernelArg]) -> Result<()> {
        check_args(kernel, args)?;
        self.bind()?;
        let f = self.function(kernel)?;
        if cfg.smem_bytes > 48 * 1024 {
            unsafe {
                cu::function::set_function_attribute(
                    f.0,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    cfg.smem_bytes as i32,
                )
            }
            .map_err(drv(&format!("kernel `{}`: shared memory", kernel.name)))?;
        }
        let mut vals = args.to_vec();
        let mut ptrs: Vec<*mut std::ffi::c_void> =
            vals.iter_mut().map(|a| a.as_void_ptr()).collect();
        // Parameter values are copied by the driver during the call.
        unsafe {
            cu::launch_kernel(
                f.0,
                cfg.grid,
                cfg.block,
                cfg.smem_bytes,
                self.stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(drv(&format!("launching `{}`", kernel.name)))
    }
    fn free_memory(&self) -> Option<u64> {
        self.bind().ok()?;
        cu::mem_get_info().ok().map(|(free, _total)| free as u64)
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.stream.synchronize().map_err(drv("synchronize"))
    }
}

/// The repository root, where `.cuda` (tools/install-cuda-tools.sh) may hold NVRTC and headers.
fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Make the run-time NVRTC loadable: on the loader path, or by full path from the folders of
/// [`cuda_dirs::nvrtc_lib_dirs`] (the build searches the same ones).
pub fn nvrtc_present() -> bool {
    cuda_dirs::load_nvrtc(manifest_dir())
}

/// Compile an embedded kernel source with the run-time NVRTC.
fn compile_at_runtime(module: &str, source: &str, arch: &str) -> Result<String> {
    let fail = |msg: String| Error::Backend {
        backend: "cuda".into(),
        msg: format!("kernels/{module}.cu: {msg}"),
    };
    if !nvrtc_present() {
        return Err(fail(
            "the embedded PTX is unusable and NVRTC (libnvrtc.so) is not available to recompile it; \
             run tools/install-cuda-tools.sh and set LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let arch: &'static str = Box::leak(arch.to_string().into_boxed_str());
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        include_paths: cuda_dirs::include_dirs(manifest_dir())
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        options: vec!["--std=c++17".into()],
        name: Some(format!("{module}.cu")),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            fail(format!("NVRTC: {}", log.to_string_lossy()))
        }
        other => fail(format!("NVRTC: {other:?}")),
    })?;
    Ok(ptx.to_src())
}
