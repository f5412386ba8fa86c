//! Where the CUDA compiler pieces are looked for: the build (`build/nvrtc.rs`, compiling the
//! kernels to PTX) and the run time (`gpu.rs`, recompiling the embedded sources) both use this
//! file, so they search the same places. `manifest` is the repository root.

use std::path::{Path, PathBuf};

/// Folders that may hold `libnvrtc.so.13`, in search order: `UQENGINE_CUDA_LIB`, the repository's
/// `.cuda` (tools/install-cuda-tools.sh), the system CUDA.
pub fn nvrtc_lib_dirs(manifest: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(p) = std::env::var("UQENGINE_CUDA_LIB") {
        dirs.push(PathBuf::from(p));
    }
    dirs.push(manifest.join(".cuda/nvidia/cu13/lib"));
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs
}

/// Folders of CUDA headers to compile with, in search order: `UQENGINE_CUDA_INCLUDE` as given,
/// then those of the repository's `.cuda` and the system CUDA that hold `cuda_bf16.h`.
pub fn include_dirs(manifest: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(p) = std::env::var("UQENGINE_CUDA_INCLUDE") {
        dirs.push(PathBuf::from(p));
    }
    let found = [
        manifest.join(".cuda/nvidia/cu13/include"),
        PathBuf::from("/usr/local/cuda/include"),
    ];
    dirs.extend(found.into_iter().filter(|p| p.join("cuda_bf16.h").exists()));
    dirs
}

/// Make NVRTC loadable: it is found on the loader's path, or loaded here by full path from the
/// first of [`nvrtc_lib_dirs`] that works (builtins first), so that later loads by name find the
/// already-loaded libraries.
pub fn load_nvrtc(manifest: &Path) -> bool {
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return true;
    }
    for dir in nvrtc_lib_dirs(manifest) {
        let nvrtc = dir.join("libnvrtc.so.13");
        if !nvrtc.exists() {
            continue;
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("libnvrtc-builtins.so") && !n.contains(".alt.") {
                if let Ok(lib) = unsafe { libloading::Library::new(e.path()) } {
                    std::mem::forget(lib);
                }
            }
        }
        if let Ok(lib) = unsafe { libloading::Library::new(&nvrtc) } {
            std::mem::forget(lib);
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return true;
            }
        }
    }
    false
}
