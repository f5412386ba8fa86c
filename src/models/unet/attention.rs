//! diffusers spatial self-attention (`Attention` with group norm and residual connection),
//! accepting both the old (`query`/`key`/`value`/`proj_attn`) and new (`to_q`/`to_k`/`to_v`/
//! `to_out.0`) weight names.

use crate::backend::{Activation, Backend, Linear, Norm};
use crate::error::Result;
use crate::models::layers;
use crate::models::weights::View;
use crate::tensor::Tensor;

pub struct AttentionBlock {
    norm: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    channels: usize,
}

/// The first of `names` (new or old checkpoint naming) present under `v`, as a `c x c` linear.
fn linear_any(b: &dyn Backend, v: &View, names: &[&str], c: usize) -> Result<Linear> {
    for n in names {
        if v.has(&format!("{n}.weight")) {
            return layers::linear(b, v, n, c, c, true);
        }
    }
    let keys: Vec<String> = names.iter().map(|n| format!("{n}.weight")).collect();
    let keys: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    v.get_any(&keys, &[c, c])?;
    unreachable!("get_any fails when no name is present")
}

impl AttentionBlock {
    pub fn load(
        b: &dyn Backend,
        v: &View,
        channels: usize,
        heads: usize,
        groups: usize,
        eps: f32,
    ) -> Result<Self> {
        let gn = v.pp("group_norm");
        let gamma = gn.get("weight", &[channels])?;
        let beta = gn.get("bias", &[channels])?;
        Ok(AttentionBlock {
            norm: b.prepare_norm(groups, eps, &gamma, &beta)?,
            q: linear_any(b, v, &["to_q", "query"], channels)?,
            k: linear_any(b, v, &["to_k", "key"], channels)?,
            v: linear_any(b, v, &["to_v", "value"], channels)?,
            out: linear_any(b, v, &["to_out.0", "proj_attn"], channels)?,
            heads,
            channels,
        })
    }

    /// `x + out(attn(q, k, v))` over the `h*w` positions of NHWC `x`.
    pub fn forward(&self, b: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = x.nhwc();
        let normed = b
            .group_norm(x, &self.norm, false)?
            .reshape(vec![n, h * w, c]);
        let q = b.linear(&normed, &self.q, Activation::None, None)?;
        let k = b.linear(&normed, &self.k, Activation::None, None)?;
        let v = b.linear(&normed, &self.v, Activation::None, None)?;
        let dh = self.channels / self.heads;
        let a = b.attention(&q, &k, &v, self.heads, 1.0 / (dh as f32).sqrt())?;
        let res = x.reshape(vec![n, h * w, c]);
        let y = b.linear(&a, &self.out, Activation::None, Some(&res))?;
        Ok(y.reshape(vec![n, h, w, c]))
    }
}
