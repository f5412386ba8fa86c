//! The CPU backend: f32, NHWC, multithreaded (rayon). It is both the fallback runtime and the
//! reference every device kernel is tested against. Fused ops are the plain compositions, except
//! GroupNorm(+SiLU, + a per-sample add) before a narrow 3x3 convolution, which the direct kernel
//! (`direct.rs`) applies while it reads its input rows, with the same arithmetic.

mod attention;
mod conv;
mod direct;
mod fastmath;
mod norm;
mod winograd4;

use rayon::prelude::*;

use crate::backend::{Activation, Backend, Conv2d, ConvSpec, Linear, Norm};
use crate::error::{Error, Result};
use crate::linalg::panel;
use crate::tensor::Tensor;

pub use attention::attention as attention_host;

/// x * sigmoid(x)
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Apply an activation to one value.
#[inline]
pub fn activate(x: f32, act: Activation) -> f32 {
    match act {
        Activation::None => x,
        Activation::Silu => silu(x),
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
    }
}

/// glibc returns every freed block above 128 KiB to the kernel and faults fresh zero pages in
/// for the next one; a forward allocates and frees its activations op by op, so the binary keeps
/// them in its heap instead (demo with uncertainty: 3.8 s of system time -> 0.4 s). Call it
/// first thing in `main`, as the binary and the CPU benchmarks do; a no-op off glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_buffers() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only sets allocator parameters; called, as documented, before other threads
    // allocate.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_buffers() {}

/// The CPU backend.
#[derive(Clone, Debug)]
pub struct CpuBackend {
    /// Whether [`Backend::run_in_pieces`] may split a batch ([`piece_rows`]).
    pieces: bool,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend { pieces: true }
    }
    /// A CPU backend that runs every batch whole (no [`Backend::run_in_pieces`] pieces), for
    /// comparisons.
    pub fn without_pieces() -> Self {
        CpuBackend { pieces: false }
    }
}

fn host(x: &Tensor) -> Result<&[f32]> {
    x.host_data().ok_or_else(|| Error::Backend {
        backend: "cpu".into(),
        msg: format!("tensor {:?} is not in host memory", x.shape()),
    })
}

/// Pixels per parallel task of the element-wise ops over NHWC data.
const RUN_PIXELS: usize = 256;

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Backend {
            backend: "cpu".into(),
            msg: msg(),
        })
    }
}

/// Whether a convolution is prepared for the direct narrow-layer kernel (3x3, stride 1,
/// padding 1, few output channels, AVX-512): its weights then stay `[9*cin, cout]`.
fn uses_direct(spec: &ConvSpec) -> bool {
    spec.kernel == 3
        && spec.stride == 1
        && spec.padding == 1
        && spec.pad_end == 0
        && spec.cin > 0
        && direct::narrow(spec.cout)
}

/// The bias and the residual of a convolution with output shape `out`, as host slices; a
/// residual of another shape is an error naming `op`.
type Addends<'a> = (Option<&'a [f32]>, Option<&'a [f32]>);
fn conv_addends<'a>(
    op: &str,
    conv: &'a Conv2d,
    residual: Option<&'a Tensor>,
    out: [usize; 4],
) -> Result<Addends<'a>> {
    let res = match residual {
        Some(r) => {
            check(r.shape() == out, || {
                format!("{op}: residual {:?} for output {out:?}", r.shape())
            })?;
            Some(host(r)?)
        }
        None => None,
    };
    let bias = match &conv.bias {
        Some(b) => Some(host(b)?),
        None => None,
    };
    Ok((bias, res))
}

/// Whether `conv` runs through the direct kernel on a map of width `w`.
fn direct_applies(conv: &Conv2d, w: usize) -> bool {
    uses_direct(&conv.spec) && conv.weight.shape()[0] == 9 * conv.spec.cin && direct::width_ok(w)
}

impl CpuBackend {
    /// [`Backend::norm_conv2d`] of `x` (plus the per-sample `add`, `[n, c]`): the direct kernel
    /// with the prologue fused for narrow layers, the ops one after the other otherwise.
    fn norm_conv2d_added(
        &self,
        x: &Tensor,
        add: Option<&Tensor>,
        nm: &Norm,
        silu: bool,
        conv: &Conv2d,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (n, h, w, c) = x.nhwc();
        if !direct_applies(conv, w) || c != conv.spec.cin {
            let summed;
            let x = match add {
                Some(v) => {
                    summed = self.add_per_sample(x, v)?;
                    &summed
                }
                None => x,
            };
            let y = self.group_norm(x, nm, silu)?;
            return self.conv2d(&y, conv, residual);
        }
        check(c == nm.channels && c % nm.groups == 0, || {
            format!(
                "norm_conv2d: input {:?} for {} channels in {} groups",
                x.shape(),
                nm.channels,
                nm.groups
            )
        })?;
        let add = match add {
            Some(v) => {
                check(v.shape() == [n, c], || {
                    format!("add_norm_conv2d: {:?} + {:?}", x.shape(), v.shape())
                })?;
                Some(host(v)?)
            }
            None => None,
        };
        let cout = conv.spec.cout;
        let (bias, res) = conv_addends("norm_conv2d", conv, residual, [n, h, w, cout])?;
        let xs = host(x)?;
        let stats = norm::channel_stats(xs, add, n, h * w, c, nm.groups, nm.eps);
        let pro = direct::Prologue {
            add,
            stats: &stats,
            gamma: host(&nm.gamma)?,
            beta: host(&nm.beta)?,
            ss: None,
            silu,
        };
        let wt = host(&conv.weight)?;
        let y = direct::conv3x3(c, cout, xs, n, h, w, wt, bias, res, Some(&pro));
        Ok(Tensor::host(vec![n, h, w, cout], y))
    }
}

/// Rows per piece for [`CpuBackend::run_in_pieces`] (the whole batch `n`: no pieces). Pieces pay
/// when a piece's working set (about four activations of `row_bytes` per row) fits a core's L2
/// cache (2 MiB assumed) and the weights every piece reads again are small (at most 16 MiB);
/// otherwise each piece would stream the weights once more. `UQENGINE_CPU_PIECE_ROWS=R` forces
/// R rows per piece (0: no pieces), for comparisons.
pub fn piece_rows(n: usize, row_bytes: u64, weight_bytes: u64) -> usize {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        std::env::var("UQENGINE_CPU_PIECE_ROWS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    let n = n.max(1);
    match forced {
        Some(0) => return n,
        Some(r) => return r.min(n),
        None => {}
    }
    const L2: u64 = 2 << 20;
    const MAX_WEIGHTS: u64 = 16 << 20;
    let threads = rayon::current_num_threads();
    if threads < 2 || weight_bytes > MAX_WEIGHTS || row_bytes == 0 {
        return n;
    }
    let fit = (L2 / (4 * row_bytes)).max(1) as usize;
    // At least one piece per thread.
    fit.min(n.div_ceil(threads)).max(1)
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        check(shape.iter().product::<usize>() == data.len(), || {
            format!("upload: {} values for shape {shape:?}", data.len())
        })?;
        Ok(Tensor::host(shape.to_vec(), data.to_vec()))
    }

    fn download(&self, x: &Tensor) -> Result<Vec<f32>> {
        Ok(host(x)?.to_vec())
    }

    fn prepare_conv(&self, spec: ConvSpec, w_oihw: &[f32], bias: Option<&[f32]>) -> Result<Conv2d> {
        let k = spec.kernel;
        check(w_oihw.len() == spec.cout * spec.cin * k * k, || {
            format!("conv weights: {} values for {spec:?}", w_oihw.len())
        })?;
        let w = conv::reorder_oihw(&spec, w_oihw);
        // Winograd's 36 (16) products per tile only pay with enough output channels: an output
        // layer (1-6 channels) is a matrix-vector product, cheaper as the gathered-patch GEMM.
        let weight = if conv::uses_winograd(&spec) && !uses_direct(&spec) && spec.cout >= 16 {
            // The transformed matrices packed for the product kernel, once.
            let (e, u) = if conv::winograd_tile(&spec) == 4 {
                (36, winograd4::weights(spec.cin, spec.cout, &w))
            } else {
                (16, conv::winograd_weights(spec.cin, spec.cout, &w))
            };
            let u = panel::pack_each(e, spec.cin, spec.cout, &u);
            Tensor::host(vec![e * spec.cin, panel::packed_cols(spec.cout)], u)
        } else {
            Tensor::host(vec![k * k * spec.cin, spec.cout], w)
        };
        Ok(Conv2d {
            spec,
            weight,
            bias: bias.map(|b| Tensor::host(vec![b.len()], b.to_vec())),
        })
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
        let mut t = vec![0.0f32; din * dout];
        for o in 0..dout {
            for i in 0..din {
                t[i * dout + o] = w[o * din + i];
            }
        }
        Ok(Linear {
            din,
            dout,
            weight: Tensor::host(vec![din, dout], t),
            bias: bias.map(|b| Tensor::host(vec![b.len()], b.to_vec())),
        })
    }

    fn conv2d(&self, x: &Tensor, conv: &Conv2d, residual: Option<&Tensor>) -> Result<Tensor> {
        let (n, h, w, c) = x.nhwc();
        let spec = conv.spec;
        check(c == spec.cin, || {
            format!("conv2d: input {:?} for {spec:?}", x.shape())
        })?;
        let (ho, wo) = spec.out_hw(h, w);
        let (bias, res) = conv_addends("conv2d", conv, residual, [n, ho, wo, spec.cout])?;
        let y = if direct_applies(conv, w) {
            let (wt, x) = (host(&conv.weight)?, host(x)?);
            direct::conv3x3(spec.cin, spec.cout, x, n, h, w, wt, bias, res, None)
        } else if conv.weight.shape()[0] == 36 * spec.cin && spec.kernel == 3 {
            // Prepared for Winograd F(4x4, 3x3) (conv::uses_winograd).
            let u = host(&conv.weight)?;
            winograd4::conv3x3_nhwc(spec.cin, spec.cout, host(x)?, n, h, w, u, bias, res)
        } else if conv.weight.shape()[0] == 16 * spec.cin && spec.kernel == 3 {
            // Prepared for Winograd F(2x2, 3x3).
            let u = host(&conv.weight)?;
            conv::conv3x3_winograd_nhwc(spec.cin, spec.cout, host(x)?, n, h, w, u, bias, res)
        } else {
            conv::conv2d_nhwc(&spec, host(x)?, n, h, w, host(&conv.weight)?, bias, res)
        };
        Ok(Tensor::host(vec![n, ho, wo, spec.cout], y))
    }

    /// GroupNorm(+SiLU) fused into the direct kernel's input rows for narrow layers; the
    /// composition otherwise.
    fn norm_conv2d(
        &self,
        x: &Tensor,
        nm: &Norm,
        silu: bool,
        conv: &Conv2d,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.norm_conv2d_added(x, None, nm, silu, conv, residual)
    }

    /// The per-sample add fused too: the statistics of `x + v` without forming it, and each
    /// band's input rows summed before they are normalised.
    fn add_norm_conv2d(
        &self,
        x: &Tensor,
        v: &Tensor,
        nm: &Norm,
        silu: bool,
        conv: &Conv2d,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.norm_conv2d_added(x, Some(v), nm, silu, conv, residual)
    }

    fn conv2d_members(&self, x: &Tensor, convs: &[Conv2d]) -> Result<Tensor> {
        let members = convs.len();
        let (nb, h, w, c) = x.nhwc();
        check(members > 0 && nb % members == 0, || {
            format!("conv2d_members: batch {nb} is not a multiple of {members} members")
        })?;
        let xs = host(x)?;
        let per_in = h * w * c;
        let spec = convs[0].spec;
        let (ho, wo) = spec.out_hw(h, w);
        let per_out = ho * wo * spec.cout;
        let samples = nb / members;
        let mut out = vec![0.0f32; nb * per_out];
        for (m, conv) in convs.iter().enumerate() {
            let mut gathered = Vec::with_capacity(samples * per_in);
            for i in 0..samples {
                let s = (i * members + m) * per_in;
                gathered.extend_from_slice(&xs[s..s + per_in]);
            }
            let y = self.conv2d(&Tensor::host(vec![samples, h, w, c], gathered), conv, None)?;
            let ys = host(&y)?;
            for i in 0..samples {
                let d = (i * members + m) * per_out;
                out[d..d + per_out].copy_from_slice(&ys[i * per_out..(i + 1) * per_out]);
            }
        }
        Ok(Tensor::host(vec![nb, ho, wo, spec.cout], out))
    }

    fn group_norm(&self, x: &Tensor, nm: &Norm, apply_silu: bool) -> Result<Tensor> {
        let (n, h, w, c) = x.nhwc();
        check(c == nm.channels && c % nm.groups == 0, || {
            format!(
                "group_norm: input {:?} for {} channels in {} groups",
                x.shape(),
                nm.channels,
                nm.groups
            )
        })?;
        let y = norm::group_norm_nhwc(
            host(x)?,
            n,
            h * w,
            c,
            nm.groups,
            nm.eps,
            host(&nm.gamma)?,
            host(&nm.beta)?,
            apply_silu,
        );
        Ok(Tensor::host(x.shape().to_vec(), y))
    }

    fn group_norm_scale_shift(
        &self,
        x: &Tensor,
        nm: &Norm,
        ss: &Tensor,
        apply_silu: bool,
    ) -> Result<Tensor> {
        let (n, h, w, c) = x.nhwc();
        check(
            c == nm.channels && c % nm.groups == 0 && ss.shape() == [n, 2 * c],
            || {
                format!(
                    "group_norm_scale_shift: input {:?}, scale-shift {:?} for {} channels in {} groups",
                    x.shape(),
                    ss.shape(),
                    nm.channels,
                    nm.groups
                )
            },
        )?;
        let y = norm::group_norm_modulated(
            host(x)?,
            n,
            h * w,
            c,
            nm.groups,
            nm.eps,
            host(&nm.gamma)?,
            host(&nm.beta)?,
            Some(host(ss)?),
            apply_silu,
        );
        Ok(Tensor::host(x.shape().to_vec(), y))
    }

    fn layer_norm(&self, x: &Tensor, nm: &Norm) -> Result<Tensor> {
        let d = *x.shape().last().unwrap_or(&0);
        check(d == nm.channels, || {
            format!("layer_norm: input {:?} for dim {}", x.shape(), nm.channels)
        })?;
        let y = norm::layer_norm(host(x)?, d, nm.eps, host(&nm.gamma)?, host(&nm.beta)?);
        Ok(Tensor::host(x.shape().to_vec(), y))
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
        check(din == lin.din, || {
            format!("linear: input {shape:?} for din {}", lin.din)
        })?;
        let rows = x.numel() / din.max(1);
        let mut oshape = shape.to_vec();
        *oshape.last_mut().unwrap() = lin.dout;
        let res = match residual {
            Some(r) => {
                check(r.shape() == oshape.as_slice(), || {
                    format!("linear: residual {:?} for {oshape:?}", r.shape())
                })?;
                Some(host(r)?)
            }
            None => None,
        };
        let xs = host(x)?;
        let bias = match &lin.bias {
            Some(b) => Some(host(b)?),
            None => None,
        };
        let dout = lin.dout;
        let mut out = vec![0.0f32; rows * dout];
        crate::linalg::matmul::rows_times_matrix(
            rows,
            din,
            dout,
            host(&lin.weight)?,
            &mut out,
            |p0, _, _| Some(xs[p0 * din..].as_ptr()),
            |_, o| {
                for row in o.chunks_exact_mut(dout) {
                    match bias {
                        Some(b) => row.copy_from_slice(b),
                        None => row.fill(0.0),
                    }
                }
            },
        );
        if act != Activation::None || res.is_some() {
            out.par_chunks_mut(dout).enumerate().for_each(|(r, row)| {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = activate(*v, act);
                    if let Some(rs) = res {
                        *v += rs[r * dout + j];
                    }
                }
            });
        }
        Ok(Tensor::host(oshape, out))
    }

    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let y: Vec<f32> = host(x)?.par_iter().map(|&v| activate(v, act)).collect();
        Ok(Tensor::host(x.shape().to_vec(), y))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        check(a.shape() == b.shape(), || {
            format!("add: shapes {:?} and {:?}", a.shape(), b.shape())
        })?;
        let y: Vec<f32> = host(a)?
            .par_iter()
            .zip(host(b)?.par_iter())
            .map(|(x, y)| x + y)
            .collect();
        Ok(Tensor::host(a.shape().to_vec(), y))
    }

    fn add_per_sample(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        let n = x.shape()[0];
        let c = *x.shape().last().unwrap_or(&0);
        check(v.shape() == [n, c], || {
            format!("add_per_sample: {:?} + {:?}", x.shape(), v.shape())
        })?;
        let per = x.numel() / n.max(1);
        let vs = host(v)?;
        let mut y = vec![0.0f32; x.numel()];
        // Runs of up to RUN_PIXELS pixels per task (never one task per pixel).
        let xs = host(x)?;
        y.par_chunks_mut(RUN_PIXELS * c.max(1))
            .zip(xs.par_chunks(RUN_PIXELS * c.max(1)))
            .enumerate()
            .for_each(|(t, (run, xr))| {
                for (j, (row, xp)) in run
                    .chunks_exact_mut(c.max(1))
                    .zip(xr.chunks_exact(c.max(1)))
                    .enumerate()
                {
                    let b = (t * RUN_PIXELS + j) * c / per;
                    fastmath::add_into(row, xp, &vs[b * c..(b + 1) * c]);
                }
            });
        Ok(Tensor::host(x.shape().to_vec(), y))
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
            qs.len() == 3
                && ks.len() == 3
                && k.shape() == v.shape()
                && qs[0] == ks[0]
                && qs[2] == ks[2],
            || format!("attention: q {qs:?}, k {ks:?}, v {:?}", v.shape()),
        )?;
        check(heads > 0 && qs[2] % heads == 0, || {
            format!("attention: dim {} not divisible by {heads} heads", qs[2])
        })?;
        let y = attention::attention(
            host(q)?,
            host(k)?,
            host(v)?,
            qs[0],
            qs[1],
            ks[1],
            heads,
            qs[2] / heads,
            scale,
        );
        Ok(Tensor::host(qs.to_vec(), y))
    }

    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = x.nhwc();
        let xs = host(x)?;
        let mut y = vec![0.0f32; n * 4 * h * w * c];
        y.par_chunks_mut(2 * w * c)
            .enumerate()
            .for_each(|(r, row)| {
                let (b, oh) = (r / (2 * h), r % (2 * h));
                let src = &xs[(b * h + oh / 2) * w * c..(b * h + oh / 2 + 1) * w * c];
                for ow in 0..2 * w {
                    row[ow * c..(ow + 1) * c].copy_from_slice(&src[(ow / 2) * c..(ow / 2 + 1) * c]);
                }
            });
        Ok(Tensor::host(vec![n, 2 * h, 2 * w, c], y))
    }

    fn avg_pool2x(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = x.nhwc();
        let (oh, ow) = (h / 2, w / 2);
        let xs = host(x)?;
        let mut y = vec![0.0f32; n * oh * ow * c];
        y.par_chunks_mut((ow * c).max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let (b, i) = (r / oh.max(1), r % oh.max(1));
                for j in 0..ow {
                    let at = |di: usize, dj: usize| ((b * h + 2 * i + di) * w + 2 * j + dj) * c;
                    let (p00, p01, p10, p11) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
                    for ch in 0..c {
                        // PyTorch sums the window in order, then divides by its size.
                        let s = xs[p00 + ch] + xs[p01 + ch] + xs[p10 + ch] + xs[p11 + ch];
                        row[j * c + ch] = s / 4.0;
                    }
                }
            });
        Ok(Tensor::host(vec![n, oh, ow, c], y))
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (n, h, w, ca) = a.nhwc();
        let (n2, h2, w2, cb) = b.nhwc();
        check((n, h, w) == (n2, h2, w2), || {
            format!("concat_channels: {:?} and {:?}", a.shape(), b.shape())
        })?;
        let (xa, xb) = (host(a)?, host(b)?);
        let c = ca + cb;
        let mut y = vec![0.0f32; n * h * w * c];
        y.par_chunks_mut(RUN_PIXELS * c.max(1))
            .enumerate()
            .for_each(|(t, run)| {
                for (j, o) in run.chunks_exact_mut(c.max(1)).enumerate() {
                    let p = t * RUN_PIXELS + j;
                    o[..ca].copy_from_slice(&xa[p * ca..(p + 1) * ca]);
                    o[ca..].copy_from_slice(&xb[p * cb..(p + 1) * cb]);
                }
            });
        Ok(Tensor::host(vec![n, h, w, c], y))
    }

    /// Pieces of [`piece_rows`] rows, run in parallel on the thread pool: each piece's ops then
    /// run on one core with activations that stay in its L2 cache, instead of every op streaming
    /// the whole batch through memory (small models, large batches: the demo's members).
    fn run_in_pieces(
        &self,
        inputs: &[&Tensor],
        row_bytes: u64,
        weight_bytes: u64,
        f: &(dyn Fn(&[Tensor]) -> Result<Tensor> + Sync),
    ) -> Result<Tensor> {
        let n = inputs
            .first()
            .map_or(0, |t| t.shape().first().copied().unwrap_or(0));
        for t in inputs {
            check(t.shape().first() == Some(&n), || {
                format!("run_in_pieces: inputs of {:?} and {n} rows", t.shape())
            })?;
        }
        let rows = if self.pieces {
            piece_rows(n, row_bytes, weight_bytes)
        } else {
            n
        };
        if rows >= n {
            return f(&inputs.iter().map(|&t| t.clone()).collect::<Vec<_>>());
        }
        let starts: Vec<usize> = (0..n).step_by(rows).collect();
        let outs = starts
            .par_iter()
            .map(|&s| {
                let len = rows.min(n - s);
                let piece = inputs
                    .iter()
                    .map(|t| {
                        let data = host(t)?;
                        let per = data.len() / n;
                        let mut shape = t.shape().to_vec();
                        shape[0] = len;
                        Ok(Tensor::host(shape, data[s * per..(s + len) * per].to_vec()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                f(&piece)
            })
            .collect::<Result<Vec<_>>>()?;
        self.concat_batch(&outs)
    }

    fn concat_batch(&self, parts: &[Tensor]) -> Result<Tensor> {
        check(!parts.is_empty(), || "concat_batch: no parts".into())?;
        let tail = &parts[0].shape()[1..];
        let mut data = Vec::new();
        let mut n = 0;
        for p in parts {
            check(&p.shape()[1..] == tail, || {
                format!("concat_batch: {:?} vs {:?}", p.shape(), parts[0].shape())
            })?;
            n += p.shape()[0];
            data.extend_from_slice(host(p)?);
        }
        let mut shape = parts[0].shape().to_vec();
        shape[0] = n;
        Ok(Tensor::host(shape, data))
    }
}
