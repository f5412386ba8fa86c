//! Fitting the last-layer curvature: the per-image fit inputs (timestep, noise, flip), the trunk
//! evaluated in batches, and the analytic last-layer gradients / Gauss-Newton factor computed
//! from im2col patches of the trunk output.

use std::path::{Path, PathBuf};

use gemm_common::Parallelism;
use rayon::prelude::*;

use super::{FitOptions, Hessian, Posterior, PosteriorParts};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::io::images_in::{class_labels, list_images, load_training_image};
use crate::linalg::matmul::sgemm_strided;
use crate::models::unet::{UNet, LAST_LAYER};
use crate::rng::{Purpose, Stream};
use crate::sampler::PredictionType;

/// Fit inputs of a set of images, injected or drawn by [`make_fit_inputs`].
#[derive(Clone, Debug, Default)]
pub struct FitInputs {
    /// Clean images, NHWC `[n, s, s, c]`, values in [-1, 1].
    pub x0: Vec<f32>,
    /// One training timestep per image, in `0..T`.
    pub t: Vec<usize>,
    /// One noise draw per image, NHWC like `x0`.
    pub eps: Vec<f32>,
    /// Class labels (class-conditional models only).
    pub class: Option<Vec<usize>>,
}

impl FitInputs {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.t.len()
    }
    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    /// Images `start..end`, each `per_image` values long.
    fn range(&self, start: usize, end: usize, per_image: usize) -> FitInputs {
        FitInputs {
            x0: self.x0[start * per_image..end * per_image].to_vec(),
            t: self.t[start..end].to_vec(),
            eps: self.eps[start * per_image..end * per_image].to_vec(),
            class: self.class.as_ref().map(|c| c[start..end].to_vec()),
        }
    }

    fn check(&self, unet: &UNet, num_train_timesteps: usize) -> Result<()> {
        let cfg = &unet.config;
        let per_image = cfg.sample_size * cfg.sample_size * cfg.in_channels;
        let n = self.len();
        if self.x0.len() != n * per_image || self.eps.len() != n * per_image {
            return Err(Error::arg(format!(
                "fit inputs: x0 has {} and eps {} values, expected {n} images of {s}x{s}x{c} = {}",
                self.x0.len(),
                self.eps.len(),
                n * per_image,
                s = cfg.sample_size,
                c = cfg.in_channels
            )));
        }
        if let Some(&bad) = self.t.iter().find(|&&t| t >= num_train_timesteps) {
            return Err(Error::arg(format!(
                "fit inputs: timestep {bad} out of range 0..{num_train_timesteps}"
            )));
        }
        match (&self.class, cfg.num_class_embeds) {
            (Some(c), Some(_)) if c.len() != n => Err(Error::arg(format!(
                "fit inputs: {} class labels for {n} images",
                c.len()
            ))),
            (None, Some(_)) => Err(Error::arg(
                "fit inputs: the model is class-conditional, class labels are required",
            )),
            (Some(_), None) => Err(Error::arg(
                "fit inputs: class labels given, but the model is not class-conditional",
            )),
            _ => Ok(()),
        }
    }
}

/// The training images of a fit: a folder listing and, for class-conditional models, labels.
#[derive(Clone, Debug)]
pub struct FitSet {
    pub dir: PathBuf,
    /// Sorted image paths ([`list_images`]); an image's position here keys its random draws.
    pub paths: Vec<PathBuf>,
    /// Class label per image ([`class_labels`]), when the model is class-conditional.
    pub classes: Option<Vec<usize>>,
}

impl FitSet {
    /// Lists `dir`. With `num_classes = Some(n)` (a class-conditional model) every image must lie
    /// in a class subfolder whose label is below `n`.
    pub fn from_folder(dir: &Path, num_classes: Option<usize>) -> Result<Self> {
        let paths = list_images(dir)?;
        let classes = match num_classes {
            None => None,
            Some(n) => {
                let (labels, names) = class_labels(dir, &paths)?;
                if let Some(i) = labels.iter().position(|&l| l >= n) {
                    return Err(Error::Image {
                        path: paths[i].clone(),
                        msg: format!(
                            "class label {} (from {} class folders: {}...) is out of range for a model with {n} classes",
                            labels[i],
                            names.len(),
                            names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                Some(labels)
            }
        };
        Ok(FitSet {
            dir: dir.to_path_buf(),
            paths,
            classes,
        })
    }
}

/// Indices of `wanted` images out of `total`, evenly spaced (`floor(i * total / wanted)`), all of
/// them when `wanted` is `None` or at least `total`.
pub fn select_images(total: usize, wanted: Option<usize>) -> Vec<usize> {
    match wanted {
        Some(w) if w < total => (0..w).map(|i| i * total / w).collect(),
        _ => (0..total).collect(),
    }
}

/// The random draws of fit image `index` (its position in the folder listing): timestep
/// `t ~ U{0..T-1}` (stream (seed, index, FitTimestep)), `numel` standard normals (NHWC; stream
/// (seed, index, FitNoise)) and a horizontal flip with probability 1/2 (stream
/// (seed, index, FitFlip)). They depend on nothing else, so not on the batch size.
pub fn fit_draws(
    seed: u64,
    index: usize,
    num_train_timesteps: usize,
    numel: usize,
) -> (usize, Vec<f32>, bool) {
    let t = Stream::new(seed, index as u64, Purpose::FitTimestep, 0)
        .below(num_train_timesteps as u32) as usize;
    let mut eps = vec![0.0f32; numel];
    Stream::new(seed, index as u64, Purpose::FitNoise, 0).fill_normal(&mut eps);
    let flip = Stream::new(seed, index as u64, Purpose::FitFlip, 0).uniform() <= 0.5;
    (t, eps, flip)
}

/// Loads the images `indices` of `set` (in parallel) with their [`fit_draws`]; `flip = false`
/// disables the random flips.
pub fn make_fit_inputs(
    set: &FitSet,
    indices: &[usize],
    size: usize,
    channels: usize,
    num_train_timesteps: usize,
    seed: u64,
    flip: bool,
) -> Result<FitInputs> {
    let per_image = size * size * channels;
    let loaded: Vec<(Vec<f32>, usize, Vec<f32>)> = indices
        .par_iter()
        .map(|&i| {
            let (t, eps, f) = fit_draws(seed, i, num_train_timesteps, per_image);
            let x0 = load_training_image(&set.paths[i], size, channels, flip && f)?;
            Ok((x0, t, eps))
        })
        .collect::<Result<_>>()?;
    let mut inputs = FitInputs {
        x0: Vec::with_capacity(indices.len() * per_image),
        t: Vec::with_capacity(indices.len()),
        eps: Vec::with_capacity(indices.len() * per_image),
        class: set
            .classes
            .as_ref()
            .map(|c| indices.iter().map(|&i| c[i]).collect()),
    };
    for (x0, t, eps) in loaded {
        inputs.x0.extend(x0);
        inputs.t.push(t);
        inputs.eps.extend(eps);
    }
    Ok(inputs)
}

/// For each parameter column in PyTorch order `(ci, kh, kw)` (then the bias), its im2col column
/// `(kh, kw, ci)` (then the trailing 1).
pub fn patch_order(cin: usize, k: usize) -> Vec<usize> {
    let mut order = Vec::with_capacity(cin * k * k + 1);
    for ci in 0..cin {
        for kh in 0..k {
            for kw in 0..k {
                order.push((kh * k + kw) * cin + ci);
            }
        }
    }
    order.push(cin * k * k);
    order
}

/// Rows of `A` per parallel task of the `ggn-kron` accumulation.
const KRON_BLOCK_ROWS: usize = 64;

/// Geometry of the last layer's im2col patches for one image.
#[derive(Clone, Copy, Debug)]
struct Patches {
    size: usize,
    cin: usize,
    k: usize,
    pad: usize,
}

impl Patches {
    /// Columns per patch, the trailing 1 included.
    fn cols(&self) -> usize {
        self.cin * self.k * self.k + 1
    }
    fn positions(&self) -> usize {
        self.size * self.size
    }
    /// Rows per tile, keeping a tile near 4 MiB.
    fn tile_rows(&self) -> usize {
        ((4 << 20) / (4 * self.cols()))
            .clamp(64, 4096)
            .min(self.positions())
    }
    /// Fills `tile` (`rows x cols`) with the patches of positions `p0..p0 + rows` of the image
    /// `a` (`[size, size, cin]`): columns `(kh, kw, ci)` with zero padding, then 1.
    fn fill(&self, a: &[f32], p0: usize, rows: usize, tile: &mut [f32]) {
        let (s, cin, k, cols) = (self.size as isize, self.cin, self.k, self.cols());
        for r in 0..rows {
            let p = p0 + r;
            let (y, x) = ((p / self.size) as isize, (p % self.size) as isize);
            let row = &mut tile[r * cols..(r + 1) * cols];
            for kh in 0..k {
                for kw in 0..k {
                    let yy = y + kh as isize - self.pad as isize;
                    let xx = x + kw as isize - self.pad as isize;
                    let dst = &mut row[(kh * k + kw) * cin..(kh * k + kw + 1) * cin];
                    if yy >= 0 && yy < s && xx >= 0 && xx < s {
                        let src = ((yy * s + xx) as usize) * cin;
                        dst.copy_from_slice(&a[src..src + cin]);
                    } else {
                        dst.fill(0.0);
                    }
                }
            }
            row[cols - 1] = 1.0;
        }
    }
}

/// Running sums of a fit, in im2col column order: for `ef-diag` `sum_n g_n^2` per output channel
/// in the loss (`[channels_in_loss, cols]`), for `ggn-kron` `A` (`[cols, cols]`). f64.
pub struct CurvatureAccumulator {
    hessian: Hessian,
    patches: Patches,
    cout: usize,
    channels_in_loss: usize,
    prediction: PredictionType,
    sum: Vec<f64>,
    images: usize,
}

impl CurvatureAccumulator {
    /// An empty accumulator for the last layer of `unet`.
    pub fn new(
        unet: &UNet,
        hessian: Hessian,
        channels_in_loss: usize,
        prediction: PredictionType,
    ) -> Result<Self> {
        let spec = unet.conv_out.spec;
        if spec.stride != 1 || spec.pad_end != 0 || spec.out_hw(1, 1) != (1, 1) {
            return Err(Error::arg(format!(
                "the Laplace fit needs a size-preserving stride-1 last layer, got {spec:?}"
            )));
        }
        let patches = Patches {
            size: unet.config.sample_size,
            cin: spec.cin,
            k: spec.kernel,
            pad: spec.padding,
        };
        let cols = patches.cols();
        let len = match hessian {
            Hessian::EfDiag => channels_in_loss * cols,
            Hessian::GgnKron => cols * cols,
        };
        Ok(CurvatureAccumulator {
            hessian,
            patches,
            cout: spec.cout,
            channels_in_loss,
            prediction,
            sum: vec![0.0; len],
            images: 0,
        })
    }

    /// Images accumulated so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Evaluates the trunk on all of `inputs` at once and adds their curvature.
    pub fn add(
        &mut self,
        b: &dyn Backend,
        unet: &UNet,
        alphas_cumprod: &[f64],
        inputs: &FitInputs,
    ) -> Result<()> {
        inputs.check(unet, alphas_cumprod.len())?;
        let n = inputs.len();
        if n == 0 {
            return Ok(());
        }
        let cfg = &unet.config;
        let (s, c) = (cfg.sample_size, cfg.in_channels);
        let per_image = s * s * c;
        let mut xt = vec![0.0f32; n * per_image];
        let mut target = vec![0.0f32; n * per_image];
        for i in 0..n {
            // f32 as the reference computes it: sqrt(abar) x0 + sqrt(1 - abar) eps.
            let a = alphas_cumprod[inputs.t[i]] as f32;
            let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
            let r = i * per_image..(i + 1) * per_image;
            for ((xv, tv), (&x0, &e)) in xt[r.clone()]
                .iter_mut()
                .zip(&mut target[r.clone()])
                .zip(inputs.x0[r.clone()].iter().zip(&inputs.eps[r]))
            {
                *xv = sa * x0 + sb * e;
                *tv = match self.prediction {
                    PredictionType::Epsilon => e,
                    PredictionType::VPrediction => sa * e - sb * x0,
                    PredictionType::Sample => x0,
                };
            }
        }
        let x = b.upload(&[n, s, s, c], &xt)?;
        let t: Vec<f32> = inputs.t.iter().map(|&t| t as f32).collect();
        let h = unet.trunk(b, &x, &t, inputs.class.as_deref())?;
        match self.hessian {
            Hessian::EfDiag => {
                let out = b.conv2d(&h, &unet.conv_out, None)?;
                self.add_ef_diag(&b.download(&h)?, &b.download(&out)?, &target, n);
            }
            Hessian::GgnKron => self.add_ggn_kron(&b.download(&h)?, n),
        }
        self.images += n;
        Ok(())
    }

    /// `g_n[co, :] = sum_p r[p, co] patch_p` with `r = 2 (out - target)`, squared into the sums.
    fn add_ef_diag(&mut self, h: &[f32], out: &[f32], target: &[f32], n: usize) {
        let pt = self.patches;
        let (cols, positions, cl, cout) =
            (pt.cols(), pt.positions(), self.channels_in_loss, self.cout);
        let (cin_img, c_img) = (positions * pt.cin, target.len() / n / positions);
        let grads: Vec<Vec<f32>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let a = &h[i * cin_img..(i + 1) * cin_img];
                let mut r = vec![0.0f32; positions * cl];
                for p in 0..positions {
                    for co in 0..cl {
                        let o = out[(i * positions + p) * cout + co];
                        let y = target[(i * positions + p) * c_img + co];
                        r[p * cl + co] = 2.0 * (o - y);
                    }
                }
                let rows = pt.tile_rows();
                let mut tile = vec![0.0f32; rows * cols];
                let mut g = vec![0.0f32; cl * cols];
                for p0 in (0..positions).step_by(rows) {
                    let m = rows.min(positions - p0);
                    pt.fill(a, p0, m, &mut tile);
                    // g[cl, cols] += r[p0.., :]^T tile
                    // SAFETY: r holds positions x cl, tile m x cols, g cl x cols.
                    unsafe {
                        sgemm_strided(
                            cl,
                            cols,
                            m,
                            r.as_ptr().add(p0 * cl),
                            1,
                            cl as isize,
                            tile.as_ptr(),
                            cols as isize,
                            1,
                            g.as_mut_ptr(),
                            cols as isize,
                            p0 > 0,
                            Parallelism::None,
                        )
                    };
                }
                g
            })
            .collect();
        for g in grads {
            for (acc, v) in self.sum.iter_mut().zip(g) {
                *acc += f64::from(v) * f64::from(v);
            }
        }
    }

    /// `A += sum_p patch_p patch_p^T`, per image in f32, summed in f64. Only the lower triangle
    /// (row >= column) is accumulated: row blocks of [`KRON_BLOCK_ROWS`] in parallel, each a GEMM
    /// over the columns up to its last row, which halves the work of a full product.
    fn add_ggn_kron(&mut self, h: &[f32], n: usize) {
        let pt = self.patches;
        let (cols, positions) = (pt.cols(), pt.positions());
        let img = positions * pt.cin;
        let rows = pt.tile_rows();
        let mut tile = vec![0.0f32; rows * cols];
        let mut a32 = vec![0.0f32; cols * cols];
        for i in 0..n {
            let a = &h[i * img..(i + 1) * img];
            for p0 in (0..positions).step_by(rows) {
                let m = rows.min(positions - p0);
                pt.fill(a, p0, m, &mut tile);
                let tile = &tile;
                a32.par_chunks_mut(KRON_BLOCK_ROWS * cols)
                    .enumerate()
                    .for_each(|(bi, block)| {
                        let r0 = bi * KRON_BLOCK_ROWS;
                        let nr = block.len() / cols;
                        // block[0..nr, 0..r0 + nr] (+)= tile[:, r0..r0 + nr]^T tile[:, 0..r0 + nr]
                        // SAFETY: tile holds m x cols, block nr x cols, r0 + nr <= cols.
                        unsafe {
                            sgemm_strided(
                                nr,
                                r0 + nr,
                                m,
                                tile.as_ptr().add(r0),
                                1,
                                cols as isize,
                                tile.as_ptr(),
                                cols as isize,
                                1,
                                block.as_mut_ptr(),
                                cols as isize,
                                p0 > 0,
                                Parallelism::None,
                            )
                        };
                    });
            }
            self.sum
                .par_iter_mut()
                .zip(a32.par_iter())
                .for_each(|(acc, &v)| *acc += f64::from(v));
        }
    }

    /// The curvature in posterior parameter order: `ef-diag` `0.5 * sum_n g_n^2` per parameter
    /// (weights `[cout, cin, k, k]`, then bias; zero for channels outside the loss); `ggn-kron`
    /// `A` with rows and columns ordered `(ci, kh, kw)`, then bias.
    pub fn curvature(&self) -> Vec<f64> {
        let pt = self.patches;
        let cols = pt.cols();
        let order = patch_order(pt.cin, pt.k);
        match self.hessian {
            Hessian::EfDiag => {
                let nw = self.cout * (cols - 1);
                let mut out = vec![0.0f64; nw + self.cout];
                for co in 0..self.channels_in_loss {
                    let g = &self.sum[co * cols..(co + 1) * cols];
                    for (j, &src) in order[..cols - 1].iter().enumerate() {
                        out[co * (cols - 1) + j] = 0.5 * g[src];
                    }
                    out[nw + co] = 0.5 * g[cols - 1];
                }
                out
            }
            Hessian::GgnKron => {
                let mut out = vec![0.0f64; cols * cols];
                for (i, &si) in order.iter().enumerate() {
                    for (j, &sj) in order.iter().enumerate() {
                        // Only the lower triangle of the sums is filled.
                        out[i * cols + j] = self.sum[si.max(sj) * cols + si.min(sj)];
                    }
                }
                out
            }
        }
    }

    /// The posterior around `unet`'s last-layer weights.
    pub fn into_posterior(self, unet: &UNet, opts: &FitOptions) -> Result<Posterior> {
        let pt = self.patches;
        Posterior::from_parts(PosteriorParts {
            layer: LAST_LAYER.to_string(),
            hessian: self.hessian,
            weight_shape: [self.cout, pt.cin, pt.k, pt.k],
            map_weight: unet.conv_out_weight.clone(),
            map_bias: unet.conv_out_bias.clone(),
            curvature: self.curvature(),
            channels_in_loss: self.channels_in_loss,
            num_images: self.images,
            prior_precision: opts.prior_precision,
            sigma_noise: opts.sigma_noise,
            model_fingerprint: unet.fingerprint().to_string(),
            target: opts.prediction.as_str().to_string(),
            fit_seed: opts.seed,
        })
    }
}

/// Fits the posterior on injected inputs (all images of `inputs`, `opts.batch` per trunk
/// evaluation; `opts.images`, `opts.seed` and `opts.flip` are not used except as recorded
/// metadata). `progress(done, total)` is called after each batch.
pub fn fit_with_inputs(
    b: &dyn Backend,
    unet: &UNet,
    alphas_cumprod: &[f64],
    inputs: &FitInputs,
    opts: &FitOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Posterior> {
    let cl = opts.validate(unet.config.in_channels, unet.config.out_channels)?;
    inputs.check(unet, alphas_cumprod.len())?;
    if inputs.is_empty() {
        return Err(Error::arg("the fit needs at least one image"));
    }
    let cfg = &unet.config;
    let per_image = cfg.sample_size * cfg.sample_size * cfg.in_channels;
    let mut acc = CurvatureAccumulator::new(unet, opts.hessian, cl, opts.prediction)?;
    let n = inputs.len();
    for start in (0..n).step_by(opts.batch) {
        let end = (start + opts.batch).min(n);
        acc.add(
            b,
            unet,
            alphas_cumprod,
            &inputs.range(start, end, per_image),
        )?;
        progress(end, n);
    }
    acc.into_posterior(unet, opts)
}

/// Fits the posterior on the training images of `set`: `opts.images` of them (evenly spaced,
/// [`select_images`]), each with its own [`fit_draws`], `opts.batch` per trunk evaluation.
/// `progress(done, total)` is called after each batch.
pub fn fit(
    b: &dyn Backend,
    unet: &UNet,
    alphas_cumprod: &[f64],
    set: &FitSet,
    opts: &FitOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Posterior> {
    let cl = opts.validate(unet.config.in_channels, unet.config.out_channels)?;
    let cfg = &unet.config;
    if cfg.num_class_embeds.is_some() && set.classes.is_none() {
        return Err(Error::arg(format!(
            "the model is class-conditional: list {} with FitSet::from_folder(dir, Some(num_classes))",
            set.dir.display()
        )));
    }
    let indices = select_images(set.paths.len(), opts.images);
    let mut acc = CurvatureAccumulator::new(unet, opts.hessian, cl, opts.prediction)?;
    let total = indices.len();
    for chunk in indices.chunks(opts.batch) {
        let inputs = make_fit_inputs(
            set,
            chunk,
            cfg.sample_size,
            cfg.in_channels,
            alphas_cumprod.len(),
            opts.seed,
            opts.flip,
        )?;
        acc.add(b, unet, alphas_cumprod, &inputs)?;
        progress(acc.images(), total);
    }
    acc.into_posterior(unet, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_order_maps_pytorch_columns_to_im2col() {
        // cin 2, k 3: PyTorch column (ci=1, kh=0, kw=2) is index 1*9 + 2 = 11; im2col (kh, kw, ci)
        // column is (0*3 + 2)*2 + 1 = 5.
        let o = patch_order(2, 3);
        assert_eq!(o.len(), 19);
        assert_eq!(o[11], 5);
        assert_eq!(o[18], 18);
        let mut sorted = o.clone();
        sorted.sort();
        assert_eq!(sorted, (0..19).collect::<Vec<_>>());
    }

    #[test]
    fn patches_pad_with_zeros_and_end_with_one() {
        let pt = Patches {
            size: 2,
            cin: 1,
            k: 3,
            pad: 1,
        };
        let a = [1.0, 2.0, 3.0, 4.0];
        let mut tile = vec![9.0; 4 * pt.cols()];
        pt.fill(&a, 0, 4, &mut tile);
        // Position (0, 0): the 3x3 window centred there.
        assert_eq!(
            &tile[..10],
            &[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 3.0, 4.0, 1.0]
        );
        // Position (1, 1).
        assert_eq!(
            &tile[30..40],
            &[1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn selection_is_evenly_spaced() {
        assert_eq!(select_images(10, Some(4)), vec![0, 2, 5, 7]);
        assert_eq!(select_images(3, Some(5)), vec![0, 1, 2]);
        assert_eq!(select_images(3, None), vec![0, 1, 2]);
    }
}
