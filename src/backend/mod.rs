//! The op set every backend implements. Model code is written once against [`Backend`] and never
//! branches on the device. Layouts: activations NHWC `[n, h, w, c]`, sequences `[n, len, dim]`.
//! Parameters are prepared once at load (`prepare_*`), so each backend can keep them in the
//! layout and type its kernels want.

pub mod cpu;
pub mod cuda;
pub mod profile;
pub mod state;

pub use state::{StepNoise, Transfers};

use crate::error::{Error, Result};
use crate::models::clip_preprocess::PixelPlan;
use crate::rng::Purpose;
use crate::sampler::StepCoefficients;
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

/// The `K` last layers of a run's members, prepared once ([`Backend::prepare_members`]):
/// `convs[m]` is member `m` (member 0 the MAP); `stacked`, where the backend keeps one, holds
/// their weights and biases stacked `[m][cout][...]` for a single launch over all members.
#[derive(Clone, Debug)]
pub struct Members {
    pub convs: Vec<Conv2d>,
    pub stacked: Option<Conv2d>,
}

/// The last layer of a sampler step: one convolution for every row (the MAP member's), or the
/// members' stack (row `r` through member `r % K`).
#[derive(Clone, Copy)]
pub enum LastLayer<'a> {
    Single(&'a Conv2d),
    Members(&'a Members),
}

/// [`Backend::last_layer_step`] as its two ops: the last layer, then the sampler step.
pub fn last_layer_then_step<B: Backend + ?Sized>(
    be: &B,
    h: &Tensor,
    last: LastLayer,
    coeffs: &StepCoefficients,
    x: &Tensor,
    noise: Option<&StepNoise>,
) -> Result<Tensor> {
    let m = match last {
        LastLayer::Single(conv) => be.conv2d(h, conv, None)?,
        LastLayer::Members(members) => be.conv2d_member_stack(h, members)?,
    };
    be.sampler_step(coeffs, &m, x, noise)
}

impl Members {
    pub fn len(&self) -> usize {
        self.convs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.convs.is_empty()
    }
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

    /// Bytes per stored activation element (4 for f32 on the host, 2 for f16 on the GPU).
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
    /// `norm_conv2d(x + v)` with `v` `[n, c]` added to every position of sample `n` first (a
    /// resnet's time embedding before its second norm). Default: [`Backend::add_per_sample`]
    /// then [`Backend::norm_conv2d`].
    fn add_norm_conv2d(
        &self,
        x: &Tensor,
        v: &Tensor,
        norm: &Norm,
        silu: bool,
        conv: &Conv2d,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = self.add_per_sample(x, v)?;
        self.norm_conv2d(&h, norm, silu, conv, residual)
    }
    /// Per-member last layer: sample `i` of `x` (batch `B*K`, member `i % K`) is convolved with
    /// `convs[i % K]`. No default: the CPU backend runs one convolution per member on gathered
    /// rows, the CUDA backend one launch over the members' stacked weights.
    fn conv2d_members(&self, x: &Tensor, convs: &[Conv2d]) -> Result<Tensor>;

    /// GroupNorm over NHWC (statistics per sample and group over h, w and the group's channels),
    /// optionally followed by SiLU.
    fn group_norm(&self, x: &Tensor, norm: &Norm, silu: bool) -> Result<Tensor>;
    /// The scale-shift norm of ADM and diffusers' `time_embedding_norm="scale_shift"`:
    /// `act(groupnorm(x) * (1 + scale) + shift)` per sample and channel, with `ss` `[n, 2c]`
    /// holding each sample's `scale` (first `c`) then `shift` (last `c`). NHWC.
    fn group_norm_scale_shift(
        &self,
        x: &Tensor,
        norm: &Norm,
        ss: &Tensor,
        silu: bool,
    ) -> Result<Tensor>;
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
    /// 2x2 average pooling with stride 2 of NHWC (`F.avg_pool2d(x, 2)`: an odd last row or
    /// column is dropped).
    fn avg_pool2x(&self, x: &Tensor) -> Result<Tensor>;
    /// Concatenate two NHWC tensors along channels.
    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// Concatenate along the leading dimension.
    fn concat_batch(&self, parts: &[Tensor]) -> Result<Tensor>;

    /// `f` over the batch (the leading dimension of every tensor in `inputs`, all of `n` rows),
    /// concatenated along rows. A backend may run `f` on row pieces in parallel instead, each
    /// small enough that its activations stay in a core's cache: `row_bytes` is the largest
    /// activation of one row, `weight_bytes` what every piece reads again. `f` must treat rows
    /// independently. Default: `f` on the whole batch.
    fn run_in_pieces(
        &self,
        inputs: &[&Tensor],
        row_bytes: u64,
        weight_bytes: u64,
        f: &(dyn Fn(&[Tensor]) -> Result<Tensor> + Sync),
    ) -> Result<Tensor> {
        let _ = (row_bytes, weight_bytes);
        f(&inputs.iter().map(|&t| t.clone()).collect::<Vec<_>>())
    }

    /// The members' last layers prepared for [`Backend::conv2d_member_stack`], once per run.
    /// Default: kept as they are (the CPU backend convolves member by member).
    fn prepare_members(&self, convs: &[Conv2d]) -> Result<Members> {
        Ok(Members {
            convs: convs.to_vec(),
            stacked: None,
        })
    }
    /// [`Backend::conv2d_members`] with members prepared once.
    fn conv2d_member_stack(&self, x: &Tensor, members: &Members) -> Result<Tensor> {
        self.conv2d_members(x, &members.convs)
    }

    /// f32 parameters (biases, frequencies) of `shape` on the backend.
    fn upload_params(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload(shape, data)
    }

    // The sampler's state (module [`state`]): f32 NHWC `[rows, s, s, c]`, kept where the backend
    // computes. The defaults are the host definitions.

    /// A state tensor from host values.
    fn state_from_host(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::arg(format!(
                "state: {} values for shape {shape:?}",
                data.len()
            )));
        }
        Ok(Tensor::host(shape.to_vec(), data.to_vec()))
    }
    /// A state tensor's values on the host.
    fn state_to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.download(x)
    }
    /// A handle on a batch's sample indices for [`Backend::normal_state`] and
    /// [`Backend::sampler_step`] (moved to a device once per batch).
    fn sample_streams(&self, indices: &[usize]) -> Result<Tensor> {
        state::sample_streams(indices)
    }
    /// Standard normals of every sample's stream (seed, index, `purpose`, `sub`), NHWC
    /// `[n * repeat, s, s, c]`, each sample's on `repeat` consecutive rows; equal to
    /// [`crate::rng::Stream::fill_normal`] in NCHW order.
    #[allow(clippy::too_many_arguments)]
    fn normal_state(
        &self,
        streams: &Tensor,
        seed: u64,
        purpose: Purpose,
        sub: u32,
        c: usize,
        s: usize,
        repeat: usize,
    ) -> Result<Tensor> {
        state::normal_state(streams, seed, purpose, sub, c, s, repeat)
    }
    /// One sampler step on every element: [`crate::sampler::apply_step`] with the model output
    /// `m` (same shape as `x`) and, when the step adds noise, the samples' step noise.
    fn sampler_step(
        &self,
        coeffs: &StepCoefficients,
        m: &Tensor,
        x: &Tensor,
        noise: Option<&StepNoise>,
    ) -> Result<Tensor> {
        state::sampler_step(coeffs, m, x, noise)
    }
    /// The last layer on the trunk's features `h` and the sampler step on its output, in one:
    /// `sampler_step(coeffs, last(h), x, noise)`. Default: the two ops
    /// ([`last_layer_then_step`]); the CUDA backend fuses them into one kernel when the last
    /// layer is a small stride-1 convolution (every diffusion model's output convolution).
    fn last_layer_step(
        &self,
        h: &Tensor,
        last: LastLayer,
        coeffs: &StepCoefficients,
        x: &Tensor,
        noise: Option<&StepNoise>,
    ) -> Result<Tensor> {
        last_layer_then_step(self, h, last, coeffs, x, noise)
    }
    /// The trunk's input from a state tensor: `x`, or `2x - 1` for a model that centers its
    /// input (`center_input_sample`).
    fn state_as_input(&self, x: &Tensor, center: bool) -> Result<Tensor> {
        if !center {
            return Ok(x.clone());
        }
        state::centered(self, x)
    }
    /// Every row (leading index) repeated `k` times, sample-major; state or activations.
    fn repeat_rows(&self, x: &Tensor, k: usize) -> Result<Tensor> {
        state::repeat_rows(x, k)
    }
    /// Rows `0, k, 2k, ...` of a state tensor.
    fn every_kth_row(&self, x: &Tensor, k: usize) -> Result<Tensor> {
        state::every_kth_row(x, k)
    }
    /// Sinusoidal features `[rows, 2 * half]` of timestep `t` for every row, from the
    /// frequencies `freqs` (`[half]`, from [`Backend::upload_params`]).
    fn timestep_features(&self, freqs: &Tensor, t: f32, rows: usize, flip: bool) -> Result<Tensor> {
        let f = self.download(freqs)?;
        let v = state::timestep_features(&f, t, rows, flip);
        self.upload(&[rows, 2 * f.len()], &v)
    }

    /// `plan` with the backend's copy of its tables (uploaded once per run on a device).
    fn prepare_pixels(&self, plan: PixelPlan) -> Result<PixelPlan> {
        Ok(plan)
    }
    /// The extractor's input `[n, h, w, c]` of the final samples `state` (`[n, s, s, c]`, a
    /// state tensor), preprocessed by `plan`, on this backend ([`PixelPlan::host_pixels`]; a
    /// device backend computes it without the samples leaving the device).
    fn extractor_pixels(&self, state: &Tensor, plan: &PixelPlan) -> Result<Tensor> {
        let x = self.state_to_host(state)?;
        let t = plan.host_pixels(&x, state.shape()[0])?;
        let data = t.host_data().expect("host_pixels returns a host tensor");
        self.upload(t.shape(), data)
    }

    /// The Gaussian entropy ([`crate::uncertainty::gaussian_entropy`]) of every sample's `k`
    /// member features, `features` `[n * k, d]` sample-major; `NaN` for a sample with a
    /// non-finite feature. One score per sample comes back.
    fn member_entropy(&self, features: &Tensor, k: usize, sigma2: f64) -> Result<Vec<f32>> {
        let f = self.download(features)?;
        state::member_entropy(&f, features.shape(), k, sigma2)
    }

    /// Host/device traffic and launches so far, on a device backend; `None` on the host.
    fn transfers(&self) -> Option<Transfers> {
        None
    }
}
