//! The Fréchet distance between two Gaussians, the statistic behind FID (Heusel et al.,
//! 2017): fit a Gaussian to each of two sets of feature vectors and compare them by
//!
//! `d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})`,
//!
//! the squared 2-Wasserstein distance between `N(mu_1, S_1)` and `N(mu_2, S_2)`. As FID
//! does, [`frechet_distance`] reports `d^2`.
//!
//! The matrix square roots come from a symmetric eigendecomposition
//! ([`symmetric_eigen`]: Householder tridiagonalisation and the implicit QR algorithm),
//! written out here so the crate needs no LAPACK; it is accurate to rounding and takes
//! seconds for the 2048 dimensions of Inception's features.
//!
//! ```
//! use elbo_math::frechet::{GaussianFit, frechet_distance};
//! use ndarray::array;
//!
//! // Two 1-D Gaussians N(1, 2^2) and N(4, 3^2): d^2 = (1 - 4)^2 + (2 - 3)^2 = 10.
//! let a = GaussianFit::new(array![1.0], array![[4.0]])?;
//! let b = GaussianFit::new(array![4.0], array![[9.0]])?;
//! assert!((frechet_distance(&a, &b)? - 10.0).abs() < 1e-12);
//!
//! // From samples (rows): the mean and the unbiased (n - 1) covariance.
//! let fit = GaussianFit::from_samples(&array![[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])?;
//! assert_eq!(fit.mean(), &array![2.0, 2.0]);
//! assert_eq!(fit.covariance(), &array![[4.0, 3.0], [3.0, 3.0]]);
//! assert_eq!(frechet_distance(&fit, &fit)?, 0.0);
//! # Ok::<(), elbo_math::MathError>(())
//! ```

use ndarray::{Array1, Array2, ArrayRef1, ArrayRef2, Axis};

use crate::eigen::check_symmetric;
pub use crate::eigen::{SymmetricEigen, symmetric_eigen, symmetric_eigenvalues};
use crate::error::{MathError, Result};
use crate::validate;

/// Relative size below which a negative eigenvalue of a positive semi-definite matrix is
/// taken for rounding and clamped to zero (relative to the largest eigenvalue's size).
pub const PSD_TOLERANCE: f64 = 1e-9;

/// A Gaussian `N(mean, covariance)` fitted to (or describing) a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianFit {
    mean: Array1<f64>,
    covariance: Array2<f64>,
}

impl GaussianFit {
    /// A Gaussian with the given mean and covariance; errors unless every entry is
    /// finite, the covariance is square with as many rows as the mean has entries, and it
    /// is symmetric (to [`PSD_TOLERANCE`] relative to its largest entry).
    pub fn new(mean: Array1<f64>, covariance: Array2<f64>) -> Result<Self> {
        validate::all_finite("mean", mean.iter())?;
        let d = mean.len();
        if covariance.shape() != [d, d] {
            return Err(MathError::ShapeMismatch {
                what: "covariance",
                expected: vec![d, d],
                found: covariance.shape().to_vec(),
            });
        }
        check_symmetric("covariance", &covariance)?;
        Ok(Self { mean, covariance })
    }

    /// The sample mean and the unbiased sample covariance (divided by `n - 1`) of the
    /// rows of `samples` (shape `(n, dims)`). Needs `n >= 2`, `dims >= 1` and finite
    /// entries.
    pub fn from_samples(samples: &ArrayRef2<f64>) -> Result<Self> {
        let (n, d) = samples.dim();
        if n < 2 {
            return Err(MathError::TooFewSamples {
                what: "a covariance of feature rows",
                expected_at_least: 2,
                found: n,
            });
        }
        if d == 0 {
            return Err(MathError::Empty {
                what: "feature rows",
            });
        }
        validate::all_finite("feature", samples.iter())?;
        let mean = samples.mean_axis(Axis(0)).ok_or(MathError::Empty {
            what: "feature rows",
        })?;
        let centred = samples.to_owned() - mean.view().insert_axis(Axis(0));
        let scatter = centred.t().dot(&centred) / (n - 1) as f64;
        // Exactly symmetric, whatever order the product summed in.
        let covariance = (&scatter + &scatter.t()) * 0.5;
        Ok(Self { mean, covariance })
    }

    /// The mean.
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }

    /// The covariance.
    pub fn covariance(&self) -> &Array2<f64> {
        &self.covariance
    }

    /// The dimension.
    pub fn dims(&self) -> usize {
        self.mean.len()
    }
}

/// The squared Fréchet distance between two Gaussians,
/// `|mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})` (FID's
/// statistic). Symmetric in its arguments and never negative: a result below zero by
/// rounding is returned as zero. Errors if the dimensions differ or a covariance is not
/// positive semi-definite (beyond rounding).
pub fn frechet_distance(a: &GaussianFit, b: &GaussianFit) -> Result<f64> {
    validate::same_len("second Gaussian's mean", a.dims(), b.dims())?;
    let root_a = sqrt_psd(&a.covariance)?;
    let product = root_a.dot(&b.covariance).dot(&root_a);
    let product = (&product + &product.t()) * 0.5;
    let values = symmetric_eigenvalues(&product)?;
    let cross: f64 = clamp_psd("S_1^{1/2} S_2 S_1^{1/2}", &values)?
        .iter()
        .map(|v| v.sqrt())
        .sum();
    let diff = &a.mean - &b.mean;
    let trace = a.covariance.diag().sum() + b.covariance.diag().sum();
    Ok((diff.dot(&diff) + trace - 2.0 * cross).max(0.0))
}

/// The symmetric positive semi-definite square root `A^{1/2}` of a symmetric positive
/// semi-definite `a`: `V diag(sqrt(values)) V^T`. Eigenvalues negative by rounding
/// (down to `-PSD_TOLERANCE` times the largest eigenvalue's size) count as zero; more
/// negative ones are an error.
pub fn sqrt_psd(a: &ArrayRef2<f64>) -> Result<Array2<f64>> {
    let eigen = symmetric_eigen(a)?;
    let roots = clamp_psd("matrix to take the square root of", &eigen.values)?.mapv(f64::sqrt);
    let scaled = &eigen.vectors * &roots.view().insert_axis(Axis(0));
    let root = scaled.dot(&eigen.vectors.t());
    Ok((&root + &root.t()) * 0.5)
}

/// [`frechet_distance`] between the Gaussian fitted to the rows of `samples` (as
/// [`GaussianFit::from_samples`]) and `b`: the same number, computed from the samples
/// when there are fewer of them than dimensions. Then `S_1 = X^T X` for the centred
/// rows scaled by `1 / sqrt(n - 1)`, and the non-zero eigenvalues of
/// `S_1^{1/2} S_2 S_1^{1/2}` are those of the `n x n` matrix `X S_2 X^T`: `n x n` work
/// instead of two `d x d` eigendecompositions (FID of a thousand samples in 2048
/// Inception dimensions).
pub fn frechet_distance_from_samples(samples: &ArrayRef2<f64>, b: &GaussianFit) -> Result<f64> {
    let a = GaussianFit::from_samples(samples)?;
    let (n, d) = samples.dim();
    validate::same_len("second Gaussian's mean", d, b.dims())?;
    if n > d {
        return frechet_distance(&a, b);
    }
    let centred =
        (samples.to_owned() - a.mean.view().insert_axis(Axis(0))) / ((n - 1) as f64).sqrt();
    let small = centred.dot(&b.covariance).dot(&centred.t());
    let small = (&small + &small.t()) * 0.5;
    let values = symmetric_eigenvalues(&small)?;
    let cross: f64 = clamp_psd("X S_2 X^T", &values)?
        .iter()
        .map(|v| v.sqrt())
        .sum();
    let diff = &a.mean - &b.mean;
    let trace = centred.iter().map(|x| x * x).sum::<f64>() + b.covariance.diag().sum();
    Ok((diff.dot(&diff) + trace - 2.0 * cross).max(0.0))
}

/// The eigenvalues with rounding-sized negatives set to zero; an error names the first
/// truly negative one.
fn clamp_psd(what: &'static str, values: &ArrayRef1<f64>) -> Result<Array1<f64>> {
    let scale = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = -PSD_TOLERANCE * scale;
    match values.iter().position(|&v| v < floor) {
        Some(index) => Err(MathError::OutOfRange {
            what,
            expected: "[0, inf) for the eigenvalues of a positive semi-definite matrix",
            found: values[index],
            index: Some(index),
        }),
        None => Ok(values.mapv(|v| v.max(0.0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_matrix(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Array2<f64> {
        Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0..1.0))
    }

    /// `B B^T + ridge I`: symmetric positive definite.
    fn random_spd(rng: &mut ChaCha8Rng, n: usize, ridge: f64) -> Array2<f64> {
        let b = random_matrix(rng, n, n);
        b.dot(&b.t()) + Array2::<f64>::eye(n) * ridge
    }

    fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
        (a - b).iter().fold(0.0f64, |m, v| m.max(v.abs()))
    }

    /// An orthogonal matrix: the eigenvectors of a random symmetric one.
    fn random_orthogonal(rng: &mut ChaCha8Rng, n: usize) -> Array2<f64> {
        let s = random_matrix(rng, n, n);
        symmetric_eigen(&(&s + &s.t())).unwrap().vectors
    }

    /// The decomposition rebuilds the matrix (`V diag(values) V^T = A`), its vectors are
    /// orthonormal, and the values-only path gives the same values: on random symmetric
    /// matrices of several sizes, one with repeated eigenvalues, and diagonal and
    /// already-tridiagonal ones. Rounding grows like n times machine epsilon times the
    /// norm; 1e-10 relative leaves a factor of ~100 at n = 200.
    #[test]
    fn eigendecompositions_rebuild_their_matrix() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut cases: Vec<Array2<f64>> = [1usize, 2, 3, 7, 50, 200]
            .iter()
            .map(|&n| {
                let s = random_matrix(&mut rng, n, n);
                &s + &s.t()
            })
            .collect();
        let q = random_orthogonal(&mut rng, 30);
        let repeated = Array1::from_shape_fn(30, |i| (i / 10) as f64);
        cases.push(q.dot(&Array2::from_diag(&repeated)).dot(&q.t()));
        cases.push(Array2::from_diag(&array![3.0, -1.0, 2.0, 0.0]));
        cases.push(array![[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]]);
        for a in cases {
            let n = a.nrows();
            let eigen = symmetric_eigen(&a).unwrap();
            let rebuilt = (&eigen.vectors * &eigen.values.view().insert_axis(Axis(0)))
                .dot(&eigen.vectors.t());
            let scale = a.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            assert!(max_abs_diff(&rebuilt, &a) < 1e-10 * scale, "n = {n}");
            let gram = eigen.vectors.t().dot(&eigen.vectors);
            assert!(max_abs_diff(&gram, &Array2::eye(n)) < 1e-10, "n = {n}");
            assert!(eigen.values.windows(2).into_iter().all(|w| w[0] <= w[1]));
            let values = symmetric_eigenvalues(&a).unwrap();
            let gap = (&values - &eigen.values)
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(gap < 1e-10 * scale, "n = {n}");
        }
        // The tridiagonal matrix 2 on the diagonal, 1 beside it: 2 + 2 cos(k pi / 4).
        let values =
            symmetric_eigenvalues(&array![[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
                .unwrap();
        let want = [2.0 - 2f64.sqrt(), 2.0, 2.0 + 2f64.sqrt()];
        for (v, w) in values.iter().zip(want) {
            assert!((v - w).abs() < 1e-14, "{v} vs {w}");
        }
    }

    /// Fewer samples than dimensions: the n x n route gives the d x d one's number. The
    /// d x d route is the noisier: S_1 is singular, and each of its d - n + 1 rounding-
    /// sized eigenvalues (about eps times the largest) adds a square root of that size
    /// to the cross term, so the routes agree to d sqrt(eps * scale), scale bounded by
    /// the distance itself here.
    #[test]
    fn few_samples_give_the_full_computations_distance() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let b = GaussianFit::new(
            Array1::from_shape_fn(40, |i| i as f64 / 40.0),
            random_spd(&mut rng, 40, 0.5),
        )
        .unwrap();
        for n in [2usize, 7, 39, 60] {
            let samples = random_matrix(&mut rng, n, 40) * 2.0;
            let full = frechet_distance(&GaussianFit::from_samples(&samples).unwrap(), &b).unwrap();
            let fast = frechet_distance_from_samples(&samples, &b).unwrap();
            let tolerance = 40.0 * (f64::EPSILON * full).sqrt();
            assert!((full - fast).abs() < tolerance, "n = {n}: {full} vs {fast}");
        }
    }

    #[test]
    fn identical_gaussians_are_at_distance_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cov = random_spd(&mut rng, 12, 0.1);
        let fit = GaussianFit::new(Array1::from_elem(12, 0.3), cov).unwrap();
        assert!(frechet_distance(&fit, &fit).unwrap().abs() < 1e-9);
    }

    #[test]
    fn one_dimension_is_the_squared_differences_of_means_and_deviations() {
        for (m1, s1, m2, s2) in [
            (0.0, 1.0, 0.0, 2.0),
            (-1.5, 0.3, 2.0, 0.3),
            (5.0, 7.0, -2.0, 0.1),
        ] {
            let a = GaussianFit::new(array![m1], array![[s1 * s1]]).unwrap();
            let b = GaussianFit::new(array![m2], array![[s2 * s2]]).unwrap();
            let want: f64 = (m1 - m2) * (m1 - m2) + (s1 - s2) * (s1 - s2);
            let got = frechet_distance(&a, &b).unwrap();
            assert!(
                (got - want).abs() < 1e-12 * want.max(1.0),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn diagonal_covariances_give_the_sum_of_per_dimension_terms() {
        let (m1, v1) = (array![0.0, 1.0, -2.0, 0.5], array![1.0, 4.0, 0.25, 9.0]);
        let (m2, v2) = (array![1.0, 1.0, 0.0, -0.5], array![2.0, 1.0, 0.25, 16.0]);
        let a = GaussianFit::new(m1.clone(), Array2::from_diag(&v1)).unwrap();
        let b = GaussianFit::new(m2.clone(), Array2::from_diag(&v2)).unwrap();
        let want: f64 = (0..4)
            .map(|i| (m1[i] - m2[i]).powi(2) + (v1[i].sqrt() - v2[i].sqrt()).powi(2))
            .sum();
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn commuting_covariances_compare_their_shared_eigenvalues() {
        // S_i = Q D_i Q^T share eigenvectors: d^2 = |dmu|^2 + sum (sqrt d1 - sqrt d2)^2.
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let n = 6;
        let q = random_orthogonal(&mut rng, n);
        let d1 = Array1::from_shape_fn(n, |_| rng.random_range(0.1..3.0));
        let d2 = Array1::from_shape_fn(n, |_| rng.random_range(0.1..3.0));
        let s1 = q.dot(&Array2::from_diag(&d1)).dot(&q.t());
        let s2 = q.dot(&Array2::from_diag(&d2)).dot(&q.t());
        let (s1, s2) = ((&s1 + &s1.t()) * 0.5, (&s2 + &s2.t()) * 0.5);
        let mu1 = Array1::from_shape_fn(n, |_| rng.random_range(-1.0..1.0));
        let mu2 = Array1::from_shape_fn(n, |_| rng.random_range(-1.0..1.0));
        let diff = &mu1 - &mu2;
        let want = diff.dot(&diff)
            + d1.iter()
                .zip(&d2)
                .map(|(a, b)| (a.sqrt() - b.sqrt()).powi(2))
                .sum::<f64>();
        let a = GaussianFit::new(mu1, s1).unwrap();
        let b = GaussianFit::new(mu2, s2).unwrap();
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-11);
    }

    #[test]
    fn two_by_two_non_commuting_matches_the_closed_form() {
        // For 2 x 2, Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M)), with M = S1^1/2 S2 S1^1/2:
        // Tr M = Tr(S1 S2) and det M = det S1 det S2.
        let s1 = array![[2.0, 0.7], [0.7, 1.0]];
        let s2 = array![[0.5, -0.2], [-0.2, 3.0]];
        let tr_s1s2 = s1.dot(&s2).diag().sum();
        let det = |m: &Array2<f64>| m[[0, 0]] * m[[1, 1]] - m[[0, 1]] * m[[1, 0]];
        let cross = (tr_s1s2 + 2.0 * (det(&s1) * det(&s2)).sqrt()).sqrt();
        let want = 1.0 + 4.0 + s1.diag().sum() + s2.diag().sum() - 2.0 * cross;
        let a = GaussianFit::new(array![0.0, 0.0], s1).unwrap();
        let b = GaussianFit::new(array![1.0, -2.0], s2).unwrap();
        let got = frechet_distance(&a, &b).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        let back = frechet_distance(&b, &a).unwrap();
        assert!((got - back).abs() < 1e-12, "not symmetric: {got} vs {back}");
    }

    #[test]
    fn a_random_spd_matrix_square_root_squares_back_and_eigenvectors_are_orthonormal() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in [1, 2, 5, 40, 128] {
            let a = random_spd(&mut rng, n, 0.05);
            let root = sqrt_psd(&a).unwrap();
            let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(
                max_abs_diff(&root.dot(&root), &a) < 1e-12 * scale * n as f64,
                "n = {n}"
            );
            assert_eq!(root, root.t());
            let eigen = symmetric_eigen(&a).unwrap();
            let vtv = eigen.vectors.t().dot(&eigen.vectors);
            assert!(
                max_abs_diff(&vtv, &Array2::eye(n)) < 1e-12 * n as f64,
                "n = {n}"
            );
            assert!(eigen.values.windows(2).into_iter().all(|w| w[0] <= w[1]));
            let back = (&eigen.vectors * &eigen.values.view().insert_axis(Axis(0)))
                .dot(&eigen.vectors.t());
            assert!(
                max_abs_diff(&back, &a) < 1e-12 * scale * n as f64,
                "n = {n}"
            );
        }
    }

    #[test]
    fn a_singular_covariance_has_a_root_and_distances() {
        // Rank 1 (as when features are fewer than dimensions); rounding may leave
        // eigenvalues of -1e-17 that must be clamped, not refused.
        let u = array![[1.0], [2.0], [-1.0]];
        let s = u.dot(&u.t());
        let root = sqrt_psd(&s).unwrap();
        assert!(max_abs_diff(&root.dot(&root), &s) < 1e-12);
        let a = GaussianFit::new(Array1::zeros(3), s.clone()).unwrap();
        assert!(frechet_distance(&a, &a).unwrap() < 1e-9);
    }

    #[test]
    fn samples_give_the_mean_and_unbiased_covariance_and_shifts_add_their_square() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let x = random_matrix(&mut rng, 50, 4);
        let fit = GaussianFit::from_samples(&x).unwrap();
        for j in 0..4 {
            let col = x.column(j);
            let mean = col.sum() / 50.0;
            assert!((fit.mean()[j] - mean).abs() < 1e-15);
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 49.0;
            assert!((fit.covariance()[[j, j]] - var).abs() < 1e-14);
        }
        let shift = array![1.0, -2.0, 0.0, 0.5];
        let moved = GaussianFit::from_samples(&(&x + &shift.view().insert_axis(Axis(0)))).unwrap();
        let d = frechet_distance(&fit, &moved).unwrap();
        assert!((d - shift.dot(&shift)).abs() < 1e-9, "{d}");
    }

    #[test]
    fn bad_inputs_are_errors_saying_expected_and_found() {
        let e = GaussianFit::from_samples(&array![[1.0, 2.0]]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a covariance of feature rows needs at least 2 samples, found 1"
        );
        let e = GaussianFit::from_samples(&array![[1.0, f64::NAN], [0.0, 1.0]]).unwrap_err();
        assert!(
            e.to_string()
                .contains("feature must be finite, found NaN at index 1"),
            "{e}"
        );
        let e = GaussianFit::new(array![0.0, 0.0], array![[1.0]]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "covariance has shape [1, 1], expected [2, 2]"
        );
        let e = GaussianFit::new(array![0.0, 0.0], array![[1.0, 0.5], [0.0, 1.0]]).unwrap_err();
        assert!(e.to_string().contains("must be symmetric"), "{e}");
        let a = GaussianFit::new(array![0.0], array![[1.0]]).unwrap();
        let b = GaussianFit::new(array![0.0, 0.0], Array2::eye(2)).unwrap();
        let e = frechet_distance(&a, &b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "second Gaussian's mean has length 2, expected 1"
        );
        let indefinite =
            GaussianFit::new(array![0.0, 0.0], array![[1.0, 2.0], [2.0, 1.0]]).unwrap();
        let e = frechet_distance(&indefinite, &indefinite).unwrap_err();
        assert!(e.to_string().contains("positive semi-definite"), "{e}");
        assert!(symmetric_eigen(&array![[1.0, 2.0]]).is_err());
        assert!(symmetric_eigen(&array![[f64::INFINITY]]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn distance_is_symmetric_non_negative_and_zero_on_itself(seed in any::<u64>(), n in 1usize..8) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let a = GaussianFit::new(
                Array1::from_shape_fn(n, |_| rng.random_range(-2.0..2.0)),
                random_spd(&mut rng, n, 0.01),
            ).unwrap();
            let b = GaussianFit::new(
                Array1::from_shape_fn(n, |_| rng.random_range(-2.0..2.0)),
                random_spd(&mut rng, n, 0.01),
            ).unwrap();
            let ab = frechet_distance(&a, &b).unwrap();
            let ba = frechet_distance(&b, &a).unwrap();
            prop_assert!(ab >= 0.0);
            prop_assert!((ab - ba).abs() <= 1e-9 * ab.max(1.0), "{} vs {}", ab, ba);
            prop_assert!(frechet_distance(&a, &a).unwrap() <= 1e-9);
            // The distance (not its square) is a metric: the triangle inequality via a
            // third Gaussian.
            let c = GaussianFit::new(Array1::zeros(n), Array2::eye(n)).unwrap();
            let ac = frechet_distance(&a, &c).unwrap().sqrt();
            let cb = frechet_distance(&c, &b).unwrap().sqrt();
            prop_assert!(ab.sqrt() <= ac + cb + 1e-9);
        }
    }
}
