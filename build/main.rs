//! Build script: the CUDA kernels of `kernels/*.cu`.
//!
//! 1. Reads every `extern "C" __global__ void name(params)` signature ([`signatures`]) and
//!    writes `$OUT_DIR/launchers.rs` ([`launchers`]): one argument struct (fields named as the C
//!    parameters) and one typed launcher per kernel, so a parameter-list mismatch between Rust
//!    and CUDA is a compile error. The `#define UQ_ACT_*` activation codes of
//!    `kernels/uq_common.cuh` become the Rust constants of `$OUT_DIR/activation_codes.rs`.
//! 2. Compiles each `.cu` (own headers inlined) to PTX with NVRTC, loaded dynamically
//!    ([`nvrtc`]), and embeds the PTX and the source. PTX files are also written to
//!    `$OUT_DIR/ptx/`. Without NVRTC only the source is embedded (compiled at run time);
//!    `UQENGINE_REQUIRE_NVRTC=1` makes a missing NVRTC or a compile error fail the build.
//! 3. With feature `emu`: compiles every kernel for the host into a static library ([`emu`]).
//!
//! Environment: `UQENGINE_CUDA_ARCH` (default `compute_80`), `UQENGINE_CUDA_INCLUDE` (CUDA
//! headers; default: auto-detected), `UQENGINE_CUDA_LIB` (folder with libnvrtc, tried when the
//! library is not on the loader's path), `UQENGINE_EMU_SANITIZE`.

#[path = "../src/backend/cuda/cuda_dirs.rs"]
mod cuda_dirs;
mod emu;
mod launchers;
mod nvrtc;
mod signatures;

use std::collections::BTreeSet;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use signatures::Kernel;

/// One kernel source file.
pub struct Module {
    stem: String,
    path: PathBuf,
    kernels: Vec<Kernel>,
    /// The source with the kernels' own `#include "..."` headers inlined.
    flat: String,
}

/// The header holding the `UQ_ACT_*` activation codes.
const ACT_HEADER: &str = "uq_common.cuh";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernels_dir = manifest.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for v in [
        "UQENGINE_CUDA_ARCH",
        "UQENGINE_CUDA_INCLUDE",
        "UQENGINE_CUDA_LIB",
        "UQENGINE_REQUIRE_NVRTC",
        "UQENGINE_EMU_SANITIZE",
        "LD_LIBRARY_PATH",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }

    let mut cu_files: Vec<PathBuf> = fs::read_dir(&kernels_dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    cu_files.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    cu_files.sort();
    for entry in fs::read_dir(&kernels_dir).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    let mut modules = Vec::new();
    for path in &cu_files {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let kernels =
            signatures::parse_kernels(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut seen = BTreeSet::new();
        let flat = flatten(path, &mut seen);
        modules.push(Module {
            stem: path.file_stem().unwrap().to_string_lossy().into_owned(),
            path: path.clone(),
            kernels,
            flat,
        });
    }
    let mut names = BTreeSet::new();
    for m in &modules {
        for k in &m.kernels {
            assert!(
                names.insert(k.name.clone()),
                "kernel `{}` defined twice",
                k.name
            );
        }
    }

    let src_dir = out.join("src");
    let ptx_dir = out.join("ptx");
    fs::create_dir_all(&src_dir).unwrap();
    fs::create_dir_all(&ptx_dir).unwrap();
    for m in &modules {
        fs::write(src_dir.join(format!("{}.cu", m.stem)), &m.flat).unwrap();
    }

    let ptx = nvrtc::compile_ptx(&manifest, &modules, &ptx_dir);
    let emu = env::var_os("CARGO_FEATURE_EMU").is_some();
    if emu {
        emu::build_emu(&out, &kernels_dir, &modules);
    }
    fs::write(
        out.join("launchers.rs"),
        launchers::launchers(&modules, &ptx, &src_dir, &ptx_dir, emu),
    )
    .unwrap();

    let header = kernels_dir.join(ACT_HEADER);
    let text = fs::read_to_string(&header).unwrap_or_else(|e| panic!("{}: {e}", header.display()));
    let codes =
        signatures::parse_act_codes(&text).unwrap_or_else(|e| panic!("{}: {e}", header.display()));
    fs::write(
        out.join("activation_codes.rs"),
        launchers::activation_codes(&format!("kernels/{ACT_HEADER}"), &codes),
    )
    .unwrap();
}

/// The source of `path` with `#include "local.cuh"` replaced by the header's text (once each).
fn flatten(path: &Path, seen: &mut BTreeSet<PathBuf>) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dir = path.parent().unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    // `#line` keeps compiler messages pointing at the original files.
    let mut out = format!("#line 1 \"{name}\"\n");
    for (lineno, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("#include \"") {
            let inc = &rest[..rest.find('"').expect("unterminated #include")];
            if inc == "uq_emu.h" {
                // Host-only header; keep the line (inside #ifdef UQ_EMU) for readers.
                out.push_str(line);
                out.push('\n');
                continue;
            }
            let p = dir.join(inc);
            if seen.insert(p.clone()) {
                writeln!(out, "// ---- begin {inc}").unwrap();
                out.push_str(&flatten(&p, seen));
                writeln!(out, "// ---- end {inc}").unwrap();
                writeln!(out, "#line {} \"{name}\"", lineno + 2).unwrap();
            }
            continue;
        }
        if t.starts_with("#pragma once") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
