//! diffusers `ResnetBlock2D` (time-scale-shift "default", output scale factor 1).

use crate::backend::{Activation, Backend, Conv2d, ConvSpec, Linear, Norm};
use crate::error::Result;
use crate::models::layers;
use crate::models::weights::View;
use crate::tensor::Tensor;

/// `x + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb))))`, with a 1x1 shortcut
/// when the channel count changes.
pub struct ResnetBlock {
    norm1: Norm,
    conv1: Conv2d,
    time_proj: Linear,
    norm2: Norm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        b: &dyn Backend,
        v: &View,
        cin: usize,
        cout: usize,
        temb: usize,
        groups: usize,
        eps: f32,
    ) -> Result<Self> {
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
        Ok(ResnetBlock {
            norm1: layers::norm(b, v, "norm1", cin, groups, eps)?,
            conv1: layers::conv(b, v, "conv1", ConvSpec::new(cin, cout, 3, 1, 1), true)?,
            time_proj: layers::linear(b, v, "time_emb_proj", temb, cout, true)?,
            norm2: layers::norm(b, v, "norm2", cout, groups, eps)?,
            conv2: layers::conv(b, v, "conv2", ConvSpec::new(cout, cout, 3, 1, 1), true)?,
            shortcut,
        })
    }

    /// `x`: NHWC; `temb_act`: `silu(temb)` `[n, temb]` (shared by all blocks).
    pub fn forward(&self, b: &dyn Backend, x: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        let h = b.norm_conv2d(x, &self.norm1, true, &self.conv1, None)?;
        let t = b.linear(temb_act, &self.time_proj, Activation::None, None)?;
        let h = b.add_per_sample(&h, &t)?;
        let skip = match &self.shortcut {
            Some(sc) => b.conv2d(x, sc, None)?,
            None => x.clone(),
        };
        b.norm_conv2d(&h, &self.norm2, true, &self.conv2, Some(&skip))
    }
}
