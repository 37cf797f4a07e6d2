//! [`NoiseSchedule`]: the variances `beta_t` of the forward process and everything derived
//! from them (`alpha_t = 1 - beta_t`, `alpha_bar_t = prod_{s <= t} alpha_s`, the
//! posterior variance `beta_tilde_t`, the log signal-to-noise ratio), with the linear,
//! cosine and sigmoid constructions and timestep respacing.
//!
//! Timesteps are 1-based as in the seeds: `t` runs over `1..=T`, and `alpha_bar(0) = 1`
//! (no noise yet). `log alpha_bar` is kept as a running sum of `ln(1 - beta)`, so that
//! `1 - alpha_bar_t = -expm1(log alpha_bar_t)` is accurate even when `alpha_bar_t` is
//! within 1e-4 of 1 (the linear schedule's first step).

use crate::error::{MathError, Result};
use crate::validate;
use std::f64::consts::FRAC_PI_2;

/// A validated noise schedule: `0 < beta_t < 1` for every `t`, hence `alpha_bar` strictly
/// decreasing in (0, 1).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// `betas[t - 1] = beta_t`.
    betas: Vec<f64>,
    /// `log_alpha_bar[t - 1] = ln alpha_bar_t`.
    log_alpha_bar: Vec<f64>,
    /// `timesteps[t - 1]`: the step of the original schedule that step `t` stands for
    /// (`t` itself unless the schedule was respaced).
    timesteps: Vec<usize>,
}

impl NoiseSchedule {
    /// A schedule from its betas (`betas[0] = beta_1`); each must lie in (0, 1).
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        if betas.is_empty() {
            return Err(MathError::Empty {
                what: "list of betas",
            });
        }
        for (i, &b) in betas.iter().enumerate() {
            validate::unit_open("beta", b, Some(i))?;
        }
        let log_alpha_bar = betas
            .iter()
            .scan(0.0, |acc, &b| {
                *acc += (-b).ln_1p();
                Some(*acc)
            })
            .collect();
        let timesteps = (1..=betas.len()).collect();
        Ok(Self {
            betas,
            log_alpha_bar,
            timesteps,
        })
    }

    /// A schedule from `alpha_bar_1, ..., alpha_bar_T`, which must lie in (0, 1) and be
    /// strictly decreasing. The given values are kept exactly.
    pub fn from_alpha_bar(alpha_bar: &[f64]) -> Result<Self> {
        if alpha_bar.is_empty() {
            return Err(MathError::Empty {
                what: "list of alpha_bar values",
            });
        }
        let mut previous = 1.0;
        for (i, &ab) in alpha_bar.iter().enumerate() {
            validate::unit_open("alpha_bar", ab, Some(i))?;
            if ab >= previous {
                return Err(MathError::NotDecreasing {
                    found: ab,
                    previous,
                    index: i,
                });
            }
            previous = ab;
        }
        let log_alpha_bar = alpha_bar.iter().map(|ab| ab.ln()).collect();
        Self::from_log_alpha_bar(log_alpha_bar, (1..=alpha_bar.len()).collect())
    }

    /// From strictly decreasing negative `ln alpha_bar` values (checked by the callers);
    /// betas `1 - alpha_bar_t / alpha_bar_{t-1} = -expm1(difference of logs)`, which has
    /// no cancellation when the ratio is close to 1.
    fn from_log_alpha_bar(log_alpha_bar: Vec<f64>, timesteps: Vec<usize>) -> Result<Self> {
        let mut previous = 0.0;
        let mut betas = Vec::with_capacity(log_alpha_bar.len());
        for (i, &l) in log_alpha_bar.iter().enumerate() {
            // Two alpha_bar values one ulp apart can still give a beta of 0 here.
            betas.push(validate::unit_open(
                "beta",
                -(l - previous).exp_m1(),
                Some(i),
            )?);
            previous = l;
        }
        Ok(Self {
            betas,
            log_alpha_bar,
            timesteps,
        })
    }

    /// Ho et al.'s linear schedule: `beta_t` evenly spaced from `beta_start` (t = 1) to
    /// `beta_end` (t = T); DDPM uses `linear(1000, 1e-4, 0.02)`.
    pub fn linear(num_steps: usize, beta_start: f64, beta_end: f64) -> Result<Self> {
        validate::unit_open("beta_start", beta_start, None)?;
        validate::unit_open("beta_end", beta_end, None)?;
        let n = positive_steps(num_steps)?;
        let step = if n > 1 {
            (beta_end - beta_start) / (n - 1) as f64
        } else {
            0.0
        };
        Self::from_betas((0..n).map(|i| beta_start + step * i as f64).collect())
    }

    /// Nichol & Dhariwal's cosine schedule: `alpha_bar_t = f(t) / f(0)` with
    /// `f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)`, betas clipped at `max_beta`
    /// (they use `s = 0.008`, `max_beta = 0.999`); `alpha_bar` is then recomputed from
    /// the clipped betas.
    pub fn cosine(num_steps: usize, s: f64, max_beta: f64) -> Result<Self> {
        if !(s.is_finite() && s >= 0.0) {
            return Err(MathError::OutOfRange {
                what: "offset s",
                expected: "[0, inf)",
                found: s,
                index: None,
            });
        }
        validate::unit_open("max_beta", max_beta, None)?;
        let n = positive_steps(num_steps)?;
        let f = |t: usize| {
            let angle = ((t as f64 / n as f64) + s) / (1.0 + s) * FRAC_PI_2;
            angle.cos().powi(2)
        };
        Self::from_clipped_alpha_bar(n, |t| f(t) / f(0), max_beta)
    }

    /// The sigmoid schedule of Jabri et al. (2022):
    /// `alpha_bar(u) = (sigmoid(end / tau) - sigmoid((start + u (end - start)) / tau)) /
    /// (sigmoid(end / tau) - sigmoid(start / tau))` at `u = t / T`, betas clipped at 0.999
    /// as for the cosine schedule. Typical values: `start = -3`, `end = 3`, `tau = 1`.
    pub fn sigmoid(num_steps: usize, start: f64, end: f64, tau: f64) -> Result<Self> {
        validate::finite("sigmoid start", start)?;
        validate::finite("sigmoid end", end)?;
        validate::positive("sigmoid temperature tau", tau)?;
        if start >= end {
            return Err(MathError::OutOfRange {
                what: "sigmoid start",
                expected: "(-inf, end)",
                found: start,
                index: None,
            });
        }
        let n = positive_steps(num_steps)?;
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (v_start, v_end) = (sigmoid(start / tau), sigmoid(end / tau));
        let g = |t: usize| {
            let u = t as f64 / n as f64;
            (v_end - sigmoid((start + u * (end - start)) / tau)) / (v_end - v_start)
        };
        Self::from_clipped_alpha_bar(n, g, 0.999)
    }

    /// Betas `min(1 - g(t) / g(t - 1), max_beta)` from a decreasing curve g with g(0) = 1.
    fn from_clipped_alpha_bar(n: usize, g: impl Fn(usize) -> f64, max_beta: f64) -> Result<Self> {
        let betas = (1..=n)
            .map(|t| {
                let ratio = g(t) / g(t - 1);
                if ratio.is_finite() {
                    (1.0 - ratio).clamp(0.0, max_beta)
                } else {
                    max_beta
                }
            })
            .collect();
        Self::from_betas(betas)
    }

    /// The schedule restricted to the given steps of this one (strictly increasing, each
    /// in `1..=T`): step `i` of the result has `alpha_bar = alpha_bar(timesteps[i])` exactly,
    /// and its beta is recomputed as `1 - alpha_bar(timesteps[i]) / alpha_bar(timesteps[i - 1])`.
    /// This is the respacing DDIM and other fast samplers use. [`Self::timestep`] maps
    /// the new steps back to the original ones.
    pub fn respace(&self, timesteps: &[usize]) -> Result<Self> {
        if timesteps.is_empty() {
            return Err(MathError::Empty {
                what: "list of timesteps to keep",
            });
        }
        let mut previous = 0;
        for (i, &t) in timesteps.iter().enumerate() {
            self.check_timestep("respace", t, 1)?;
            if t <= previous {
                return Err(MathError::NotIncreasing {
                    found: t,
                    previous,
                    index: i,
                });
            }
            previous = t;
        }
        let log_alpha_bar = timesteps
            .iter()
            .map(|&t| self.log_alpha_bar[t - 1])
            .collect();
        let original = timesteps.iter().map(|&t| self.timesteps[t - 1]).collect();
        Self::from_log_alpha_bar(log_alpha_bar, original)
    }

    /// The number of steps T.
    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }

    /// All betas, `betas()[t - 1] = beta_t`.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// `beta_t` for t in `1..=T`.
    pub fn beta(&self, t: usize) -> Result<f64> {
        self.check_timestep("beta", t, 1)?;
        Ok(self.betas[t - 1])
    }

    /// `alpha_t = 1 - beta_t` for t in `1..=T`.
    pub fn alpha(&self, t: usize) -> Result<f64> {
        Ok(1.0 - self.beta(t)?)
    }

    /// `ln alpha_bar_t` for t in `0..=T` (0 at t = 0).
    pub fn log_alpha_bar(&self, t: usize) -> Result<f64> {
        self.check_timestep("log_alpha_bar", t, 0)?;
        Ok(if t == 0 {
            0.0
        } else {
            self.log_alpha_bar[t - 1]
        })
    }

    /// `alpha_bar_t = prod_{s <= t} alpha_s` for t in `0..=T`, with `alpha_bar(0) = 1`.
    pub fn alpha_bar(&self, t: usize) -> Result<f64> {
        Ok(self.log_alpha_bar(t)?.exp())
    }

    /// `1 - alpha_bar_t` for t in `0..=T`, accurate when `alpha_bar_t` is close to 1.
    pub fn one_minus_alpha_bar(&self, t: usize) -> Result<f64> {
        Ok(-self.log_alpha_bar(t)?.exp_m1())
    }

    /// The posterior variance `beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)`
    /// of `q(x_{t-1} | x_t, x_0)`, for t in `1..=T`; it is 0 at t = 1.
    pub fn posterior_variance(&self, t: usize) -> Result<f64> {
        let beta = self.beta(t)?;
        Ok(beta * self.one_minus_alpha_bar(t - 1)? / self.one_minus_alpha_bar(t)?)
    }

    /// The log signal-to-noise ratio `ln(alpha_bar_t / (1 - alpha_bar_t))` for t in `1..=T`
    /// (strictly decreasing in t).
    pub fn log_snr(&self, t: usize) -> Result<f64> {
        self.check_timestep("log_snr", t, 1)?;
        let l = self.log_alpha_bar[t - 1];
        Ok(l - (-l.exp_m1()).ln())
    }

    /// The step of the original schedule that step `t` (in `1..=T`) stands for: `t` itself
    /// unless this schedule came from [`Self::respace`]. Time embeddings take this value.
    pub fn timestep(&self, t: usize) -> Result<usize> {
        self.check_timestep("timestep", t, 1)?;
        Ok(self.timesteps[t - 1])
    }

    /// Errors unless `min <= t <= T`.
    pub(crate) fn check_timestep(&self, what: &'static str, t: usize, min: usize) -> Result<()> {
        let max = self.num_steps();
        if t < min || t > max {
            Err(MathError::TimestepOutOfRange {
                what,
                min,
                max,
                found: t,
            })
        } else {
            Ok(())
        }
    }
}

/// `count` timesteps out of `1..=num_steps`, evenly spaced and ending at `num_steps`
/// (`round(i * T / count)` for `i = 1..=count`), for [`NoiseSchedule::respace`].
pub fn evenly_spaced_timesteps(num_steps: usize, count: usize) -> Result<Vec<usize>> {
    let t = positive_steps(num_steps)?;
    if count == 0 || count > t {
        return Err(MathError::OutOfRange {
            what: "number of timesteps to keep",
            expected: "1..=T",
            found: count as f64,
            index: None,
        });
    }
    // In f64 so that i * T cannot overflow; step >= 1, so the rounded values rise strictly.
    let step = t as f64 / count as f64;
    Ok((1..=count)
        .map(|i| (i as f64 * step).round() as usize)
        .collect())
}

fn positive_steps(num_steps: usize) -> Result<usize> {
    if num_steps == 0 {
        Err(MathError::Empty {
            what: "schedule (T must be at least 1)",
        })
    } else {
        Ok(num_steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / a.abs().max(b.abs())
    }

    #[test]
    fn linear_schedule_endpoints_and_derived_quantities() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        assert_eq!(s.num_steps(), 1000);
        // beta_1 is beta_start exactly; beta_T is start + 999 * step, 1e-15 relative.
        assert_eq!(s.beta(1).unwrap(), 1e-4);
        assert!(rel(s.beta(1000).unwrap(), 0.02) < 1e-15);
        assert_eq!(s.alpha_bar(0).unwrap(), 1.0);
        assert_eq!(s.one_minus_alpha_bar(0).unwrap(), 0.0);
        // alpha_bar_1 = 1 - 1e-4 and 1 - alpha_bar_1 = 1e-4 to 1e-15 relative: log1p and
        // expm1 round trip, no cancellation.
        assert!(rel(s.alpha_bar(1).unwrap(), 1.0 - 1e-4) < 1e-15);
        assert!(rel(s.one_minus_alpha_bar(1).unwrap(), 1e-4) < 1e-12);
        // The DDPM value alpha_bar_1000 = 4.0358e-5 (product of 1000 alphas), 1e-4 relative
        // for the 5 printed digits.
        assert!(rel(s.alpha_bar(1000).unwrap(), 4.0358e-5) < 1e-4);
        assert_eq!(s.posterior_variance(1).unwrap(), 0.0);
        let pv2 = s.beta(2).unwrap() * s.one_minus_alpha_bar(1).unwrap()
            / s.one_minus_alpha_bar(2).unwrap();
        assert_eq!(s.posterior_variance(2).unwrap(), pv2);
        assert_eq!(s.alpha(7).unwrap(), 1.0 - s.beta(7).unwrap());
        assert_eq!(s.timestep(7).unwrap(), 7);
        assert_eq!(s.betas().len(), 1000);
    }

    #[test]
    fn log_snr_is_decreasing_and_consistent() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        for t in 1..1000 {
            assert!(s.log_snr(t + 1).unwrap() < s.log_snr(t).unwrap());
        }
        let t = 500;
        let ab = s.alpha_bar(t).unwrap();
        // Direct ln(ab / (1 - ab)) has no cancellation at ab ~ 0.08: 1e-13 relative.
        assert!(rel(s.log_snr(t).unwrap(), (ab / (1.0 - ab)).ln()) < 1e-13);
    }

    #[test]
    fn cosine_schedule_clips_at_max_beta() {
        let s = NoiseSchedule::cosine(1000, 0.008, 0.999).unwrap();
        // f(T) = cos^2(pi / 2) ~ 4e-33, so the last raw beta is ~1 and is clipped.
        assert_eq!(s.beta(1000).unwrap(), 0.999);
        assert!(s.betas().iter().all(|&b| b > 0.0 && b <= 0.999));
        // Unclipped early steps follow f(t) / f(0): 1e-12 relative (cos of nearby angles).
        let f = |t: f64| ((t / 1000.0 + 0.008) / 1.008 * FRAC_PI_2).cos().powi(2);
        assert!(rel(s.alpha_bar(100).unwrap(), f(100.0) / f(0.0)) < 1e-12);
        let tight = NoiseSchedule::cosine(1000, 0.008, 0.5).unwrap();
        assert_eq!(tight.betas().iter().cloned().fold(0.0, f64::max), 0.5);
    }

    #[test]
    fn sigmoid_schedule_is_valid_and_clipped() {
        let s = NoiseSchedule::sigmoid(1000, -3.0, 3.0, 1.0).unwrap();
        assert_eq!(s.beta(1000).unwrap(), 0.999);
        assert!(s.betas().iter().all(|&b| b > 0.0 && b <= 0.999));
        // alpha_bar halfway: (sig(3) - sig(0)) / (sig(3) - sig(-3)), 1e-12 relative.
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let expected = (sig(3.0) - 0.5) / (sig(3.0) - sig(-3.0));
        assert!(rel(s.alpha_bar(500).unwrap(), expected) < 1e-12);
        assert!(NoiseSchedule::sigmoid(10, 3.0, -3.0, 1.0).is_err());
        assert!(NoiseSchedule::sigmoid(10, -3.0, 3.0, 0.0).is_err());
    }

    #[test]
    fn invalid_schedules_are_errors() {
        assert!(NoiseSchedule::from_betas(vec![]).is_err());
        assert!(NoiseSchedule::from_betas(vec![0.1, 1.0]).is_err());
        assert!(NoiseSchedule::from_betas(vec![0.1, 0.0]).is_err());
        assert!(NoiseSchedule::from_betas(vec![0.1, f64::NAN]).is_err());
        let e = NoiseSchedule::from_alpha_bar(&[0.9, 0.95]).unwrap_err();
        assert_eq!(
            e,
            MathError::NotDecreasing {
                found: 0.95,
                previous: 0.9,
                index: 1
            }
        );
        assert!(NoiseSchedule::from_alpha_bar(&[1.0]).is_err());
        assert!(NoiseSchedule::linear(0, 1e-4, 0.02).is_err());
        assert!(NoiseSchedule::linear(10, -1e-4, 0.02).is_err());
        assert!(NoiseSchedule::cosine(10, -0.1, 0.999).is_err());
        let s = NoiseSchedule::linear(10, 1e-4, 0.02).unwrap();
        assert!(s.beta(0).is_err());
        assert!(s.alpha_bar(11).is_err());
        assert!(s.log_snr(0).is_err());
        assert!(s.respace(&[]).is_err());
        assert!(s.respace(&[3, 3]).is_err());
        assert!(s.respace(&[0, 3]).is_err());
        assert!(s.respace(&[3, 11]).is_err());
        assert!(evenly_spaced_timesteps(10, 11).is_err());
        assert!(evenly_spaced_timesteps(10, 0).is_err());
    }

    #[test]
    fn from_alpha_bar_round_trips_through_betas() {
        let s = NoiseSchedule::linear(200, 1e-4, 0.05).unwrap();
        let ab: Vec<f64> = (1..=200).map(|t| s.alpha_bar(t).unwrap()).collect();
        let back = NoiseSchedule::from_alpha_bar(&ab).unwrap();
        for t in 1..=200 {
            // beta = -expm1(ln ab_t - ln ab_{t-1}): the log difference carries ~1e-16 of
            // |ln ab| <= 20 absolute, i.e. at most 2e-15 / beta >= 1e-4 relative: 1e-10.
            assert!(rel(back.beta(t).unwrap(), s.beta(t).unwrap()) < 1e-10);
        }
    }

    #[test]
    fn respacing_keeps_alpha_bar_and_maps_timesteps() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        let kept = evenly_spaced_timesteps(1000, 50).unwrap();
        assert_eq!(kept.len(), 50);
        assert_eq!(kept[0], 20);
        assert_eq!(kept[49], 1000);
        let r = s.respace(&kept).unwrap();
        for (i, &t) in kept.iter().enumerate() {
            // The log alpha_bar values are copied: exactly equal.
            assert_eq!(r.alpha_bar(i + 1).unwrap(), s.alpha_bar(t).unwrap());
            assert_eq!(r.timestep(i + 1).unwrap(), t);
        }
        // Respacing twice composes the maps.
        let rr = r.respace(&[2, 50]).unwrap();
        assert_eq!(rr.timestep(1).unwrap(), 40);
        assert_eq!(rr.alpha_bar(2).unwrap(), s.alpha_bar(1000).unwrap());
    }

    proptest! {
        /// Respacing preserves alpha_bar at the kept steps, and the recomputed betas
        /// multiply back to it, for random subsets of random schedules.
        #[test]
        fn respacing_preserves_alpha_bar(
            betas in prop::collection::vec(1e-5..0.2f64, 2..300),
            keep in prop::collection::vec(any::<bool>(), 300),
        ) {
            let s = NoiseSchedule::from_betas(betas.clone()).unwrap();
            let mut kept: Vec<usize> = (1..=betas.len()).filter(|&t| keep[t - 1]).collect();
            if kept.is_empty() { kept.push(betas.len()); }
            let r = s.respace(&kept).unwrap();
            let mut log_prod = 0.0;
            for (i, &t) in kept.iter().enumerate() {
                prop_assert_eq!(r.alpha_bar(i + 1).unwrap(), s.alpha_bar(t).unwrap());
                log_prod += (-r.beta(i + 1).unwrap()).ln_1p();
                // Rebuilding ln alpha_bar from the new betas: a sum of up to 300 logs, each
                // within ~2 ulp of the difference it came from; 1e-12 absolute on |ln ab|
                // up to ~60 is 1e-12 relative on alpha_bar.
                prop_assert!((log_prod - s.log_alpha_bar(t).unwrap()).abs() < 1e-12 * (1.0 + log_prod.abs()));
            }
        }

        /// Evenly spaced timesteps rise strictly from >= 1 and end at T, for any count.
        #[test]
        fn evenly_spaced_timesteps_are_valid(t in 1usize..5000, fraction in 0.0..1.0f64) {
            let count = 1 + ((t - 1) as f64 * fraction) as usize;
            let kept = evenly_spaced_timesteps(t, count).unwrap();
            prop_assert_eq!(kept.len(), count);
            prop_assert!(kept[0] >= 1);
            prop_assert_eq!(kept[count - 1], t);
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
        }

        /// alpha_bar is strictly decreasing and 1 - alpha_bar consistent for any valid betas.
        #[test]
        fn derived_quantities_are_consistent(betas in prop::collection::vec(1e-8..0.999f64, 1..100)) {
            let s = NoiseSchedule::from_betas(betas.clone()).unwrap();
            let mut product = 1.0;
            let mut sum_abs_logs = 0.0;
            for t in 1..=betas.len() {
                product *= 1.0 - betas[t - 1];
                sum_abs_logs += (-betas[t - 1]).ln_1p().abs();
                let ab = s.alpha_bar(t).unwrap();
                prop_assert!(ab < s.alpha_bar(t - 1).unwrap());
                // alpha_bar = exp(S), S the running sum of t terms l_i = ln1p(-beta_i).
                // Each l_i is within 1 ulp, and recursive summation of t terms is off by
                // at most (t - 1) eps sum|l_i| (Higham, Accuracy and Stability, 4.2), so
                // S is off by t eps sum|l_i| absolute, which exp turns into that much
                // relative error, plus 1 ulp for exp itself. The running product has t
                // roundings of 1 - beta and t of the product: 2t eps. The error follows
                // the size of the log-sum: 1e-13 at small betas, up to ~1.5e-11 at
                // t = 100 betas near 0.999 (sum|l_i| ~ 690), which a fixed 1e-13 missed.
                let tol = f64::EPSILON * (t as f64 * sum_abs_logs + 2.0 * t as f64 + 2.0);
                prop_assert!(
                    rel(ab, product) <= tol,
                    "t = {t}: alpha_bar {ab} vs running product {product}, rel {} > {tol}",
                    rel(ab, product)
                );
                prop_assert!((ab + s.one_minus_alpha_bar(t).unwrap() - 1.0).abs() < 1e-15);
                let pv = s.posterior_variance(t).unwrap();
                prop_assert!((0.0..=betas[t - 1]).contains(&pv));
            }
        }
    }
}
