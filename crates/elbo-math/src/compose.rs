//! Composition of linear-Gaussian transitions: the seeds' appendix identity (eq. 37),
//!
//! ```text
//! integral N(x; a y, s^2) N(y; b z, t^2) dy = N(x; a b z, s^2 + a^2 t^2),
//! ```
//!
//! and its multi-step form: chaining the diffusion steps
//! `q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, 1 - alpha_t)` for `t = 1..=t` gives
//! `q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t)`.

use crate::error::{MathError, Result};
use crate::gaussian;
use crate::schedule::NoiseSchedule;
use crate::validate;

/// The conditional density `N(x; scale * y, variance)` of `x` given `y`, one dimension
/// (diagonal transitions act dimension by dimension).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianTransition {
    scale: f64,
    variance: f64,
}

impl GaussianTransition {
    /// `N(x; scale * y, variance)`; the scale must be finite and the variance positive and
    /// finite.
    pub fn new(scale: f64, variance: f64) -> Result<Self> {
        Ok(Self {
            scale: validate::finite("scale of a transition", scale)?,
            variance: validate::positive("variance of a transition", variance)?,
        })
    }

    /// The diffusion step `q(x_t | x_{t-1}) = N(sqrt(alpha) x_{t-1}, 1 - alpha)`,
    /// `alpha` in (0, 1).
    pub fn diffusion_step(alpha: f64) -> Result<Self> {
        let alpha = validate::unit_open("alpha", alpha, None)?;
        Self::new(alpha.sqrt(), 1.0 - alpha)
    }

    /// The factor on the conditioning variable.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The conditional variance.
    pub fn variance(&self) -> f64 {
        self.variance
    }

    /// `log N(x; scale * y, variance)`.
    pub fn log_density(&self, x: f64, y: f64) -> f64 {
        gaussian::log_density(x, self.scale * y, self.variance.ln())
    }

    /// `self` (y given z) followed by `next` (x given y), with y integrated out: eq. 37.
    pub fn then(&self, next: &GaussianTransition) -> GaussianTransition {
        compose(next, self)
    }
}

/// Eq. 37: `outer = N(x; a y, s^2)` after `inner = N(y; b z, t^2)` is
/// `N(x; a b z, s^2 + a^2 t^2)`.
pub fn compose(outer: &GaussianTransition, inner: &GaussianTransition) -> GaussianTransition {
    let a = outer.scale;
    GaussianTransition {
        scale: a * inner.scale,
        variance: outer.variance + a * a * inner.variance,
    }
}

/// Composes transitions applied in order (`steps[0]` first): the marginal of the last
/// variable given the first. Errors on an empty list.
pub fn compose_chain(steps: &[GaussianTransition]) -> Result<GaussianTransition> {
    let (first, rest) = steps.split_first().ok_or(MathError::Empty {
        what: "list of transitions to compose",
    })?;
    Ok(rest.iter().fold(*first, |acc, step| acc.then(step)))
}

/// `q(x_t | x_0)` obtained by composing the schedule's steps 1..=t one at a time; it
/// equals `N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t)` (tested), which is how
/// [`crate::diffusion::forward_marginal`] computes it directly.
pub fn forward_chain(schedule: &NoiseSchedule, t: usize) -> Result<GaussianTransition> {
    schedule.check_timestep("forward_chain", t, 1)?;
    let steps = (1..=t)
        // From beta directly: 1 - alpha would cancel when beta is small.
        .map(|s| {
            schedule
                .beta(s)
                .and_then(|b| GaussianTransition::new((1.0 - b).sqrt(), b))
        })
        .collect::<Result<Vec<_>>>()?;
    compose_chain(&steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Composite Simpson's rule for integral f(y) dy over [lo, hi] with n (even) panels.
    fn simpson(f: impl Fn(f64) -> f64, lo: f64, hi: f64, n: usize) -> f64 {
        let h = (hi - lo) / n as f64;
        let inner: f64 = (1..n)
            .map(|i| f(lo + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
            .sum();
        (f(lo) + f(hi) + inner) * h / 3.0
    }

    #[test]
    fn eq_37_holds_by_numerical_integration() {
        let outer = GaussianTransition::new(0.8, 0.3).unwrap();
        let inner = GaussianTransition::new(-1.7, 0.05).unwrap();
        let composed = compose(&outer, &inner);
        for (x, z) in [(0.0, 0.0), (1.3, -0.4), (-2.0, 1.1)] {
            // y | z has mean b z and sd sqrt(0.05) ~ 0.22; 14 sd either side leaves tails
            // below 1e-40 and 4000 Simpson panels of width 1.6e-3 give error ~ h^4 ~ 1e-11.
            let centre = inner.scale() * z;
            let integral = simpson(
                |y| (outer.log_density(x, y) + inner.log_density(y, z)).exp(),
                centre - 3.2,
                centre + 3.2,
                4000,
            );
            let exact = composed.log_density(x, z).exp();
            assert!(
                (integral - exact).abs() <= 1e-9 * exact,
                "{integral} vs {exact}"
            );
        }
        // Two products and a sum: 1e-15 relative.
        assert!((composed.scale() - 0.8 * -1.7).abs() < 1e-15 * 1.36);
        assert!((composed.variance() - (0.3 + 0.64 * 0.05)).abs() < 1e-15 * 0.332);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(GaussianTransition::new(1.0, 0.0).is_err());
        assert!(GaussianTransition::new(f64::NAN, 1.0).is_err());
        assert!(GaussianTransition::diffusion_step(1.0).is_err());
        assert!(compose_chain(&[]).is_err());
        let schedule = NoiseSchedule::linear(10, 1e-4, 0.02).unwrap();
        assert!(forward_chain(&schedule, 0).is_err());
        assert!(forward_chain(&schedule, 11).is_err());
    }

    #[test]
    fn chaining_the_linear_schedule_gives_the_closed_form_marginal() {
        let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        for t in [1, 2, 10, 500, 1000] {
            let chained = forward_chain(&schedule, t).unwrap();
            let abar = schedule.alpha_bar(t).unwrap();
            // t products of sqrt(alpha) and t positive updates of the variance, each a few
            // roundings: 1e-12 relative for t <= 1000.
            assert!((chained.scale() - abar.sqrt()).abs() <= 1e-12 * abar.sqrt());
            let one_minus = schedule.one_minus_alpha_bar(t).unwrap();
            assert!((chained.variance() - one_minus).abs() <= 1e-12 * one_minus);
        }
    }

    proptest! {
        /// Composition is associative (eq. 37 applied in either grouping).
        #[test]
        fn composition_is_associative(
            a in -3.0..3.0f64, b in -3.0..3.0f64, c in -3.0..3.0f64,
            la in -27.0..27.0f64, lb in -27.0..27.0f64, lc in -27.0..27.0f64,
        ) {
            let (p, q, r) = (
                GaussianTransition::new(a, la.exp()).unwrap(),
                GaussianTransition::new(b, lb.exp()).unwrap(),
                GaussianTransition::new(c, lc.exp()).unwrap(),
            );
            let left = compose(&compose(&p, &q), &r);
            let right = compose(&p, &compose(&q, &r));
            // Products of three scales, sums of positive variances: 1e-14 relative.
            prop_assert!((left.scale() - right.scale()).abs() <= 1e-14 * left.scale().abs());
            prop_assert!((left.variance() - right.variance()).abs() <= 1e-14 * left.variance());
        }

        /// Composing random diffusion steps gives N(sqrt(prod alpha), 1 - prod alpha).
        #[test]
        fn chained_diffusion_steps_match_alpha_bar(betas in prop::collection::vec(1e-6..0.9f64, 1..50)) {
            let steps: Vec<_> = betas.iter().map(|b| GaussianTransition::diffusion_step(1.0 - b).unwrap()).collect();
            let chained = compose_chain(&steps).unwrap();
            let abar: f64 = betas.iter().map(|b| 1.0 - b).product();
            // The recursion v <- (1 - alpha) + alpha v adds positive terms only, so its
            // error stays at a few ulp per step; 1 - abar itself is computed here with
            // cancellation 1e-16 / (1 - abar) <= 1e-10 for abar >= 1 - 1e-6. Hence
            // 1e-9 relative on the variance and 1e-13 on the scale.
            prop_assert!((chained.scale() - abar.sqrt()).abs() <= 1e-13 * abar.sqrt());
            prop_assert!((chained.variance() - (1.0 - abar)).abs() <= 1e-9 * (1.0 - abar));
        }
    }
}
