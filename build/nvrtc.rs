//! Compiling each kernel module to PTX with NVRTC, loaded dynamically.

use std::env;
use std::fs;
use std::path::Path;

use crate::cuda_dirs;
use crate::Module;

/// Compile every module to PTX (written to `ptx_dir/<stem>.ptx`); returns per-module success.
/// Without NVRTC or the CUDA headers nothing is compiled; `UQENGINE_REQUIRE_NVRTC=1` makes that,
/// or a compile error, fail the build.
pub fn compile_ptx(manifest: &Path, modules: &[Module], ptx_dir: &Path) -> Vec<bool> {
    let require = env::var("UQENGINE_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    if !cuda_dirs::load_nvrtc(manifest) {
        let msg = "NVRTC (libnvrtc.so.13) not found on the loader path, in UQENGINE_CUDA_LIB, in .cuda/ \
                   or in /usr/local/cuda/lib64: kernels are embedded as source and compiled at run time \
                   (tools/install-cuda-tools.sh installs it)";
        if require {
            panic!("UQENGINE_REQUIRE_NVRTC=1 but {msg}");
        }
        println!("cargo:warning={msg}");
        return vec![false; modules.len()];
    }
    let include = cuda_dirs::include_dirs(manifest);
    if include.is_empty() {
        let msg = "CUDA headers (cuda_bf16.h) not found; set UQENGINE_CUDA_INCLUDE";
        if require {
            panic!("UQENGINE_REQUIRE_NVRTC=1: {msg}");
        }
        println!("cargo:warning={msg}");
        return vec![false; modules.len()];
    }
    let arch: &'static str = Box::leak(
        env::var("UQENGINE_CUDA_ARCH")
            .unwrap_or_else(|_| "compute_80".into())
            .into_boxed_str(),
    );
    let mut ok = Vec::new();
    for m in modules {
        let opts = cudarc::nvrtc::CompileOptions {
            arch: Some(arch),
            include_paths: include.iter().map(|p| p.display().to_string()).collect(),
            options: vec!["--std=c++17".into(), "-lineinfo".into()],
            name: Some(format!("{}.cu", m.stem)),
            ..Default::default()
        };
        match cudarc::nvrtc::compile_ptx_with_opts(&m.flat, opts) {
            Ok(ptx) => {
                fs::write(ptx_dir.join(format!("{}.ptx", m.stem)), ptx.to_src()).unwrap();
                ok.push(true);
            }
            Err(e) => {
                let detail = match &e {
                    cudarc::nvrtc::CompileError::CompileError { options, log, .. } => {
                        format!("options {options:?}\n{}", log.to_string_lossy())
                    }
                    other => format!("{other:?}"),
                };
                let msg = format!("NVRTC failed on {}: {detail}", m.path.display());
                if require {
                    panic!("{msg}");
                }
                for line in msg.lines() {
                    println!("cargo:warning={line}");
                }
                ok.push(false);
            }
        }
    }
    if ok.iter().any(|&b| b) {
        println!(
            "cargo:warning=PTX ({arch}) written to {}",
            ptx_dir.display()
        );
    }
    ok
}
