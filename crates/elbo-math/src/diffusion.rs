//! Diffusion kernels: the forward marginal `q(x_t | x_0)`, the posterior
//! `q(x_{t-1} | x_t, x_0)` in x0 form and in eps form, and the reverse mean parameterised
//! by a noise prediction (the seeds' eq. 34). Scalar (per element) and elementwise ndarray
//! versions; every function checks its timestep against the schedule. The posterior
//! between any two points given by their `alpha_bar`s ([`posterior_between`]) serves
//! processes that are not a [`NoiseSchedule`].

use crate::error::{MathError, Result};
use crate::gaussian;
use crate::parameterisation::Prediction;
use crate::schedule::NoiseSchedule;
use crate::validate;
use ndarray::{Array, ArrayRef, Dimension, Zip};

/// `q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)` at one timestep `t >= 1`
/// (so `0 < alpha_bar < 1`, and the conversions in [`crate::parameterisation`] never
/// divide by zero).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardMarginal {
    alpha_bar: f64,
    one_minus_alpha_bar: f64,
}

impl ForwardMarginal {
    /// `alpha_bar_t`.
    pub fn alpha_bar(&self) -> f64 {
        self.alpha_bar
    }

    /// `1 - alpha_bar_t`, the variance of `q(x_t | x_0)`.
    pub fn variance(&self) -> f64 {
        self.one_minus_alpha_bar
    }

    /// `sqrt(alpha_bar_t)`, the factor on `x_0`.
    pub fn signal(&self) -> f64 {
        self.alpha_bar.sqrt()
    }

    /// `sqrt(1 - alpha_bar_t)`, the factor on the noise.
    pub fn noise(&self) -> f64 {
        self.one_minus_alpha_bar.sqrt()
    }

    /// The marginal with `alpha_bar` and `1 - alpha_bar` given separately (so that a
    /// tiny `1 - alpha_bar` keeps its precision), each in (0, 1).
    pub fn from_parts(alpha_bar: f64, one_minus_alpha_bar: f64) -> Result<ForwardMarginal> {
        validate::unit_open("alpha_bar", alpha_bar, None)?;
        validate::unit_open("1 - alpha_bar", one_minus_alpha_bar, None)?;
        Ok(ForwardMarginal {
            alpha_bar,
            one_minus_alpha_bar,
        })
    }

    /// `x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps` (the seeds' eq. 27).
    pub fn sample(&self, x0: f64, eps: f64) -> f64 {
        self.signal() * x0 + self.noise() * eps
    }

    /// `log q(x_t | x_0)`.
    pub fn log_density(&self, x_t: f64, x0: f64) -> f64 {
        gaussian::log_density(x_t, self.signal() * x0, self.one_minus_alpha_bar.ln())
    }
}

/// The forward marginal `q(x_t | x_0)` for t in `1..=T`.
pub fn forward_marginal(schedule: &NoiseSchedule, t: usize) -> Result<ForwardMarginal> {
    schedule.check_timestep("forward_marginal", t, 1)?;
    Ok(ForwardMarginal {
        alpha_bar: schedule.alpha_bar(t)?,
        one_minus_alpha_bar: schedule.one_minus_alpha_bar(t)?,
    })
}

/// Elementwise `sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps` (checked shapes).
pub fn forward_sample_array<D: Dimension>(
    schedule: &NoiseSchedule,
    t: usize,
    x0: &ArrayRef<f64, D>,
    eps: &ArrayRef<f64, D>,
) -> Result<Array<f64, D>> {
    let m = forward_marginal(schedule, t)?;
    validate::same_shape("eps", x0, eps)?;
    Ok(Zip::from(x0)
        .and(eps)
        .map_collect(|&x0, &e| m.sample(x0, e)))
}

/// The posterior `q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde_t)` at
/// one timestep, with
/// `coef_x0 = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)` and
/// `coef_xt = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Posterior {
    coef_x0: f64,
    coef_xt: f64,
    variance: f64,
    alpha: f64,
    beta: f64,
    marginal: ForwardMarginal,
}

impl Posterior {
    /// The factor on `x_0` in the posterior mean.
    pub fn coef_x0(&self) -> f64 {
        self.coef_x0
    }

    /// The factor on `x_t` in the posterior mean.
    pub fn coef_xt(&self) -> f64 {
        self.coef_xt
    }

    /// `beta_tilde_t`; 0 at t = 1, where the posterior is a point mass at `x_0`.
    pub fn variance(&self) -> f64 {
        self.variance
    }

    /// `alpha_t` of the step.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// `beta_t` of the step.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The forward marginal `q(x_t | x_0)` at the same timestep.
    pub fn marginal(&self) -> ForwardMarginal {
        self.marginal
    }

    /// The posterior mean in x0 form, `coef_x0 x_0 + coef_xt x_t`.
    pub fn mean(&self, x_t: f64, x0: f64) -> f64 {
        self.coef_x0 * x0 + self.coef_xt * x_t
    }

    /// The posterior mean in eps form (the seeds' eq. 29),
    /// `(x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)`, where `eps` is the
    /// noise with `x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`.
    pub fn mean_from_eps(&self, x_t: f64, eps: f64) -> f64 {
        (x_t - self.beta / self.marginal.noise() * eps) / self.alpha.sqrt()
    }

    /// The posterior mean in score form, `(x_t + beta_t score) / sqrt(alpha_t)`, with
    /// `score = grad log q(x_t | x_0) = -eps / sqrt(1 - alpha_bar_t)`.
    pub fn mean_from_score(&self, x_t: f64, score: f64) -> f64 {
        (x_t + self.beta * score) / self.alpha.sqrt()
    }

    /// The posterior mean from any parameterisation of the prediction (x0, eps, score or
    /// v), each through its own closed form (v via eps).
    pub fn mean_from(&self, kind: Prediction, x_t: f64, value: f64) -> f64 {
        match kind {
            Prediction::X0 => self.mean(x_t, value),
            Prediction::Eps => self.mean_from_eps(x_t, value),
            Prediction::Score => self.mean_from_score(x_t, value),
            Prediction::V => {
                let eps = kind.convert(&self.marginal, x_t, value, Prediction::Eps);
                self.mean_from_eps(x_t, eps)
            }
        }
    }
}

/// The posterior `q(x_{t-1} | x_t, x_0)` for t in `1..=T`.
pub fn posterior(schedule: &NoiseSchedule, t: usize) -> Result<Posterior> {
    schedule.check_timestep("posterior", t, 1)?;
    let (beta, one_minus_prev) = (schedule.beta(t)?, schedule.one_minus_alpha_bar(t - 1)?);
    let marginal = forward_marginal(schedule, t)?;
    let one_minus = marginal.one_minus_alpha_bar;
    Ok(Posterior {
        coef_x0: schedule.alpha_bar(t - 1)?.sqrt() * beta / one_minus,
        coef_xt: (1.0 - beta).sqrt() * one_minus_prev / one_minus,
        variance: schedule.posterior_variance(t)?,
        alpha: 1.0 - beta,
        beta,
        marginal,
    })
}

/// The posterior `q(x_s | x_t, x_0)` between two points `s < t` of a variance-preserving
/// forward process given only by their `alpha_bar`s: `alpha_bar_prev` at s, in
/// `[alpha_bar, 1]`, and `alpha_bar` at t, in (0, 1). It is [`posterior`]'s closed form
/// with `alpha_bar_{t-1} = alpha_bar_prev`, for a grid that is not a [`NoiseSchedule`]
/// (a learned schedule read one step at a time): the step has `alpha = alpha_bar /
/// alpha_bar_prev` and `beta = 1 - alpha`, so
/// `coef_x0 = sqrt(alpha_bar_prev) beta / (1 - alpha_bar)`,
/// `coef_xt = sqrt(alpha) (1 - alpha_bar_prev) / (1 - alpha_bar)` and
/// `variance = beta (1 - alpha_bar_prev) / (1 - alpha_bar)`, each `1 - alpha_bar` taken
/// by subtraction. `alpha_bar_prev = 1` (s is the data) gives t = 1's point mass at `x_0`;
/// `alpha_bar_prev = alpha_bar` (two points the schedule does not tell apart) gives
/// `x_s = x_t`.
pub fn posterior_between(alpha_bar_prev: f64, alpha_bar: f64) -> Result<Posterior> {
    let one_minus = 1.0 - alpha_bar;
    let marginal = ForwardMarginal::from_parts(alpha_bar, one_minus)?;
    if !(alpha_bar..=1.0).contains(&alpha_bar_prev) {
        return Err(MathError::OutOfRange {
            what: "alpha_bar of the earlier point",
            expected: "[alpha_bar, 1]",
            found: alpha_bar_prev,
            index: None,
        });
    }
    let alpha = alpha_bar / alpha_bar_prev;
    let beta = 1.0 - alpha;
    let one_minus_prev = 1.0 - alpha_bar_prev;
    Ok(Posterior {
        coef_x0: alpha_bar_prev.sqrt() * beta / one_minus,
        coef_xt: alpha.sqrt() * one_minus_prev / one_minus,
        variance: beta * one_minus_prev / one_minus,
        alpha,
        beta,
        marginal,
    })
}

/// The posterior mean `mu_tilde(x_t, x_0)` (x0 form) for t in `1..=T`.
pub fn posterior_mean(schedule: &NoiseSchedule, t: usize, x_t: f64, x0: f64) -> Result<f64> {
    Ok(posterior(schedule, t)?.mean(x_t, x0))
}

/// The posterior mean in eps form for t in `1..=T` (see [`Posterior::mean_from_eps`]).
pub fn posterior_mean_from_eps(
    schedule: &NoiseSchedule,
    t: usize,
    x_t: f64,
    eps: f64,
) -> Result<f64> {
    Ok(posterior(schedule, t)?.mean_from_eps(x_t, eps))
}

/// The posterior variance `beta_tilde_t` for t in `1..=T`.
pub fn posterior_variance(schedule: &NoiseSchedule, t: usize) -> Result<f64> {
    schedule.posterior_variance(t)
}

/// The reverse mean of the seeds' eq. 34,
/// `mu_theta(x_t, t) = (x_t - (1 - alpha_t) / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t)`,
/// for a model's noise prediction `eps_theta`; with the true noise it is the posterior mean.
pub fn reverse_mean(
    schedule: &NoiseSchedule,
    t: usize,
    x_t: f64,
    eps_prediction: f64,
) -> Result<f64> {
    posterior_mean_from_eps(schedule, t, x_t, eps_prediction)
}

/// Elementwise [`posterior_mean`] (checked shapes).
pub fn posterior_mean_array<D: Dimension>(
    schedule: &NoiseSchedule,
    t: usize,
    x_t: &ArrayRef<f64, D>,
    x0: &ArrayRef<f64, D>,
) -> Result<Array<f64, D>> {
    let p = posterior(schedule, t)?;
    validate::same_shape("x0", x_t, x0)?;
    Ok(Zip::from(x_t)
        .and(x0)
        .map_collect(|&xt, &x0| p.mean(xt, x0)))
}

/// Elementwise reverse mean from a prediction of any kind (checked shapes); with
/// `Prediction::Eps` this is eq. 34.
pub fn reverse_mean_array<D: Dimension>(
    schedule: &NoiseSchedule,
    t: usize,
    kind: Prediction,
    x_t: &ArrayRef<f64, D>,
    prediction: &ArrayRef<f64, D>,
) -> Result<Array<f64, D>> {
    let p = posterior(schedule, t)?;
    validate::same_shape("prediction", x_t, prediction)?;
    Ok(Zip::from(x_t)
        .and(prediction)
        .map_collect(|&xt, &v| p.mean_from(kind, xt, v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use proptest::prelude::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn timesteps_are_checked() {
        let s = NoiseSchedule::linear(10, 1e-4, 0.02).unwrap();
        assert!(forward_marginal(&s, 0).is_err());
        assert!(posterior(&s, 11).is_err());
        assert!(reverse_mean(&s, 0, 0.0, 0.0).is_err());
        let a = array![1.0, 2.0];
        assert!(posterior_mean_array(&s, 3, &a, &array![1.0]).is_err());
        assert!(forward_sample_array(&s, 3, &a, &array![1.0]).is_err());
        assert!(reverse_mean_array(&s, 3, Prediction::Eps, &a, &array![1.0]).is_err());
    }

    #[test]
    fn posterior_at_t1_is_a_point_mass_at_x0() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        let p = posterior(&s, 1).unwrap();
        assert_eq!(p.variance(), 0.0);
        assert_eq!(p.coef_xt(), 0.0);
        // coef_x0 = beta_1 / (1 - alpha_bar_1) = 1 up to the expm1/log1p round trip.
        assert!(close(p.coef_x0(), 1.0, 1e-12));
        assert!(close(
            posterior_mean(&s, 1, 0.7, -0.3).unwrap(),
            -0.3,
            1e-12
        ));
    }

    #[test]
    fn posterior_matches_bayes_rule_by_completing_the_square() {
        // q(x_{t-1}|x_t, x_0) is proportional to q(x_t|x_{t-1}) q(x_{t-1}|x_0): precision
        // alpha / beta + 1 / (1 - abar_{t-1}), precision-weighted mean (seeds' eq. 23).
        let s = NoiseSchedule::cosine(100, 0.008, 0.999).unwrap();
        for t in [2, 30, 99] {
            let p = posterior(&s, t).unwrap();
            let (a, b) = (s.alpha(t).unwrap(), s.beta(t).unwrap());
            let (abp, omp) = (
                s.alpha_bar(t - 1).unwrap(),
                s.one_minus_alpha_bar(t - 1).unwrap(),
            );
            let precision = a / b + 1.0 / omp;
            let (x_t, x0) = (0.4, -1.2);
            let mean = (a.sqrt() / b * x_t + abp.sqrt() / omp * x0) / precision;
            // A dozen roundings on O(1) quantities: 1e-12 absolute.
            assert!(close(p.variance(), 1.0 / precision, 1e-12 * p.variance()));
            assert!(close(p.mean(x_t, x0), mean, 1e-12));
        }
    }

    #[test]
    fn posterior_between_is_the_closed_form_of_two_alpha_bars() {
        // The formulas written out, as a learned schedule's reverse step used them.
        let (ab_prev, ab) = (0.9, 0.6);
        let p = posterior_between(ab_prev, ab).unwrap();
        let alpha_step: f64 = ab / ab_prev;
        let beta = 1.0 - alpha_step;
        assert_eq!(p.coef_x0(), ab_prev.sqrt() * beta / (1.0 - ab));
        assert_eq!(
            p.coef_xt(),
            alpha_step.sqrt() * (1.0 - ab_prev) / (1.0 - ab)
        );
        assert_eq!(p.variance(), beta * (1.0 - ab_prev) / (1.0 - ab));
        assert_eq!((p.alpha(), p.beta()), (alpha_step, beta));
        assert_eq!(p.marginal().alpha_bar(), ab);
        // The data as the earlier point: the point mass at x_0 of t = 1.
        let p = posterior_between(1.0, ab).unwrap();
        assert_eq!((p.variance(), p.coef_xt(), p.coef_x0()), (0.0, 0.0, 1.0));
        // Two points the schedule does not tell apart: x_s = x_t.
        let p = posterior_between(ab, ab).unwrap();
        assert_eq!((p.variance(), p.coef_xt(), p.coef_x0()), (0.0, 1.0, 0.0));
    }

    #[test]
    fn posterior_between_agrees_with_the_schedules_posterior() {
        for s in [
            NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap(),
            NoiseSchedule::cosine(1000, 0.008, 0.999).unwrap(),
        ] {
            for t in 1..=s.num_steps() {
                let p = posterior(&s, t).unwrap();
                let q = posterior_between(s.alpha_bar(t - 1).unwrap(), s.alpha_bar(t).unwrap())
                    .unwrap();
                // Subtracting from 1 (here) rather than expm1 (the schedule's) costs up
                // to an ulp of 1 in beta, 1 - alpha_bar_{t-1} and 1 - alpha_bar_t:
                // relative errors of 2^-52 over the smallest of them, a few of each.
                let (b, omp) = (s.beta(t).unwrap(), s.one_minus_alpha_bar(t - 1).unwrap());
                let rel = 8.0 * f64::EPSILON / if t == 1 { b } else { b.min(omp) };
                assert!(
                    close(q.coef_x0(), p.coef_x0(), rel * p.coef_x0()),
                    "t = {t}"
                );
                assert!(
                    close(q.coef_xt(), p.coef_xt(), rel * p.coef_xt()),
                    "t = {t}"
                );
                assert!(
                    close(q.variance(), p.variance(), rel * p.variance()),
                    "t = {t}"
                );
                assert!(close(q.beta(), p.beta(), rel * p.beta()), "t = {t}");
            }
        }
    }

    #[test]
    fn posterior_between_refuses_points_out_of_order() {
        assert!(posterior_between(0.5, 0.6).is_err());
        assert!(posterior_between(1.5, 0.6).is_err());
        assert!(posterior_between(f64::NAN, 0.6).is_err());
        assert!(posterior_between(1.0, 1.0).is_err());
        assert!(posterior_between(0.5, 0.0).is_err());
        assert!(posterior_between(0.5, f64::NAN).is_err());
    }

    #[test]
    fn forward_marginal_sampling_and_density() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        let m = forward_marginal(&s, 300).unwrap();
        // signal^2 + noise^2 = 1: 2 ulp.
        assert!(close(m.signal().powi(2) + m.noise().powi(2), 1.0, 1e-15));
        let x_t = m.sample(0.5, -1.0);
        assert_eq!(x_t, m.signal() * 0.5 - m.noise());
        let expected = gaussian::log_density(x_t, m.signal() * 0.5, m.variance().ln());
        assert_eq!(m.log_density(x_t, 0.5), expected);
        let xs = forward_sample_array(&s, 300, &array![0.5], &array![-1.0]).unwrap();
        assert_eq!(xs[0], x_t);
    }

    proptest! {
        /// Posterior mean in x0 form == eps form == eq. 34 with the true eps == score
        /// form with the true score, on the linear, cosine and sigmoid schedules.
        #[test]
        fn posterior_mean_forms_agree(
            t in 1usize..=1000, x0 in -5.0..5.0f64, eps in -5.0..5.0f64, which in 0usize..3,
        ) {
            let s = match which {
                0 => NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap(),
                1 => NoiseSchedule::cosine(1000, 0.008, 0.999).unwrap(),
                _ => NoiseSchedule::sigmoid(1000, -3.0, 3.0, 1.0).unwrap(),
            };
            let p = posterior(&s, t).unwrap();
            let x_t = p.marginal().sample(x0, eps);
            let by_x0 = p.mean(x_t, x0);
            let by_eps = p.mean_from_eps(x_t, eps);
            let by_eq34 = reverse_mean(&s, t, x_t, eps).unwrap();
            let score = -eps / p.marginal().noise();
            let by_score = p.mean_from_score(x_t, score);
            // x_t is rounded once (1e-16 |x_t|), and the eps form multiplies that rounding
            // by beta / (sqrt(alpha) (1 - abar)) <= 1 / sqrt(alpha) <= 32 (beta <= 0.999);
            // 1e-12 absolute on O(10) values covers it with room to spare.
            prop_assert!(close(by_x0, by_eps, 1e-12 * (1.0 + x_t.abs() + x0.abs() + eps.abs()) / p.alpha().sqrt()));
            prop_assert_eq!(by_eps, by_eq34);
            prop_assert!(close(by_score, by_eps, 1e-13 * (1.0 + x_t.abs() + eps.abs()) / p.alpha().sqrt()));
        }
    }
}
