//! The variational diffusion model (Kingma et al. 2021; the seeds' "learning diffusion
//! noise parameters") in continuous time `t` in [0, 1], parameterised by the negative log
//! signal-to-noise ratio `gamma(t) = -log SNR(t)`, increasing in t:
//!
//! `alpha^2 = sigmoid(-gamma)`, `sigma^2 = sigmoid(gamma)`, `SNR = alpha^2 / sigma^2 =
//! exp(-gamma)`; `z_t = alpha_t x + sigma_t eps` (variance preserving).
//!
//! Its diffusion loss (the part of minus the ELBO between `t = 0` and `t = 1`), for a
//! denoiser whose expected squared error in eps at time t is `e(t)`:
//!
//! - with T steps, `s(i) = (i - 1) / T`, `t(i) = i / T`:
//!   `L_T = sum_i 1/2 (exp(gamma(t_i) - gamma(s_i)) - 1) e(t_i)`
//!   (the same as `1/2 sum_i (SNR(s_i) - SNR(t_i)) E||x - x_hat||^2`);
//! - in continuous time (T -> infinity): `L_inf = 1/2 int_0^1 gamma'(t) e(t) dt`
//!   (`= -1/2 int SNR'(t) E||x - x_hat||^2 dt`).
//!
//! Substituting `v = SNR(t)` shows `L_inf` depends on the schedule only through its
//! endpoints `gamma(0) = gamma_min` and `gamma(1) = gamma_max` (for a denoiser that is a
//! function of `v` and `z_v`): what the schedule between them changes is the variance
//! of the one-sample estimate, which is what VDM learns it to minimise.
//!
//! The squared error may be measured in any parameterisation: `|eps - eps_hat|^2 =
//! SNR |x - x_hat|^2 = alpha^2 |v - v_hat|^2 = sigma^2 |score - score_hat|^2`
//! ([`eps_error_weight`]).
//!
//! ```
//! use elbo_math::vdm::{continuous_loss, discrete_loss, LinearGamma};
//!
//! // A denoiser whose eps error is the same at every t: L_inf = e (gamma_max - gamma_min) / 2.
//! let schedule = LinearGamma::new(-13.3, 5.0)?;
//! let exact = 0.5 * 0.2 * (5.0 + 13.3);
//! assert!((continuous_loss(&schedule, &|_| 0.2, 64)? - exact).abs() < 1e-9);
//! // A finite T is above it, and closer as T grows.
//! let (l10, l1000) = (discrete_loss(&schedule, 10, &|_| 0.2)?, discrete_loss(&schedule, 1000, &|_| 0.2)?);
//! assert!(l10 > l1000 && l1000 > exact);
//! # Ok::<(), elbo_math::MathError>(())
//! ```

use crate::diffusion::ForwardMarginal;
use crate::error::{MathError, Result};
use crate::parameterisation::Prediction;
use crate::validate;

/// A continuous-time noise schedule: `gamma(t) = -log SNR(t)` on [0, 1], increasing.
pub trait GammaSchedule {
    /// `gamma(t)`.
    fn gamma(&self, t: f64) -> f64;
    /// `d gamma / dt` at t (positive).
    fn gamma_derivative(&self, t: f64) -> f64;
}

/// `gamma(t) = gamma_min + (gamma_max - gamma_min) t`: VDM's fixed schedule (and the
/// start of its learned one). Kingma et al. use `gamma_min = -13.3`, `gamma_max = 5`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearGamma {
    gamma_min: f64,
    gamma_max: f64,
}

impl LinearGamma {
    /// Kingma et al.'s endpoints.
    pub const KINGMA: (f64, f64) = (-13.3, 5.0);

    /// The schedule from `gamma_min` to `gamma_max` (finite, `gamma_min < gamma_max`).
    pub fn new(gamma_min: f64, gamma_max: f64) -> Result<LinearGamma> {
        validate::finite("gamma_min", gamma_min)?;
        validate::finite("gamma_max", gamma_max)?;
        if gamma_max <= gamma_min {
            return Err(MathError::OutOfRange {
                what: "gamma_max",
                expected: "(gamma_min, inf): gamma must increase with t",
                found: gamma_max,
                index: None,
            });
        }
        Ok(LinearGamma {
            gamma_min,
            gamma_max,
        })
    }

    /// `gamma(0)`.
    pub fn gamma_min(&self) -> f64 {
        self.gamma_min
    }

    /// `gamma(1)`.
    pub fn gamma_max(&self) -> f64 {
        self.gamma_max
    }
}

impl GammaSchedule for LinearGamma {
    fn gamma(&self, t: f64) -> f64 {
        self.gamma_min + (self.gamma_max - self.gamma_min) * t
    }
    fn gamma_derivative(&self, _t: f64) -> f64 {
        self.gamma_max - self.gamma_min
    }
}

/// `1 / (1 + exp(-x))`, without overflow for large `|x|`.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `alpha^2 = sigmoid(-gamma)`.
pub fn alpha_squared(gamma: f64) -> f64 {
    sigmoid(-gamma)
}

/// `sigma^2 = sigmoid(gamma)`.
pub fn sigma_squared(gamma: f64) -> f64 {
    sigmoid(gamma)
}

/// `SNR = exp(-gamma)`.
pub fn snr(gamma: f64) -> f64 {
    (-gamma).exp()
}

/// The forward marginal `q(z_t | x)` at `gamma` (finite), as the discrete schedule's
/// marginals are, so that [`Prediction::convert`] applies.
pub fn marginal(gamma: f64) -> Result<ForwardMarginal> {
    validate::finite("gamma", gamma)?;
    ForwardMarginal::from_parts(alpha_squared(gamma), sigma_squared(gamma))
}

/// The factor `w` with `|eps - eps_hat|^2 = w |p - p_hat|^2` for a prediction `p` of
/// kind `kind` at `gamma`: 1 for eps, SNR for x, alpha^2 for v, sigma^2 for the score.
pub fn eps_error_weight(kind: Prediction, gamma: f64) -> f64 {
    match kind {
        Prediction::Eps => 1.0,
        Prediction::X0 => snr(gamma),
        Prediction::V => alpha_squared(gamma),
        Prediction::Score => sigma_squared(gamma),
    }
}

/// The weight of step i's eps error in the T-step loss, `(exp(gamma_t - gamma_s) - 1) /
/// 2` for the step from `gamma_s` to `gamma_t`.
pub fn discrete_step_weight(gamma_s: f64, gamma_t: f64) -> f64 {
    0.5 * (gamma_t - gamma_s).exp_m1()
}

/// The T-step diffusion loss `sum_i 1/2 (exp(gamma(t_i) - gamma(s_i)) - 1) e(t_i)` of a
/// denoiser whose expected squared eps error at time t is `eps_error(t)`.
pub fn discrete_loss(
    schedule: &dyn GammaSchedule,
    steps: usize,
    eps_error: &dyn Fn(f64) -> f64,
) -> Result<f64> {
    if steps == 0 {
        return Err(MathError::Empty {
            what: "the steps of a discrete-time diffusion loss",
        });
    }
    let n = steps as f64;
    let total = (1..=steps)
        .map(|i| {
            let (s, t) = ((i - 1) as f64 / n, i as f64 / n);
            discrete_step_weight(schedule.gamma(s), schedule.gamma(t)) * eps_error(t)
        })
        .sum::<f64>();
    validate::finite("discrete-time diffusion loss", total)
}

/// The continuous-time diffusion loss `1/2 int_0^1 gamma'(t) e(t) dt`, by Gauss-Legendre
/// quadrature (5 nodes) on `panels` equal subintervals of [0, 1].
pub fn continuous_loss(
    schedule: &dyn GammaSchedule,
    eps_error: &dyn Fn(f64) -> f64,
    panels: usize,
) -> Result<f64> {
    let integral = integrate(&|t| schedule.gamma_derivative(t) * eps_error(t), panels)?;
    validate::finite("continuous-time diffusion loss", 0.5 * integral)
}

/// `int_0^1 f(t) dt` by 5-node Gauss-Legendre quadrature on `panels` equal subintervals
/// (exact for polynomials of degree 9 on each).
pub fn integrate(f: &dyn Fn(f64) -> f64, panels: usize) -> Result<f64> {
    if panels == 0 {
        return Err(MathError::Empty {
            what: "the panels of a quadrature",
        });
    }
    // Nodes on [-1, 1] and their weights (Abramowitz & Stegun 25.4.30).
    const NODES: [(f64, f64); 5] = [
        (0.0, 0.568_888_888_888_888_9),
        (0.538_469_310_105_683_1, 0.478_628_670_499_366_5),
        (-0.538_469_310_105_683_1, 0.478_628_670_499_366_5),
        (0.906_179_845_938_664, 0.236_926_885_056_189_1),
        (-0.906_179_845_938_664, 0.236_926_885_056_189_1),
    ];
    let h = 1.0 / panels as f64;
    let total = (0..panels)
        .map(|p| {
            let middle = (p as f64 + 0.5) * h;
            NODES
                .iter()
                .map(|&(x, w)| w * f(middle + 0.5 * h * x))
                .sum::<f64>()
                * 0.5
                * h
        })
        .sum();
    Ok(total)
}

/// VDM's low-discrepancy times for a batch of `n`: `t_i = (u + i / n) mod 1` for one
/// uniform `u` in [0, 1): each of the n strata `[k / n, (k + 1) / n)` holds one time, so
/// the batch's loss estimate has lower variance than with n independent times and the
/// same mean.
pub fn low_discrepancy_times(u: f64, n: usize) -> Result<Vec<f64>> {
    if !(0.0..1.0).contains(&u) {
        return Err(MathError::OutOfRange {
            what: "the uniform draw of low-discrepancy times",
            expected: "[0, 1)",
            found: u,
            index: None,
        });
    }
    Ok((0..n)
        .map(|i| {
            let t = u + i as f64 / n as f64;
            if t >= 1.0 { t - 1.0 } else { t }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_sigma_and_snr_are_consistent_and_stable() {
        for gamma in [-30.0, -13.3, -1.0, 0.0, 2.5, 5.0, 30.0] {
            let (a2, s2) = (alpha_squared(gamma), sigma_squared(gamma));
            assert!((a2 + s2 - 1.0).abs() < 1e-15, "{gamma}");
            assert!((a2 / s2 / snr(gamma) - 1.0).abs() < 1e-12, "{gamma}");
        }
        assert_eq!(sigmoid(-800.0), 0.0);
        assert_eq!(sigmoid(800.0), 1.0);
        let m = marginal(-13.3).unwrap();
        assert!((m.alpha_bar() - alpha_squared(-13.3)).abs() < 1e-15);
        assert!(marginal(f64::NAN).is_err());
    }

    #[test]
    fn quadrature_is_exact_for_polynomials_and_accurate_for_smooth_functions() {
        let p = |t: f64| 3.0 * t.powi(9) - t.powi(4) + 2.0;
        assert!((integrate(&p, 1).unwrap() - (0.3 - 0.2 + 2.0)).abs() < 1e-14);
        let e = integrate(&|t: f64| (5.0 * t).exp(), 8).unwrap();
        assert!((e - (5f64.exp() - 1.0) / 5.0).abs() < 1e-12);
        assert!(integrate(&p, 0).is_err());
    }

    #[test]
    fn low_discrepancy_times_fill_one_stratum_each() {
        let times = low_discrepancy_times(0.73, 8).unwrap();
        let mut strata: Vec<usize> = times.iter().map(|t| (t * 8.0) as usize).collect();
        strata.sort_unstable();
        assert_eq!(strata, (0..8).collect::<Vec<_>>());
        assert!(times.iter().all(|t| (0.0..1.0).contains(t)));
        assert!(low_discrepancy_times(1.0, 4).is_err());
    }

    #[test]
    fn a_schedule_must_increase() {
        assert!(LinearGamma::new(5.0, -13.3).is_err());
        assert!(LinearGamma::new(f64::NEG_INFINITY, 0.0).is_err());
        let (min, max) = LinearGamma::KINGMA;
        assert!(LinearGamma::new(min, max).is_ok());
    }
}
