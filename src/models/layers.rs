//! Loading parameters of common layers from a weight view and preparing them on a backend.

use crate::backend::{Backend, Conv2d, ConvSpec, Linear, Norm};
use crate::error::Result;
use crate::models::weights::View;

/// `name.weight` `[cout, cin, k, k]` and `name.bias` `[cout]` (bias optional in the file only if
/// `bias` is false).
pub fn conv(b: &dyn Backend, v: &View, name: &str, spec: ConvSpec, bias: bool) -> Result<Conv2d> {
    let v = v.pp(name);
    let w = v.get("weight", &[spec.cout, spec.cin, spec.kernel, spec.kernel])?;
    let bb = if bias {
        Some(v.get("bias", &[spec.cout])?)
    } else {
        None
    };
    b.prepare_conv(spec, &w, bb.as_deref())
}

/// `name.weight` `[dout, din]` and optionally `name.bias` `[dout]`.
pub fn linear(
    b: &dyn Backend,
    v: &View,
    name: &str,
    din: usize,
    dout: usize,
    bias: bool,
) -> Result<Linear> {
    let v = v.pp(name);
    let w = v.get("weight", &[dout, din])?;
    let bb = if bias {
        Some(v.get("bias", &[dout])?)
    } else {
        None
    };
    b.prepare_linear(din, dout, &w, bb.as_deref())
}

/// GroupNorm (`groups` > 1) or LayerNorm (`groups` = 1) parameters `name.weight`, `name.bias`.
pub fn norm(
    b: &dyn Backend,
    v: &View,
    name: &str,
    channels: usize,
    groups: usize,
    eps: f32,
) -> Result<Norm> {
    let v = v.pp(name);
    let g = v.get("weight", &[channels])?;
    let be = v.get("bias", &[channels])?;
    b.prepare_norm(groups, eps, &g, &be)
}
