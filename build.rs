//! Build script: the CUDA kernels of `kernels/*.cu`.
//!
//! 1. Reads every `extern "C" __global__ void name(params)` signature and writes
//!    `$OUT_DIR/launchers.rs`: one typed Rust launcher per kernel, so a parameter-list mismatch
//!    between Rust and CUDA is a compile error.
//! 2. Compiles each `.cu` (own headers inlined) to PTX with NVRTC, loaded dynamically, and embeds
//!    the PTX and the source. PTX files are also written to `$OUT_DIR/ptx/`. Without NVRTC only the
//!    source is embedded (compiled at run time); `UQENGINE_REQUIRE_NVRTC=1` makes a missing NVRTC
//!    or a compile error fail the build.
//! 3. With feature `emu`: compiles every kernel for the host (g++ -std=c++20 with
//!    `kernels/uq_emu.h`) together with generated `extern "C"` launch wrappers into a static
//!    library. `UQENGINE_EMU_SANITIZE=1` adds `-fsanitize=address` (run the tests with the ASan
//!    runtime preloaded: see the warning the build prints).
//!
//! Environment: `UQENGINE_CUDA_ARCH` (default `compute_80`), `UQENGINE_CUDA_INCLUDE` (CUDA
//! headers; default: auto-detected), `UQENGINE_CUDA_LIB` (folder with libnvrtc, tried when the
//! library is not on the loader's path).

use std::collections::BTreeSet;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Scalar types a kernel parameter may have, with their Rust and C spellings.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Elem {
    F32,
    Bf16,
    F16,
    I32,
    U32,
    I64,
}

impl Elem {
    fn parse(s: &str) -> Option<Elem> {
        Some(match s {
            "float" => Elem::F32,
            "__nv_bfloat16" | "nv_bfloat16" | "bf16" => Elem::Bf16,
            "__half" | "half" => Elem::F16,
            "int" => Elem::I32,
            "unsigned" | "unsigned int" => Elem::U32,
            "long long" | "long long int" => Elem::I64,
            _ => return None,
        })
    }
    fn rust(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::Bf16 => "Bf16",
            Elem::F16 => "F16",
            Elem::I32 => "i32",
            Elem::U32 => "u32",
            Elem::I64 => "i64",
        }
    }
    fn arg(self) -> &'static str {
        match self {
            Elem::F32 => "F32",
            Elem::I32 => "I32",
            Elem::U32 => "U32",
            Elem::I64 => "I64",
            Elem::Bf16 | Elem::F16 => unreachable!("half scalars are not kernel parameters"),
        }
    }
}

#[derive(Debug)]
struct Param {
    name: String,
    /// The C type as written (without `__restrict__`), used by the emulation wrappers.
    c_type: String,
    elem: Elem,
    pointer: bool,
    is_const: bool,
}

#[derive(Debug)]
struct Kernel {
    name: String,
    params: Vec<Param>,
}

struct Module {
    stem: String,
    path: PathBuf,
    kernels: Vec<Kernel>,
    /// The source with the kernels' own `#include "..."` headers inlined.
    flat: String,
}

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
        let kernels = parse_kernels(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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

    let ptx = compile_ptx(&manifest, &modules, &ptx_dir);
    let emu = env::var_os("CARGO_FEATURE_EMU").is_some();
    if emu {
        build_emu(&manifest, &out, &kernels_dir, &modules);
    }
    fs::write(
        out.join("launchers.rs"),
        launchers(&modules, &ptx, &src_dir, &ptx_dir, emu),
    )
    .unwrap();
}

// ------------------------------------------------------------------------------------------------
// Parsing.

/// Remove `//` and `/* */` comments (string literals in kernels are not expected).
fn strip_comments(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            out.push(' ');
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn parse_kernels(text: &str) -> Result<Vec<Kernel>, String> {
    let text = strip_comments(text);
    let marker = "extern \"C\" __global__ void";
    let mut kernels = Vec::new();
    let mut rest = text.as_str();
    while let Some(pos) = rest.find(marker) {
        rest = &rest[pos + marker.len()..];
        let mut head = rest.trim_start();
        if let Some(after) = head.strip_prefix("__launch_bounds__") {
            let close = after.find(')').ok_or("unterminated __launch_bounds__")?;
            head = after[close + 1..].trim_start();
        }
        let open = head.find('(').ok_or("kernel without parameter list")?;
        let name = head[..open].trim().to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("cannot read kernel name `{name}`"));
        }
        let close = head[open..]
            .find(')')
            .ok_or("unterminated parameter list")?
            + open;
        let list = &head[open + 1..close];
        let mut params = Vec::new();
        for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            params.push(parse_param(p).map_err(|e| format!("kernel `{name}`: {e}"))?);
        }
        kernels.push(Kernel { name, params });
        rest = &head[close..];
    }
    Ok(kernels)
}

fn parse_param(p: &str) -> Result<Param, String> {
    let cleaned = p.replace("__restrict__", " ").replace('*', " * ");
    let toks: Vec<&str> = cleaned.split_whitespace().collect();
    let (name, ty) = toks
        .split_last()
        .ok_or_else(|| format!("empty parameter `{p}`"))?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("cannot read parameter `{p}`"));
    }
    let pointer = ty.contains(&"*");
    if ty.iter().filter(|t| **t == "*").count() > 1 {
        return Err(format!(
            "parameter `{p}`: pointers to pointers are not supported"
        ));
    }
    let is_const = ty.contains(&"const");
    let base: Vec<&str> = ty
        .iter()
        .copied()
        .filter(|t| *t != "*" && *t != "const")
        .collect();
    let base = base.join(" ");
    let elem =
        Elem::parse(&base).ok_or_else(|| format!("parameter `{p}`: unsupported type `{base}`"))?;
    if !pointer && matches!(elem, Elem::Bf16 | Elem::F16) {
        return Err(format!("parameter `{p}`: pass half types by pointer"));
    }
    let c_type = format!(
        "{}{}{}",
        if is_const { "const " } else { "" },
        base,
        if pointer { "*" } else { "" }
    );
    Ok(Param {
        name: name.to_string(),
        c_type,
        elem,
        pointer,
        is_const,
    })
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

// ------------------------------------------------------------------------------------------------
// NVRTC.

fn cuda_include(manifest: &Path) -> Option<PathBuf> {
    if let Ok(p) = env::var("UQENGINE_CUDA_INCLUDE") {
        return Some(PathBuf::from(p));
    }
    let candidates = [
        manifest.join(".cuda/nvidia/cu13/include"),
        PathBuf::from("/usr/local/cuda/include"),
    ];
    candidates
        .into_iter()
        .find(|p| p.join("cuda_bf16.h").exists())
}

fn cuda_lib_dirs(manifest: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(p) = env::var("UQENGINE_CUDA_LIB") {
        dirs.push(PathBuf::from(p));
    }
    dirs.push(manifest.join(".cuda/nvidia/cu13/lib"));
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs
}

/// Make NVRTC loadable: it is found on the loader's path, or loaded here by full path (builtins
/// first) so that later loads by name find the already-loaded libraries.
fn nvrtc_available(manifest: &Path) -> bool {
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return true;
    }
    for dir in cuda_lib_dirs(manifest) {
        let nvrtc = dir.join("libnvrtc.so.13");
        if !nvrtc.exists() {
            continue;
        }
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("libnvrtc-builtins.so") && !n.contains(".alt.") {
                    if let Ok(lib) = unsafe { libloading::Library::new(e.path()) } {
                        std::mem::forget(lib);
                    }
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

/// Compile every module to PTX; returns per-module success.
fn compile_ptx(manifest: &Path, modules: &[Module], ptx_dir: &Path) -> Vec<bool> {
    let require = env::var("UQENGINE_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    if !nvrtc_available(manifest) {
        let msg = "NVRTC (libnvrtc.so.13) not found on the loader path, in UQENGINE_CUDA_LIB or in .cuda/: \
                   kernels are embedded as source and compiled at run time (tools/install-cuda-tools.sh installs it)";
        if require {
            panic!("UQENGINE_REQUIRE_NVRTC=1 but {msg}");
        }
        println!("cargo:warning={msg}");
        return vec![false; modules.len()];
    }
    let include = cuda_include(manifest);
    if include.is_none() {
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

// ------------------------------------------------------------------------------------------------
// Host emulation library.

fn build_emu(manifest: &Path, out: &Path, kernels_dir: &Path, modules: &[Module]) {
    let dir = out.join("emu");
    fs::create_dir_all(&dir).unwrap();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .opt_level(2)
        .define("UQ_EMU", "1")
        .include(kernels_dir)
        .flag("-fno-strict-aliasing")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unused-function")
        .warnings(false);
    if env::var("UQENGINE_EMU_SANITIZE").is_ok_and(|v| v == "1") {
        build
            .flag("-fsanitize=address")
            .flag("-fno-omit-frame-pointer");
        // The runtime must come first in the process (it replaces the allocator, so the emulated
        // device's buffers get red zones): link it, and preload it when running the tests.
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-lasan,--pop-state");
        println!(
            "cargo:warning=UQENGINE_EMU_SANITIZE=1: run the tests with \
             CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=\"env LD_PRELOAD=$(g++ -print-file-name=libasan.so) \
             ASAN_OPTIONS=detect_leaks=0\""
        );
    }
    for m in modules {
        let mut w = String::new();
        writeln!(
            w,
            "// Generated by build.rs: host launch wrappers of {}.",
            m.path.display()
        )
        .unwrap();
        writeln!(w, "#include \"{}\"", m.path.display()).unwrap();
        for k in &m.kernels {
            writeln!(
                w,
                "extern \"C\" void uq_emu_{}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, \
                 unsigned bz, unsigned smem, void* const* args) {{",
                k.name
            )
            .unwrap();
            let mut names = Vec::new();
            for (i, p) in k.params.iter().enumerate() {
                writeln!(
                    w,
                    "    {} a{i} = *static_cast<{} const*>(args[{i}]);",
                    p.c_type, p.c_type
                )
                .unwrap();
                names.push(format!("a{i}"));
            }
            writeln!(
                w,
                "    uq_emu::launch(dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, smem, [&] {{ {}({}); }});\n}}",
                k.name,
                names.join(", ")
            )
            .unwrap();
        }
        let f = dir.join(format!("{}_emu.cpp", m.stem));
        fs::write(&f, w).unwrap();
        build.file(&f);
    }
    let conv = dir.join("uq_emu_support.cpp");
    fs::write(
        &conv,
        "// Generated by build.rs: conversions of the emulation header, for tests.\n\
         #include \"uq_common.cuh\"\n\
         extern \"C\" void uq_emu_f32_to_bf16(const float* x, unsigned short* y, unsigned long n) {\n\
         for (unsigned long i = 0; i < n; ++i) y[i] = uq_emu::f32_to_bf16_bits(x[i]); }\n\
         extern \"C\" void uq_emu_f32_to_f16(const float* x, unsigned short* y, unsigned long n) {\n\
         for (unsigned long i = 0; i < n; ++i) y[i] = uq_emu::f32_to_f16_bits(x[i]); }\n\
         extern \"C\" void uq_emu_f16_to_f32(const unsigned short* x, float* y, unsigned long n) {\n\
         for (unsigned long i = 0; i < n; ++i) y[i] = uq_emu::f16_bits_to_f32(x[i]); }\n",
    )
    .unwrap();
    build.file(&conv);
    let _ = manifest;
    build.compile("uqengine_emu");
}

// ------------------------------------------------------------------------------------------------
// Generated Rust.

fn launchers(
    modules: &[Module],
    ptx_ok: &[bool],
    src_dir: &Path,
    ptx_dir: &Path,
    emu: bool,
) -> String {
    let mut s = String::new();
    s.push_str("// Generated by build.rs from kernels/*.cu. Do not edit.\n\n");
    s.push_str(
        "/// Every kernel module: name, embedded source (own headers inlined) and PTX if built.\n",
    );
    s.push_str("pub static MODULES: &[ModuleDef] = &[\n");
    for (m, ok) in modules.iter().zip(ptx_ok) {
        let src = src_dir.join(format!("{}.cu", m.stem));
        let ptx = if *ok {
            format!(
                "Some(include_str!({:?}))",
                ptx_dir
                    .join(format!("{}.ptx", m.stem))
                    .display()
                    .to_string()
            )
        } else {
            "None".to_string()
        };
        writeln!(
            s,
            "    ModuleDef {{ name: {:?}, source: include_str!({:?}), ptx: {ptx} }},",
            m.stem,
            src.display().to_string()
        )
        .unwrap();
    }
    s.push_str("];\n\n");
    if emu {
        s.push_str("#[allow(improper_ctypes)]\nextern \"C\" {\n");
        for m in modules {
            for k in &m.kernels {
                writeln!(
                    s,
                    "    fn uq_emu_{}(gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: u32, \
                     args: *const *mut std::ffi::c_void);",
                    k.name
                )
                .unwrap();
            }
        }
        s.push_str("}\n\n");
    }
    for (mi, m) in modules.iter().enumerate() {
        for k in &m.kernels {
            let upper = k.name.to_uppercase();
            let emu_fn = if emu {
                format!("Some(uq_emu_{} as EmuFn)", k.name)
            } else {
                "None".into()
            };
            let sig: Vec<String> = k
                .params
                .iter()
                .map(|p| format!("{} {}", p.c_type, p.name))
                .collect();
            writeln!(
                s,
                "/// Kernel `{}` of `kernels/{}.cu`.\npub static K_{upper}: KernelDef = KernelDef {{ module: {mi}, \
                 name: {:?}, nparams: {}, emu: {emu_fn} }};",
                k.name,
                m.stem,
                k.name,
                k.params.len()
            )
            .unwrap();
            writeln!(
                s,
                "/// Launch `{}({})` (`kernels/{}.cu`).",
                k.name,
                sig.join(", "),
                m.stem
            )
            .unwrap();
            s.push_str("#[allow(clippy::too_many_arguments, dead_code)]\n");
            write!(s, "pub fn {}(dev: &dyn Device, cfg: LaunchCfg", k.name).unwrap();
            for p in &k.params {
                let ty = if p.pointer {
                    if p.is_const {
                        format!("DevPtr<{}>", p.elem.rust())
                    } else {
                        format!("DevPtrMut<{}>", p.elem.rust())
                    }
                } else {
                    p.elem.rust().to_string()
                };
                write!(s, ", {}: {ty}", p.name).unwrap();
            }
            s.push_str(") -> Result<()> {\n    dev.launch(&K_");
            s.push_str(&upper);
            s.push_str(", cfg, &[");
            let args: Vec<String> = k
                .params
                .iter()
                .map(|p| {
                    if p.pointer {
                        format!("{}.arg()", p.name)
                    } else {
                        format!("KernelArg::{}({})", p.elem.arg(), p.name)
                    }
                })
                .collect();
            s.push_str(&args.join(", "));
            s.push_str("])\n}\n\n");
        }
    }
    s
}
