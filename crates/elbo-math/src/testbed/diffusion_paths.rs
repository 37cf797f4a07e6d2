//! Sampled forward paths `x_0 -> x_1 -> ... -> x_T` for the Gaussian-data test bed, the
//! ELBO integrand `log p(x_{0:T}) / q(x_{1:T} | x_0)` on a path in the seeds' two forms,
//! and its Monte Carlo average.
//!
//! The forward form (eq. 6) divides by `q(x_1 | x_0) prod_{t>=2} q(x_t | x_{t-1})`; the
//! rearranged form (eq. 10 / 19) uses the Bayes-rule flip of eq. 8 and the telescoping
//! product of eq. 13, `q(x_1 | x_0) prod q(x_t | x_{t-1}) = q(x_T | x_0) prod
//! q(x_{t-1} | x_t, x_0)`, so that the integrand becomes
//! `log p(x_T)/q(x_T | x_0) + sum_{t>=2} log p(x_{t-1} | x_t)/q(x_{t-1} | x_t, x_0) +
//! log p(x_0 | x_1)`. The two agree on every path, not just in expectation.

use super::gaussian_diffusion::GaussianDataDiffusion;
use crate::diffusion;
use crate::error::{MathError, Result};
use crate::gaussian;
use crate::validate;
use rand::Rng;
use rand_distr::StandardNormal;

/// A Monte Carlo mean with its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonteCarloEstimate {
    /// The sample mean.
    pub mean: f64,
    /// The standard error of the mean, `sd / sqrt(n)`.
    pub standard_error: f64,
    /// The number of samples.
    pub num_samples: usize,
}

/// A path `[x_0, x_1, ..., x_T]` drawn step by step from `q(x_t | x_{t-1}) =
/// N(sqrt(alpha_t) x_{t-1}, beta_t)`.
pub fn sample_forward_path<R: Rng + ?Sized>(
    model: &GaussianDataDiffusion,
    x0: f64,
    rng: &mut R,
) -> Result<Vec<f64>> {
    let s = model.schedule();
    let mut path = Vec::with_capacity(s.num_steps() + 1);
    path.push(validate::finite("x0", x0)?);
    let mut x = x0;
    for t in 1..=s.num_steps() {
        let eps: f64 = rng.sample(StandardNormal);
        x = gaussian::reparameterise(s.alpha(t)?.sqrt() * x, s.beta(t)?.ln(), eps);
        path.push(x);
    }
    Ok(path)
}

/// The ELBO integrand in the forward form (eq. 6):
/// `log p(x_T) + sum_{t>=1} log p(x_{t-1} | x_t) - log q(x_1 | x_0) - sum_{t>=2} log q(x_t | x_{t-1})`.
pub fn log_weight(model: &GaussianDataDiffusion, path: &[f64]) -> Result<f64> {
    let s = model.schedule();
    check_path(model, path)?;
    let big_t = s.num_steps();
    let mut total = gaussian::log_density(path[big_t], 0.0, 0.0);
    for t in 1..=big_t {
        total += model.reverse_step(t)?.log_density(path[t - 1], path[t]);
        // q(x_t | x_{t-1}); at t = 1 this is q(x_1 | x_0).
        total -= gaussian::log_density(path[t], s.alpha(t)?.sqrt() * path[t - 1], s.beta(t)?.ln());
    }
    Ok(total)
}

/// The ELBO integrand in the rearranged form (eq. 19):
/// `log p(x_T)/q(x_T | x_0) + sum_{t>=2} log p(x_{t-1} | x_t)/q(x_{t-1} | x_t, x_0) + log p(x_0 | x_1)`.
pub fn log_weight_rearranged(model: &GaussianDataDiffusion, path: &[f64]) -> Result<f64> {
    let s = model.schedule();
    check_path(model, path)?;
    let big_t = s.num_steps();
    let x0 = path[0];
    let last = diffusion::forward_marginal(s, big_t)?;
    let mut total =
        gaussian::log_density(path[big_t], 0.0, 0.0) - last.log_density(path[big_t], x0);
    for t in 2..=big_t {
        let post = diffusion::posterior(s, t)?;
        let log_q =
            gaussian::log_density(path[t - 1], post.mean(path[t], x0), post.variance().ln());
        total += model.reverse_step(t)?.log_density(path[t - 1], path[t]) - log_q;
    }
    Ok(total + model.reverse_step(1)?.log_density(x0, path[1]))
}

/// The Monte Carlo estimate of the ELBO of `x0` from `num_paths` forward paths.
pub fn monte_carlo_elbo<R: Rng + ?Sized>(
    model: &GaussianDataDiffusion,
    x0: f64,
    num_paths: usize,
    rng: &mut R,
) -> Result<MonteCarloEstimate> {
    if num_paths < 2 {
        return Err(MathError::OutOfRange {
            what: "number of paths",
            expected: "2 or more",
            found: num_paths as f64,
            index: None,
        });
    }
    let (mut sum, mut sum_sq) = (0.0, 0.0);
    for _ in 0..num_paths {
        let w = log_weight(model, &sample_forward_path(model, x0, rng)?)?;
        sum += w;
        sum_sq += w * w;
    }
    let n = num_paths as f64;
    let mean = sum / n;
    let variance = ((sum_sq - n * mean * mean) / (n - 1.0)).max(0.0);
    Ok(MonteCarloEstimate {
        mean,
        standard_error: (variance / n).sqrt(),
        num_samples: num_paths,
    })
}

fn check_path(model: &GaussianDataDiffusion, path: &[f64]) -> Result<()> {
    validate::same_len(
        "path (x_0 to x_T)",
        model.schedule().num_steps() + 1,
        path.len(),
    )?;
    validate::all_finite("path", path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::NoiseSchedule;
    use crate::testbed::gaussian_diffusion::ReverseStepVariance;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Data N(0.5, 0.3) under a linear schedule of T steps from `beta_1` to `beta_T`.
    fn model(t: usize, betas: (f64, f64), variance: ReverseStepVariance) -> GaussianDataDiffusion {
        let schedule = NoiseSchedule::linear(t, betas.0, betas.1).unwrap();
        GaussianDataDiffusion::new(0.5, 0.3, schedule, variance).unwrap()
    }

    #[test]
    fn bad_paths_are_errors() {
        let m = model(10, (0.05, 0.5), ReverseStepVariance::Beta);
        assert!(log_weight(&m, &[0.0; 5]).is_err());
        assert!(log_weight_rearranged(&m, &[f64::NAN; 11]).is_err());
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(monte_carlo_elbo(&m, 0.0, 1, &mut rng).is_err());
        assert!(sample_forward_path(&m, f64::INFINITY, &mut rng).is_err());
    }

    #[test]
    fn both_forms_of_the_integrand_agree_on_sampled_paths() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for (t, betas, variance) in [
            (1, (0.9, 0.9), ReverseStepVariance::Beta),
            (10, (0.05, 0.5), ReverseStepVariance::Posterior),
            (200, (1e-3, 0.1), ReverseStepVariance::Exact),
        ] {
            let m = model(t, betas, variance);
            for x0 in [-1.5, 0.2, 2.0] {
                let path = sample_forward_path(&m, x0, &mut rng).unwrap();
                let forward = log_weight(&m, &path).unwrap();
                let rearranged = log_weight_rearranged(&m, &path).unwrap();
                // Eq. 13 holds pointwise; the two sums of 2T log-densities (each O(1-10))
                // differ by rounding: 1e-12 per term, so 1e-11 T absolute.
                assert!(
                    (forward - rearranged).abs() < 1e-11 * t as f64 + 1e-12,
                    "T = {t}: {forward} vs {rearranged}"
                );
            }
        }
    }

    #[test]
    fn closed_form_elbo_matches_monte_carlo_within_4_standard_errors() {
        let mut rng = ChaCha8Rng::seed_from_u64(2024);
        for (t, betas, variance, n) in [
            (10, (0.05, 0.5), ReverseStepVariance::Beta, 20_000),
            (100, (1e-3, 0.2), ReverseStepVariance::Posterior, 4_000),
            (1000, (1e-4, 0.02), ReverseStepVariance::Exact, 600),
        ] {
            let m = model(t, betas, variance);
            for x0 in [-1.0, 0.7] {
                let exact = m.elbo(x0).unwrap().elbo();
                let mc = monte_carlo_elbo(&m, x0, n, &mut rng).unwrap();
                // 4 standard errors of the MC mean (fixed seed; p < 1e-4 per comparison).
                assert!(
                    (mc.mean - exact).abs() < 4.0 * mc.standard_error,
                    "T = {t}, x0 = {x0}: MC {} +- {} vs exact {exact}",
                    mc.mean,
                    mc.standard_error
                );
                assert_eq!(mc.num_samples, n);
            }
        }
    }
}
