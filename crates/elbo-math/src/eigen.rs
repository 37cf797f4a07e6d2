//! Symmetric eigendecompositions without LAPACK: Householder reduction to tridiagonal
//! form and the implicit symmetric QR algorithm with Wilkinson shifts (Golub & Van
//! Loan, sections 8.3.1 and 8.3.3), `O(n^3)`; FID's matrix square roots are built on it
//! ([`crate::frechet`]).

use ndarray::{Array1, Array2, ArrayRef2};

use crate::error::{MathError, Result};
use crate::frechet::PSD_TOLERANCE;
use crate::validate;

/// Eigenvalues and eigenvectors of a symmetric matrix: `A = V diag(values) V^T` with
/// `V` orthogonal.
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetricEigen {
    /// The eigenvalues, in ascending order.
    pub values: Array1<f64>,
    /// The eigenvectors, as columns in the order of `values`.
    pub vectors: Array2<f64>,
}

/// The eigendecomposition of the symmetric matrix `a`: Householder reduction to
/// tridiagonal form, then the implicit symmetric QR algorithm with Wilkinson shifts
/// (Golub & Van Loan, sections 8.3.1 and 8.3.3), both accumulating the orthogonal
/// transformations. Errors unless `a` is square, finite and symmetric (to
/// [`PSD_TOLERANCE`] relative to its largest entry; the mean of the two triangles is what
/// is decomposed).
pub fn symmetric_eigen(a: &ArrayRef2<f64>) -> Result<SymmetricEigen> {
    let n = a.nrows();
    let (values, z) = decompose(a, true)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let sorted = order.iter().map(|&i| values[i]).collect();
    // Row i of `z` is the eigenvector of `values[i]`.
    let vectors = Array2::from_shape_fn((n, n), |(row, col)| z[order[col] * n + row]);
    Ok(SymmetricEigen {
        values: sorted,
        vectors,
    })
}

/// The eigenvalues of the symmetric matrix `a`, in ascending order ([`symmetric_eigen`]
/// without the eigenvectors: about a fifth of the work).
pub fn symmetric_eigenvalues(a: &ArrayRef2<f64>) -> Result<Array1<f64>> {
    let (mut values, _) = decompose(a, false)?;
    values.sort_by(f64::total_cmp);
    Ok(Array1::from(values))
}

/// The eigenvalues of `a` and, when `vectors`, the transposed eigenvector matrix as
/// rows (row-major `n x n`: row `i` belongs to value `i`).
fn decompose(a: &ArrayRef2<f64>, vectors: bool) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = a.nrows();
    if a.ncols() != n {
        return Err(MathError::ShapeMismatch {
            what: "symmetric matrix",
            expected: vec![n, n],
            found: a.shape().to_vec(),
        });
    }
    validate::all_finite("matrix entry", a.iter())?;
    check_symmetric("matrix", a)?;
    let mut m: Vec<f64> = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            m.push(0.5 * (a[[i, j]] + a[[j, i]]));
        }
    }
    let (mut d, mut e, reflectors) = tridiagonalise(&mut m, n);
    // Z = Q^T = H_{n-3} ... H_1 H_0, from the identity (reflector k touches rows k+1..).
    let mut z = Vec::new();
    if vectors {
        z = vec![0.0; n * n];
        for i in 0..n {
            z[i * n + i] = 1.0;
        }
        for (k, (v, beta)) in reflectors.iter().enumerate() {
            reflect_rows(&mut z, n, k + 1, v, *beta);
        }
    }
    tridiagonal_qr(&mut d, &mut e, vectors.then_some(&mut z[..]), n)?;
    Ok((d, z))
}

/// `rows[from..] -= beta v (v^T rows[from..])`: the reflection `I - beta v v^T` applied
/// from the left to the rows `from..` of the row-major `n`-column matrix `z`.
fn reflect_rows(z: &mut [f64], n: usize, from: usize, v: &[f64], beta: f64) {
    let mut w = vec![0.0; n];
    for (i, vi) in v.iter().enumerate() {
        let row = &z[(from + i) * n..(from + i + 1) * n];
        for (wj, rj) in w.iter_mut().zip(row) {
            *wj += vi * rj;
        }
    }
    for (i, vi) in v.iter().enumerate() {
        let scale = beta * vi;
        let row = &mut z[(from + i) * n..(from + i + 1) * n];
        for (rj, wj) in row.iter_mut().zip(&w) {
            *rj -= scale * wj;
        }
    }
}

/// Householder reduction of the symmetric row-major `m` (overwritten) to tridiagonal
/// form: the diagonal, the sub-diagonal and each step's reflector `(v, beta)` (acting on
/// indices `k + 1..`).
#[allow(clippy::type_complexity)]
fn tridiagonalise(m: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>, Vec<(Vec<f64>, f64)>) {
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n.saturating_sub(1)];
    let mut reflectors = Vec::with_capacity(n.saturating_sub(2));
    for k in 0..n.saturating_sub(2) {
        d[k] = m[k * n + k];
        // The column below the diagonal (row k right of it: the matrix is symmetric).
        let mut v: Vec<f64> = m[k * n + k + 1..(k + 1) * n].to_vec();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            e[k] = 0.0;
            reflectors.push((v, 0.0));
            continue;
        }
        let alpha = if v[0] > 0.0 { -norm } else { norm };
        v[0] -= alpha;
        let vv: f64 = v.iter().map(|x| x * x).sum();
        let beta = 2.0 / vv;
        e[k] = alpha;
        // The trailing block A22 (rows and columns k+1..) becomes H A22 H:
        // p = beta A22 v, w = p - (beta / 2)(p.v) v, A22 -= v w^T + w v^T.
        let size = n - k - 1;
        let mut p = vec![0.0; size];
        for (i, pi) in p.iter_mut().enumerate() {
            let row = &m[(k + 1 + i) * n + k + 1..(k + 2 + i) * n];
            *pi = beta * row.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
        }
        let half = 0.5 * beta * p.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
        let w: Vec<f64> = p.iter().zip(&v).map(|(pi, vi)| pi - half * vi).collect();
        for i in 0..size {
            let (vi, wi) = (v[i], w[i]);
            let row = &mut m[(k + 1 + i) * n + k + 1..(k + 2 + i) * n];
            for ((a, vj), wj) in row.iter_mut().zip(&v).zip(&w) {
                *a -= vi * wj + wi * vj;
            }
        }
        reflectors.push((v, beta));
    }
    if n >= 2 {
        d[n - 2] = m[(n - 2) * n + n - 2];
        e[n - 2] = m[(n - 2) * n + n - 1];
    }
    if n >= 1 {
        d[n - 1] = m[(n - 1) * n + n - 1];
    }
    (d, e, reflectors)
}

/// The implicit symmetric QR algorithm with Wilkinson shifts on the tridiagonal matrix
/// of diagonal `d` and sub-diagonal `e` (overwritten: `d` becomes the eigenvalues),
/// applying each rotation to the rows of `z` when given.
fn tridiagonal_qr(d: &mut [f64], e: &mut [f64], mut z: Option<&mut [f64]>, n: usize) -> Result<()> {
    let mut iterations = 0usize;
    let mut q = n.saturating_sub(1);
    while q > 0 {
        // Deflate negligible sub-diagonal entries, then find the bottom unreduced block.
        for i in 0..q {
            if e[i].abs() <= f64::EPSILON * (d[i].abs() + d[i + 1].abs()) {
                e[i] = 0.0;
            }
        }
        while q > 0 && e[q - 1] == 0.0 {
            q -= 1;
        }
        if q == 0 {
            break;
        }
        let mut p = q - 1;
        while p > 0 && e[p - 1] != 0.0 {
            p -= 1;
        }
        iterations += 1;
        if iterations > 60 * n {
            return Err(MathError::NoConvergence {
                what: "symmetric QR iterations of an eigendecomposition",
                iterations,
            });
        }
        // Wilkinson's shift: the eigenvalue of the trailing 2x2 nearer d[q].
        let half = 0.5 * (d[q - 1] - d[q]);
        let b = e[q - 1];
        let sign = if half >= 0.0 { 1.0 } else { -1.0 };
        let mu = d[q] - b * b / (half + sign * half.hypot(b));
        let (mut x, mut bulge) = (d[p] - mu, e[p]);
        for k in p..q {
            let r = x.hypot(bulge);
            let (c, s) = if r == 0.0 {
                (1.0, 0.0)
            } else {
                (x / r, bulge / r)
            };
            if k > p {
                e[k - 1] = r;
            }
            let (dk, dk1, ek) = (d[k], d[k + 1], e[k]);
            d[k] = c * c * dk + 2.0 * c * s * ek + s * s * dk1;
            d[k + 1] = s * s * dk - 2.0 * c * s * ek + c * c * dk1;
            e[k] = c * s * (dk1 - dk) + (c * c - s * s) * ek;
            if k + 1 < q {
                bulge = s * e[k + 1];
                e[k + 1] *= c;
                x = e[k];
            }
            if let Some(z) = z.as_deref_mut() {
                let (top, bottom) = z.split_at_mut((k + 1) * n);
                let row_k = &mut top[k * n..];
                let row_k1 = &mut bottom[..n];
                for (a, b) in row_k.iter_mut().zip(row_k1.iter_mut()) {
                    let (za, zb) = (*a, *b);
                    *a = c * za + s * zb;
                    *b = -s * za + c * zb;
                }
            }
        }
    }
    Ok(())
}

/// Errors naming the first entry that differs from its mirror by more than
/// [`PSD_TOLERANCE`] times the largest entry's size.
pub(crate) fn check_symmetric(what: &'static str, a: &ArrayRef2<f64>) -> Result<()> {
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let n = a.nrows();
    for i in 0..n {
        for j in i + 1..n {
            let (x, y) = (a[[i, j]], a[[j, i]]);
            if (x - y).abs() > PSD_TOLERANCE * scale || x.is_nan() != y.is_nan() {
                return Err(MathError::NotSymmetric {
                    what,
                    row: i,
                    col: j,
                    found: x,
                    mirror: y,
                });
            }
        }
    }
    Ok(())
}
