//! A backend wrapper that times every op (wall clock, per op name) and prints a table on
//! request: `UQENGINE_PROFILE=1` makes the CLI wrap its backend in it; `UQENGINE_PROFILE=shapes`
//! also splits the convolutions by input shape and channels.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::backend::{
    Activation, Backend, Conv2d, ConvSpec, LastLayer, Linear, Members, Norm, StepNoise, Transfers,
};
use crate::error::Result;
use crate::rng::Purpose;
use crate::sampler::StepCoefficients;
use crate::tensor::Tensor;

/// Times the ops of the wrapped backend.
pub struct Profiled {
    inner: Arc<dyn Backend>,
    table: Mutex<BTreeMap<String, (u64, f64)>>,
    shapes: bool,
}

impl Profiled {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Profiled {
            inner,
            table: Mutex::new(BTreeMap::new()),
            shapes: std::env::var("UQENGINE_PROFILE").is_ok_and(|v| v == "shapes"),
        }
    }

    /// `name`, or with shapes on `name [n,h,w,c]->cout`.
    fn conv_key(&self, name: &str, x: &Tensor, cout: usize) -> String {
        if self.shapes {
            format!("{name} {:?}->{cout}", x.shape())
        } else {
            name.to_string()
        }
    }

    fn time<T>(&self, name: &str, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let r = f();
        let dt = t0.elapsed().as_secs_f64();
        let mut t = self.table.lock().unwrap();
        let e = t.entry(name.to_string()).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += dt;
        r
    }

    /// The table: op, calls, total seconds, share — sorted by time.
    pub fn report(&self) -> String {
        let t = self.table.lock().unwrap();
        let total: f64 = t.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = t.iter().collect();
        rows.sort_by(|a, b| b.1 .1.partial_cmp(&a.1 .1).unwrap());
        let mut s = format!(
            "{:<40} {:>9} {:>10} {:>7}\n",
            "op", "calls", "seconds", "share"
        );
        for (k, (n, sec)) in rows {
            s += &format!(
                "{k:<40} {n:>9} {sec:>10.3} {:>6.1}%\n",
                100.0 * sec / total.max(1e-12)
            );
        }
        s += &format!("{:<40} {:>9} {total:>10.3}\n", "total", "");
        s
    }
}

impl Backend for Profiled {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn memory_budget(&self) -> Option<u64> {
        self.inner.memory_budget()
    }
    fn activation_bytes(&self) -> u64 {
        self.inner.activation_bytes()
    }
    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.time("upload", || self.inner.upload(shape, data))
    }
    fn download(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.time("download", || self.inner.download(x))
    }
    fn prepare_conv(&self, spec: ConvSpec, w: &[f32], bias: Option<&[f32]>) -> Result<Conv2d> {
        self.inner.prepare_conv(spec, w, bias)
    }
    fn prepare_linear(
        &self,
        din: usize,
        dout: usize,
        w: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Linear> {
        self.inner.prepare_linear(din, dout, w, bias)
    }
    fn prepare_norm(&self, groups: usize, eps: f32, gamma: &[f32], beta: &[f32]) -> Result<Norm> {
        self.inner.prepare_norm(groups, eps, gamma, beta)
    }
    fn conv2d(&self, x: &Tensor, conv: &Conv2d, residual: Option<&Tensor>) -> Result<Tensor> {
        let s = conv.spec;
        let name = self.conv_key(
            &format!("conv{}x{} s{}", s.kernel, s.kernel, s.stride),
            x,
            s.cout,
        );
        self.time(&name, || self.inner.conv2d(x, conv, residual))
    }
    fn norm_conv2d(
        &self,
        x: &Tensor,
        norm: &Norm,
        silu: bool,
        conv: &Conv2d,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let name = self.conv_key("norm_conv2d", x, conv.spec.cout);
        self.time(&name, || {
            self.inner.norm_conv2d(x, norm, silu, conv, residual)
        })
    }
    fn add_norm_conv2d(
        &self,
        x: &Tensor,
        v: &Tensor,
        norm: &Norm,
        silu: bool,
        conv: &Conv2d,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let name = self.conv_key("add_norm_conv2d", x, conv.spec.cout);
        self.time(&name, || {
            self.inner.add_norm_conv2d(x, v, norm, silu, conv, residual)
        })
    }
    fn conv2d_members(&self, x: &Tensor, convs: &[Conv2d]) -> Result<Tensor> {
        self.time("conv2d_members", || self.inner.conv2d_members(x, convs))
    }
    fn group_norm(&self, x: &Tensor, norm: &Norm, silu: bool) -> Result<Tensor> {
        self.time("group_norm", || self.inner.group_norm(x, norm, silu))
    }
    fn group_norm_scale_shift(
        &self,
        x: &Tensor,
        norm: &Norm,
        ss: &Tensor,
        silu: bool,
    ) -> Result<Tensor> {
        self.time("group_norm", || {
            self.inner.group_norm_scale_shift(x, norm, ss, silu)
        })
    }
    fn layer_norm(&self, x: &Tensor, norm: &Norm) -> Result<Tensor> {
        self.time("layer_norm", || self.inner.layer_norm(x, norm))
    }
    fn linear(
        &self,
        x: &Tensor,
        lin: &Linear,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let name = self.conv_key("linear", x, lin.dout);
        self.time(&name, || self.inner.linear(x, lin, act, residual))
    }
    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        self.time("activation", || self.inner.activation(x, act))
    }
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.time("add", || self.inner.add(a, b))
    }
    fn add_per_sample(&self, x: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.time("add_per_sample", || self.inner.add_per_sample(x, v))
    }
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f32,
    ) -> Result<Tensor> {
        self.time("attention", || self.inner.attention(q, k, v, heads, scale))
    }
    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor> {
        self.time("upsample", || self.inner.upsample_nearest2x(x))
    }
    fn avg_pool2x(&self, x: &Tensor) -> Result<Tensor> {
        self.time("avg_pool", || self.inner.avg_pool2x(x))
    }
    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.time("concat_channels", || self.inner.concat_channels(a, b))
    }
    fn concat_batch(&self, parts: &[Tensor]) -> Result<Tensor> {
        self.time("concat_batch", || self.inner.concat_batch(parts))
    }
    fn run_in_pieces(
        &self,
        inputs: &[&Tensor],
        row_bytes: u64,
        weight_bytes: u64,
        f: &(dyn Fn(&[Tensor]) -> Result<Tensor> + Sync),
    ) -> Result<Tensor> {
        // Not timed itself: `f` calls this wrapper's ops, which are (summed over the pieces).
        self.inner.run_in_pieces(inputs, row_bytes, weight_bytes, f)
    }
    fn prepare_members(&self, convs: &[Conv2d]) -> Result<Members> {
        self.inner.prepare_members(convs)
    }
    fn conv2d_member_stack(&self, x: &Tensor, members: &Members) -> Result<Tensor> {
        self.time("conv2d_members", || {
            self.inner.conv2d_member_stack(x, members)
        })
    }
    fn upload_params(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.inner.upload_params(shape, data)
    }
    fn state_from_host(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.time("state_from_host", || {
            self.inner.state_from_host(shape, data)
        })
    }
    fn state_to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.time("state_to_host", || self.inner.state_to_host(x))
    }
    fn sample_streams(&self, indices: &[usize]) -> Result<Tensor> {
        self.inner.sample_streams(indices)
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
        self.time("normal_state", || {
            self.inner
                .normal_state(streams, seed, purpose, sub, c, s, repeat)
        })
    }
    fn sampler_step(
        &self,
        coeffs: &StepCoefficients,
        m: &Tensor,
        x: &Tensor,
        noise: Option<&StepNoise>,
    ) -> Result<Tensor> {
        self.time("sampler_step", || {
            self.inner.sampler_step(coeffs, m, x, noise)
        })
    }
    fn last_layer_step(
        &self,
        h: &Tensor,
        last: LastLayer,
        coeffs: &StepCoefficients,
        x: &Tensor,
        noise: Option<&StepNoise>,
    ) -> Result<Tensor> {
        self.time("last_layer_step", || {
            self.inner.last_layer_step(h, last, coeffs, x, noise)
        })
    }
    fn state_as_input(&self, x: &Tensor, center: bool) -> Result<Tensor> {
        self.time("state_as_input", || self.inner.state_as_input(x, center))
    }
    fn repeat_rows(&self, x: &Tensor, k: usize) -> Result<Tensor> {
        self.time("repeat_rows", || self.inner.repeat_rows(x, k))
    }
    fn every_kth_row(&self, x: &Tensor, k: usize) -> Result<Tensor> {
        self.time("every_kth_row", || self.inner.every_kth_row(x, k))
    }
    fn timestep_features(&self, freqs: &Tensor, t: f32, rows: usize, flip: bool) -> Result<Tensor> {
        self.time("timestep_features", || {
            self.inner.timestep_features(freqs, t, rows, flip)
        })
    }
    fn member_entropy(&self, features: &Tensor, k: usize, sigma2: f64) -> Result<Vec<f32>> {
        self.time("member_entropy", || {
            self.inner.member_entropy(features, k, sigma2)
        })
    }
    fn transfers(&self) -> Option<Transfers> {
        self.inner.transfers()
    }
}
