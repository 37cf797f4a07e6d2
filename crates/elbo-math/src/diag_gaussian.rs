//! [`DiagGaussian`]: a validated diagonal Gaussian `N(mean, diag(exp(log_var)))`, the
//! VAE's approximate posterior and prior. Its quantities are sums of the per-dimension
//! kernels in [`crate::gaussian`].

use crate::error::{MathError, Result};
use crate::gaussian;
use crate::validate;
use ndarray::{Array1, ArrayRef1, Zip};
use rand::Rng;
use rand_distr::StandardNormal;

/// A diagonal Gaussian in log-variance form. Construction checks that the mean and the
/// log-variance are finite and of one length, so every method is total.
#[derive(Debug, Clone, PartialEq)]
pub struct DiagGaussian {
    mean: Array1<f64>,
    log_var: Array1<f64>,
}

impl DiagGaussian {
    /// `N(mean, diag(exp(log_var)))`. Errors if the lengths differ, the dimension is 0,
    /// or any entry is not finite.
    pub fn new(mean: Array1<f64>, log_var: Array1<f64>) -> Result<Self> {
        validate::same_len("log-variance", mean.len(), log_var.len())?;
        if mean.is_empty() {
            return Err(MathError::Empty {
                what: "mean of a diagonal Gaussian",
            });
        }
        validate::all_finite("mean", mean.iter())?;
        validate::all_finite("log-variance", log_var.iter())?;
        Ok(Self { mean, log_var })
    }

    /// `N(mean, diag(variance))`. Errors if a variance is not positive and finite, e.g.
    /// "variance must be positive and finite, found -1 at index 3".
    pub fn from_variance(mean: Array1<f64>, variance: &ArrayRef1<f64>) -> Result<Self> {
        validate::all_positive("variance", variance.iter())?;
        Self::new(mean, variance.mapv(f64::ln))
    }

    /// The standard normal `N(0, I)` in `dim` dimensions (`dim >= 1`).
    pub fn standard(dim: usize) -> Result<Self> {
        Self::new(Array1::zeros(dim), Array1::zeros(dim))
    }

    /// The number of dimensions.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The mean vector.
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }

    /// The log-variance vector.
    pub fn log_var(&self) -> &Array1<f64> {
        &self.log_var
    }

    /// The variance vector, `exp(log_var)`.
    pub fn variance(&self) -> Array1<f64> {
        self.log_var.mapv(f64::exp)
    }

    /// `log q(x)`; errors if `x` has the wrong length or is not finite.
    pub fn log_density(&self, x: &ArrayRef1<f64>) -> Result<f64> {
        validate::same_len("x", self.dim(), x.len())?;
        gaussian::log_density_sum(x, &self.mean, &self.log_var)
    }

    /// The differential entropy `sum_i (1 + ln(2 pi) + log_var_i) / 2`.
    pub fn entropy(&self) -> f64 {
        self.log_var.iter().map(|&lv| gaussian::entropy(lv)).sum()
    }

    /// `KL(self || other)` in closed form; errors if the dimensions differ.
    pub fn kl_divergence(&self, other: &DiagGaussian) -> Result<f64> {
        validate::same_len("the second Gaussian", self.dim(), other.dim())?;
        Ok(Zip::from(&self.mean)
            .and(&self.log_var)
            .and(&other.mean)
            .and(&other.log_var)
            .fold(0.0, |acc, &mq, &lq, &mp, &lp| {
                acc + gaussian::kl_divergence(mq, lq, mp, lp)
            }))
    }

    /// `KL(self || N(0, I))`, the VAE's prior-matching term.
    pub fn kl_to_standard_normal(&self) -> f64 {
        Zip::from(&self.mean)
            .and(&self.log_var)
            .fold(0.0, |acc, &m, &lv| {
                acc + gaussian::kl_to_standard_normal(m, lv)
            })
    }

    /// The reparameterised draw `mean + exp(log_var / 2) * eps` for a given standard-normal
    /// `eps`; errors if `eps` has the wrong length or is not finite.
    pub fn reparameterise(&self, eps: &ArrayRef1<f64>) -> Result<Array1<f64>> {
        validate::same_len("eps", self.dim(), eps.len())?;
        validate::all_finite("eps", eps.iter())?;
        Ok(Zip::from(&self.mean)
            .and(&self.log_var)
            .and(eps)
            .map_collect(|&m, &lv, &e| gaussian::reparameterise(m, lv, e)))
    }

    /// A draw by reparameterisation with `eps ~ N(0, I)` taken from `rng` (seed it for
    /// reproducible draws).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Array1<f64> {
        Zip::from(&self.mean)
            .and(&self.log_var)
            .map_collect(|&m, &lv| gaussian::reparameterise(m, lv, rng.sample(StandardNormal)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn construction_rejects_bad_parameters_with_a_precise_message() {
        let e =
            DiagGaussian::from_variance(array![0.0, 0.0, 0.0, 0.0], &array![1.0, 2.0, 3.0, -1.0])
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            "variance must be positive and finite, found -1 at index 3"
        );
        assert!(DiagGaussian::new(array![0.0], array![0.0, 1.0]).is_err());
        assert!(DiagGaussian::new(array![f64::NAN], array![0.0]).is_err());
        assert!(DiagGaussian::standard(0).is_err());
    }

    #[test]
    fn kl_against_standard_normal_two_ways_and_dimension_checks() {
        let q = DiagGaussian::new(array![0.5, -1.0, 2.0], array![-0.3, 0.7, -4.0]).unwrap();
        let p = DiagGaussian::standard(3).unwrap();
        // Same kernel with (0, 0) as p: equal to the last bit.
        assert_eq!(q.kl_divergence(&p).unwrap(), q.kl_to_standard_normal());
        assert_eq!(q.kl_divergence(&q).unwrap(), 0.0);
        assert!(
            q.kl_divergence(&DiagGaussian::standard(2).unwrap())
                .is_err()
        );
        assert!(q.log_density(&array![0.0]).is_err());
        assert!(q.reparameterise(&array![0.0, 1.0]).is_err());
    }

    #[test]
    fn sampling_is_reparameterisation_and_matches_moments() {
        let q = DiagGaussian::from_variance(array![1.0, -2.0], &array![4.0, 0.25]).unwrap();
        let z = q.reparameterise(&array![1.0, -2.0]).unwrap();
        // mean + sd * eps with sd = 2 and 0.5: exact in binary floating point.
        assert_eq!(z, array![3.0, -3.0]);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let n = 40_000;
        let mut sum = Array1::zeros(2);
        for _ in 0..n {
            sum += &q.sample(&mut rng);
        }
        let mean = sum / n as f64;
        // 4 standard errors of the MC mean: sd / sqrt(n) = 2/200 and 0.5/200.
        assert!((mean[0] - 1.0).abs() < 4.0 * 2.0 / 200.0);
        assert!((mean[1] + 2.0).abs() < 4.0 * 0.5 / 200.0);
    }

    #[test]
    fn entropy_and_log_density_are_sums_over_dimensions() {
        let q = DiagGaussian::new(array![0.0, 1.0], array![0.0, 2.0]).unwrap();
        let x = array![0.5, -0.5];
        let expected = gaussian::log_density(0.5, 0.0, 0.0) + gaussian::log_density(-0.5, 1.0, 2.0);
        // Same kernels, summed in the same order: exact.
        assert_eq!(q.log_density(&x).unwrap(), expected);
        assert_eq!(q.entropy(), gaussian::entropy(0.0) + gaussian::entropy(2.0));
        assert_eq!(q.variance()[1], 2.0f64.exp());
        assert_eq!(q.dim(), 2);
        assert_eq!(q.mean()[1], 1.0);
        assert_eq!(q.log_var()[1], 2.0);
    }
}
