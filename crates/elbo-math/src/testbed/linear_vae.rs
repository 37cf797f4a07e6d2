//! The linear-Gaussian VAE, where everything the ELBO bounds is known in closed form:
//!
//! ```text
//! z ~ N(0, I_K),   x | z ~ N(W z + b, sigma^2 I_D),
//! p(x)     = N(x; b, W W^T + sigma^2 I),
//! p(z | x) = N(M^{-1} W^T (x - b) / sigma^2, M^{-1}),   M = I + W^T W / sigma^2,
//! ```
//!
//! and for any diagonal Gaussian `q(z)` the ELBO and `KL(q || p(z | x))` are exact, so the
//! identity `log p(x) = ELBO(q) + KL(q || p(z | x))` can be checked to rounding error.
//! The evidence uses the determinant lemma and Woodbury's identity, so only K x K systems
//! are solved.

use crate::diag_gaussian::DiagGaussian;
use crate::elbo::ElboTerms;
use crate::error::{MathError, Result};
use crate::gaussian::LN_2PI;
use crate::linalg::Cholesky;
use crate::validate;
use ndarray::{Array1, Array2, ArrayRef1, Zip};

/// A linear-Gaussian VAE with decoder weight `W` (D x K), bias `b` (D) and observation
/// noise variance `sigma^2`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearGaussianVae {
    weight: Array2<f64>,
    bias: Array1<f64>,
    noise_variance: f64,
}

/// The exact posterior `p(z | x)`, a full-covariance Gaussian.
#[derive(Debug, Clone, PartialEq)]
pub struct ExactPosterior {
    /// The posterior mean.
    pub mean: Array1<f64>,
    /// The posterior covariance `M^{-1}`.
    pub covariance: Array2<f64>,
    /// The posterior precision `M = I + W^T W / sigma^2`.
    pub precision: Array2<f64>,
}

impl ExactPosterior {
    /// Whether the covariance is diagonal (exactly: off-diagonal entries are 0), in which
    /// case [`Self::diagonal`] is the posterior itself.
    pub fn is_diagonal(&self) -> bool {
        self.covariance
            .indexed_iter()
            .all(|((i, j), &c)| i == j || c == 0.0)
    }

    /// The diagonal Gaussian with the posterior's means and marginal variances.
    pub fn diagonal(&self) -> Result<DiagGaussian> {
        DiagGaussian::from_variance(self.mean.clone(), &self.covariance.diag())
    }
}

impl LinearGaussianVae {
    /// Checks that `weight` has one row per entry of `bias` and at least one column, that
    /// everything is finite, and that `noise_variance` is positive.
    pub fn new(weight: Array2<f64>, bias: Array1<f64>, noise_variance: f64) -> Result<Self> {
        validate::same_len(
            "bias (one entry per row of the weight)",
            weight.nrows(),
            bias.len(),
        )?;
        if weight.is_empty() {
            return Err(MathError::Empty {
                what: "decoder weight",
            });
        }
        validate::all_finite("decoder weight", weight.iter())?;
        validate::all_finite("decoder bias", bias.iter())?;
        validate::positive("observation noise variance", noise_variance)?;
        Ok(Self {
            weight,
            bias,
            noise_variance,
        })
    }

    /// D, the data dimension.
    pub fn data_dim(&self) -> usize {
        self.weight.nrows()
    }

    /// K, the latent dimension.
    pub fn latent_dim(&self) -> usize {
        self.weight.ncols()
    }

    /// The posterior precision `M = I + W^T W / sigma^2` and its factorisation.
    fn precision(&self) -> Result<(Array2<f64>, Cholesky)> {
        let mut m = self.weight.t().dot(&self.weight) / self.noise_variance;
        m.diag_mut().mapv_inplace(|d| d + 1.0);
        let chol = Cholesky::new("posterior precision", &m)?;
        Ok((m, chol))
    }

    /// The residual `x - b`, after checking `x`.
    fn residual(&self, x: &ArrayRef1<f64>) -> Result<Array1<f64>> {
        validate::same_len("x", self.data_dim(), x.len())?;
        validate::all_finite("x", x.iter())?;
        Ok(Zip::from(x).and(&self.bias).map_collect(|&xi, &bi| xi - bi))
    }

    /// The exact evidence `log p(x) = log N(x; b, W W^T + sigma^2 I)`.
    pub fn log_evidence(&self, x: &ArrayRef1<f64>) -> Result<f64> {
        let r = self.residual(x)?;
        let (_, chol) = self.precision()?;
        let s2 = self.noise_variance;
        let g = self.weight.t().dot(&r) / s2;
        let y = chol.solve_lower(&g);
        // Woodbury: r^T C^{-1} r = |r|^2 / s2 - g^T M^{-1} g; determinant lemma:
        // ln det C = D ln s2 + ln det M.
        let quad = r.dot(&r) / s2 - y.dot(&y);
        let d = self.data_dim() as f64;
        Ok(-0.5 * (d * (LN_2PI + s2.ln()) + chol.log_det() + quad))
    }

    /// The exact posterior `p(z | x)`.
    pub fn posterior(&self, x: &ArrayRef1<f64>) -> Result<ExactPosterior> {
        let r = self.residual(x)?;
        let (precision, chol) = self.precision()?;
        let g = self.weight.t().dot(&r) / self.noise_variance;
        Ok(ExactPosterior {
            mean: chol.solve(&g),
            covariance: chol.inverse(),
            precision,
        })
    }

    /// The ELBO of a diagonal Gaussian `q(z)` at `x`, as its terms:
    /// `reconstruction = E_q[log p(x | z)]` (exact: the decoder is linear) and
    /// `prior_matching = KL(q || N(0, I))`.
    pub fn elbo(&self, x: &ArrayRef1<f64>, q: &DiagGaussian) -> Result<ElboTerms> {
        let r = self.residual(x)?;
        validate::same_len(
            "q (one entry per latent dimension)",
            self.latent_dim(),
            q.dim(),
        )?;
        let s2 = self.noise_variance;
        let err = &r - &self.weight.dot(q.mean());
        // E_q |x - W z - b|^2 = |r - W mu|^2 + sum_j v_j |W_{:, j}|^2.
        let spread: f64 = self
            .weight
            .columns()
            .into_iter()
            .zip(q.variance())
            .map(|(col, v)| v * col.dot(&col))
            .sum();
        let d = self.data_dim() as f64;
        let reconstruction = -0.5 * d * (LN_2PI + s2.ln()) - (err.dot(&err) + spread) / (2.0 * s2);
        ElboTerms::new(reconstruction, q.kl_to_standard_normal(), Vec::new())
    }

    /// `KL(q || p(z | x))`, the gap between the evidence and the ELBO of `q`:
    /// `(tr(M V) + (mu - m)^T M (mu - m) - K - ln det M - sum ln v) / 2`.
    pub fn kl_to_posterior(&self, x: &ArrayRef1<f64>, q: &DiagGaussian) -> Result<f64> {
        validate::same_len(
            "q (one entry per latent dimension)",
            self.latent_dim(),
            q.dim(),
        )?;
        let post = self.posterior(x)?;
        let (_, chol) = self.precision()?;
        let delta = q.mean() - &post.mean;
        let trace: f64 = post
            .precision
            .diag()
            .iter()
            .zip(q.variance())
            .map(|(m, v)| m * v)
            .sum();
        let mahalanobis = delta.dot(&post.precision.dot(&delta));
        let k = self.latent_dim() as f64;
        Ok(0.5 * (trace + mahalanobis - k - chol.log_det() - q.log_var().sum()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, array};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The evidence the direct way, with a D x D Cholesky of C = W W^T + sigma^2 I.
    fn log_evidence_direct(vae: &LinearGaussianVae, x: &Array1<f64>) -> f64 {
        let mut c = vae.weight.dot(&vae.weight.t());
        c.diag_mut().mapv_inplace(|d| d + vae.noise_variance);
        let chol = Cholesky::new("C", &c).unwrap();
        let y = chol.solve_lower(&(x - &vae.bias));
        -0.5 * (x.len() as f64 * LN_2PI + chol.log_det() + y.dot(&y))
    }

    /// Random model and q from proptest inputs (vectors long enough for D = 6, K = 4).
    fn build(d: usize, k: usize, w: &[f64], b: &[f64], ls2: f64) -> LinearGaussianVae {
        let weight = Array::from_shape_vec((d, k), w[..d * k].to_vec()).unwrap();
        LinearGaussianVae::new(weight, Array1::from(b[..d].to_vec()), ls2.exp()).unwrap()
    }

    #[test]
    fn bad_input_is_an_error() {
        let w = array![[1.0, 0.0], [0.0, 1.0]];
        assert!(LinearGaussianVae::new(w.clone(), array![0.0], 1.0).is_err());
        assert!(LinearGaussianVae::new(w.clone(), array![0.0, 0.0], 0.0).is_err());
        assert!(LinearGaussianVae::new(Array2::zeros((2, 0)), array![0.0, 0.0], 1.0).is_err());
        let vae = LinearGaussianVae::new(w, array![0.0, 0.0], 1.0).unwrap();
        assert!(vae.log_evidence(&array![0.0]).is_err());
        assert!(vae.log_evidence(&array![0.0, f64::NAN]).is_err());
        let q = DiagGaussian::standard(3).unwrap();
        assert!(vae.elbo(&array![0.0, 0.0], &q).is_err());
        assert!(vae.kl_to_posterior(&array![0.0, 0.0], &q).is_err());
    }

    #[test]
    fn reconstruction_matches_monte_carlo() {
        let vae = LinearGaussianVae::new(
            array![[1.0, -0.5], [0.3, 2.0], [0.0, 0.7]],
            array![0.1, 0.2, -0.3],
            0.5,
        )
        .unwrap();
        let x = array![1.0, -1.0, 0.5];
        let q = DiagGaussian::new(array![0.2, -0.4], array![-1.0, 0.5]).unwrap();
        let exact = vae.elbo(&x, &q).unwrap().reconstruction();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 50_000;
        let draws: Vec<f64> = (0..n)
            .map(|_| {
                let z = q.sample(&mut rng);
                let mean = vae.weight.dot(&z) + &vae.bias;
                let lv = Array1::from_elem(3, vae.noise_variance.ln());
                crate::gaussian::log_density_sum(&x, &mean, &lv).unwrap()
            })
            .collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64;
        // 4 standard errors of the MC mean (fixed seed).
        assert!(
            (mean - exact).abs() < 4.0 * (var / n as f64).sqrt(),
            "{mean} vs {exact}"
        );
    }

    #[test]
    fn equality_when_q_is_the_exact_diagonal_posterior() {
        // Orthogonal columns make W^T W, hence the posterior covariance, diagonal.
        let vae = LinearGaussianVae::new(
            array![[2.0, 0.0], [0.0, -0.5], [0.0, 1.5]],
            array![0.3, 0.0, -1.0],
            0.2,
        )
        .unwrap();
        let x = array![1.0, 2.0, -0.5];
        let post = vae.posterior(&x).unwrap();
        assert!(post.is_diagonal());
        let q = post.diagonal().unwrap();
        let log_px = vae.log_evidence(&x).unwrap();
        let elbo = vae.elbo(&x, &q).unwrap().elbo();
        // A few dozen roundings on values of size ~10: 1e-12 relative.
        assert!(
            (log_px - elbo).abs() < 1e-12 * log_px.abs(),
            "{log_px} vs {elbo}"
        );
        assert!(vae.kl_to_posterior(&x, &q).unwrap().abs() < 1e-12);
        // Any other q is strictly worse.
        let other = DiagGaussian::new(q.mean() + 0.1, q.log_var().clone()).unwrap();
        assert!(vae.elbo(&x, &other).unwrap().elbo() < log_px);
        // A non-orthogonal W gives a non-diagonal posterior.
        let tilted =
            LinearGaussianVae::new(array![[1.0, 1.0], [0.0, 1.0]], array![0.0, 0.0], 1.0).unwrap();
        assert!(!tilted.posterior(&array![0.0, 0.0]).unwrap().is_diagonal());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// log p(x) = ELBO(q) + KL(q || p(z|x)) for random W, b, sigma^2, x and q, and
        /// ELBO <= log p(x) (Jensen). The evidence also matches the direct D x D form.
        #[test]
        fn evidence_is_elbo_plus_kl(
            d in 1usize..=6, k in 1usize..=4,
            w in prop::collection::vec(-3.0..3.0f64, 24),
            b in prop::collection::vec(-3.0..3.0f64, 6),
            x in prop::collection::vec(-5.0..5.0f64, 6),
            mu in prop::collection::vec(-3.0..3.0f64, 4),
            lv in prop::collection::vec(-6.0..3.0f64, 4),
            ls2 in -5.0..3.0f64,
        ) {
            let vae = build(d, k, &w, &b, ls2);
            let x = Array1::from(x[..d].to_vec());
            let q = DiagGaussian::new(Array1::from(mu[..k].to_vec()), Array1::from(lv[..k].to_vec())).unwrap();
            let log_px = vae.log_evidence(&x).unwrap();
            let elbo = vae.elbo(&x, &q).unwrap().elbo();
            let kl = vae.kl_to_posterior(&x, &q).unwrap();
            // Relative to the largest magnitude involved: the posterior precision has
            // condition number <= 1 + |W|^2 / sigma^2 <= 1e4 here, so solves lose up to 4
            // of 16 digits; 1e-9 leaves a margin of 1e3.
            let scale = 1.0f64.max(log_px.abs()).max(elbo.abs()).max(kl.abs());
            prop_assert!((log_px - (elbo + kl)).abs() <= 1e-9 * scale, "{} vs {} + {}", log_px, elbo, kl);
            prop_assert!(elbo <= log_px + 1e-9 * scale);
            prop_assert!(kl >= -1e-9 * scale);
            let direct = log_evidence_direct(&vae, &x);
            prop_assert!((log_px - direct).abs() <= 1e-9 * scale);
        }
    }
}
