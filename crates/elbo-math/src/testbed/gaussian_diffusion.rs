//! Diffusion on Gaussian data, where the whole bound is available in closed form.
//!
//! Data `x_0 ~ N(m, s^2)` (one dimension; independent dimensions add). Under the forward
//! process every marginal is Gaussian, `q(x_t) = N(sqrt(abar_t) m, abar_t s^2 + 1 - abar_t)`,
//! and so is the true reverse conditional `q(x_{t-1} | x_t)`. The model is
//!
//! ```text
//! p(x_T) = N(0, 1),   p(x_{t-1} | x_t) = N(A_t x_t + c_t, sigma_t^2),
//! ```
//!
//! with the optimal Gaussian reverse mean `A_t x_t + c_t = E_q[x_{t-1} | x_t]` and a
//! variance chosen by [`ReverseStepVariance`]. Its marginal `p(x_0)` is Gaussian (the
//! steps compose as in eq. 37, with offsets), so the evidence is exact, and each term of
//! the ELBO `L_0 - L_T - sum L_{t-1}` is a Gaussian expectation of a Gaussian log-density.

use crate::diffusion;
use crate::elbo::ElboTerms;
use crate::error::Result;
use crate::gaussian;
use crate::schedule::NoiseSchedule;
use crate::validate;
use ndarray::ArrayRef1;

/// The variance of the model's reverse steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReverseStepVariance {
    /// The true reverse variance `Var_q(x_{t-1} | x_t) = beta_t v_{t-1} / v_t`, where
    /// `v_t` is the variance of `q(x_t)`: the variance that maximises the ELBO averaged
    /// over the data (Bao et al.'s Analytic-DPM); with it the model is the exact reverse
    /// process up to the prior.
    Exact,
    /// `beta_tilde_t`, the posterior variance; at t = 1, where it is 0, `beta_tilde_2` is used
    /// (`beta_1` if T = 1), as in Ho et al.'s code.
    Posterior,
    /// `beta_t`.
    Beta,
}

/// A mean and a variance of a one-dimensional Gaussian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// The mean.
    pub mean: f64,
    /// The variance.
    pub variance: f64,
}

impl Moments {
    /// `log N(x; mean, variance)`.
    pub fn log_density(&self, x: f64) -> f64 {
        gaussian::log_density(x, self.mean, self.variance.ln())
    }
}

/// A linear-Gaussian reverse step `p(x_{t-1} | x_t) = N(scale x_t + offset, variance)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReverseStep {
    /// The factor on `x_t`.
    pub scale: f64,
    /// The constant part of the mean.
    pub offset: f64,
    /// The variance.
    pub variance: f64,
}

impl ReverseStep {
    /// The mean `scale x_t + offset`.
    pub fn mean(&self, x_t: f64) -> f64 {
        self.scale * x_t + self.offset
    }

    /// `log p(x_prev | x_t)`.
    pub fn log_density(&self, x_prev: f64, x_t: f64) -> f64 {
        gaussian::log_density(x_prev, self.mean(x_t), self.variance.ln())
    }
}

/// The Gaussian-data diffusion test bed: data moments, schedule, and the model's reverse
/// steps (computed once).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianDataDiffusion {
    data: Moments,
    schedule: NoiseSchedule,
    /// `steps[t - 1]` is `p(x_{t-1} | x_t)`.
    steps: Vec<ReverseStep>,
}

impl GaussianDataDiffusion {
    /// Data `N(data_mean, data_variance)` diffused by `schedule`, with reverse steps of the
    /// chosen variance.
    pub fn new(
        data_mean: f64,
        data_variance: f64,
        schedule: NoiseSchedule,
        variance: ReverseStepVariance,
    ) -> Result<Self> {
        let data = Moments {
            mean: validate::finite("data mean", data_mean)?,
            variance: validate::positive("data variance", data_variance)?,
        };
        let mut model = Self {
            data,
            schedule,
            steps: Vec::new(),
        };
        model.steps = (1..=model.schedule.num_steps())
            .map(|t| model.optimal_step(t, variance))
            .collect::<Result<_>>()?;
        Ok(model)
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The data distribution `q(x_0)`.
    pub fn data(&self) -> Moments {
        self.data
    }

    /// `q(x_t) = N(sqrt(abar_t) m, abar_t s^2 + 1 - abar_t)` for t in `0..=T`.
    pub fn marginal(&self, t: usize) -> Result<Moments> {
        let (ab, one_minus) = (
            self.schedule.alpha_bar(t)?,
            self.schedule.one_minus_alpha_bar(t)?,
        );
        Ok(Moments {
            mean: ab.sqrt() * self.data.mean,
            variance: ab * self.data.variance + one_minus,
        })
    }

    /// `E_q[x_0 | x_t]`, the optimal x0 prediction, for t in `1..=T`.
    pub fn optimal_x0(&self, t: usize, x_t: f64) -> Result<f64> {
        let m = diffusion::forward_marginal(&self.schedule, t)?;
        let v_t = self.marginal(t)?;
        // Cov(x_0, x_t) = sqrt(abar) s^2.
        Ok(self.data.mean + m.signal() * self.data.variance / v_t.variance * (x_t - v_t.mean))
    }

    /// The true reverse conditional mean `E_q[x_{t-1} | x_t]` with the chosen variance.
    fn optimal_step(&self, t: usize, variance: ReverseStepVariance) -> Result<ReverseStep> {
        let (prev, cur) = (self.marginal(t - 1)?, self.marginal(t)?);
        let (alpha, beta) = (self.schedule.alpha(t)?, self.schedule.beta(t)?);
        // Cov(x_{t-1}, x_t) = sqrt(alpha_t) v_{t-1}; regress x_{t-1} on x_t.
        let scale = alpha.sqrt() * prev.variance / cur.variance;
        let variance = match variance {
            ReverseStepVariance::Exact => beta * prev.variance / cur.variance,
            ReverseStepVariance::Beta => beta,
            ReverseStepVariance::Posterior if t >= 2 => self.schedule.posterior_variance(t)?,
            ReverseStepVariance::Posterior if self.schedule.num_steps() >= 2 => {
                self.schedule.posterior_variance(2)?
            }
            ReverseStepVariance::Posterior => beta,
        };
        Ok(ReverseStep {
            scale,
            offset: prev.mean - scale * cur.mean,
            variance,
        })
    }

    /// The model's reverse step `p(x_{t-1} | x_t)` for t in `1..=T`.
    pub fn reverse_step(&self, t: usize) -> Result<ReverseStep> {
        self.schedule.check_timestep("reverse_step", t, 1)?;
        Ok(self.steps[t - 1])
    }

    /// The model's marginal `p(x_t)` for t in `0..=T`: `N(0, 1)` at T, then each step
    /// `N(A x + c, sigma^2)` maps `N(mu, v)` to `N(A mu + c, A^2 v + sigma^2)` (eq. 37).
    pub fn model_marginal(&self, t: usize) -> Result<Moments> {
        self.schedule.check_timestep("model_marginal", t, 0)?;
        Ok(self.steps[t..].iter().rev().fold(
            Moments {
                mean: 0.0,
                variance: 1.0,
            },
            |p, s| Moments {
                mean: s.mean(p.mean),
                variance: s.scale * s.scale * p.variance + s.variance,
            },
        ))
    }

    /// The exact evidence `log p(x_0)` under the model.
    pub fn log_evidence(&self, x0: f64) -> Result<f64> {
        Ok(self
            .model_marginal(0)?
            .log_density(validate::finite("x0", x0)?))
    }

    /// The ELBO of `x_0` in closed form, as its terms (`prior_matching` = `-L_T`,
    /// `denoising_matching` = `-L_{t-1}` for t = 2..=T, `reconstruction` = `L_0`).
    pub fn elbo(&self, x0: f64) -> Result<ElboTerms> {
        let x0 = validate::finite("x0", x0)?;
        let s = &self.schedule;
        let big_t = s.num_steps();
        let last = diffusion::forward_marginal(s, big_t)?;
        let prior_matching =
            gaussian::kl_to_standard_normal(last.signal() * x0, last.variance().ln());
        let denoising = (2..=big_t)
            .map(|t| self.denoising_term(t, x0))
            .collect::<Result<_>>()?;
        // L_0 = E_{x_1 ~ q(x_1|x_0)} log N(x_0; A x_1 + c, sigma^2): the residual
        // x_0 - A x_1 - c has mean x_0 - A sqrt(abar_1) x_0 - c and variance A^2 (1 - abar_1).
        let (first, step) = (diffusion::forward_marginal(s, 1)?, self.steps[0]);
        let resid_mean = x0 - step.mean(first.signal() * x0);
        let resid_sq = resid_mean * resid_mean + step.scale * step.scale * first.variance();
        let reconstruction =
            -0.5 * (gaussian::LN_2PI + step.variance.ln()) - resid_sq / (2.0 * step.variance);
        ElboTerms::new(reconstruction, prior_matching, denoising)
    }

    /// `E_{q(x_t | x_0)} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` for t >= 2: the mean
    /// gap `(coef_xt - A) x_t + coef_x0 x_0 - c` is linear in the Gaussian `x_t`.
    fn denoising_term(&self, t: usize, x0: f64) -> Result<f64> {
        let post = diffusion::posterior(&self.schedule, t)?;
        let m = post.marginal();
        let step = self.steps[t - 1];
        let slope = post.coef_xt() - step.scale;
        let gap_mean = slope * m.signal() * x0 + post.coef_x0() * x0 - step.offset;
        let gap_sq = gap_mean * gap_mean + slope * slope * m.variance();
        let variance_part =
            gaussian::exp_m1_minus_identity(post.variance().ln() - step.variance.ln());
        Ok(0.5 * (variance_part + gap_sq / step.variance))
    }

    /// [`Self::log_evidence`] summed over independent dimensions with the same data law.
    pub fn log_evidence_sum(&self, x0: &ArrayRef1<f64>) -> Result<f64> {
        x0.iter().map(|&x| self.log_evidence(x)).sum()
    }

    /// [`Self::elbo`] summed over independent dimensions with the same data law.
    pub fn elbo_sum(&self, x0: &ArrayRef1<f64>) -> Result<ElboTerms> {
        let mut total = ElboTerms::new(0.0, 0.0, vec![0.0; self.schedule.num_steps() - 1])?;
        for &x in x0 {
            total = total.combine(&self.elbo(x)?)?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use proptest::prelude::*;

    const CHOICES: [ReverseStepVariance; 3] = [
        ReverseStepVariance::Exact,
        ReverseStepVariance::Posterior,
        ReverseStepVariance::Beta,
    ];

    /// The linear schedule with betas scaled by 1000 / T (T > 20): every T covers the same
    /// noise range (the same alpha_bar curve in the limit), so T only changes the step size.
    fn scaled_linear(t: usize) -> NoiseSchedule {
        let k = 1000.0 / t as f64;
        NoiseSchedule::linear(t, 1e-4 * k, 0.02 * k).unwrap()
    }

    #[test]
    fn bad_input_is_an_error() {
        let s = NoiseSchedule::linear(10, 0.05, 0.5).unwrap();
        assert!(
            GaussianDataDiffusion::new(0.0, 0.0, s.clone(), ReverseStepVariance::Exact).is_err()
        );
        assert!(
            GaussianDataDiffusion::new(f64::NAN, 1.0, s.clone(), ReverseStepVariance::Exact)
                .is_err()
        );
        let m = GaussianDataDiffusion::new(0.0, 1.0, s, ReverseStepVariance::Exact).unwrap();
        assert!(m.reverse_step(0).is_err());
        assert!(m.model_marginal(11).is_err());
        assert!(m.elbo(f64::NAN).is_err());
        assert!(m.optimal_x0(0, 0.0).is_err());
    }

    #[test]
    fn optimal_reverse_mean_is_the_posterior_mean_at_the_optimal_x0() {
        let m =
            GaussianDataDiffusion::new(0.4, 0.2, scaled_linear(100), ReverseStepVariance::Exact)
                .unwrap();
        for t in [1, 2, 50, 100] {
            let step = m.reverse_step(t).unwrap();
            let post = diffusion::posterior(m.schedule(), t).unwrap();
            let x_t = 0.9;
            let x0_hat = m.optimal_x0(t, x_t).unwrap();
            // E[x_{t-1} | x_t] = mu_tilde(x_t, E[x_0 | x_t]) since mu_tilde is linear in x_0,
            // and Var(x_{t-1} | x_t) = beta_tilde + coef_x0^2 Var(x_0 | x_t).
            let var_x0 = m.data().variance
                * (1.0
                    - post.marginal().alpha_bar() * m.data().variance
                        / m.marginal(t).unwrap().variance);
            // Two routes through ~15 roundings on O(1) values: 1e-13.
            assert!((step.mean(x_t) - post.mean(x_t, x0_hat)).abs() < 1e-13);
            let var = post.variance() + post.coef_x0().powi(2) * var_x0;
            assert!((step.variance - var).abs() < 1e-13 * var);
        }
    }

    #[test]
    fn exact_reverse_steps_recover_the_data_up_to_the_prior_mismatch() {
        let (mean, var) = (0.5, 0.3);
        let m =
            GaussianDataDiffusion::new(mean, var, scaled_linear(1000), ReverseStepVariance::Exact)
                .unwrap();
        let q_t = m.marginal(1000).unwrap();
        let ab = m.schedule().alpha_bar(1000).unwrap();
        // Each exact step maps the error (mu_p - mu_q, v_p - v_q) to (A e_mu, A^2 e_v), and
        // prod A = sqrt(abar_T) s^2 / v_T, so p(x_0) = N(m (1 - abar_T s^2 / v_T),
        // s^2 + abar_T s^4 (1 - v_T) / v_T^2).
        let p0 = m.model_marginal(0).unwrap();
        let expected_mean = mean * (1.0 - ab * var / q_t.variance);
        let expected_var = var + ab * var * var * (1.0 - q_t.variance) / q_t.variance.powi(2);
        // 1000 compositions of a few roundings each: 1e-12.
        assert!((p0.mean - expected_mean).abs() < 1e-12);
        assert!((p0.variance - expected_var).abs() < 1e-12);
        assert_eq!(
            m.model_marginal(1000).unwrap(),
            Moments {
                mean: 0.0,
                variance: 1.0
            }
        );
        assert_eq!(m.marginal(0).unwrap(), m.data());
    }

    #[test]
    fn single_step_elbo_is_a_vae_elbo() {
        let m = GaussianDataDiffusion::new(
            0.0,
            1.0,
            NoiseSchedule::from_betas(vec![0.5]).unwrap(),
            ReverseStepVariance::Beta,
        )
        .unwrap();
        let terms = m.elbo(0.3).unwrap();
        assert!(terms.denoising_matching().is_empty());
        assert_eq!(
            terms.elbo(),
            terms.reconstruction() - terms.prior_matching()
        );
        assert!(terms.elbo() <= m.log_evidence(0.3).unwrap());
    }

    #[test]
    fn sums_over_dimensions_add_up() {
        let m =
            GaussianDataDiffusion::new(0.1, 0.5, scaled_linear(21), ReverseStepVariance::Posterior)
                .unwrap();
        let x = array![0.3, -1.2, 0.8];
        let total = m.elbo_sum(&x).unwrap();
        let by_dim: f64 = x.iter().map(|&v| m.elbo(v).unwrap().elbo()).sum();
        // Sums of the same terms in a different grouping: 1e-12 relative.
        assert!((total.elbo() - by_dim).abs() < 1e-12 * by_dim.abs());
        assert_eq!(total.denoising_matching().len(), 20);
        let ev: f64 = x.iter().map(|&v| m.log_evidence(v).unwrap()).sum();
        assert_eq!(m.log_evidence_sum(&x).unwrap(), ev);
    }

    #[test]
    fn the_gap_shrinks_as_t_grows() {
        for variance in [ReverseStepVariance::Posterior, ReverseStepVariance::Beta] {
            let mut previous = f64::INFINITY;
            for t in [30, 100, 300, 1000, 3000] {
                let m = GaussianDataDiffusion::new(0.5, 0.3, scaled_linear(t), variance).unwrap();
                // The gap averaged over a few data points.
                let gap: f64 = [-1.0, 0.0, 0.5, 1.3]
                    .iter()
                    .map(|&x| m.log_evidence(x).unwrap() - m.elbo(x).unwrap().elbo())
                    .sum();
                assert!(
                    gap > 0.0 && gap < previous,
                    "{variance:?}, T = {t}: gap {gap} after {previous}"
                );
                previous = gap;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// ELBO <= log p(x_0) for every data point, data law, schedule length and
        /// variance choice, and every KL term is non-negative.
        #[test]
        fn elbo_never_exceeds_the_evidence(
            x0 in -4.0..4.0f64, mean in -2.0..2.0f64, log_var in -4.0..2.0f64,
            t in 21usize..80, which in 0usize..3,
        ) {
            let m = GaussianDataDiffusion::new(mean, log_var.exp(), scaled_linear(t), CHOICES[which]).unwrap();
            let terms = m.elbo(x0).unwrap();
            let evidence = m.log_evidence(x0).unwrap();
            // The closed forms are each accurate to ~1e-12 relative of their size; the
            // bound is checked with that slack.
            let slack = 1e-10 * (1.0 + evidence.abs() + terms.reconstruction().abs());
            prop_assert!(terms.elbo() <= evidence + slack, "{} > {}", terms.elbo(), evidence);
            prop_assert!(terms.prior_matching() >= 0.0);
            prop_assert!(terms.denoising_matching().iter().all(|&d| d >= -1e-15));
        }
    }
}
