//! diffusers `ResnetBlock2D` (output scale factor 1) with time-embedding norm "default" or
//! "scale_shift", optionally resampling (`up`/`down`), which is also ADM's `ResBlock`.

use crate::backend::{Activation, Backend, Conv2d, ConvSpec, Linear, Norm};
use crate::error::Result;
use crate::models::layers;
use crate::models::weights::View;
use crate::tensor::Tensor;

/// How a resnet changes the spatial size of its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    None,
    /// Nearest-neighbour 2x (diffusers `up=True`, ADM `ResBlock(up=True)`).
    Up,
    /// 2x2 average pooling (diffusers `down=True`, ADM `ResBlock(down=True)`).
    Down,
}

/// The shape of a resnet block.
#[derive(Clone, Copy, Debug)]
pub struct ResnetSpec {
    pub cin: usize,
    pub cout: usize,
    pub temb: usize,
    pub groups: usize,
    pub eps: f32,
    /// The time embedding scales and shifts `norm2` (projection to `2 * cout`) instead of
    /// being added after `conv1`.
    pub scale_shift: bool,
    pub resample: Resample,
}

/// Default: `x + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))`; scale-shift:
/// `x + conv2(silu(norm2(conv1(silu(norm1(x)))) * (1 + scale) + shift))` with `(scale, shift)
/// = proj(silu(temb))`. A 1x1 shortcut when the channel count changes; a resampling block
/// resamples `silu(norm1(x))` before `conv1` and `x` before the shortcut.
pub struct ResnetBlock {
    norm1: Norm,
    conv1: Conv2d,
    time_proj: Linear,
    norm2: Norm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    scale_shift: bool,
    resample: Resample,
}

impl ResnetBlock {
    pub fn load(b: &dyn Backend, v: &View, s: ResnetSpec) -> Result<Self> {
        let (cin, cout, groups, eps) = (s.cin, s.cout, s.groups, s.eps);
        let shortcut = if cin != cout {
            Some(layers::conv(
                b,
                v,
                "conv_shortcut",
                ConvSpec::new(cin, cout, 1, 1, 0),
                true,
            )?)
        } else {
            None
        };
        let proj_out = if s.scale_shift { 2 * cout } else { cout };
        Ok(ResnetBlock {
            norm1: layers::norm(b, v, "norm1", cin, groups, eps)?,
            conv1: layers::conv(b, v, "conv1", ConvSpec::new(cin, cout, 3, 1, 1), true)?,
            time_proj: layers::linear(b, v, "time_emb_proj", s.temb, proj_out, true)?,
            norm2: layers::norm(b, v, "norm2", cout, groups, eps)?,
            conv2: layers::conv(b, v, "conv2", ConvSpec::new(cout, cout, 3, 1, 1), true)?,
            shortcut,
            scale_shift: s.scale_shift,
            resample: s.resample,
        })
    }

    /// `x`: NHWC; `temb_act`: `silu(temb)` `[n, temb]` (shared by all blocks).
    pub fn forward(&self, b: &dyn Backend, x: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        let resample = |t: &Tensor| match self.resample {
            Resample::None => Ok(t.clone()),
            Resample::Up => b.upsample_nearest2x(t),
            Resample::Down => b.avg_pool2x(t),
        };
        let (h, x) = if self.resample == Resample::None {
            (
                b.norm_conv2d(x, &self.norm1, true, &self.conv1, None)?,
                x.clone(),
            )
        } else {
            let h = resample(&b.group_norm(x, &self.norm1, true)?)?;
            (b.conv2d(&h, &self.conv1, None)?, resample(x)?)
        };
        let t = b.linear(temb_act, &self.time_proj, Activation::None, None)?;
        let skip = match &self.shortcut {
            Some(sc) => b.conv2d(&x, sc, None)?,
            None => x,
        };
        if self.scale_shift {
            let h = b.group_norm_scale_shift(&h, &self.norm2, &t, true)?;
            b.conv2d(&h, &self.conv2, Some(&skip))
        } else {
            b.add_norm_conv2d(&h, &t, &self.norm2, true, &self.conv2, Some(&skip))
        }
    }
}
