//! Winograd F(4x4, 3x3) for 3x3 stride-1 pad-1 convolutions on the CPU (Lavin & Gray, points
//! 0, 1, -1, 2, -2 and infinity): 36 products per 4x4 output tile and channel pair, 2.25
//! multiplies per output instead of F(2x2, 3x3)'s 4, and a transformed input 2.25 times the
//! size of the map instead of 4 times. The input and output transforms run on blocks of 16
//! channels held in registers, read straight from the input pixels and written straight into
//! the output pixels (bias and residual added there).

use rayon::prelude::*;

use super::conv::{give_scratch, take_scratch, winograd_products, SendPtr};
use crate::linalg::panel;

/// `G` of F(4x4, 3x3): `U = G g G^T` is the 6x6 transformed filter.
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// The Winograd weights `U_e = (G g G^T)_e`, `[36, cin, cout]`, from reordered 3x3 weights
/// `[9*cin, cout]` (row `(kh*3 + kw)*cin + ci`), computed in f64 and rounded once.
pub fn weights(cin: usize, cout: usize, wt: &[f32]) -> Vec<f32> {
    let mut u = vec![0.0f32; 36 * cin * cout];
    for ci in 0..cin {
        let g = |kh: usize, kw: usize, co: usize| wt[((kh * 3 + kw) * cin + ci) * cout + co] as f64;
        for co in 0..cout {
            let mut t = [[0.0f64; 3]; 6];
            for (a, row) in t.iter_mut().enumerate() {
                for (kw, v) in row.iter_mut().enumerate() {
                    *v = (0..3).map(|kh| G[a][kh] * g(kh, kw, co)).sum();
                }
            }
            for a in 0..6 {
                for b in 0..6 {
                    let v: f64 = (0..3).map(|kw| t[a][kw] * G[b][kw]).sum();
                    u[((a * 6 + b) * cin + ci) * cout + co] = v as f32;
                }
            }
        }
    }
    u
}

type Lanes<const L: usize> = [f32; L];

#[inline(always)]
fn lanes<const L: usize>(f: impl Fn(usize) -> f32) -> Lanes<L> {
    std::array::from_fn(f)
}

/// `B^T d` for one column of six vectors, `B^T` =
/// `[[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],[0,2,-1,-2,1,0],[0,4,0,-5,0,1]]`.
#[inline(always)]
fn bt6<const L: usize>(d: &[Lanes<L>; 6]) -> [Lanes<L>; 6] {
    let mut o = [[0.0f32; L]; 6];
    for c in 0..L {
        let (d0, d1, d2, d3, d4, d5) = (d[0][c], d[1][c], d[2][c], d[3][c], d[4][c], d[5][c]);
        let (s12, d12) = (d1 + d2, d1 - d2);
        let (s34, d43) = (d3 + d4, d4 - d3);
        let (d42, d31) = (d4 - d2, d3 - d1);
        o[0][c] = 4.0 * d0 - 5.0 * d2 + d4;
        o[1][c] = s34 - 4.0 * s12;
        o[2][c] = d43 + 4.0 * d12;
        o[3][c] = d42 + 2.0 * d31;
        o[4][c] = d42 - 2.0 * d31;
        o[5][c] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    o
}

/// `A^T m` for one column of six vectors, `A^T` =
/// `[[1,1,1,1,1,0],[0,1,-1,2,-2,0],[0,1,1,4,4,0],[0,1,-1,8,-8,1]]`.
#[inline(always)]
fn at6<const L: usize>(m: &[Lanes<L>; 6]) -> [Lanes<L>; 4] {
    let mut o = [[0.0f32; L]; 4];
    for c in 0..L {
        let (a, b) = (m[1][c] + m[2][c], m[1][c] - m[2][c]);
        let (s, d) = (m[3][c] + m[4][c], m[3][c] - m[4][c]);
        o[0][c] = m[0][c] + a + s;
        o[1][c] = b + 2.0 * d;
        o[2][c] = a + 4.0 * s;
        o[3][c] = b + 8.0 * d + m[5][c];
    }
    o
}

/// The map geometry shared by the transforms.
#[derive(Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

impl Geometry {
    /// Sample, first output row and first output column of tile `t`.
    fn tile(&self, t: usize) -> (usize, usize, usize) {
        let per = self.th * self.tw;
        (t / per, (t % per) / self.tw * 4, t % self.tw * 4)
    }
}

/// `V = B^T d B` of `L` channels from `c` of tile `j`: `rows[i*6 + k]` points at input pixel
/// `(i, k)` of the tile (or at zeros); `v` is the chunk's `[36, tc, cin]`.
///
/// # Safety
/// `rows` point at `c + L` readable floats; `v` holds `36 * tc * cin` floats.
#[inline(always)]
unsafe fn input_block<const L: usize>(
    rows: &[*const f32; 36],
    c: usize,
    v: *mut f32,
    tc: usize,
    cin: usize,
    j: usize,
) {
    let mut t = [[[0.0f32; L]; 6]; 6];
    for k in 0..6 {
        let col: [Lanes<L>; 6] =
            std::array::from_fn(|i| (rows[i * 6 + k].add(c) as *const Lanes<L>).read_unaligned());
        let o = bt6(&col);
        for (i, oi) in o.iter().enumerate() {
            t[i][k] = *oi;
        }
    }
    for (i, ti) in t.iter().enumerate() {
        let o = bt6(ti);
        for (k, ok) in o.iter().enumerate() {
            let p = v.add(((i * 6 + k) * tc + j) * cin + c) as *mut Lanes<L>;
            p.write_unaligned(*ok);
        }
    }
}

/// The input transform of tiles `t0 .. t0 + tc` into `v` (`[36, tc, cin]`).
///
/// # Safety
/// `x` is the `[n, h, w, cin]` map the geometry describes, `v` holds `36 * tc * cin` floats.
#[inline(always)]
unsafe fn input_tiles_impl(
    x: &[f32],
    g: Geometry,
    cin: usize,
    zeros: &[f32],
    v: *mut f32,
    t0: usize,
    tc: usize,
) {
    for j in 0..tc {
        let (b, oy, ox) = g.tile(t0 + j);
        let rows: [*const f32; 36] = std::array::from_fn(|e| {
            let (ih, iw) = ((oy + e / 6) as isize - 1, (ox + e % 6) as isize - 1);
            if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                zeros.as_ptr()
            } else {
                x.as_ptr()
                    .add(((b * g.h + ih as usize) * g.w + iw as usize) * cin)
            }
        });
        let mut c = 0;
        while c + 16 <= cin {
            input_block::<16>(&rows, c, v, tc, cin, j);
            c += 16;
        }
        while c < cin {
            input_block::<1>(&rows, c, v, tc, cin, j);
            c += 1;
        }
    }
}

/// The addends of the output pixels.
#[derive(Clone, Copy)]
struct Addends<'a> {
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
}

/// `Y = A^T M A` of `L` channels from `c` of tile `j` (`m`: the chunk's `[36, tc, cout]`),
/// plus bias and residual, written to the output pixels inside the map.
///
/// # Safety
/// `m` holds `36 * tc * cout` floats, `out` the `[n, h, w, cout]` map of the geometry.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn output_block<const L: usize>(
    m: *const f32,
    c: usize,
    tc: usize,
    cout: usize,
    j: usize,
    g: Geometry,
    (b, oy, ox): (usize, usize, usize),
    add: Addends,
    out: *mut f32,
) {
    let mut t = [[[0.0f32; L]; 6]; 4];
    #[allow(clippy::needless_range_loop)]
    for k in 0..6 {
        let col: [Lanes<L>; 6] = std::array::from_fn(|i| {
            (m.add(((i * 6 + k) * tc + j) * cout + c) as *const Lanes<L>).read_unaligned()
        });
        let o = at6(&col);
        for (r, or) in o.iter().enumerate() {
            t[r][k] = *or;
        }
    }
    let bias: Lanes<L> = match add.bias {
        Some(bv) => lanes(|l| bv[c + l]),
        None => [0.0; L],
    };
    for (r, tr) in t.iter().enumerate() {
        let oh = oy + r;
        if oh >= g.h {
            break;
        }
        let o = at6(tr);
        for (q, oq) in o.iter().enumerate() {
            let ow = ox + q;
            if ow >= g.w {
                break;
            }
            let p = ((b * g.h + oh) * g.w + ow) * cout + c;
            let mut y: Lanes<L> = lanes(|l| oq[l] + bias[l]);
            if let Some(res) = add.residual {
                let rv = (res.as_ptr().add(p) as *const Lanes<L>).read_unaligned();
                y = lanes(|l| y[l] + rv[l]);
            }
            (out.add(p) as *mut Lanes<L>).write_unaligned(y);
        }
    }
}

/// The output transform of tiles `t0 .. t0 + tc` from `m` into `out`.
///
/// # Safety
/// As [`output_block`]; the tiles' pixels are written by this caller only.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn output_tiles_impl(
    m: *const f32,
    g: Geometry,
    cout: usize,
    add: Addends,
    out: *mut f32,
    t0: usize,
    tc: usize,
) {
    for j in 0..tc {
        let tile = g.tile(t0 + j);
        let mut c = 0;
        while c + 16 <= cout {
            output_block::<16>(m, c, tc, cout, j, g, tile, add, out);
            c += 16;
        }
        while c < cout {
            output_block::<1>(m, c, tc, cout, j, g, tile, add, out);
            c += 1;
        }
    }
}

/// `unsafe fn $name(isa, args)`: `$imp(args)` compiled for AVX-512, for AVX2 + FMA or for
/// neither, as `isa` says (the arithmetic is the same).
macro_rules! isa_dispatch {
    ($name:ident => $imp:ident ($($a:ident: $t:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(isa: Isa, $($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($a: $t),*) {
                $imp($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($a: $t),*) {
                $imp($($a),*)
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512($($a),*),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => avx2($($a),*),
                _ => $imp($($a),*),
            }
        }
    };
}

isa_dispatch!(input_tiles => input_tiles_impl(
    x: &[f32], g: Geometry, cin: usize, zeros: &[f32], v: *mut f32, t0: usize, tc: usize
));
isa_dispatch!(output_tiles => output_tiles_impl(
    m: *const f32, g: Geometry, cout: usize, add: Addends, out: *mut f32, t0: usize, tc: usize
));

/// Which vector unit the transforms are compiled for (the arithmetic is the same).
#[derive(Clone, Copy, PartialEq)]
enum Isa {
    Avx512,
    Avx2,
    Plain,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Plain
}

/// NHWC 3x3 stride-1 pad-1 convolution by Winograd F(4x4, 3x3), `y = conv(x) + bias +
/// residual`; `u`: [`weights`], each of the 36 matrices packed ([`panel::pack_each`]). Tiles of 4x4 outputs are processed in parallel chunks; per chunk
/// the 36 transformed products are 36 GEMMs `[tiles, cin] x [cin, cout]`, themselves in
/// parallel when there are fewer chunks than twice the threads.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_nhwc(
    cin: usize,
    cout: usize,
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    u: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let plen = panel::packed_len(cin, cout);
    assert!(x.len() >= n * h * w * cin && u.len() >= 36 * plen);
    assert!(bias.is_none_or(|b| b.len() >= cout));
    assert!(residual.is_none_or(|r| r.len() >= n * h * w * cout));
    let g = Geometry {
        h,
        w,
        th: h.div_ceil(4),
        tw: w.div_ceil(4),
    };
    let tiles = n * g.th * g.tw;
    let mut out = vec![0.0f32; n * h * w * cout];
    if tiles == 0 {
        return out;
    }
    // The chunk's transformed input and products stay around 4 MiB, at least 16 tiles (GEMMs
    // of 16 rows or more); a small map is one or two chunks whose 36 products the threads share.
    let threads = rayon::current_num_threads().max(1);
    let chunk = ((4usize << 20) / (4 * 36 * (cin + cout)).max(1))
        .clamp(16, 256)
        .min(tiles.div_ceil(2 * threads).max(16));
    let chunks = tiles.div_ceil(chunk);
    let split_products = chunks < 2 * threads;
    let zeros = vec![0.0f32; cin];
    let add = Addends { bias, residual };
    let optr = SendPtr(out.as_mut_ptr());
    let isa = isa();
    (0..chunks).into_par_iter().for_each(|ci_| {
        #[allow(clippy::redundant_locals)]
        let optr = optr;
        let t0 = ci_ * chunk;
        let tc = chunk.min(tiles - t0);
        let mut v = take_scratch(36 * tc * cin);
        // SAFETY: v holds 36 * tc * cin floats; x is the described map; zeros has cin floats.
        unsafe {
            input_tiles(isa, x, g, cin, &zeros, v.as_mut_ptr(), t0, tc);
        }
        let m = winograd_products(36, tc, cin, cout, &v, u, split_products);
        give_scratch(v);
        // SAFETY: m holds 36 * tc * cout floats; the chunk's tiles cover output pixels that no
        // other task writes.
        unsafe {
            output_tiles(isa, m.as_ptr(), g, cout, add, optr.0, t0, tc);
        }
        give_scratch(m);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::tests::values;
    use crate::backend::cpu::conv::{conv2d_nhwc, reorder_oihw};
    use crate::backend::ConvSpec;

    /// F(4x4, 3x3) against the f64 definition of the convolution at sizes that are not
    /// multiples of 4 and channel counts with and without 16-channel blocks: a wrong transform
    /// coefficient, tile offset or edge shows up far above f32 rounding.
    #[test]
    fn winograd4_equals_the_definition() {
        for (n, h, w, cin, cout) in [
            (2, 5, 7, 3, 5),
            (1, 1, 1, 4, 2),
            (3, 8, 6, 17, 33),
            (1, 2, 3, 1, 1),
            (2, 9, 12, 40, 16),
            (1, 4, 4, 64, 48),
        ] {
            let spec = ConvSpec::new(cin, cout, 3, 1, 1);
            let x = values(n * h * w * cin, 1);
            let oihw = values(cout * cin * 9, 2);
            let bias = values(cout, 3);
            let res = values(n * h * w * cout, 4);
            let wt = reorder_oihw(&spec, &oihw);
            let u = panel::pack_each(36, cin, cout, &weights(cin, cout, &wt));
            let got = conv3x3_nhwc(cin, cout, &x, n, h, w, &u, Some(&bias), Some(&res));
            let mut worst = 0.0f64;
            for b in 0..n {
                for oh in 0..h {
                    for ow in 0..w {
                        for co in 0..cout {
                            let mut s = bias[co] as f64;
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    let (ih, iw) = (oh as isize + kh - 1, ow as isize + kw - 1);
                                    if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                        continue;
                                    }
                                    for ci in 0..cin {
                                        let xv = x
                                            [((b * h + ih as usize) * w + iw as usize) * cin + ci]
                                            as f64;
                                        let wv = oihw
                                            [((co * cin + ci) * 3 + kh as usize) * 3 + kw as usize]
                                            as f64;
                                        s += xv * wv;
                                    }
                                }
                            }
                            let p = ((b * h + oh) * w + ow) * cout + co;
                            s += res[p] as f64;
                            worst = worst.max((got[p] as f64 - s).abs());
                        }
                    }
                }
            }
            // Inputs and weights in [-1, 1]: outputs up to ~9 * cin; f32 rounding of the
            // transforms stays near 1e-6 of that.
            let tol = 2e-6 * (9 * cin) as f64;
            assert!(worst <= tol, "{n}x{h}x{w}x{cin}->{cout}: {worst} > {tol}");
            // And the same as the gathered-patch GEMM to f32 rounding.
            let direct = conv2d_nhwc(&spec, &x, n, h, w, &wt, Some(&bias), Some(&res));
            let d = got
                .iter()
                .zip(&direct)
                .fold(0.0f32, |a, (g, d)| a.max((g - d).abs()));
            assert!(
                (d as f64) <= 2.0 * tol,
                "{n}x{h}x{w}x{cin}->{cout}: {d} vs GEMM"
            );
        }
    }
}
