//! The build script's C parser (`build/signatures.rs`): kernel signatures and activation codes,
//! on real-looking sources, and its errors on what the launcher generator cannot express.

#[path = "../build/signatures.rs"]
mod signatures;

use signatures::{
    parse_act_codes, parse_kernels, parse_param, strip_comments, Elem, Kernel, Param,
};

fn param(name: &str, c_type: &str, elem: Elem, pointer: bool, is_const: bool) -> Param {
    Param {
        name: name.into(),
        c_type: c_type.into(),
        elem,
        pointer,
        is_const,
    }
}

fn one_kernel(src: &str) -> Kernel {
    let mut ks = parse_kernels(src).unwrap_or_else(|e| panic!("{e}\n{src}"));
    assert_eq!(ks.len(), 1, "{ks:?}");
    ks.remove(0)
}

fn param_error(p: &str) -> String {
    match parse_param(p) {
        Ok(got) => panic!("`{p}` parsed as {got:?}, expected an error"),
        Err(e) => e,
    }
}

#[test]
fn multi_line_signature_with_launch_bounds_restrict_and_comments() {
    let src = r#"
#include "uq_common.cuh"

/// Tensor-core convolution.
extern "C" __global__ void __launch_bounds__(128, 2) conv_like(
    const bf16* __restrict__ x,      // input, NHWC
    const __nv_bfloat16 *__restrict__ w, /* weights,
                                            [cout][K] */
    float* y, const float* const bias,
    int h, int /* width */ wd,
    unsigned int seed, unsigned mask, long long n, long long int total, float eps) {
    const int unused = h; // extern "C" __global__ void not_a_kernel(int a) in a comment
}
"#;
    let k = one_kernel(src);
    assert_eq!(k.name, "conv_like");
    let want = vec![
        param("x", "const bf16*", Elem::Bf16, true, true),
        param("w", "const __nv_bfloat16*", Elem::Bf16, true, true),
        param("y", "float*", Elem::F32, true, false),
        param("bias", "const float*", Elem::F32, true, true),
        param("h", "int", Elem::I32, false, false),
        param("wd", "int", Elem::I32, false, false),
        param("seed", "unsigned int", Elem::U32, false, false),
        param("mask", "unsigned", Elem::U32, false, false),
        param("n", "long long", Elem::I64, false, false),
        param("total", "long long int", Elem::I64, false, false),
        param("eps", "float", Elem::F32, false, false),
    ];
    assert_eq!(k.params, want);
}

#[test]
fn every_kernel_of_a_file_in_order_and_nothing_else() {
    let src = r#"
__device__ float helper(const float* p, int i) { return p[i]; }
template <int N> __global__ void templated(float* y) {}
extern "C" __global__ void first(const __half* __restrict__ a, __half* b) {}
/* extern "C" __global__ void commented_out(int x) {} */
extern "C" __global__ void __launch_bounds__(256) second(int* out) {}
extern "C" __global__ void no_params() {}
extern "C" __global__ void void_params(void) {}
"#;
    let ks = parse_kernels(src).unwrap();
    let names: Vec<&str> = ks.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["first", "second", "no_params", "void_params"]);
    assert_eq!(
        ks[0].params,
        [
            param("a", "const __half*", Elem::F16, true, true),
            param("b", "__half*", Elem::F16, true, false),
        ]
    );
    assert_eq!(ks[1].params, [param("out", "int*", Elem::I32, true, false)]);
    assert!(ks[2].params.is_empty() && ks[3].params.is_empty());
    assert!(parse_kernels("__global__ void k(int a) {}")
        .unwrap()
        .is_empty());
    assert!(parse_act_codes("#defineUQ_ACT_X 1\n").unwrap().is_empty());
}

#[test]
fn rust_spellings_of_the_element_types() {
    let rust: Vec<&str> = [
        Elem::F32,
        Elem::Bf16,
        Elem::F16,
        Elem::I32,
        Elem::U32,
        Elem::I64,
        Elem::F64,
    ]
    .iter()
    .map(|e| e.rust())
    .collect();
    assert_eq!(rust, ["f32", "Bf16", "F16", "i32", "u32", "i64", "f64"]);
    let args: Vec<&str> = [Elem::F32, Elem::I32, Elem::U32, Elem::I64]
        .iter()
        .map(|e| e.arg())
        .collect();
    assert_eq!(args, ["F32", "I32", "U32", "I64"]);
    assert_eq!(Elem::parse("nv_bfloat16"), Some(Elem::Bf16));
    assert_eq!(Elem::parse("half"), Some(Elem::F16));
    assert_eq!(Elem::parse("f16"), Some(Elem::F16));
    assert_eq!(Elem::parse("double"), Some(Elem::F64));
    assert_eq!(Elem::parse("long"), None);
}

#[test]
fn unsupported_parameters_are_rejected_with_the_reason() {
    let e = param_error("double scale");
    assert_eq!(e, "parameter `double scale`: pass doubles by pointer");
    assert!(param_error("long double* w").contains("unsupported type `long double`"));
    let e = param_error("const size_t* __restrict__ idx");
    assert_eq!(
        e,
        "parameter `const size_t* __restrict__ idx`: unsupported type `size_t`"
    );
    assert!(param_error("long n").contains("unsupported type `long`"));
    assert!(param_error("unsigned long long n").contains("unsupported type `unsigned long long`"));
    assert!(param_error("float** rows").contains("pointers to pointers are not supported"));
    assert!(param_error("bf16 v").contains("pass half types by pointer"));
    assert!(param_error("__half v").contains("pass half types by pointer"));
    assert!(param_error("int type").contains("`type` is a Rust keyword"));
    assert!(param_error("const float* in").contains("`in` is a Rust keyword"));
    assert_eq!(
        param_error("unsigned int"),
        "parameter `unsigned int` has no name"
    );
    assert_eq!(param_error("float"), "parameter `float` has no name");
    assert_eq!(
        param_error("float* x[4]"),
        "cannot read parameter `float* x[4]`"
    );
    assert_eq!(
        param_error("const float*"),
        "cannot read parameter `const float*`"
    );
}

#[test]
fn kernel_errors_name_the_kernel() {
    let e = parse_kernels("extern \"C\" __global__ void bad(float* y, double s) {}").unwrap_err();
    assert_eq!(
        e,
        "kernel `bad`: parameter `double s`: pass doubles by pointer"
    );
    let e = parse_kernels("extern \"C\" __global__ void twice(int a, float* a) {}").unwrap_err();
    assert_eq!(e, "kernel `twice`: parameter `a` named twice");
    let e = parse_kernels("extern \"C\" __global__ void open(int a, int b").unwrap_err();
    assert_eq!(e, "kernel `open`: unterminated parameter list");
    let e = parse_kernels("extern \"C\" __global__ void *k(int a) {}").unwrap_err();
    assert_eq!(e, "cannot read kernel name `*k`");
    let e = parse_kernels("extern \"C\" __global__ void k;").unwrap_err();
    assert_eq!(e, "kernel without parameter list");
    let e = parse_kernels("extern \"C\" __global__ void 2k(int a) {}").unwrap_err();
    assert_eq!(e, "cannot read kernel name `2k`");
}

#[test]
fn comments_are_removed_and_the_code_kept() {
    let s = strip_comments("a // one\nb /* two\nthree */ c\n/* unterminated");
    assert_eq!(s, "a \nb   c\n ");
    assert_eq!(strip_comments("x / y * z"), "x / y * z");
    assert_eq!(strip_comments("ü // é"), "ü ");
}

#[test]
fn activation_codes_are_read_from_the_defines() {
    let header = r#"
#pragma once
#define UQ_FULL_MASK 0xffffffffu
/// Activation codes shared with the Rust side (`Activation` as i32).
#define UQ_ACT_NONE 0
#define UQ_ACT_SILU 1 // x * sigmoid(x)
#  define   UQ_ACT_QUICK_GELU   2
#define UQ_ACT_GELU 3
__device__ float uq_activate(float x, int act) { return UQ_ACT_NONE; }
"#;
    let codes = parse_act_codes(header).unwrap();
    let want = [
        ("UQ_ACT_NONE", 0),
        ("UQ_ACT_SILU", 1),
        ("UQ_ACT_QUICK_GELU", 2),
        ("UQ_ACT_GELU", 3),
    ];
    let got: Vec<(&str, i32)> = codes.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    assert_eq!(got, want);
    assert_eq!(
        parse_act_codes("#define UQ_ACT_X (1 << 2)\n").unwrap_err(),
        "`#define UQ_ACT_X (1 << 2)`: the value must be one integer"
    );
    assert_eq!(
        parse_act_codes("#define UQ_ACT_X\n").unwrap_err(),
        "`#define UQ_ACT_X`: the value must be one integer"
    );
    assert_eq!(
        parse_act_codes("#define UQ_ACT_A 1\n#define UQ_ACT_A 2\n").unwrap_err(),
        "`UQ_ACT_A` defined twice"
    );
}

/// The real kernels parse, and the activation codes are those of the real header.
#[test]
fn the_repository_kernels_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let conv = std::fs::read_to_string(dir.join("conv.cu")).unwrap();
    let ks = parse_kernels(&conv).unwrap();
    let mma = ks
        .iter()
        .find(|k| k.name == "conv2d_mma")
        .expect("conv2d_mma in conv.cu");
    let names: Vec<&str> = mma.params.iter().map(|p| p.name.as_str()).collect();
    let want =
        "x w bias residual y stats gamma beta h wd cin ho wo cout ksize stride pad members groups \
                norm_silu act";
    assert_eq!(names, want.split_whitespace().collect::<Vec<_>>());
    assert_eq!(mma.params[4], param("y", "f16*", Elem::F16, true, false));
    let header = std::fs::read_to_string(dir.join("uq_common.cuh")).unwrap();
    let codes = parse_act_codes(&header).unwrap();
    let names: Vec<&str> = codes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "UQ_ACT_NONE",
            "UQ_ACT_SILU",
            "UQ_ACT_QUICK_GELU",
            "UQ_ACT_GELU"
        ]
    );
}
