//! Parsing of the kernels' C sources: the `extern "C" __global__ void name(params)` signatures
//! of `kernels/*.cu` and the `#define UQ_ACT_*` activation codes of `kernels/uq_common.cuh`.
//!
//! Self-contained (the standard library only), so that `tests/build_signatures.rs` can test it
//! outside the build script.

/// Scalar types a kernel parameter may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    Bf16,
    F16,
    I32,
    U32,
    I64,
    /// `double`, by pointer only.
    F64,
}

impl Elem {
    /// The element type of a C base type (without `const` and `*`), if supported.
    pub fn parse(s: &str) -> Option<Elem> {
        Some(match s {
            "float" => Elem::F32,
            "__nv_bfloat16" | "nv_bfloat16" | "bf16" => Elem::Bf16,
            "__half" | "half" | "f16" => Elem::F16,
            "int" => Elem::I32,
            "unsigned" | "unsigned int" => Elem::U32,
            "long long" | "long long int" => Elem::I64,
            "double" => Elem::F64,
            _ => return None,
        })
    }

    /// The Rust type (the half types as named in `src/backend/cuda/device.rs`).
    pub fn rust(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::Bf16 => "Bf16",
            Elem::F16 => "F16",
            Elem::I32 => "i32",
            Elem::U32 => "u32",
            Elem::I64 => "i64",
            Elem::F64 => "f64",
        }
    }

    /// The `KernelArg` variant of a scalar parameter.
    pub fn arg(self) -> &'static str {
        match self {
            Elem::F32 => "F32",
            Elem::I32 => "I32",
            Elem::U32 => "U32",
            Elem::I64 => "I64",
            Elem::Bf16 | Elem::F16 | Elem::F64 => {
                unreachable!("half and double scalars are not kernel parameters")
            }
        }
    }
}

/// One kernel parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    /// The C type as written (without `__restrict__`), used by the emulation wrappers.
    pub c_type: String,
    pub elem: Elem,
    pub pointer: bool,
    pub is_const: bool,
}

/// One `extern "C" __global__` kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
}

/// Remove `//` and `/* */` comments (string literals in kernels are not expected).
pub fn strip_comments(s: &str) -> String {
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

fn is_identifier(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Rust keywords (strict and reserved): a parameter so named could not be a field of the
/// generated argument struct.
const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "become", "box", "break", "const", "continue", "crate", "do", "dyn",
    "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let",
    "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// C words that end a type, never a parameter name.
const C_TYPE_WORDS: &[&str] = &[
    "char", "const", "double", "float", "int", "long", "short", "signed", "unsigned", "void",
];

/// Every `extern "C" __global__ void` kernel of a source file, in order.
pub fn parse_kernels(text: &str) -> Result<Vec<Kernel>, String> {
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
        if !is_identifier(&name) {
            return Err(format!("cannot read kernel name `{name}`"));
        }
        let close = head[open..]
            .find(')')
            .ok_or_else(|| format!("kernel `{name}`: unterminated parameter list"))?
            + open;
        let list = &head[open + 1..close];
        // `f(void)` declares no parameters.
        let list = if list.trim() == "void" { "" } else { list };
        let mut params: Vec<Param> = Vec::new();
        for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let param = parse_param(p).map_err(|e| format!("kernel `{name}`: {e}"))?;
            if params.iter().any(|q| q.name == param.name) {
                return Err(format!(
                    "kernel `{name}`: parameter `{}` named twice",
                    param.name
                ));
            }
            params.push(param);
        }
        kernels.push(Kernel { name, params });
        rest = &head[close..];
    }
    Ok(kernels)
}

/// One parameter declaration such as `const bf16* __restrict__ x` or `long long n`.
pub fn parse_param(p: &str) -> Result<Param, String> {
    let cleaned = p.replace("__restrict__", " ").replace('*', " * ");
    let toks: Vec<&str> = cleaned.split_whitespace().collect();
    let (name, ty) = toks
        .split_last()
        .ok_or_else(|| format!("empty parameter `{p}`"))?;
    if !is_identifier(name) {
        return Err(format!("cannot read parameter `{p}`"));
    }
    if ty.is_empty() || C_TYPE_WORDS.contains(name) {
        return Err(format!("parameter `{p}` has no name"));
    }
    if RUST_KEYWORDS.contains(name) {
        return Err(format!(
            "parameter `{p}`: `{name}` is a Rust keyword; rename the parameter"
        ));
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
    if !pointer && elem == Elem::F64 {
        return Err(format!("parameter `{p}`: pass doubles by pointer"));
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

/// The `#define UQ_ACT_<NAME> <integer>` lines of a header, as `(UQ_ACT_<NAME>, value)` in order.
/// A `UQ_ACT_` define without an integer value, or a name defined twice, is an error.
pub fn parse_act_codes(header: &str) -> Result<Vec<(String, i32)>, String> {
    let mut codes: Vec<(String, i32)> = Vec::new();
    for line in strip_comments(header).lines() {
        let Some(rest) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let Some(def) = rest
            .trim_start()
            .strip_prefix("define")
            .filter(|d| d.starts_with(char::is_whitespace))
        else {
            continue;
        };
        let mut toks = def.split_whitespace();
        let Some(name) = toks.next().filter(|n| n.starts_with("UQ_ACT_")) else {
            continue;
        };
        let value: Vec<&str> = toks.collect();
        let code = match value.as_slice() {
            [v] => v.parse::<i32>().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("`#define {}`: the value must be one integer", def.trim()))?;
        if !is_identifier(name) {
            return Err(format!("cannot read activation code name `{name}`"));
        }
        if codes.iter().any(|(n, _)| n == name) {
            return Err(format!("`{name}` defined twice"));
        }
        codes.push((name.to_string(), code));
    }
    Ok(codes)
}
