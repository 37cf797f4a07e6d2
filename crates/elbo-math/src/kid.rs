//! The kernel Inception distance (Bińkowski et al., 2018): the squared maximum mean
//! discrepancy between two sets of feature vectors under the polynomial kernel
//! `k(x, y) = (x.y / d + 1)^3`, by its unbiased estimator, averaged over random subsets
//! of both sets, as torch-fidelity and the paper's code compute it (100 subsets of 1000
//! by default).
//!
//! Unlike FID it is unbiased in the number of samples, so small sets compare fairly;
//! each subset's estimate can be negative.
//!
//! ```
//! use elbo_math::kid::{KidConfig, kernel_inception_distance};
//! use ndarray::array;
//!
//! let x = array![[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]];
//! let y = array![[2.0, 1.0], [1.0, 3.0], [0.5, 0.5]];
//! let config = KidConfig { subsets: 1, subset_size: 3, seed: 0 };
//! let kid = kernel_inception_distance(&x, &y, &config)?;
//! // One subset of all three: the estimator itself, and no spread.
//! assert_eq!(kid.std, 0.0);
//! assert!(kid.mean > 0.0);
//! # Ok::<(), elbo_math::MathError>(())
//! ```

use ndarray::{Array2, ArrayRef2, Axis};

use crate::error::{MathError, Result};
use crate::validate;

/// How many subsets, of what size, drawn with which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KidConfig {
    /// Subsets to average over.
    pub subsets: usize,
    /// Vectors drawn (without replacement) from each set per subset; capped at the
    /// smaller set's size.
    pub subset_size: usize,
    /// The seed of the subsets' draws.
    pub seed: u64,
}

impl Default for KidConfig {
    /// torch-fidelity's defaults: 100 subsets of 1000.
    fn default() -> Self {
        KidConfig {
            subsets: 100,
            subset_size: 1000,
            seed: 0,
        }
    }
}

/// The estimate: the mean over subsets and their standard deviation (numpy's `std`,
/// over the subsets, as torch-fidelity reports it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kid {
    /// The mean of the subsets' unbiased MMD^2.
    pub mean: f64,
    /// Their standard deviation.
    pub std: f64,
    /// The subset size used.
    pub subset_size: usize,
}

/// The unbiased MMD^2 estimate between the rows of `x` and `y` (same count `m`) under
/// `(x.y / d + 1)^3`: the off-diagonal means of `K_xx` and `K_yy` minus twice the mean
/// of `K_xy`.
pub fn polynomial_mmd2(x: &ArrayRef2<f64>, y: &ArrayRef2<f64>) -> Result<f64> {
    let (m, d) = x.dim();
    validate::same_len("second set's vectors", m, y.nrows())?;
    validate::same_len("second set's dimensions", d, y.ncols())?;
    if m < 2 || d == 0 {
        return Err(MathError::Empty {
            what: "KID subset (at least 2 vectors of at least 1 dimension)",
        });
    }
    let kernel = |a: &ArrayRef2<f64>, b: &ArrayRef2<f64>| -> Array2<f64> {
        (a.dot(&b.t()) / d as f64 + 1.0).mapv(|v| v * v * v)
    };
    let off_diagonal = |k: &Array2<f64>| k.sum() - k.diag().sum();
    let (kxx, kyy, kxy) = (kernel(x, x), kernel(y, y), kernel(x, y));
    let mf = m as f64;
    Ok((off_diagonal(&kxx) + off_diagonal(&kyy)) / (mf * (mf - 1.0)) - 2.0 * kxy.sum() / (mf * mf))
}

/// A splitmix64 stream: the subsets' draws.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `k` distinct indices of `0..n` (a partial Fisher-Yates shuffle; `k <= n`).
    fn choose(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + (self.next() % (n - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

/// KID between the feature rows of `x` and `y` (any counts, same dimension): the mean
/// and spread of [`polynomial_mmd2`] over `config.subsets` subsets of
/// `min(config.subset_size, rows of x, rows of y)` rows drawn from each.
pub fn kernel_inception_distance(
    x: &ArrayRef2<f64>,
    y: &ArrayRef2<f64>,
    config: &KidConfig,
) -> Result<Kid> {
    validate::same_len("second set's dimensions", x.ncols(), y.ncols())?;
    validate::all_finite("feature", x.iter().chain(y.iter()))?;
    if config.subsets == 0 {
        return Err(MathError::Empty {
            what: "KID subsets (at least 1)",
        });
    }
    let m = config.subset_size.min(x.nrows()).min(y.nrows());
    let mut rng = SplitMix(config.seed);
    let mut values = Vec::with_capacity(config.subsets);
    for _ in 0..config.subsets {
        let xs = x.select(Axis(0), &rng.choose(x.nrows(), m));
        let ys = y.select(Axis(0), &rng.choose(y.nrows(), m));
        values.push(polynomial_mmd2(&xs, &ys)?);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    Ok(Kid {
        mean,
        std,
        subset_size: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// The estimator written out element by element.
    fn naive(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
        let (m, d) = x.dim();
        let k = |a: ndarray::ArrayView1<'_, f64>, b: ndarray::ArrayView1<'_, f64>| {
            (a.dot(&b) / d as f64 + 1.0).powi(3)
        };
        let (mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0);
        for i in 0..m {
            for j in 0..m {
                if i != j {
                    xx += k(x.row(i), x.row(j));
                    yy += k(y.row(i), y.row(j));
                }
                xy += k(x.row(i), y.row(j));
            }
        }
        let mf = m as f64;
        xx / (mf * (mf - 1.0)) + yy / (mf * (mf - 1.0)) - 2.0 * xy / (mf * mf)
    }

    #[test]
    fn the_estimator_is_the_written_out_sum() {
        let x = array![
            [0.1, 2.0, -1.0],
            [1.5, 0.0, 0.3],
            [0.7, 0.7, 0.7],
            [-2.0, 1.0, 0.0]
        ];
        let y = array![
            [1.0, 1.0, 1.0],
            [0.0, -1.0, 2.0],
            [0.5, 0.25, 0.0],
            [3.0, 0.0, 1.0]
        ];
        let fast = polynomial_mmd2(&x, &y).unwrap();
        assert!((fast - naive(&x, &y)).abs() < 1e-12 * naive(&x, &y).abs().max(1.0));
        // Identical sets too (their estimate is not zero: the diagonal is left out of
        // K_xx and K_yy, not of K_xy).
        assert!((polynomial_mmd2(&x, &x).unwrap() - naive(&x, &x)).abs() < 1e-12);
    }

    #[test]
    fn subsets_are_distinct_rows_and_reproducible() {
        let mut rng = SplitMix(7);
        let pick = rng.choose(10, 10);
        let mut sorted = pick.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let x = Array2::from_shape_fn((30, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f64 / 11.0);
        let y = Array2::from_shape_fn((25, 4), |(i, j)| ((i * 5 + j) % 13) as f64 / 6.0);
        let config = KidConfig {
            subsets: 5,
            subset_size: 10,
            seed: 3,
        };
        let a = kernel_inception_distance(&x, &y, &config).unwrap();
        assert_eq!(a, kernel_inception_distance(&x, &y, &config).unwrap());
        assert_eq!(a.subset_size, 10);
        assert!(a.std > 0.0);
        // The subset size is capped at the smaller set.
        let capped = KidConfig {
            subset_size: 1000,
            ..config
        };
        assert_eq!(
            kernel_inception_distance(&x, &y, &capped)
                .unwrap()
                .subset_size,
            25
        );
    }

    #[test]
    fn far_sets_score_higher_than_near_ones() {
        // Rows of a fixed pseudo-random pattern; the far set is shifted by 3 in every
        // coordinate. The unbiased estimate of a shift's MMD^2 grows with the shift.
        let base = Array2::from_shape_fn((40, 3), |(i, j)| ((i * 37 + j * 11) % 17) as f64 / 17.0);
        let near = &base + 0.05;
        let far = &base + 3.0;
        let config = KidConfig {
            subsets: 10,
            subset_size: 20,
            seed: 1,
        };
        let k_near = kernel_inception_distance(&base, &near, &config).unwrap();
        let k_far = kernel_inception_distance(&base, &far, &config).unwrap();
        assert!(
            k_far.mean > 100.0 * k_near.mean.abs(),
            "{k_near:?} {k_far:?}"
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let x = array![[1.0, 2.0]];
        assert!(polynomial_mmd2(&x, &x).is_err());
        let y = array![[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]];
        let two = array![[1.0, 2.0], [3.0, 4.0]];
        assert!(kernel_inception_distance(&two, &y, &KidConfig::default()).is_err());
        let nan = array![[1.0, f64::NAN], [3.0, 4.0]];
        assert!(kernel_inception_distance(&two, &nan, &KidConfig::default()).is_err());
    }
}
