//! Eigenvalues and eigenvectors of a dense symmetric f64 matrix: Householder reduction to
//! tridiagonal form, then the implicit QL algorithm with Wilkinson-type shifts (the classic
//! EISPACK `tred2` / `tql2` pair). `O(n^3)`; used for covariance square roots (Fréchet distance).

use crate::error::{Error, Result};

/// Eigen-decomposition `A = V diag(values) V^T` of a symmetric matrix.
#[derive(Clone, Debug)]
pub struct SymEig {
    pub n: usize,
    /// Eigenvalues, ascending.
    pub values: Vec<f64>,
    /// Eigenvectors as columns of a row-major `n x n` matrix: `vectors[r * n + j]` is row `r`
    /// of the eigenvector of `values[j]`.
    pub vectors: Vec<f64>,
}

/// Eigen-decomposition of the symmetric row-major `n x n` matrix `a` (only its symmetric part
/// matters; the lower triangle is read). A non-finite entry, or no convergence, is an error.
pub fn sym_eig(a: &[f64], n: usize) -> Result<SymEig> {
    if a.len() != n * n {
        return Err(Error::arg(format!(
            "sym_eig: {} values for a {n}x{n} matrix",
            a.len()
        )));
    }
    if let Some(i) = a.iter().position(|v| !v.is_finite()) {
        return Err(Error::arg(format!(
            "sym_eig: non-finite entry {} at ({}, {})",
            a[i],
            i / n,
            i % n
        )));
    }
    if n == 0 {
        return Ok(SymEig {
            n,
            values: vec![],
            vectors: vec![],
        });
    }
    let mut v: Vec<f64> = (0..n * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            if r >= c {
                a[i]
            } else {
                a[c * n + r]
            }
        })
        .collect();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tridiagonalize(&mut v, n, &mut d, &mut e);
    ql_implicit(&mut v, n, &mut d, &mut e)?;
    // Ascending order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
    let values = order.iter().map(|&j| d[j]).collect();
    let mut vectors = vec![0.0; n * n];
    for (new, &old) in order.iter().enumerate() {
        for r in 0..n {
            vectors[r * n + new] = v[r * n + old];
        }
    }
    Ok(SymEig { n, values, vectors })
}

/// Householder reduction of the symmetric `v` (row-major) to tridiagonal form: on return `d` is
/// the diagonal, `e[1..]` the subdiagonal and `v` the accumulated orthogonal transformation.
fn tridiagonalize(v: &mut [f64], n: usize, d: &mut [f64], e: &mut [f64]) {
    let at = |r: usize, c: usize| r * n + c;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for &dk in d.iter().take(i) {
            scale += dk.abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for dk in d.iter_mut().take(i) {
                *dk /= scale;
                h += *dk * *dk;
            }
            let mut f = d[i - 1];
            let mut g = if f > 0.0 { -h.sqrt() } else { h.sqrt() };
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for ej in e.iter_mut().take(i) {
                *ej = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[at(k, i + 1)] * v[at(k, j)];
                }
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Eigenvalues (`d`) and eigenvectors (`v`, accumulated) of the tridiagonal matrix from
/// [`tridiagonalize`], by the implicit QL method.
fn ql_implicit(v: &mut [f64], n: usize, d: &mut [f64], e: &mut [f64]) -> Result<()> {
    let at = |r: usize, c: usize| r * n + c;
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1 = 0.0f64;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iterations = 0;
            loop {
                iterations += 1;
                if iterations > 60 {
                    return Err(Error::arg(format!(
                        "sym_eig: no convergence for eigenvalue {l} of a {n}x{n} matrix"
                    )));
                }
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().take(n).skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for k in 0..n {
                        h = v[at(k, i + 1)];
                        v[at(k, i + 1)] = s * v[at(k, i)] + c * h;
                        v[at(k, i)] = c * v[at(k, i)] - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok(())
}
