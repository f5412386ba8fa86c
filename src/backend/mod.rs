//! The op set every backend implements. Model code is written once against [`Backend`] and never
//! branches on the device. Layouts: activations NHWC `[n, h, w, c]`, sequences `[n, len, dim]`.
//! Parameters are prepared once at load (`prepare_*`), so each backend can keep them in the
//! layout and type its kernels want.

pub mod cpu;
pub mod cuda;
pub mod profile;

use crate::error::Result;
use crate::tensor::Tensor;

/// Shape of a 2-D convolution: square kernel, `padding` zeros on every side plus `pad_end`
/// extra zeros at the bottom and right (diffusers' `Downsample2D` with padding 0 pads (0,1,0,1)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub pad_end: usize,
}

impl ConvSpec {
    /// A `k x k` convolution with symmetric padding `padding`.
    pub fn new(cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        ConvSpec {
            cin,
            cout,
            kernel,
            stride,
            padding,
            pad_end: 0,
        }
    }
    /// Output spatial size for an input of `h x w`.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.padding + self.pad_end - self.kernel) / self.stride + 1,
            (w + 2 * self.padding + self.pad_end - self.kernel) / self.stride + 1,
        )
    }
}

/// A prepared convolution: weights in the backend's layout, optional bias `[cout]`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub spec: ConvSpec,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// A prepared linear layer `y = x W^T + b`, `W` given as `[dout, din]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub din: usize,
    pub dout: usize,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// Affine normalisation parameters: GroupNorm over `groups` channel groups (per sample), or
/// LayerNorm over the last dimension (`groups` = 1).
#[derive(Clone, Debug)]
pub struct Norm {
    pub channels: usize,
    pub groups: usize,
    pub eps: f32,
    pub gamma: Tensor,
    pub beta: Tensor,
}

/// Element-wise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// x * sigmoid(x)
    Silu,
    /// x * sigmoid(1.702 x) (CLIP)
    QuickGelu,
    /// exact erf GELU
    Gelu,
}

/// The op set. The CPU backend is the reference; device backends must match it within the
/// tolerances stated in their tests.
pub trait Backend: Send + Sync {
    /// Human-readable name ("cpu", "cuda:0", "emu").
    fn name(&self) -> String;

    /// Bytes of memory a run may still allocate on this backend, when it is limited and known
    /// (a GPU's free memory); `None`: host memory, not planned.
    fn memory_budget(&self) -> Option<u64> {
        None
    }

    /// Bytes per stored activation element (4 for f32 on the host, 2 for bf16 on the GPU).
    fn activation_bytes(&self) -> u64 {
        4
    }

    /// Copy host f32 data of `shape` onto the backend.
    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor>;
    /// Copy a tensor back to host f32, row-major in its shape.
    fn download(&self, x: &Tensor) -> Result<Vec<f32>>;

    /// Prepare a convolution from PyTorch-layout weights `[cout, cin, k, k]`.
    fn prepare_conv(&self, spec: ConvSpec, w_oihw: &[f32], bias: Option<&[f32]>) -> Result<Conv2d>;
    /// Prepare a linear layer from PyTorch-layout weights `[dout, din]`.
    fn prepare_linear(
        &self,
        din: usize,
        dout: usize,
        w: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Linear>;
    /// Prepare normalisation parameters.
    fn prepare_norm(&self, groups: usize, eps: f32, gamma: &[f32], beta: &[f32]) -> Result<Norm> {
        Ok(Norm {
            channels: gamma.len(),
            groups,
            eps,
            gamma: self.upload(&[gamma.len()], gamma)?,
            beta: self.upload(&[beta.len()], beta)?,
        })
    }

    /// `conv(x) + bias (+ residual)`. x NHWC; residual has the output's shape.
    fn conv2d(&self, x: &Tensor, conv: &Conv2d, residual: Option<&Tensor>) -> Result<Tensor>;
    /// `conv(act(groupnorm(x))) + bias (+ residual)`: the fused prologue form. Default: the
    /// plain composition.
    fn norm_conv2d(
        &self,
        x: &Tensor,
        norm: &Norm,
        silu: bool,
        conv: &Conv2d,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = self.group_norm(x, norm, silu)?;
        self.conv2d(&h, conv, residual)
    }
    /// Per-member last layer: sample `i` of `x` (batch `B*K`, member `i % K`) is convolved with
    /// `convs[i % K]`. No default: the CPU backend runs one convolution per member on gathered
    /// rows, the CUDA backend one launch over the members' stacked weights.
    fn conv2d_members(&self, x: &Tensor, convs: &[Conv2d]) -> Result<Tensor>;

    /// GroupNorm over NHWC (statistics per sample and group over h, w and the group's channels),
    /// optionally followed by SiLU.
    fn group_norm(&self, x: &Tensor, norm: &Norm, silu: bool) -> Result<Tensor>;
    /// LayerNorm over the last dimension.
    fn layer_norm(&self, x: &Tensor, norm: &Norm) -> Result<Tensor>;
    /// `act(x W^T + b) (+ residual)` over the last dimension of `x`.
    fn linear(
        &self,
        x: &Tensor,
        lin: &Linear,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor>;
    /// Element-wise activation.
    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor>;
    /// `a + b`, same shapes.
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `x[n, .., c] + v[n, c]`: adds a per-sample vector to every position (NHWC or `[n, l, c]`).
    fn add_per_sample(&self, x: &Tensor, v: &Tensor) -> Result<Tensor>;
    /// Scaled dot-product attention. q, k, v: `[n, len, heads * dh]`; softmax in f32.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f32,
    ) -> Result<Tensor>;
    /// Nearest-neighbour 2x upsampling of NHWC.
    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor>;
    /// Concatenate two NHWC tensors along channels.
    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// Concatenate along the leading dimension.
    fn concat_batch(&self, parts: &[Tensor]) -> Result<Tensor>;
}
