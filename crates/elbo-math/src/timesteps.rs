//! Importance sampling of a diffusion's timesteps (Nichol & Dhariwal 2021, improved
//! DDPM's loss-second-moment resampling). The bound is `sum_t L_t`; training estimates
//! it from one t per example, `T L_t` at a uniform t. Drawing t with probability `p_t`
//! and weighting by `1 / (T p_t)` keeps the estimate unbiased for any `p` with no zero,
//! and its variance is smallest for `p_t` proportional to `sqrt(E[L_t^2])`, which this
//! sampler estimates from the last `history` losses seen at each t. Until every t has
//! that many, it draws uniformly; afterwards it mixes a little of the uniform
//! distribution back in (`uniform`) so that no t is starved.
//!
//! ```
//! use elbo_math::timesteps::LossSecondMoment;
//!
//! let mut sampler = LossSecondMoment::new(4, 2, 0.0)?;
//! assert!(!sampler.warm());
//! for _ in 0..2 {
//!     for (t, loss) in [(1, 4.0), (2, 1.0), (3, 1.0), (4, 2.0)] {
//!         sampler.record(t, loss)?;
//!     }
//! }
//! // p_t is proportional to sqrt(E[L_t^2]) = |L_t| here.
//! let p = sampler.probabilities();
//! assert!((p[0] - 0.5).abs() < 1e-12 && (p[3] - 0.25).abs() < 1e-12);
//! // The weighted estimate of the sum is exact for a fixed table: any t gives 8.
//! let (t, weight) = sampler.draw(0.9);
//! assert_eq!(t, 4);
//! assert!((weight * 4.0 * 2.0 - 8.0).abs() < 1e-12);
//! # Ok::<(), elbo_math::MathError>(())
//! ```

use crate::error::{MathError, Result};

/// Improved DDPM's sampler: `p_t` proportional to the root mean square of the last
/// losses at t, mixed with the uniform distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct LossSecondMoment {
    history: usize,
    uniform: f64,
    /// The last `history` losses at each t (index t - 1), oldest first.
    losses: Vec<Vec<f64>>,
}

impl LossSecondMoment {
    /// Improved DDPM's settings: 10 losses per timestep, 0.001 of the uniform
    /// distribution mixed in.
    pub const IMPROVED_DDPM: (usize, f64) = (10, 0.001);

    /// A sampler over timesteps `1..=steps` that keeps `history` losses per step and
    /// mixes `uniform` (in [0, 1)) of the uniform distribution into its weights.
    pub fn new(steps: usize, history: usize, uniform: f64) -> Result<LossSecondMoment> {
        if steps == 0 || history == 0 {
            return Err(MathError::Empty {
                what: "the timesteps or the loss history of an importance sampler",
            });
        }
        if !(0.0..1.0).contains(&uniform) {
            return Err(MathError::OutOfRange {
                what: "the uniform share of an importance sampler",
                expected: "[0, 1)",
                found: uniform,
                index: None,
            });
        }
        Ok(LossSecondMoment {
            history,
            uniform,
            losses: vec![Vec::with_capacity(history); steps],
        })
    }

    /// T.
    pub fn steps(&self) -> usize {
        self.losses.len()
    }

    /// Whether every timestep has its full history (until then, draws are uniform).
    pub fn warm(&self) -> bool {
        self.losses.iter().all(|l| l.len() == self.history)
    }

    /// Records the loss of one example at timestep `t` (in `1..=T`), dropping the
    /// oldest at t when its history is full. A loss that is not finite is refused.
    pub fn record(&mut self, t: usize, loss: f64) -> Result<()> {
        let steps = self.steps();
        let Some(at) = t.checked_sub(1).and_then(|i| self.losses.get_mut(i)) else {
            return Err(MathError::TimestepOutOfRange {
                what: "an importance sampler's loss",
                min: 1,
                max: steps,
                found: t,
            });
        };
        if !loss.is_finite() {
            return Err(MathError::NotFinite {
                what: "a timestep's loss",
                found: loss,
                index: Some(t),
            });
        }
        if at.len() == self.history {
            at.remove(0);
        }
        at.push(loss);
        Ok(())
    }

    /// `p_t` for t = 1..=T: uniform until warm, then proportional to `sqrt(mean(L^2))`
    /// over each t's history, times `1 - uniform`, plus `uniform / T`. (All zero losses
    /// give the uniform distribution.)
    pub fn probabilities(&self) -> Vec<f64> {
        let steps = self.steps() as f64;
        if !self.warm() {
            return vec![1.0 / steps; self.steps()];
        }
        let rms: Vec<f64> = self
            .losses
            .iter()
            .map(|l| (l.iter().map(|x| x * x).sum::<f64>() / l.len() as f64).sqrt())
            .collect();
        let total: f64 = rms.iter().sum();
        if total <= 0.0 || !total.is_finite() {
            return vec![1.0 / steps; self.steps()];
        }
        rms.iter()
            .map(|w| w / total * (1.0 - self.uniform) + self.uniform / steps)
            .collect()
    }

    /// The timestep at the uniform draw `u` in [0, 1) (inverse CDF of
    /// [`LossSecondMoment::probabilities`]) and its importance weight `1 / (T p_t)`.
    pub fn draw(&self, u: f64) -> (usize, f64) {
        self.draws(&[u])[0]
    }

    /// [`LossSecondMoment::draw`] for each of `us`, the probabilities computed once.
    pub fn draws(&self, us: &[f64]) -> Vec<(usize, f64)> {
        let p = self.probabilities();
        let cumulative: Vec<f64> = p
            .iter()
            .scan(0.0, |sum, pi| {
                *sum += pi;
                Some(*sum)
            })
            .collect();
        us.iter()
            .map(|&u| {
                // The first t whose cumulative probability exceeds u; rounding can leave
                // the last a hair below 1, and then it is the last step.
                let chosen = (cumulative.partition_point(|&c| c <= u) + 1).min(p.len());
                (chosen, 1.0 / (p.len() as f64 * p[chosen - 1]))
            })
            .collect()
    }

    /// The losses kept at each timestep (index t - 1), oldest first: the state to
    /// checkpoint.
    pub fn history(&self) -> &[Vec<f64>] {
        &self.losses
    }

    /// The sampler with a checkpointed history (as [`LossSecondMoment::history`] gave
    /// it): one list per timestep, none longer than `history`, every loss finite.
    pub fn with_history(mut self, losses: Vec<Vec<f64>>) -> Result<LossSecondMoment> {
        if losses.len() != self.steps() {
            return Err(MathError::LengthMismatch {
                what: "an importance sampler's history",
                expected: self.steps(),
                found: losses.len(),
            });
        }
        for (i, l) in losses.iter().enumerate() {
            if l.len() > self.history {
                return Err(MathError::LengthMismatch {
                    what: "one timestep's loss history",
                    expected: self.history,
                    found: l.len(),
                });
            }
            if let Some(&bad) = l.iter().find(|x| !x.is_finite()) {
                return Err(MathError::NotFinite {
                    what: "a timestep's loss history",
                    found: bad,
                    index: Some(i + 1),
                });
            }
        }
        self.losses = losses;
        Ok(self)
    }
}

/// The mean and variance of the one-draw estimate `w_t L_t`, `w_t = 1 / (T p_t)`, of the
/// mean `(1 / T) sum_t L_t` of a fixed loss table under the distribution `p`: the mean
/// is the table's for any `p` without zeros (unbiasedness), the variance is what the
/// choice of `p` changes.
pub fn weighted_estimate_moments(losses: &[f64], p: &[f64]) -> Result<(f64, f64)> {
    if losses.len() != p.len() {
        return Err(MathError::LengthMismatch {
            what: "the probabilities of a loss table",
            expected: losses.len(),
            found: p.len(),
        });
    }
    if losses.is_empty() {
        return Err(MathError::Empty {
            what: "a loss table",
        });
    }
    let steps = losses.len() as f64;
    let (mut mean, mut second) = (0.0, 0.0);
    for (l, pi) in losses.iter().zip(p) {
        if *pi <= 0.0 {
            continue;
        }
        let estimate = l / (steps * pi);
        mean += pi * estimate;
        second += pi * estimate * estimate;
    }
    Ok((mean, second - mean * mean))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A table shaped like a DDPM's bound terms: large at the first steps, small after.
    fn table(steps: usize) -> Vec<f64> {
        (1..=steps).map(|t| 5.0 / t as f64 + 0.01).collect()
    }

    fn warmed(losses: &[f64], rng: &mut ChaCha8Rng) -> LossSecondMoment {
        let (history, uniform) = LossSecondMoment::IMPROVED_DDPM;
        let mut sampler = LossSecondMoment::new(losses.len(), history, uniform).unwrap();
        // Noisy observations of the table: each loss times a factor in [0.5, 1.5].
        for _ in 0..history {
            for (i, l) in losses.iter().enumerate() {
                sampler
                    .record(i + 1, l * rng.random_range(0.5..1.5))
                    .unwrap();
            }
        }
        sampler
    }

    #[test]
    fn the_weighted_estimate_is_unbiased_and_has_lower_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let losses = table(100);
        let sampler = warmed(&losses, &mut rng);
        assert!(sampler.warm());
        let mean = losses.iter().sum::<f64>() / 100.0;
        let p = sampler.probabilities();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let (weighted_mean, weighted_var) = weighted_estimate_moments(&losses, &p).unwrap();
        let (uniform_mean, uniform_var) = weighted_estimate_moments(&losses, &[0.01; 100]).unwrap();
        // Exactly unbiased (to rounding), whatever p.
        assert!((weighted_mean - mean).abs() < 1e-12 && (uniform_mean - mean).abs() < 1e-12);
        assert!(
            weighted_var < 0.2 * uniform_var,
            "{weighted_var} vs {uniform_var}"
        );
        // And by Monte Carlo through draw(): within 4 standard errors of the mean.
        let n = 100_000;
        let draws: Vec<f64> = (0..n)
            .map(|_| {
                let (t, w) = sampler.draw(rng.random());
                w * losses[t - 1]
            })
            .collect();
        let m = draws.iter().sum::<f64>() / n as f64;
        let se = (weighted_var / n as f64).sqrt();
        assert!((m - mean).abs() < 4.0 * se, "{m} vs {mean} (se {se})");
    }

    #[test]
    fn cold_samplers_draw_uniformly_and_histories_roll_over() {
        let mut sampler = LossSecondMoment::new(3, 2, 0.0).unwrap();
        assert_eq!(sampler.probabilities(), vec![1.0 / 3.0; 3]);
        assert_eq!(sampler.draw(0.5), (2, 1.0));
        for loss in [1.0, 2.0, 3.0] {
            sampler.record(1, loss).unwrap();
        }
        assert_eq!(sampler.history()[0], vec![2.0, 3.0]);
        assert!(!sampler.warm());
        let restored = LossSecondMoment::new(3, 2, 0.0)
            .unwrap()
            .with_history(sampler.history().to_vec())
            .unwrap();
        assert_eq!(restored, sampler);
        assert!(sampler.record(0, 1.0).is_err());
        assert!(sampler.record(4, 1.0).is_err());
        assert!(sampler.record(2, f64::NAN).is_err());
        let bad = LossSecondMoment::new(3, 2, 0.0).unwrap();
        assert!(bad.clone().with_history(vec![vec![]; 2]).is_err());
        assert!(
            bad.clone()
                .with_history(vec![vec![1.0, 2.0, 3.0], vec![], vec![]])
                .is_err()
        );
        assert!(
            bad.with_history(vec![vec![f64::INFINITY], vec![], vec![]])
                .is_err()
        );
        assert!(LossSecondMoment::new(3, 2, 1.0).is_err());
        assert!(LossSecondMoment::new(0, 2, 0.0).is_err());
    }

    #[test]
    fn the_uniform_share_keeps_every_timestep_possible() {
        let mut sampler = LossSecondMoment::new(4, 1, 0.01).unwrap();
        for (t, loss) in [(1, 1.0), (2, 0.0), (3, 0.0), (4, 0.0)] {
            sampler.record(t, loss).unwrap();
        }
        let p = sampler.probabilities();
        assert!((p[1] - 0.0025).abs() < 1e-15 && (p[0] - (0.99 + 0.0025)).abs() < 1e-12);
    }
}
