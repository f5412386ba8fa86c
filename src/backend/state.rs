//! The sampler's state on a backend: the f32 sample `x_t` of every member row, its noise and its
//! update, and the row copies of the member schedules. These are the host definitions, which the
//! CPU backend uses as they are and every device backend must match (the CUDA backend's kernels
//! in `kernels/sampler.cu`, bit for bit in the emulation).
//!
//! A state tensor is NHWC `[rows, s, s, c]` f32; on a device backend it stays in device memory
//! from `x_T` to the final sample, so nothing moves between host and device per step.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::layout::nchw_to_nhwc;
use crate::rng::{Purpose, Stream};
use crate::sampler::{apply_step_learned, StepCoefficients};
use crate::tensor::{Storage, Tensor};

/// Bytes moved between host and device memory and kernels launched, since the backend was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    pub host_to_device_bytes: u64,
    pub device_to_host_bytes: u64,
    pub launches: u64,
}

/// The sample indices of a batch, as a backend keeps them for generating noise
/// ([`crate::backend::Backend::sample_streams`]): on the host the indices themselves.
#[derive(Debug)]
pub struct HostStreams(pub Vec<u64>);

/// The noise a stochastic step adds: the step noise of each sample's streams (`Purpose::StepNoise`,
/// sub = `step`), the same numbers on each of a sample's `rows_per_sample` rows.
#[derive(Clone, Copy, Debug)]
pub struct StepNoise<'a> {
    /// From [`crate::backend::Backend::sample_streams`].
    pub streams: &'a Tensor,
    pub seed: u64,
    pub step: u32,
    pub rows_per_sample: usize,
}

fn host<'a>(x: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    x.host_data().ok_or_else(|| {
        Error::arg(format!(
            "{what}: tensor {:?} is not in host memory",
            x.shape()
        ))
    })
}

/// The indices behind a host streams handle.
pub fn host_streams(streams: &Tensor) -> Result<&[u64]> {
    match streams.storage() {
        Storage::Device(any) => any
            .downcast_ref::<HostStreams>()
            .map(|s| s.0.as_slice())
            .ok_or_else(|| Error::arg("sample streams of another backend")),
        Storage::Host(_) => Err(Error::arg(
            "sample streams must come from Backend::sample_streams",
        )),
    }
}

/// A host streams handle for `indices`. Indices must lie below 2^56 (the streams' index range).
pub fn sample_streams(indices: &[usize]) -> Result<Tensor> {
    if let Some(&i) = indices.iter().find(|&&i| i as u64 >= 1 << 56) {
        return Err(Error::arg(format!(
            "sample index {i} is 2^56 or more (the random streams' range)"
        )));
    }
    Ok(Tensor::device(
        vec![indices.len()],
        Arc::new(HostStreams(indices.iter().map(|&i| i as u64).collect())),
    ))
}

/// The normals of stream (seed, index, purpose, sub) for `c * s * s` values, generated in NCHW
/// order (as `fill_normal` fills them) and returned NHWC.
pub fn stream_normals(
    seed: u64,
    index: u64,
    purpose: Purpose,
    sub: u32,
    c: usize,
    s: usize,
) -> Vec<f32> {
    let mut z = vec![0.0f32; c * s * s];
    Stream::new(seed, index, purpose, sub).fill_normal(&mut z);
    nchw_to_nhwc(&z, 1, c, s, s)
}

/// `[n * repeat, s, s, c]`: every sample's normals (see [`stream_normals`]) on `repeat` rows.
pub fn normal_state(
    streams: &Tensor,
    seed: u64,
    purpose: Purpose,
    sub: u32,
    c: usize,
    s: usize,
    repeat: usize,
) -> Result<Tensor> {
    let idx = host_streams(streams)?;
    let mut out = Vec::with_capacity(idx.len() * repeat * c * s * s);
    for &i in idx {
        let z = stream_normals(seed, i, purpose, sub, c, s);
        for _ in 0..repeat {
            out.extend_from_slice(&z);
        }
    }
    Ok(Tensor::host(vec![idx.len() * repeat, s, s, c], out))
}

/// The model output's channels per element of the state: `m` has the state's channels `c`, or
/// `2c` (a learned-sigma model: the prediction, then the variance channels); an error names the
/// shapes otherwise, or when the step needs variance channels `m` lacks.
pub fn model_channels(coeffs: &StepCoefficients, m: &Tensor, x: &Tensor) -> Result<usize> {
    let (ms, xs) = (m.shape(), x.shape());
    let ok = xs.len() == 4 && ms.len() == 4 && ms[..3] == xs[..3];
    let c = xs.get(3).copied().unwrap_or(0);
    let mc = ms.get(3).copied().unwrap_or(0);
    if !ok || (mc != c && mc != 2 * c) {
        return Err(Error::arg(format!(
            "sampler_step: model output {ms:?} for state {xs:?} (the model must give the \
             state's channels, or twice as many with a learned variance)"
        )));
    }
    if coeffs.learned_range != 0 && mc != 2 * c {
        return Err(Error::arg(format!(
            "sampler_step: variance_type learned_range needs the model's variance channels, \
             but the model output {ms:?} has as many channels as the state {xs:?}"
        )));
    }
    Ok(mc)
}

/// The next state: [`apply_step_learned`] on every element of `x` with the model output `m` at
/// it (its first `c` channels; the next `c`, when present, are the variance channels).
pub fn sampler_step(
    coeffs: &StepCoefficients,
    m: &Tensor,
    x: &Tensor,
    noise: Option<&StepNoise>,
) -> Result<Tensor> {
    let (xs, ms) = (host(x, "sampler_step")?, host(m, "sampler_step")?);
    let mc = model_channels(coeffs, m, x)?;
    let c = x.shape()[3];
    let mut out = xs.to_vec();
    let z = if coeffs.noise_scale != 0.0 {
        let nz = noise.ok_or_else(|| {
            Error::arg(format!(
                "step at timestep {} adds noise, but none was given",
                coeffs.timestep
            ))
        })?;
        let s = x.shape()[1];
        let z = normal_state(
            nz.streams,
            nz.seed,
            Purpose::StepNoise,
            nz.step,
            c,
            s,
            nz.rows_per_sample,
        )?;
        let zs = host(&z, "sampler_step noise")?.to_vec();
        if zs.len() != out.len() {
            return Err(Error::arg(format!(
                "sampler_step: noise for {} rows, state has {}",
                z.shape()[0],
                x.shape()[0]
            )));
        }
        Some(zs)
    } else {
        None
    };
    for (p, (px, pm)) in out.chunks_exact_mut(c).zip(ms.chunks_exact(mc)).enumerate() {
        for ch in 0..c {
            let v = if mc == 2 * c { pm[c + ch] } else { 0.0 };
            let zv = z.as_ref().map_or(0.0, |z| z[p * c + ch]);
            px[ch] = apply_step_learned(coeffs, pm[ch], v, px[ch], zv);
        }
    }
    Ok(Tensor::host(x.shape().to_vec(), out))
}

/// `2x - 1` computed on the host (a model input for `center_input_sample`), back on `b`.
pub fn centered<B: crate::backend::Backend + ?Sized>(b: &B, x: &Tensor) -> Result<Tensor> {
    let v = b.download(x)?;
    b.upload(
        x.shape(),
        &v.iter().map(|v| 2.0 * v - 1.0).collect::<Vec<_>>(),
    )
}

/// Every row of `x` (the leading dimension) repeated `k` times, sample-major.
pub fn repeat_rows(x: &Tensor, k: usize) -> Result<Tensor> {
    let xs = host(x, "repeat_rows")?;
    let rows = x.shape().first().copied().unwrap_or(0);
    let per = xs.len().checked_div(rows).unwrap_or(0);
    let mut out = Vec::with_capacity(xs.len() * k);
    for row in xs.chunks_exact(per.max(1)) {
        for _ in 0..k {
            out.extend_from_slice(row);
        }
    }
    let mut shape = x.shape().to_vec();
    if let Some(r) = shape.first_mut() {
        *r *= k;
    }
    Ok(Tensor::host(shape, out))
}

/// Rows `0, k, 2k, ...` of `x`: the first member of every sample.
pub fn every_kth_row(x: &Tensor, k: usize) -> Result<Tensor> {
    let xs = host(x, "every_kth_row")?;
    let rows = x.shape().first().copied().unwrap_or(0);
    if k == 0 || rows % k != 0 {
        return Err(Error::arg(format!(
            "every_kth_row: {rows} rows are not a multiple of {k}"
        )));
    }
    let per = xs.len().checked_div(rows).unwrap_or(0);
    let out: Vec<f32> = xs
        .chunks_exact(per.max(1))
        .step_by(k)
        .flatten()
        .copied()
        .collect();
    let mut shape = x.shape().to_vec();
    shape[0] = rows / k;
    Ok(Tensor::host(shape, out))
}

/// The sinusoidal features `[rows, 2 * freqs.len()]` of timestep `t`: `(sin, cos)` of `t * f`
/// per frequency, or `(cos, sin)` with `flip` (diffusers' `get_timestep_embedding`).
pub fn timestep_features(freqs: &[f32], t: f32, rows: usize, flip: bool) -> Vec<f32> {
    let half = freqs.len();
    let mut row = vec![0.0f32; 2 * half];
    for (i, &f) in freqs.iter().enumerate() {
        let a = t * f;
        let (s, c) = (a.sin(), a.cos());
        if flip {
            row[i] = c;
            row[half + i] = s;
        } else {
            row[i] = s;
            row[half + i] = c;
        }
    }
    row.repeat(rows)
}

/// The host definition of [`crate::backend::Backend::member_entropy`]: the entropy of
/// [`crate::uncertainty::gaussian_entropy`] per sample, `NaN` where a feature is not finite.
pub fn member_entropy(f: &[f32], shape: &[usize], k: usize, sigma2: f64) -> Result<Vec<f32>> {
    let (rows, d) = entropy_dims(shape, k)?;
    let opts = crate::uncertainty::EntropyOptions { sigma2 };
    f.chunks_exact(k * d)
        .take(rows / k)
        .map(|one| {
            if one.iter().any(|v| !v.is_finite()) {
                return Ok(f32::NAN);
            }
            Ok(crate::uncertainty::gaussian_entropy(one, 1, k, d, &opts)?[0] as f32)
        })
        .collect()
}

/// `(rows, d)` of member features `[rows, d]` with `rows` a multiple of `k >= 2`.
pub fn entropy_dims(shape: &[usize], k: usize) -> Result<(usize, usize)> {
    match shape {
        [rows, d] if k >= 2 && rows % k == 0 && *d > 0 => Ok((*rows, *d)),
        _ => Err(Error::arg(format!(
            "member_entropy: features {shape:?} are not [n * {k}, d] with K >= 2 members"
        ))),
    }
}
