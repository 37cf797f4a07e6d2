//! The denoising-matching term `KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` for a
//! reverse step `p = N(mu_theta, sigma_t^2)` with a variance shared across the batch, and
//! its three equivalent forms as a weighted squared error plus a constant:
//!
//! ```text
//! KL = c_t + w_x0 (x_0 - x0_theta)^2 = c_t + w_eps (eps - eps_theta)^2
//!    = c_t + w_score (score - score_theta)^2 = c_t + w_v (v - v_theta)^2,
//! w_x0    = abar_{t-1} beta_t^2 / (2 sigma_t^2 (1 - abar_t)^2),
//! w_eps   = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)),
//! w_score = beta_t^2 / (2 sigma_t^2 alpha_t),
//! w_v     = abar_t w_eps,
//! c_t     = KL(N(0, beta_tilde_t) || N(0, sigma_t^2)),
//! ```
//!
//! per element, when `mu_theta` is the posterior mean evaluated at the prediction. Defined
//! for t in `2..=T` (at t = 1 the posterior is a point mass and the ELBO has L_0 instead).

use crate::diffusion::{self, Posterior};
use crate::error::{MathError, Result};
use crate::gaussian;
use crate::parameterisation::Prediction;
use crate::schedule::NoiseSchedule;
use crate::validate;
use ndarray::{ArrayRef, Dimension, Zip};

/// The variance `sigma_t^2` of the reverse step `p(x_{t-1} | x_t)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReverseVariance {
    /// `sigma_t^2 = beta_tilde_t`, the posterior variance (Ho et al.'s "fixed small").
    Posterior,
    /// `sigma_t^2 = beta_t` (Ho et al.'s "fixed large").
    Beta,
    /// A given positive variance.
    Fixed(f64),
}

impl ReverseVariance {
    /// The variance this choice gives at step `t` of `schedule` (t in `1..=T`); errors if
    /// it is not positive (`Posterior` at t = 1, or a bad `Fixed` value).
    pub fn at(self, schedule: &NoiseSchedule, t: usize) -> Result<f64> {
        let v = match self {
            ReverseVariance::Posterior => schedule.posterior_variance(t)?,
            ReverseVariance::Beta => schedule.beta(t)?,
            ReverseVariance::Fixed(v) => v,
        };
        validate::positive("reverse-step variance", v)
    }
}

/// The weights and constant of the denoising-matching KL at one step (see the module
/// docs); all per element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenoisingMatchingWeights {
    /// `c_t = KL(N(0, beta_tilde_t) || N(0, sigma_t^2))`, 0 when `sigma_t^2 = beta_tilde_t`.
    pub variance_term: f64,
    /// The weight on the squared error in `x_0`.
    pub x0: f64,
    /// The weight on the squared error in `eps` (the seeds' eq. 35).
    pub eps: f64,
    /// The weight on the squared error in the score.
    pub score: f64,
    /// The weight on the squared error in v (at fixed `x_t`, `eps - eps_theta =
    /// sqrt(abar_t) (v - v_theta)`).
    pub v: f64,
    /// The reverse-step variance `sigma_t^2` the weights were computed for.
    pub reverse_variance: f64,
}

impl DenoisingMatchingWeights {
    /// The KL per element from a prediction of any kind, as `c_t + w (truth - prediction)^2`
    /// with that kind's weight.
    pub fn kl(&self, kind: Prediction, truth: f64, prediction: f64) -> f64 {
        let weight = match kind {
            Prediction::X0 => self.x0,
            Prediction::Eps => self.eps,
            Prediction::Score => self.score,
            Prediction::V => self.v,
        };
        let d = truth - prediction;
        self.variance_term + weight * d * d
    }
}

/// The denoising-matching weights at step t in `2..=T`.
pub fn denoising_matching_weights(
    schedule: &NoiseSchedule,
    t: usize,
    variance: ReverseVariance,
) -> Result<DenoisingMatchingWeights> {
    let p = posterior_from_t2(schedule, t)?;
    let sigma2 = variance.at(schedule, t)?;
    let (beta, alpha, one_minus) = (p.beta(), p.alpha(), p.marginal().variance());
    let twice = 2.0 * sigma2;
    let w_eps = beta * beta / (twice * alpha * one_minus);
    Ok(DenoisingMatchingWeights {
        variance_term: 0.5 * gaussian::exp_m1_minus_identity(p.variance().ln() - sigma2.ln()),
        x0: p.coef_x0() * p.coef_x0() / twice,
        eps: w_eps,
        score: beta * beta / (twice * alpha),
        v: w_eps * p.marginal().alpha_bar(),
        reverse_variance: sigma2,
    })
}

/// The Gaussian KL `KL(N(mu_tilde(x_t, x_0), beta_tilde_t) || N(reverse_mean, sigma_t^2))`
/// per element, computed directly from the two Gaussians (t in `2..=T`).
pub fn denoising_matching_kl(
    schedule: &NoiseSchedule,
    t: usize,
    variance: ReverseVariance,
    x_t: f64,
    x0: f64,
    reverse_mean: f64,
) -> Result<f64> {
    let p = posterior_from_t2(schedule, t)?;
    let sigma2 = variance.at(schedule, t)?;
    Ok(gaussian::kl_divergence(
        p.mean(x_t, x0),
        p.variance().ln(),
        reverse_mean,
        sigma2.ln(),
    ))
}

/// The summed denoising-matching KL over arrays of one shape: the true `x_0` and the
/// model's prediction of `kind` at `x_t` (checked shapes and finiteness).
pub fn denoising_matching_kl_sum<D: Dimension>(
    schedule: &NoiseSchedule,
    t: usize,
    variance: ReverseVariance,
    kind: Prediction,
    x_t: &ArrayRef<f64, D>,
    x0: &ArrayRef<f64, D>,
    prediction: &ArrayRef<f64, D>,
) -> Result<f64> {
    let p = posterior_from_t2(schedule, t)?;
    let (lv_q, lv_p) = (p.variance().ln(), variance.at(schedule, t)?.ln());
    validate::same_shape("x0", x_t, x0)?;
    validate::same_shape("prediction", x_t, prediction)?;
    validate::all_finite("x_t", x_t.iter())?;
    validate::all_finite("x0", x0.iter())?;
    validate::all_finite("prediction", prediction.iter())?;
    Ok(Zip::from(x_t)
        .and(x0)
        .and(prediction)
        .fold(0.0, |acc, &xt, &x0, &pred| {
            let mean_p = p.mean_from(kind, xt, pred);
            acc + gaussian::kl_divergence(p.mean(xt, x0), lv_q, mean_p, lv_p)
        }))
}

fn posterior_from_t2(schedule: &NoiseSchedule, t: usize) -> Result<Posterior> {
    if t < 2 || t > schedule.num_steps() {
        return Err(MathError::TimestepOutOfRange {
            what: "denoising matching",
            min: 2,
            max: schedule.num_steps(),
            found: t,
        });
    }
    diffusion::posterior(schedule, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use proptest::prelude::*;

    #[test]
    fn defined_for_t_from_2_and_positive_variances() {
        let s = NoiseSchedule::linear(10, 1e-4, 0.02).unwrap();
        assert!(denoising_matching_weights(&s, 1, ReverseVariance::Beta).is_err());
        assert!(denoising_matching_weights(&s, 11, ReverseVariance::Beta).is_err());
        assert!(denoising_matching_weights(&s, 2, ReverseVariance::Fixed(-1.0)).is_err());
        assert!(ReverseVariance::Posterior.at(&s, 1).is_err());
        let w = denoising_matching_weights(&s, 5, ReverseVariance::Posterior).unwrap();
        assert_eq!(w.variance_term, 0.0);
        assert_eq!(w.kl(Prediction::V, 0.0, 1.0), w.v);
        let a = array![0.1, 0.2];
        let r = denoising_matching_kl_sum(
            &s,
            3,
            ReverseVariance::Beta,
            Prediction::Eps,
            &a,
            &a,
            &array![0.0],
        );
        assert!(r.is_err());
    }

    #[test]
    fn array_sum_matches_scalar_kl() {
        let s = NoiseSchedule::cosine(50, 0.008, 0.999).unwrap();
        let (t, var) = (20, ReverseVariance::Beta);
        let p = diffusion::posterior(&s, t).unwrap();
        let (x0, eps, eps_hat) = (array![0.3, -0.8], array![1.1, 0.4], array![0.9, 0.5]);
        let x_t = diffusion::forward_sample_array(&s, t, &x0, &eps).unwrap();
        let total =
            denoising_matching_kl_sum(&s, t, var, Prediction::Eps, &x_t, &x0, &eps_hat).unwrap();
        let by_scalar: f64 = (0..2)
            .map(|i| {
                let mean = p.mean_from_eps(x_t[i], eps_hat[i]);
                denoising_matching_kl(&s, t, var, x_t[i], x0[i], mean).unwrap()
            })
            .sum();
        // Same kernels in the same order: exact.
        assert_eq!(total, by_scalar);
    }

    proptest! {
        /// The Gaussian KL between posterior and reverse step equals the weighted squared
        /// error in x0, in eps, in the score and in v, for all three variance choices.
        #[test]
        fn kl_equals_each_weighted_squared_error(
            t in 2usize..=1000, x0 in -3.0..3.0f64, eps in -3.0..3.0f64,
            delta in -1.0..1.0f64, which in 0usize..3, fixed in 1e-3..1.0f64,
        ) {
            let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
            let variance = [ReverseVariance::Posterior, ReverseVariance::Beta, ReverseVariance::Fixed(fixed)][which];
            let p = diffusion::posterior(&s, t).unwrap();
            let m = p.marginal();
            let x_t = m.sample(x0, eps);
            let w = denoising_matching_weights(&s, t, variance).unwrap();
            // A model prediction: the truth perturbed by delta in eps, carried to the other
            // kinds exactly.
            let eps_hat = eps + delta;
            let x0_hat = Prediction::Eps.convert(&m, x_t, eps_hat, Prediction::X0);
            let score_hat = Prediction::Eps.convert(&m, x_t, eps_hat, Prediction::Score);
            let v_hat = Prediction::Eps.convert(&m, x_t, eps_hat, Prediction::V);
            let v = m.signal() * eps - m.noise() * x0;
            let by_kl = denoising_matching_kl(&s, t, variance, x_t, x0, p.mean_from_eps(x_t, eps_hat)).unwrap();
            let by_x0 = w.kl(Prediction::X0, x0, x0_hat);
            let by_eps = w.kl(Prediction::Eps, eps, eps_hat);
            let by_score = w.kl(Prediction::Score, -eps / m.noise(), score_hat);
            let by_v = w.kl(Prediction::V, v, v_hat);
            // Each form is ~20 roundings; x0_hat carries 1e-16 |x_t| / sqrt(abar) of error
            // whose square is weighted by w_x0. Relative 1e-9 of the KL plus 1e-12 of the
            // constant term covers it (the mean part can be ~1e-10 of a large c_t).
            for other in [by_x0, by_eps, by_score, by_v] {
                let tol = 1e-9 * by_kl.abs() + 1e-12 * (1.0 + w.variance_term);
                prop_assert!((by_kl - other).abs() <= tol, "{} vs {}", by_kl, other);
            }
        }
    }
}
