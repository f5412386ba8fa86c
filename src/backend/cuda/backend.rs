//! [`CudaBackend`]: the op set on a [`Device`]. Activations are f16 NHWC in device memory (IEEE
//! half: 11 significant bits where bf16 has 8, the precision of the models' own fp16 inference;
//! arithmetic and accumulation in f32); biases and normalisation parameters f32; conv/linear
//! weights f16 on the tensor cores and f32 on the plain path (`uses_mma`), reordered once at
//! `prepare_*` to `[cout][ky][kx][cin]` (K contiguous per output channel, what the implicit GEMM
//! reads). Every op is one or two kernel launches; none uses float atomics.

use std::sync::Arc;

mod pixels;

use super::device::{Counted, DevBuf, DevPtr, Device, LaunchCfg, F16};
use super::kernels;
use crate::backend::{
    Activation, Backend, Conv2d, ConvSpec, LastLayer, Linear, Members, Norm, StepNoise, Transfers,
};
use crate::error::{Error, Result};
use crate::models::clip_preprocess::PixelPlan;
use crate::rng::Purpose;
use crate::sampler::StepCoefficients;
use crate::tensor::{Storage, Tensor};

/// Device memory behind a [`Tensor`] of the CUDA backend.
#[derive(Debug)]
pub enum CudaStorage {
    /// Activations and weights.
    F16(DevBuf<F16>),
    /// Biases and normalisation parameters; the sampler's state.
    F32(DevBuf<f32>),
    /// Sample indices as (low, high) 32-bit words, for the noise kernels.
    U32(DevBuf<u32>),
}

/// The CUDA op set on one device (a GPU, or the host emulation in tests).
#[derive(Clone)]
pub struct CudaBackend {
    dev: Arc<dyn Device>,
    counted: Arc<Counted>,
}

/// Threads per block of the element-wise (grid-stride) kernels.
const EW_THREADS: u32 = 256;
/// Below these sizes a 64x64 tensor-core tile would be mostly padding: the f32 path runs.
const MMA_MIN_COUT: usize = 16;
const MMA_MIN_K: usize = 32;

/// Whether a convolution with `cout` outputs and `kdim` = k*k*cin products per output runs on the
/// tensor cores (`conv2d_mma`, f16 weights) or on the plain path (`conv2d_simple`, f32 weights:
/// the network's edges, where a 64x64 tile would be mostly padding).
fn uses_mma(cout: usize, kdim: usize) -> bool {
    cout >= MMA_MIN_COUT && kdim >= MMA_MIN_K
}
/// Largest head dimension of the attention kernel.
const ATTENTION_MAX_DH: usize = 256;

fn err(msg: String) -> Error {
    Error::Backend {
        backend: "cuda".into(),
        msg,
    }
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(err(msg()))
    }
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        err(format!(
            "{what} = {v} exceeds the kernels' 32-bit index range"
        ))
    })
}

/// Geometry of one convolution launch (linear layers are 1x1 convolutions over 1 x rows).
struct ConvGeom {
    n: usize,
    h: usize,
    w: usize,
    cin: usize,
    ho: usize,
    wo: usize,
    cout: usize,
    ksize: usize,
    stride: usize,
    pad: usize,
}

/// The optional GroupNorm(+SiLU) prologue of a convolution.
struct Prologue<'a> {
    stats: &'a DevBuf<f32>,
    norm: &'a Norm,
    silu: bool,
}

impl CudaBackend {
    /// A backend on `dev`.
    pub fn new(dev: Arc<dyn Device>) -> Self {
        let counted = Arc::new(Counted::new(dev));
        CudaBackend {
            dev: counted.clone(),
            counted,
        }
    }

    /// The device under this backend.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }

    fn d(&self) -> &dyn Device {
        self.dev.as_ref()
    }

    fn storage<'a>(&self, x: &'a Tensor) -> Result<&'a CudaStorage> {
        match x.storage() {
            Storage::Device(any) => any
                .downcast_ref::<CudaStorage>()
                .ok_or_else(|| err(format!("tensor {:?} belongs to another backend", x.shape()))),
            Storage::Host(_) => Err(err(format!(
                "tensor {:?} is in host memory; upload it first",
                x.shape()
            ))),
        }
    }

    fn f16<'a>(&self, x: &'a Tensor) -> Result<&'a DevBuf<F16>> {
        match self.storage(x)? {
            CudaStorage::F16(b) => Ok(b),
            _ => Err(err(format!(
                "tensor {:?} holds f32 parameters or indices, not activations",
                x.shape()
            ))),
        }
    }

    fn f32<'a>(&self, x: &'a Tensor) -> Result<&'a DevBuf<f32>> {
        match self.storage(x)? {
            CudaStorage::F32(b) => Ok(b),
            _ => Err(err(format!(
                "tensor {:?} holds f16 activations or indices, not f32 values",
                x.shape()
            ))),
        }
    }

    fn u32s<'a>(&self, x: &'a Tensor) -> Result<&'a DevBuf<u32>> {
        match self.storage(x)? {
            CudaStorage::U32(b) => Ok(b),
            _ => Err(err(format!(
                "tensor {:?} is not a sample-streams handle",
                x.shape()
            ))),
        }
    }

    /// Stack the members' weights `[m][cout][K]` and biases `[m][cout]` (absent bias = zeros).
    fn stack_members(&self, convs: &[Conv2d]) -> Result<Conv2d> {
        let members = convs.len();
        check(members > 0, || "conv2d_members: no members".into())?;
        let spec = convs[0].spec;
        check(convs.iter().all(|cv| cv.spec == spec), || {
            "conv2d_members: members differ in shape".into()
        })?;
        let per_w = spec.cout * spec.kernel * spec.kernel * spec.cin;
        let mut ball = DevBuf::<f32>::zeros(self.d(), members * spec.cout)?;
        let any_bias = convs.iter().any(|cv| cv.bias.is_some());
        // The members' weights in their storage type (f32 on the plain path, f16 on the tensor
        // cores, as `prepare_conv` chose).
        let wall = if uses_mma(spec.cout, spec.kernel * spec.kernel * spec.cin) {
            let mut wall = self.alloc_f16(members * per_w)?;
            for (m, cv) in convs.iter().enumerate() {
                self.copy(
                    self.f16(&cv.weight)?.ptr(),
                    wall.ptr_mut().offset(m * per_w),
                    per_w,
                )?;
            }
            CudaStorage::F16(wall)
        } else {
            let mut wall = DevBuf::<f32>::zeros(self.d(), members * per_w)?;
            for (m, cv) in convs.iter().enumerate() {
                self.copy_f32(
                    self.f32(&cv.weight)?.ptr(),
                    wall.ptr_mut().offset(m * per_w),
                    per_w,
                )?;
            }
            CudaStorage::F32(wall)
        };
        for (m, cv) in convs.iter().enumerate() {
            if let Some(b) = &cv.bias {
                self.copy_f32(
                    self.f32(b)?.ptr(),
                    ball.ptr_mut().offset(m * spec.cout),
                    spec.cout,
                )?;
            }
        }
        Ok(Conv2d {
            spec,
            weight: Self::wrap(
                vec![members * spec.cout, spec.kernel, spec.kernel, spec.cin],
                wall,
            ),
            bias: any_bias.then(|| Self::wrap(vec![members * spec.cout], CudaStorage::F32(ball))),
        })
    }

    /// The per-member convolution with stacked weights: row `i` uses member `i % members`.
    fn conv_stacked(&self, x: &Tensor, stacked: &Conv2d, members: usize) -> Result<Tensor> {
        let (nb, h, w, c) = x.nhwc();
        let spec = stacked.spec;
        check(members > 0 && nb % members == 0, || {
            format!("conv2d_members: batch {nb} is not a multiple of {members} members")
        })?;
        check(c == spec.cin, || {
            format!("conv2d_members: input {:?} for {spec:?}", x.shape())
        })?;
        let (ho, wo) = spec.out_hw(h, w);
        let mut y = self.alloc_f16(nb * ho * wo * spec.cout)?;
        let g = geom(nb, h, w, ho, wo, &spec);
        let bias = match &stacked.bias {
            Some(b) => self.f32(b)?.ptr(),
            None => DevPtr::null(),
        };
        self.conv_launch(
            self.f16(x)?.ptr(),
            &stacked.weight,
            bias,
            DevPtr::null(),
            &mut y,
            &g,
            members,
            None,
            Activation::None,
        )?;
        Ok(Self::wrap(vec![nb, ho, wo, spec.cout], CudaStorage::F16(y)))
    }

    /// The (rows, per-row values) of a state or activation tensor.
    fn rows_of(x: &Tensor) -> (usize, usize) {
        let rows = x.shape().first().copied().unwrap_or(0);
        (rows, x.numel().checked_div(rows).unwrap_or(0))
    }

    /// The step noise's kernel arguments: the streams, the seed, the step, rows per sample
    /// (nulls when the step adds no noise); an error when it adds noise and none was given or
    /// the streams do not cover the state's `rows`.
    fn step_noise_args(
        &self,
        co: &StepCoefficients,
        noise: Option<&StepNoise>,
        rows: usize,
    ) -> Result<(DevPtr<u32>, u64, u32, usize)> {
        match (co.noise_scale != 0.0, noise) {
            (false, _) => Ok((DevPtr::null(), 0u64, 0u32, 1usize)),
            (true, None) => Err(err(format!(
                "step at timestep {} adds noise, but none was given",
                co.timestep
            ))),
            (true, Some(nz)) => {
                check(nz.streams.shape()[0] * nz.rows_per_sample == rows, || {
                    format!(
                        "sampler_step: noise for {} samples x {} rows, state has {rows} rows",
                        nz.streams.shape()[0],
                        nz.rows_per_sample
                    )
                })?;
                Ok((
                    self.u32s(nz.streams)?.ptr(),
                    nz.seed,
                    nz.step,
                    nz.rows_per_sample,
                ))
            }
        }
    }

    fn state_dims(x: &Tensor, what: &str) -> Result<(usize, usize, usize)> {
        check(x.shape().len() == 4 && x.shape()[1] == x.shape()[2], || {
            format!("{what}: state {:?} is not [rows, s, s, c]", x.shape())
        })?;
        Ok((x.shape()[0], x.shape()[1], x.shape()[3]))
    }

    fn wrap(shape: Vec<usize>, buf: CudaStorage) -> Tensor {
        Tensor::device(shape, Arc::new(buf))
    }

    fn upload_f32(&self, shape: Vec<usize>, data: &[f32]) -> Result<Tensor> {
        Ok(Self::wrap(
            shape,
            CudaStorage::F32(DevBuf::from_host(self.d(), data)?),
        ))
    }

    fn alloc_f16(&self, n: usize) -> Result<DevBuf<F16>> {
        DevBuf::zeros(self.d(), n)
    }

    /// GroupNorm statistics `[n, groups, (mean, rstd)]` of NHWC `x`.
    fn group_stats(&self, x: &Tensor, norm: &Norm) -> Result<DevBuf<f32>> {
        let (n, h, w, c) = x.nhwc();
        check(
            c == norm.channels && norm.groups > 0 && c % norm.groups == 0,
            || {
                format!(
                    "group_norm: input {:?} for {} channels in {} groups",
                    x.shape(),
                    norm.channels,
                    norm.groups
                )
            },
        )?;
        let mut stats = DevBuf::<f32>::zeros(self.d(), n * norm.groups * 2)?;
        if n > 0 {
            kernels::group_norm_stats(
                self.d(),
                LaunchCfg::grid((norm.groups as u32, n as u32, 1), (256, 1, 1)),
                kernels::GroupNormStatsArgs {
                    x: self.f16(x)?.ptr(),
                    stats: stats.ptr_mut(),
                    hw: i32_of(h * w, "h*w")?,
                    c: c as i32,
                    groups: norm.groups as i32,
                    eps: norm.eps,
                },
            )?;
        }
        Ok(stats)
    }

    /// One convolution launch: tensor cores when the shape fills a tile, the f32 path otherwise.
    #[allow(clippy::too_many_arguments)]
    fn conv_launch(
        &self,
        x: DevPtr<F16>,
        w: &Tensor,
        bias: DevPtr<f32>,
        residual: DevPtr<F16>,
        y: &mut DevBuf<F16>,
        g: &ConvGeom,
        members: usize,
        prologue: Option<&Prologue>,
        act: Activation,
    ) -> Result<()> {
        let kdim = g.ksize * g.ksize * g.cin;
        let (stats, gamma, beta, groups, norm_silu) = match prologue {
            Some(p) => (
                p.stats.ptr(),
                self.f32(&p.norm.gamma)?.ptr(),
                self.f32(&p.norm.beta)?.ptr(),
                p.norm.groups as i32,
                p.silu as i32,
            ),
            None => (DevPtr::null(), DevPtr::null(), DevPtr::null(), 1, 0),
        };
        let total = g.n * g.ho * g.wo * g.cout;
        if total == 0 {
            return Ok(());
        }
        i32_of(total.max(g.n * g.h * g.w * g.cin), "tensor size")?;
        let act = act_code(act);
        // The argument struct of a convolution kernel: the parameters both kernels take, by name,
        // then `$only`, those of that kernel alone.
        macro_rules! conv_args {
            ($args:ident { $($only:tt)* }) => {
                kernels::$args {
                    x,
                    bias,
                    residual,
                    y: y.ptr_mut(),
                    stats,
                    gamma,
                    beta,
                    h: g.h as i32,
                    wd: g.w as i32,
                    cin: g.cin as i32,
                    ho: g.ho as i32,
                    wo: g.wo as i32,
                    cout: g.cout as i32,
                    ksize: g.ksize as i32,
                    stride: g.stride as i32,
                    pad: g.pad as i32,
                    members: members as i32,
                    groups,
                    norm_silu,
                    act,
                    $($only)*
                }
            };
        }
        if uses_mma(g.cout, kdim) {
            let p = g.ho * g.wo;
            let cfg = LaunchCfg::grid(
                (
                    p.div_ceil(64) as u32,
                    g.cout.div_ceil(64) as u32,
                    g.n as u32,
                ),
                (128, 1, 1),
            );
            let w = self.f16(w)?.ptr();
            kernels::conv2d_mma(self.d(), cfg, conv_args!(Conv2dMmaArgs { w }))
        } else {
            let w = self.f32(w)?.ptr();
            let args = conv_args!(Conv2dSimpleArgs { w, n: g.n as i32 });
            kernels::conv2d_simple(self.d(), self.ew_cfg(total), args)
        }
    }

    fn conv_common(
        &self,
        x: &Tensor,
        conv: &Conv2d,
        residual: Option<&Tensor>,
        prologue: Option<&Prologue>,
    ) -> Result<Tensor> {
        let (n, h, w, c) = x.nhwc();
        let spec = conv.spec;
        check(c == spec.cin, || {
            format!("conv2d: input {:?} for {spec:?}", x.shape())
        })?;
        check(
            h + 2 * spec.padding + spec.pad_end >= spec.kernel
                && w + 2 * spec.padding + spec.pad_end >= spec.kernel,
            || {
                format!(
                    "conv2d: input {:?} smaller than the kernel of {spec:?}",
                    x.shape()
                )
            },
        )?;
        let (ho, wo) = spec.out_hw(h, w);
        let oshape = vec![n, ho, wo, spec.cout];
        let res = match residual {
            Some(r) => {
                check(r.shape() == oshape.as_slice(), || {
                    format!("conv2d: residual {:?} for output {oshape:?}", r.shape())
                })?;
                self.f16(r)?.ptr()
            }
            None => DevPtr::null(),
        };
        let bias = match &conv.bias {
            Some(b) => self.f32(b)?.ptr(),
            None => DevPtr::null(),
        };
        let mut y = self.alloc_f16(n * ho * wo * spec.cout)?;
        let g = geom(n, h, w, ho, wo, &spec);
        self.conv_launch(
            self.f16(x)?.ptr(),
            &conv.weight,
            bias,
            res,
            &mut y,
            &g,
            1,
            prologue,
            Activation::None,
        )?;
        Ok(Self::wrap(oshape, CudaStorage::F16(y)))
    }

    /// Launch geometry of a grid-stride kernel over `n` items.
    fn ew_cfg(&self, n: usize) -> LaunchCfg {
        let most = self.dev.grid_stride_blocks().max(1) as usize;
        LaunchCfg::linear(
            n.div_ceil(EW_THREADS as usize).clamp(1, most) as u32,
            EW_THREADS,
        )
    }

    fn copy(&self, src: DevPtr<F16>, dst: super::device::DevPtrMut<F16>, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        kernels::copy_f16(
            self.d(),
            self.ew_cfg(n),
            kernels::CopyF16Args {
                x: src,
                y: dst,
                n: n as i64,
            },
        )
    }

    fn copy_f32(
        &self,
        src: DevPtr<f32>,
        dst: super::device::DevPtrMut<f32>,
        n: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        kernels::copy_f32(
            self.d(),
            self.ew_cfg(n),
            kernels::CopyF32Args {
                x: src,
                y: dst,
                n: n as i64,
            },
        )
    }
}

/// Weights on the device in the storage their convolution kernel reads ([`uses_mma`]): f16 for
/// the tensor cores, f32 for the plain path.
fn weight_storage(
    dev: &dyn Device,
    w: &[f32],
    cout: usize,
    kdim: usize,
    what: &str,
) -> Result<CudaStorage> {
    Ok(if uses_mma(cout, kdim) {
        CudaStorage::F16(DevBuf::from_host(dev, &to_f16(w, what)?)?)
    } else {
        CudaStorage::F32(DevBuf::from_host(dev, w)?)
    })
}

fn geom(n: usize, h: usize, w: usize, ho: usize, wo: usize, spec: &ConvSpec) -> ConvGeom {
    ConvGeom {
        n,
        h,
        w,
        cin: spec.cin,
        ho,
        wo,
        cout: spec.cout,
        ksize: spec.kernel,
        stride: spec.stride,
        pad: spec.padding,
    }
}

/// The kernels' activation code (`UQ_ACT_*` of kernels/uq_common.cuh, read by the build).
fn act_code(act: Activation) -> i32 {
    match act {
        Activation::None => kernels::UQ_ACT_NONE,
        Activation::Silu => kernels::UQ_ACT_SILU,
        Activation::QuickGelu => kernels::UQ_ACT_QUICK_GELU,
        Activation::Gelu => kernels::UQ_ACT_GELU,
    }
}

/// `data` in f16; a finite value beyond f16's range (|v| >= 65520 rounds to infinity) is an
/// error naming `what` and the value, not a silent infinity.
fn to_f16(data: &[f32], what: &str) -> Result<Vec<F16>> {
    data.iter()
        .enumerate()
        .map(|(i, &v)| {
            let h = F16::from_f32(v);
            check(!h.is_infinite() || v.is_infinite(), || {
                format!(
                    "{what}: value {v:e} at index {i} exceeds the device's f16 range (+-65504); \
                     run this model on --device cpu"
                )
            })?;
            Ok(h)
        })
        .collect()
}

/// The argument struct of a sampler-step kernel: the step's coefficients `co`, its noise
/// arguments (`CudaBackend::step_noise_args`), the state's channels, element count and the
/// model output's channels, then `$only`, the arguments of that kernel alone.
macro_rules! step_args {
    ($args:ident, $co:expr, ($idx:expr, $seed:expr, $sub:expr, $rps:expr), $c:expr, $n:expr, $mc:expr,
     { $($only:tt)* }) => {{
        let (co, seed): (&StepCoefficients, u64) = ($co, $seed);
        kernels::$args {
            index_words: $idx,
            k0: seed as u32,
            k1: (seed >> 32) as u32,
            purpose: Purpose::StepNoise as u32,
            sub: $sub,
            c: $c as i32,
            rows_per_sample: ($rps).max(1) as i32,
            n: $n as i64,
            prediction: co.prediction as i32,
            clip: co.clip as i32,
            clip_range: co.clip_range,
            sqrt_alpha: co.sqrt_alpha_prod_t,
            sqrt_beta: co.sqrt_beta_prod_t,
            pred_original_coeff: co.pred_original_coeff,
            pred_epsilon_coeff: co.pred_epsilon_coeff,
            current_sample_coeff: co.current_sample_coeff,
            noise_scale: co.noise_scale,
            mc: $mc as i32,
            eps_from_clipped: co.eps_from_clipped as i32,
            learned_range: co.learned_range as i32,
            min_log: co.min_log,
            max_log: co.max_log,
            $($only)*
        }
    }};
}

impl Backend for CudaBackend {
    fn memory_budget(&self) -> Option<u64> {
        self.dev.free_memory()
    }

    fn activation_bytes(&self) -> u64 {
        2
    }

    fn name(&self) -> String {
        self.dev.name()
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        check(shape.iter().product::<usize>() == data.len(), || {
            format!("upload: {} values for shape {shape:?}", data.len())
        })?;
        let buf = DevBuf::from_host(self.d(), &to_f16(data, "upload")?)?;
        Ok(Self::wrap(shape.to_vec(), CudaStorage::F16(buf)))
    }

    fn download(&self, x: &Tensor) -> Result<Vec<f32>> {
        if let Some(h) = x.host_data() {
            return Ok(h.to_vec());
        }
        match self.storage(x)? {
            CudaStorage::F16(b) => Ok(b
                .to_host(self.d())?
                .into_iter()
                .map(|v| v.to_f32())
                .collect()),
            CudaStorage::F32(b) => b.to_host(self.d()),
            CudaStorage::U32(_) => Err(err(format!(
                "tensor {:?} is a sample-streams handle, not values",
                x.shape()
            ))),
        }
    }

    fn prepare_conv(&self, spec: ConvSpec, w_oihw: &[f32], bias: Option<&[f32]>) -> Result<Conv2d> {
        let kk = spec.kernel * spec.kernel;
        check(w_oihw.len() == spec.cout * spec.cin * kk, || {
            format!("conv weights: {} values for {spec:?}", w_oihw.len())
        })?;
        if let Some(b) = bias {
            check(b.len() == spec.cout, || {
                format!("conv bias: {} values for {} outputs", b.len(), spec.cout)
            })?;
        }
        // [cout][cin][ky][kx] -> [cout][ky][kx][cin]
        let mut w = vec![0.0f32; w_oihw.len()];
        for o in 0..spec.cout {
            for i in 0..spec.cin {
                for t in 0..kk {
                    w[(o * kk + t) * spec.cin + i] = w_oihw[(o * spec.cin + i) * kk + t];
                }
            }
        }
        let w = weight_storage(self.d(), &w, spec.cout, kk * spec.cin, "conv weights")?;
        let weight = Self::wrap(vec![spec.cout, spec.kernel, spec.kernel, spec.cin], w);
        let bias = bias
            .map(|b| self.upload_f32(vec![b.len()], b))
            .transpose()?;
        Ok(Conv2d { spec, weight, bias })
    }

    fn prepare_linear(
        &self,
        din: usize,
        dout: usize,
        w: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Linear> {
        check(w.len() == din * dout, || {
            format!("linear weights: {} values for {dout}x{din}", w.len())
        })?;
        if let Some(b) = bias {
            check(b.len() == dout, || {
                format!("linear bias: {} values for {dout} outputs", b.len())
            })?;
        }
        // [dout][din] is already the GEMM's [cout][K] layout.
        let weight = Self::wrap(
            vec![dout, din],
            weight_storage(self.d(), w, dout, din, "linear weights")?,
        );
        let bias = bias
            .map(|b| self.upload_f32(vec![b.len()], b))
            .transpose()?;
        Ok(Linear {
            din,
            dout,
            weight,
            bias,
        })
    }

    fn prepare_norm(&self, groups: usize, eps: f32, gamma: &[f32], beta: &[f32]) -> Result<Norm> {
        check(gamma.len() == beta.len(), || {
            format!("norm: {} gammas, {} betas", gamma.len(), beta.len())
        })?;
        Ok(Norm {
            channels: gamma.len(),
            groups,
            eps,
            gamma: self.upload_f32(vec![gamma.len()], gamma)?,
            beta: self.upload_f32(vec![beta.len()], beta)?,
        })
    }

    fn conv2d(&self, x: &Tensor, conv: &Conv2d, residual: Option<&Tensor>) -> Result<Tensor> {
        self.conv_common(x, conv, residual, None)
    }

    fn norm_conv2d(
        &self,
        x: &Tensor,
        norm: &Norm,
        silu: bool,
        conv: &Conv2d,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let stats = self.group_stats(x, norm)?;
        let p = Prologue {
            stats: &stats,
            norm,
            silu,
        };
        self.conv_common(x, conv, residual, Some(&p))
    }

    fn conv2d_members(&self, x: &Tensor, convs: &[Conv2d]) -> Result<Tensor> {
        let stacked = self.stack_members(convs)?;
        self.conv_stacked(x, &stacked, convs.len())
    }

    fn prepare_members(&self, convs: &[Conv2d]) -> Result<Members> {
        Ok(Members {
            convs: convs.to_vec(),
            stacked: Some(self.stack_members(convs)?),
        })
    }

    fn conv2d_member_stack(&self, x: &Tensor, members: &Members) -> Result<Tensor> {
        match &members.stacked {
            Some(st) => self.conv_stacked(x, st, members.len()),
            None => self.conv2d_members(x, &members.convs),
        }
    }

    fn group_norm(&self, x: &Tensor, norm: &Norm, silu: bool) -> Result<Tensor> {
        let (_, h, w, c) = x.nhwc();
        let stats = self.group_stats(x, norm)?;
        let n = x.numel();
        let mut y = self.alloc_f16(n)?;
        if n > 0 {
            kernels::group_norm_apply(
                self.d(),
                self.ew_cfg(n),
                kernels::GroupNormApplyArgs {
                    x: self.f16(x)?.ptr(),
                    stats: stats.ptr(),
                    gamma: self.f32(&norm.gamma)?.ptr(),
                    beta: self.f32(&norm.beta)?.ptr(),
                    y: y.ptr_mut(),
                    n: n as i64,
                    hw: i32_of(h * w, "h*w")?,
                    c: c as i32,
                    groups: norm.groups as i32,
                    silu: silu as i32,
                },
            )?;
        }
        Ok(Self::wrap(x.shape().to_vec(), CudaStorage::F16(y)))
    }

    fn group_norm_scale_shift(
        &self,
        x: &Tensor,
        norm: &Norm,
        ss: &Tensor,
        silu: bool,
    ) -> Result<Tensor> {
        let (n_, h, w, c) = x.nhwc();
        check(ss.shape() == [n_, 2 * c], || {
            format!(
                "group_norm_scale_shift: scale-shift {:?} for input {:?}",
                ss.shape(),
                x.shape()
            )
        })?;
        let stats = self.group_stats(x, norm)?;
        let n = x.numel();
        let mut y = self.alloc_f16(n)?;
        if n > 0 {
            kernels::group_norm_scale_shift_apply(
                self.d(),
                self.ew_cfg(n),
                kernels::GroupNormScaleShiftApplyArgs {
                    x: self.f16(x)?.ptr(),
                    stats: stats.ptr(),
                    gamma: self.f32(&norm.gamma)?.ptr(),
                    beta: self.f32(&norm.beta)?.ptr(),
                    ss: self.f16(ss)?.ptr(),
                    y: y.ptr_mut(),
                    n: n as i64,
                    hw: i32_of(h * w, "h*w")?,
                    c: c as i32,
                    groups: norm.groups as i32,
                    silu: silu as i32,
                },
            )?;
        }
        Ok(Self::wrap(x.shape().to_vec(), CudaStorage::F16(y)))
    }

    fn layer_norm(&self, x: &Tensor, norm: &Norm) -> Result<Tensor> {
        let d = *x.shape().last().unwrap_or(&0);
        check(d == norm.channels && d > 0, || {
            format!(
                "layer_norm: input {:?} for dim {}",
                x.shape(),
                norm.channels
            )
        })?;
        let rows = x.numel() / d;
        let mut y = self.alloc_f16(x.numel())?;
        if rows > 0 {
            kernels::layer_norm_f16(
                self.d(),
                LaunchCfg::linear(rows as u32, 256),
                kernels::LayerNormF16Args {
                    x: self.f16(x)?.ptr(),
                    gamma: self.f32(&norm.gamma)?.ptr(),
                    beta: self.f32(&norm.beta)?.ptr(),
                    y: y.ptr_mut(),
                    dim: d as i32,
                    eps: norm.eps,
                },
            )?;
        }
        Ok(Self::wrap(x.shape().to_vec(), CudaStorage::F16(y)))
    }

    fn linear(
        &self,
        x: &Tensor,
        lin: &Linear,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let shape = x.shape();
        let din = *shape.last().unwrap_or(&0);
        check(din == lin.din && din > 0, || {
            format!("linear: input {shape:?} for din {}", lin.din)
        })?;
        let rows = x.numel() / din;
        let mut oshape = shape.to_vec();
        *oshape.last_mut().unwrap() = lin.dout;
        let res = match residual {
            Some(r) => {
                check(r.shape() == oshape.as_slice(), || {
                    format!("linear: residual {:?} for {oshape:?}", r.shape())
                })?;
                self.f16(r)?.ptr()
            }
            None => DevPtr::null(),
        };
        let bias = match &lin.bias {
            Some(b) => self.f32(b)?.ptr(),
            None => DevPtr::null(),
        };
        let mut y = self.alloc_f16(rows * lin.dout)?;
        // A 1x1 convolution over a 1 x rows image.
        let g = ConvGeom {
            n: 1,
            h: 1,
            w: rows,
            cin: din,
            ho: 1,
            wo: rows,
            cout: lin.dout,
            ksize: 1,
            stride: 1,
            pad: 0,
        };
        self.conv_launch(
            self.f16(x)?.ptr(),
            &lin.weight,
            bias,
            res,
            &mut y,
            &g,
            1,
            None,
            act,
        )?;
        Ok(Self::wrap(oshape, CudaStorage::F16(y)))
    }

    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let n = x.numel();
        let mut y = self.alloc_f16(n)?;
        if n > 0 {
            kernels::activation_f16(
                self.d(),
                self.ew_cfg(n),
                kernels::ActivationF16Args {
                    x: self.f16(x)?.ptr(),
                    y: y.ptr_mut(),
                    n: n as i64,
                    act: act_code(act),
                },
            )?;
        }
        Ok(Self::wrap(x.shape().to_vec(), CudaStorage::F16(y)))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check(a.shape() == b.shape(), || {
            format!("add: shapes {:?} and {:?}", a.shape(), b.shape())
        })?;
        let n = a.numel();
        let mut y = self.alloc_f16(n)?;
        if n > 0 {
            kernels::add_f16(
                self.d(),
                self.ew_cfg(n),
                kernels::AddF16Args {
                    a: self.f16(a)?.ptr(),
                    b: self.f16(b)?.ptr(),
                    y: y.ptr_mut(),
                    n: n as i64,
                },
            )?;
        }
        Ok(Self::wrap(a.shape().to_vec(), CudaStorage::F16(y)))
    }

    fn add_per_sample(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let n = x.shape().first().copied().unwrap_or(0);
        let c = *x.shape().last().unwrap_or(&0);
        check(v.shape() == [n, c], || {
            format!("add_per_sample: {:?} + {:?}", x.shape(), v.shape())
        })?;
        let total = x.numel();
        let mut y = self.alloc_f16(total)?;
        if total > 0 {
            kernels::add_per_sample_f16(
                self.d(),
                self.ew_cfg(total),
                kernels::AddPerSampleF16Args {
                    x: self.f16(x)?.ptr(),
                    v: self.f16(v)?.ptr(),
                    y: y.ptr_mut(),
                    n: total as i64,
                    per_sample: (total / n) as i64,
                    c: c as i32,
                },
            )?;
        }
        Ok(Self::wrap(x.shape().to_vec(), CudaStorage::F16(y)))
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f32,
    ) -> Result<Tensor> {
        let (qs, ks) = (q.shape(), k.shape());
        check(
            qs.len() == 3 && ks.len() == 3 && ks == v.shape() && qs[0] == ks[0] && qs[2] == ks[2],
            || format!("attention: q {qs:?}, k {ks:?}, v {:?}", v.shape()),
        )?;
        check(heads > 0 && qs[2] % heads == 0, || {
            format!("attention: dim {} not divisible by {heads} heads", qs[2])
        })?;
        let dh = qs[2] / heads;
        check(dh <= ATTENTION_MAX_DH, || {
            format!("attention: head dim {dh} > {ATTENTION_MAX_DH}")
        })?;
        check(ks[1] > 0 || qs[1] == 0, || "attention: no keys".into())?;
        let (n, lq, lk) = (qs[0], qs[1], ks[1]);
        let mut y = self.alloc_f16(q.numel())?;
        if q.numel() > 0 {
            let smem = ((16 * dh + 32 * (dh + 1) + 32 * dh + 4 * 32) * 4) as u32;
            let cfg = LaunchCfg::grid(
                (lq.div_ceil(16) as u32, heads as u32, n as u32),
                (128, 1, 1),
            )
            .with_smem(smem);
            kernels::attention_f16(
                self.d(),
                cfg,
                kernels::AttentionF16Args {
                    q: self.f16(q)?.ptr(),
                    k: self.f16(k)?.ptr(),
                    v: self.f16(v)?.ptr(),
                    out: y.ptr_mut(),
                    lq: i32_of(lq, "query length")?,
                    lk: i32_of(lk, "key length")?,
                    heads: heads as i32,
                    dh: dh as i32,
                    scale,
                },
            )?;
        }
        Ok(Self::wrap(qs.to_vec(), CudaStorage::F16(y)))
    }

    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = x.nhwc();
        let total = n * 4 * h * w * c;
        let mut y = self.alloc_f16(total)?;
        if total > 0 {
            i32_of(total, "tensor size")?;
            kernels::upsample_nearest2x_f16(
                self.d(),
                self.ew_cfg(total),
                kernels::UpsampleNearest2xF16Args {
                    x: self.f16(x)?.ptr(),
                    y: y.ptr_mut(),
                    n: n as i32,
                    h: h as i32,
                    w: w as i32,
                    c: c as i32,
                },
            )?;
        }
        Ok(Self::wrap(vec![n, 2 * h, 2 * w, c], CudaStorage::F16(y)))
    }

    fn avg_pool2x(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = x.nhwc();
        let total = n * (h / 2) * (w / 2) * c;
        let mut y = self.alloc_f16(total)?;
        if total > 0 {
            i32_of(n * h * w * c, "tensor size")?;
            kernels::avg_pool2x_f16(
                self.d(),
                self.ew_cfg(total),
                kernels::AvgPool2xF16Args {
                    x: self.f16(x)?.ptr(),
                    y: y.ptr_mut(),
                    n: n as i32,
                    h: h as i32,
                    w: w as i32,
                    c: c as i32,
                },
            )?;
        }
        Ok(Self::wrap(vec![n, h / 2, w / 2, c], CudaStorage::F16(y)))
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (n, h, w, ca) = a.nhwc();
        let (n2, h2, w2, cb) = b.nhwc();
        check((n, h, w) == (n2, h2, w2), || {
            format!("concat_channels: {:?} and {:?}", a.shape(), b.shape())
        })?;
        let pixels = n * h * w;
        let mut y = self.alloc_f16(pixels * (ca + cb))?;
        if pixels * (ca + cb) > 0 {
            kernels::concat_channels_f16(
                self.d(),
                self.ew_cfg(pixels * (ca + cb)),
                kernels::ConcatChannelsF16Args {
                    a: self.f16(a)?.ptr(),
                    b: self.f16(b)?.ptr(),
                    y: y.ptr_mut(),
                    pixels: pixels as i64,
                    ca: ca as i32,
                    cb: cb as i32,
                },
            )?;
        }
        Ok(Self::wrap(vec![n, h, w, ca + cb], CudaStorage::F16(y)))
    }

    fn concat_batch(&self, parts: &[Tensor]) -> Result<Tensor> {
        check(!parts.is_empty(), || "concat_batch: no tensors".into())?;
        let rest = &parts[0].shape()[1..];
        check(
            parts
                .iter()
                .all(|p| !p.shape().is_empty() && &p.shape()[1..] == rest),
            || {
                format!(
                    "concat_batch: shapes {:?}",
                    parts.iter().map(|p| p.shape().to_vec()).collect::<Vec<_>>()
                )
            },
        )?;
        let total: usize = parts.iter().map(|p| p.numel()).sum();
        let mut y = self.alloc_f16(total)?;
        let mut off = 0;
        for p in parts {
            self.copy(self.f16(p)?.ptr(), y.ptr_mut().offset(off), p.numel())?;
            off += p.numel();
        }
        let mut oshape = parts[0].shape().to_vec();
        oshape[0] = parts.iter().map(|p| p.shape()[0]).sum();
        Ok(Self::wrap(oshape, CudaStorage::F16(y)))
    }

    fn upload_params(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        check(shape.iter().product::<usize>() == data.len(), || {
            format!("upload: {} values for shape {shape:?}", data.len())
        })?;
        self.upload_f32(shape.to_vec(), data)
    }

    fn state_from_host(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload_params(shape, data)
    }

    fn state_to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.f32(x)?.to_host(self.d())
    }

    fn sample_streams(&self, indices: &[usize]) -> Result<Tensor> {
        let mut words = Vec::with_capacity(2 * indices.len());
        for &i in indices {
            let i = i as u64;
            check(i < 1 << 56, || {
                format!("sample index {i} is 2^56 or more (the random streams' range)")
            })?;
            words.extend([i as u32, (i >> 32) as u32]);
        }
        Ok(Self::wrap(
            vec![indices.len()],
            CudaStorage::U32(DevBuf::from_host(self.d(), &words)?),
        ))
    }

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
        let idx = self.u32s(streams)?;
        let rows = streams.shape()[0] * repeat;
        let n = rows * s * s * c;
        i32_of(n, "state size")?;
        let mut y = DevBuf::<f32>::zeros(self.d(), n)?;
        if n > 0 {
            kernels::normal_state_f32(
                self.d(),
                self.ew_cfg(n),
                kernels::NormalStateF32Args {
                    y: y.ptr_mut(),
                    index_words: idx.ptr(),
                    k0: seed as u32,
                    k1: (seed >> 32) as u32,
                    purpose: purpose as u32,
                    sub,
                    c: c as i32,
                    hw: (s * s) as i32,
                    rows_per_sample: repeat as i32,
                    n: n as i64,
                },
            )?;
        }
        Ok(Self::wrap(vec![rows, s, s, c], CudaStorage::F32(y)))
    }

    /// One launch (`last_layer_step_f32`) when the last layer is a stride-1 convolution that
    /// keeps the state's size, with the state's channels (or twice as many) and few enough that
    /// a separate convolution would take the f32 path anyway; the two ops otherwise.
    fn last_layer_step(
        &self,
        h: &Tensor,
        last: LastLayer,
        co: &StepCoefficients,
        x: &Tensor,
        noise: Option<&StepNoise>,
    ) -> Result<Tensor> {
        let (conv, members) = match last {
            LastLayer::Single(conv) => (conv, 1),
            LastLayer::Members(m) => match &m.stacked {
                Some(st) => (st, m.len()),
                None => return crate::backend::last_layer_then_step(self, h, last, co, x, noise),
            },
        };
        let (rows, s, c) = Self::state_dims(x, "last_layer_step")?;
        let spec = conv.spec;
        let mc = spec.cout;
        let fused = spec.stride == 1
            && spec.kernel % 2 == 1
            && spec.padding == spec.kernel / 2
            && spec.pad_end == 0
            && h.shape() == [rows, s, s, spec.cin]
            && (mc == c || mc == 2 * c)
            && (co.learned_range == 0 || mc == 2 * c)
            && rows % members == 0
            && !uses_mma(mc, spec.kernel * spec.kernel * spec.cin)
            && matches!(self.storage(h)?, CudaStorage::F16(_));
        if !fused {
            return crate::backend::last_layer_then_step(self, h, last, co, x, noise);
        }
        let n = x.numel();
        i32_of(n, "state size")?;
        i32_of(h.numel(), "feature size")?;
        let (idx, seed, sub, rps) = self.step_noise_args(co, noise, rows)?;
        let bias = match &conv.bias {
            Some(b) => self.f32(b)?.ptr(),
            None => DevPtr::null(),
        };
        let mut y = DevBuf::<f32>::zeros(self.d(), n)?;
        if n > 0 {
            kernels::last_layer_step_f32(
                self.d(),
                self.ew_cfg(n),
                step_args!(LastLayerStepF32Args, co, (idx, seed, sub, rps), c, n, mc, {
                    h: self.f16(h)?.ptr(),
                    w: self.f32(&conv.weight)?.ptr(),
                    bias,
                    cin: spec.cin as i32,
                    ksize: spec.kernel as i32,
                    pad: spec.padding as i32,
                    members: members as i32,
                    x: self.f32(x)?.ptr(),
                    y: y.ptr_mut(),
                    s: s as i32,
                }),
            )?;
        }
        Ok(Self::wrap(x.shape().to_vec(), CudaStorage::F32(y)))
    }

    fn sampler_step(
        &self,
        co: &StepCoefficients,
        m: &Tensor,
        x: &Tensor,
        noise: Option<&StepNoise>,
    ) -> Result<Tensor> {
        let (rows, s, c) = Self::state_dims(x, "sampler_step")?;
        let mc = crate::backend::state::model_channels(co, m, x)?;
        let n = x.numel();
        i32_of(n, "state size")?;
        let (idx, seed, sub, rps) = self.step_noise_args(co, noise, rows)?;
        let mut y = DevBuf::<f32>::zeros(self.d(), n)?;
        if n > 0 {
            kernels::sampler_step_f32(
                self.d(),
                self.ew_cfg(n),
                step_args!(SamplerStepF32Args, co, (idx, seed, sub, rps), c, n, mc, {
                    x: self.f32(x)?.ptr(),
                    m: self.f16(m)?.ptr(),
                    y: y.ptr_mut(),
                    hw: (s * s) as i32,
                }),
            )?;
        }
        Ok(Self::wrap(x.shape().to_vec(), CudaStorage::F32(y)))
    }

    fn state_as_input(&self, x: &Tensor, center: bool) -> Result<Tensor> {
        let n = x.numel();
        let mut y = self.alloc_f16(n)?;
        if n > 0 {
            kernels::state_to_input_f16(
                self.d(),
                self.ew_cfg(n),
                kernels::StateToInputF16Args {
                    x: self.f32(x)?.ptr(),
                    y: y.ptr_mut(),
                    n: n as i64,
                    center: center as i32,
                },
            )?;
        }
        Ok(Self::wrap(x.shape().to_vec(), CudaStorage::F16(y)))
    }

    fn repeat_rows(&self, x: &Tensor, k: usize) -> Result<Tensor> {
        let (rows, per) = Self::rows_of(x);
        let n = rows * per * k;
        i32_of(n, "tensor size")?;
        let mut shape = x.shape().to_vec();
        check(!shape.is_empty() && k > 0, || {
            format!("repeat_rows: {:?} x {k}", x.shape())
        })?;
        shape[0] *= k;
        let cfg = self.ew_cfg(n);
        match self.storage(x)? {
            CudaStorage::F32(b) => {
                let mut y = DevBuf::<f32>::zeros(self.d(), n)?;
                if n > 0 {
                    kernels::repeat_rows_f32(
                        self.d(),
                        cfg,
                        kernels::RepeatRowsF32Args {
                            x: b.ptr(),
                            y: y.ptr_mut(),
                            per: per as i64,
                            k: k as i32,
                            n: n as i64,
                        },
                    )?;
                }
                Ok(Self::wrap(shape, CudaStorage::F32(y)))
            }
            CudaStorage::F16(b) => {
                let mut y = self.alloc_f16(n)?;
                if n > 0 {
                    kernels::repeat_rows_f16(
                        self.d(),
                        cfg,
                        kernels::RepeatRowsF16Args {
                            x: b.ptr(),
                            y: y.ptr_mut(),
                            per: per as i64,
                            k: k as i32,
                            n: n as i64,
                        },
                    )?;
                }
                Ok(Self::wrap(shape, CudaStorage::F16(y)))
            }
            CudaStorage::U32(_) => Err(err("repeat_rows: a sample-streams handle".into())),
        }
    }

    fn every_kth_row(&self, x: &Tensor, k: usize) -> Result<Tensor> {
        let (rows, per) = Self::rows_of(x);
        check(k > 0 && rows % k == 0, || {
            format!("every_kth_row: {rows} rows are not a multiple of {k}")
        })?;
        let n = rows / k * per;
        let mut y = DevBuf::<f32>::zeros(self.d(), n)?;
        if n > 0 {
            kernels::every_kth_row_f32(
                self.d(),
                self.ew_cfg(n),
                kernels::EveryKthRowF32Args {
                    x: self.f32(x)?.ptr(),
                    y: y.ptr_mut(),
                    per: per as i64,
                    k: k as i32,
                    n: n as i64,
                },
            )?;
        }
        let mut shape = x.shape().to_vec();
        shape[0] = rows / k;
        Ok(Self::wrap(shape, CudaStorage::F32(y)))
    }

    fn timestep_features(&self, freqs: &Tensor, t: f32, rows: usize, flip: bool) -> Result<Tensor> {
        let half = freqs.numel();
        let n = rows * 2 * half;
        i32_of(n, "tensor size")?;
        let mut y = self.alloc_f16(n)?;
        if n > 0 {
            kernels::timestep_features_f16(
                self.d(),
                self.ew_cfg(rows * half),
                kernels::TimestepFeaturesF16Args {
                    freqs: self.f32(freqs)?.ptr(),
                    y: y.ptr_mut(),
                    rows: rows as i32,
                    half: half as i32,
                    t,
                    flip: flip as i32,
                },
            )?;
        }
        Ok(Self::wrap(vec![rows, 2 * half], CudaStorage::F16(y)))
    }

    fn member_entropy(&self, features: &Tensor, k: usize, sigma2: f64) -> Result<Vec<f32>> {
        let (rows, d) = crate::backend::state::entropy_dims(features.shape(), k)?;
        let n = rows / k;
        i32_of(rows * d, "feature count")?;
        let mut out = DevBuf::<f32>::zeros(self.d(), n)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let hi = sigma2 as f32;
        let lo = (sigma2 - f64::from(hi)) as f32;
        let cfg = LaunchCfg::linear(n as u32, 128);
        match self.storage(features)? {
            CudaStorage::F32(b) => kernels::gaussian_entropy_f32(
                self.d(),
                cfg,
                kernels::GaussianEntropyF32Args {
                    f: b.ptr(),
                    out: out.ptr_mut(),
                    k: k as i32,
                    d: d as i32,
                    sigma2_hi: hi,
                    sigma2_lo: lo,
                },
            )?,
            CudaStorage::F16(b) => kernels::gaussian_entropy_f16(
                self.d(),
                cfg,
                kernels::GaussianEntropyF16Args {
                    f: b.ptr(),
                    out: out.ptr_mut(),
                    k: k as i32,
                    d: d as i32,
                    sigma2_hi: hi,
                    sigma2_lo: lo,
                },
            )?,
            CudaStorage::U32(_) => {
                return Err(err("member_entropy: a sample-streams handle".into()))
            }
        }
        out.to_host(self.d())
    }

    fn prepare_pixels(&self, plan: PixelPlan) -> Result<PixelPlan> {
        self.prepare_pixel_tables(plan)
    }

    fn extractor_pixels(&self, state: &Tensor, plan: &PixelPlan) -> Result<Tensor> {
        self.pixels(state, plan)
    }

    fn transfers(&self) -> Option<Transfers> {
        Some(self.counted.transfers())
    }
}
