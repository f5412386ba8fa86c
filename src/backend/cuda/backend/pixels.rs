//! The extractor's preprocessing on the device (`kernels/pixels.cu`): final samples to the
//! extractor's f16 input without leaving the device, equal to [`PixelPlan::host_pixels`]
//! uploaded (bit for bit: every step rounds as the host does).

use super::{check, err, i32_of, CudaBackend, CudaStorage};
use crate::backend::cuda::device::{DevBuf, DevPtr};
use crate::backend::cuda::kernels;
use crate::error::Result;
use crate::image::PassTaps;
use crate::models::clip_preprocess::PixelPlan;
use crate::tensor::Tensor;

/// One resampling pass's tables in device memory.
struct PassBufs {
    ksize: usize,
    bounds: DevBuf<i32>,
    fixed: DevBuf<i32>,
    weights: DevBuf<f64>,
}

/// A [`PixelPlan`]'s tables in device memory, uploaded once per run.
struct PixelTables {
    horiz: Option<PassBufs>,
    vert: Option<PassBufs>,
    mean: Option<DevBuf<f32>>,
    std: Option<DevBuf<f32>>,
    scale: Option<DevBuf<f64>>,
}

impl CudaBackend {
    fn pass_bufs(&self, p: &PassTaps) -> Result<PassBufs> {
        let mut bounds = Vec::with_capacity(2 * p.bounds.len());
        for &(first, taps) in &p.bounds {
            bounds.extend([i32_of(first, "resize bound")?, i32_of(taps, "resize taps")?]);
        }
        Ok(PassBufs {
            ksize: p.ksize,
            bounds: DevBuf::from_host(self.d(), &bounds)?,
            fixed: DevBuf::from_host(self.d(), &p.fixed)?,
            weights: DevBuf::from_host(self.d(), &p.weights)?,
        })
    }

    pub(super) fn prepare_pixel_tables(&self, mut plan: PixelPlan) -> Result<PixelPlan> {
        let taps = plan.taps.as_ref();
        let upload = |v: &[f32]| -> Result<Option<DevBuf<f32>>> {
            Ok(if v.is_empty() {
                None
            } else {
                Some(DevBuf::from_host(self.d(), v)?)
            })
        };
        let tables = PixelTables {
            horiz: taps
                .and_then(|t| t.horiz.as_ref())
                .map(|p| self.pass_bufs(p))
                .transpose()?,
            vert: taps
                .and_then(|t| t.vert.as_ref())
                .map(|p| self.pass_bufs(p))
                .transpose()?,
            mean: upload(&plan.mean)?,
            std: upload(&plan.std)?,
            scale: plan
                .scale
                .map(|s| DevBuf::from_host(self.d(), &[s]))
                .transpose()?,
        };
        plan.device = Some(std::sync::Arc::new(tables));
        Ok(plan)
    }

    pub(super) fn pixels(&self, state: &Tensor, plan: &PixelPlan) -> Result<Tensor> {
        let t = plan
            .device
            .as_ref()
            .and_then(|d| d.downcast_ref::<PixelTables>())
            .ok_or_else(|| {
                err("extractor_pixels: the pixel plan was not prepared on this backend".into())
            })?;
        let (n, sh, c) = Self::state_dims(state, "extractor_pixels")?;
        let sw = sh;
        check(
            (sh, sw, c) == (plan.height, plan.width, plan.channels),
            || {
                format!(
                    "extractor_pixels: samples of {sh}x{sw}x{c}, the plan is for {}x{}x{}",
                    plan.height, plan.width, plan.channels
                )
            },
        )?;
        let [_, oh, ow, co] = plan.output_shape(n);
        let (rh, rw) = plan.resized;
        // The largest image the steps hold must index in 32 bits.
        i32_of(n * sh.max(rh) * sw.max(rw) * c.max(co), "image batch size")?;
        let quantized = plan.quantize as i32;
        let total = n * sh * sw * c;
        check(total > 0, || "extractor_pixels: an empty batch".into())?;
        let mut img = DevBuf::<f32>::zeros(self.d(), total)?;
        kernels::pixels_from_state_f32(
            self.d(),
            self.ew_cfg(total),
            kernels::PixelsFromStateF32Args {
                x: self.f32(state)?.ptr(),
                y: img.ptr_mut(),
                n: total as i64,
                quantize: quantized,
            },
        )?;
        let (mut h, mut w) = (sh, sw);
        let rows = plan.taps.as_ref().map_or((0, sh), |t| t.rows);
        let mut row0 = 0;
        if let Some(p) = &t.horiz {
            let nr = rows.1 - rows.0;
            let len = n * nr * rw * c;
            let mut y = DevBuf::<f32>::zeros(self.d(), len)?;
            kernels::resample_rows_f32(
                self.d(),
                self.ew_cfg(len),
                kernels::ResampleRowsF32Args {
                    x: img.ptr(),
                    y: y.ptr_mut(),
                    bounds: p.bounds.ptr(),
                    fixed: p.fixed.ptr(),
                    weights: p.weights.ptr(),
                    ksize: p.ksize as i32,
                    quantized,
                    n: n as i32,
                    h: h as i32,
                    w: w as i32,
                    c: c as i32,
                    row0: rows.0 as i32,
                    rows: nr as i32,
                    ow: rw as i32,
                },
            )?;
            img = y;
            (h, w, row0) = (nr, rw, rows.0);
        }
        if let Some(p) = &t.vert {
            let len = n * rh * w * c;
            let mut y = DevBuf::<f32>::zeros(self.d(), len)?;
            kernels::resample_cols_f32(
                self.d(),
                self.ew_cfg(len),
                kernels::ResampleColsF32Args {
                    x: img.ptr(),
                    y: y.ptr_mut(),
                    bounds: p.bounds.ptr(),
                    fixed: p.fixed.ptr(),
                    weights: p.weights.ptr(),
                    ksize: p.ksize as i32,
                    quantized,
                    n: n as i32,
                    h: h as i32,
                    w: w as i32,
                    c: c as i32,
                    row0: row0 as i32,
                    oh: rh as i32,
                },
            )?;
            img = y;
            h = rh;
        }
        check((h, w) == (rh, rw), || {
            format!("extractor_pixels: resized to {h}x{w}, expected {rh}x{rw}")
        })?;
        let len = n * oh * ow * co;
        let mut out = self.alloc_f16(len)?;
        let cr = plan.crop;
        kernels::clip_pixels_f16(
            self.d(),
            self.ew_cfg(len),
            kernels::ClipPixelsF16Args {
                x: img.ptr(),
                y: out.ptr_mut(),
                mean: t.mean.as_ref().map_or(DevPtr::null(), |b| b.ptr()),
                stdev: t.std.as_ref().map_or(DevPtr::null(), |b| b.ptr()),
                n: n as i32,
                h: h as i32,
                w: w as i32,
                c: c as i32,
                oh: oh as i32,
                ow: ow as i32,
                co: co as i32,
                y0: cr.y0 as i32,
                x0: cr.x0 as i32,
                top_pad: cr.top_pad as i32,
                left_pad: cr.left_pad as i32,
                clamp01: (!plan.quantize) as i32,
                scale: t.scale.as_ref().map_or(DevPtr::null(), |b| b.ptr()),
                normalize: t.mean.is_some() as i32,
            },
        )?;
        Ok(Self::wrap(vec![n, oh, ow, co], CudaStorage::F16(out)))
    }
}
