//! The little dense linear algebra the closed-form test beds need (a Cholesky
//! factorisation, triangular solves, log-determinants), written out so the crate stays
//! pure Rust without a LAPACK binding. Crate-private; meant for matrices of tens of rows.

use crate::error::{MathError, Result};
use ndarray::{Array1, Array2, ArrayRef1, ArrayRef2};

/// The lower-triangular `L` with `A = L L^T` for a symmetric positive-definite `A`.
#[derive(Debug, Clone)]
pub(crate) struct Cholesky {
    l: Array2<f64>,
}

impl Cholesky {
    /// Factorises `a` (only its lower triangle is read); errors if it is not square or not
    /// positive definite.
    pub(crate) fn new(what: &'static str, a: &ArrayRef2<f64>) -> Result<Self> {
        let n = a.nrows();
        if a.ncols() != n {
            return Err(MathError::ShapeMismatch {
                what,
                expected: vec![n, n],
                found: a.shape().to_vec(),
            });
        }
        let mut l = Array2::<f64>::zeros((n, n));
        for j in 0..n {
            let pivot = a[[j, j]] - (0..j).map(|k| l[[j, k]] * l[[j, k]]).sum::<f64>();
            if !(pivot > 0.0 && pivot.is_finite()) {
                return Err(MathError::NotPositiveDefinite {
                    what,
                    pivot,
                    row: j,
                });
            }
            let d = pivot.sqrt();
            l[[j, j]] = d;
            for i in j + 1..n {
                let s = a[[i, j]] - (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum::<f64>();
                l[[i, j]] = s / d;
            }
        }
        Ok(Self { l })
    }

    /// `ln det A = 2 sum ln L_ii`.
    pub(crate) fn log_det(&self) -> f64 {
        2.0 * self.l.diag().iter().map(|d| d.ln()).sum::<f64>()
    }

    /// `L^{-1} b` (forward substitution); `b` must have `n` entries (callers check).
    pub(crate) fn solve_lower(&self, b: &ArrayRef1<f64>) -> Array1<f64> {
        let n = self.l.nrows();
        let mut y = Array1::<f64>::zeros(n);
        for i in 0..n {
            let s = b[i] - (0..i).map(|k| self.l[[i, k]] * y[k]).sum::<f64>();
            y[i] = s / self.l[[i, i]];
        }
        y
    }

    /// `A^{-1} b` by forward then backward substitution.
    pub(crate) fn solve(&self, b: &ArrayRef1<f64>) -> Array1<f64> {
        let y = self.solve_lower(b);
        let n = self.l.nrows();
        let mut x = Array1::<f64>::zeros(n);
        for i in (0..n).rev() {
            let s = y[i] - (i + 1..n).map(|k| self.l[[k, i]] * x[k]).sum::<f64>();
            x[i] = s / self.l[[i, i]];
        }
        x
    }

    /// `A^{-1}`, column by column.
    pub(crate) fn inverse(&self) -> Array2<f64> {
        let n = self.l.nrows();
        let mut inv = Array2::<f64>::zeros((n, n));
        for j in 0..n {
            let mut e = Array1::<f64>::zeros(n);
            e[j] = 1.0;
            inv.column_mut(j).assign(&self.solve(&e));
        }
        inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn factorises_solves_and_inverts_a_known_matrix() {
        let a = array![[4.0, 2.0, 0.4], [2.0, 5.0, 1.0], [0.4, 1.0, 3.0]];
        let c = Cholesky::new("A", &a).unwrap();
        let x = c.solve(&array![1.0, -2.0, 0.5]);
        // A x reproduces b to 1e-14 (a well-conditioned 3 x 3: a few roundings per entry).
        let back = a.dot(&x);
        for (got, want) in back.iter().zip([1.0, -2.0, 0.5]) {
            assert!((got - want).abs() < 1e-14);
        }
        let identity = a.dot(&c.inverse());
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((identity[[i, j]] - want).abs() < 1e-14);
            }
        }
        // det by cofactors: 4 (15 - 1) - 2 (6 - 0.4) + 0.4 (2 - 2) = 44.8; 1e-14 relative.
        assert!((c.log_det() - 44.8f64.ln()).abs() < 1e-14);
        // ||L^{-1} b||^2 = b^T A^{-1} b.
        let b = array![1.0, -2.0, 0.5];
        let y = c.solve_lower(&b);
        assert!((y.dot(&y) - b.dot(&x)).abs() < 1e-14);
    }

    #[test]
    fn rejects_non_square_and_indefinite_matrices() {
        assert!(Cholesky::new("A", &array![[1.0, 0.0]]).is_err());
        let e = Cholesky::new("A", &array![[1.0, 2.0], [2.0, 1.0]]).unwrap_err();
        assert!(matches!(e, MathError::NotPositiveDefinite { row: 1, .. }));
    }
}
