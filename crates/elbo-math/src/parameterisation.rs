//! The four things a denoiser can predict at `x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`,
//! and the exact conversions between them given `x_t` and the forward marginal:
//!
//! - `X0`: the clean data `x_0`;
//! - `Eps`: the noise `eps`;
//! - `Score`: `grad_{x_t} log q(x_t | x_0) = -eps / sqrt(1 - abar)`;
//! - `V`: the velocity `v = sqrt(abar) eps - sqrt(1 - abar) x_0` (Salimans & Ho, 2022).
//!
//! Every conversion first recovers the pair `(x_0, eps)` in the closed form that suits the
//! source (so v never passes through a division by `sqrt(abar)`), then forms the target.

use crate::diffusion::ForwardMarginal;
use crate::error::Result;
use crate::validate;
use ndarray::{Array, ArrayRef, Dimension, Zip};

/// What a denoising network predicts. A configuration value, not a flag: pass it to
/// [`Prediction::convert`] or [`crate::diffusion::Posterior::mean_from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prediction {
    /// The clean data `x_0`.
    X0,
    /// The noise `eps`.
    Eps,
    /// The score `-eps / sqrt(1 - alpha_bar)`.
    Score,
    /// The velocity `sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0`.
    V,
}

impl Prediction {
    /// Converts a prediction `value` of kind `self` at `x_t` into kind `to`.
    pub fn convert(self, marginal: &ForwardMarginal, x_t: f64, value: f64, to: Prediction) -> f64 {
        if self == to {
            return value;
        }
        let (x0, eps) = self.x0_and_eps(marginal, x_t, value);
        let (s, n) = (marginal.signal(), marginal.noise());
        match to {
            Prediction::X0 => x0,
            Prediction::Eps => eps,
            Prediction::Score => -eps / n,
            Prediction::V => s * eps - n * x0,
        }
    }

    /// Elementwise [`Prediction::convert`] over arrays of one shape (checked).
    pub fn convert_array<D: Dimension>(
        self,
        marginal: &ForwardMarginal,
        x_t: &ArrayRef<f64, D>,
        value: &ArrayRef<f64, D>,
        to: Prediction,
    ) -> Result<Array<f64, D>> {
        validate::same_shape("prediction", x_t, value)?;
        Ok(Zip::from(x_t)
            .and(value)
            .map_collect(|&xt, &v| self.convert(marginal, xt, v, to)))
    }

    /// The `(x_0, eps)` pair that a prediction of this kind implies at `x_t`.
    fn x0_and_eps(self, marginal: &ForwardMarginal, x_t: f64, value: f64) -> (f64, f64) {
        let (s, n) = (marginal.signal(), marginal.noise());
        match self {
            Prediction::X0 => (value, (x_t - s * value) / n),
            Prediction::Eps => ((x_t - n * value) / s, value),
            Prediction::Score => ((x_t + n * n * value) / s, -n * value),
            // s^2 + n^2 = 1 turns x_t = s x0 + n eps, v = s eps - n x0 into these.
            Prediction::V => (s * x_t - n * value, n * x_t + s * value),
        }
    }
}

/// `eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar)`.
pub fn eps_from_x0(marginal: &ForwardMarginal, x_t: f64, x0: f64) -> f64 {
    Prediction::X0.convert(marginal, x_t, x0, Prediction::Eps)
}

/// `x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)` (the seeds' eq. 26).
pub fn x0_from_eps(marginal: &ForwardMarginal, x_t: f64, eps: f64) -> f64 {
    Prediction::Eps.convert(marginal, x_t, eps, Prediction::X0)
}

/// `score = -eps / sqrt(1 - abar)`.
pub fn score_from_eps(marginal: &ForwardMarginal, eps: f64) -> f64 {
    -eps / marginal.noise()
}

/// `eps = -sqrt(1 - abar) score`.
pub fn eps_from_score(marginal: &ForwardMarginal, score: f64) -> f64 {
    -marginal.noise() * score
}

/// `v = sqrt(abar) eps - sqrt(1 - abar) x_0`, from `x_0` and `x_t`.
pub fn v_from_x0(marginal: &ForwardMarginal, x_t: f64, x0: f64) -> f64 {
    Prediction::X0.convert(marginal, x_t, x0, Prediction::V)
}

/// `x_0 = sqrt(abar) x_t - sqrt(1 - abar) v`.
pub fn x0_from_v(marginal: &ForwardMarginal, x_t: f64, v: f64) -> f64 {
    Prediction::V.convert(marginal, x_t, v, Prediction::X0)
}

/// `eps = sqrt(1 - abar) x_t + sqrt(abar) v`.
pub fn eps_from_v(marginal: &ForwardMarginal, x_t: f64, v: f64) -> f64 {
    Prediction::V.convert(marginal, x_t, v, Prediction::Eps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::forward_marginal;
    use crate::schedule::NoiseSchedule;
    use ndarray::array;
    use proptest::prelude::*;

    const ALL: [Prediction; 4] = [
        Prediction::X0,
        Prediction::Eps,
        Prediction::Score,
        Prediction::V,
    ];

    #[test]
    fn named_conversions_match_their_formulas() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        let m = forward_marginal(&s, 400).unwrap();
        let (x0, eps) = (0.6, -1.3);
        let x_t = m.sample(x0, eps);
        let (sg, n) = (m.signal(), m.noise());
        // Each is one conversion of a few roundings on O(1) values: 1e-14 absolute
        // (1e-13 where the result is divided by sqrt(abar) ~ 0.4).
        assert!((eps_from_x0(&m, x_t, x0) - eps).abs() < 1e-14);
        assert!((x0_from_eps(&m, x_t, eps) - x0).abs() < 1e-13);
        assert!((score_from_eps(&m, eps) + eps / n).abs() < 1e-15);
        assert!((eps_from_score(&m, score_from_eps(&m, eps)) - eps).abs() < 1e-15);
        let v = sg * eps - n * x0;
        assert!((v_from_x0(&m, x_t, x0) - v).abs() < 1e-14);
        assert!((x0_from_v(&m, x_t, v) - x0).abs() < 1e-14);
        assert!((eps_from_v(&m, x_t, v) - eps).abs() < 1e-14);
    }

    #[test]
    fn array_conversion_checks_shapes() {
        let s = NoiseSchedule::linear(10, 1e-4, 0.02).unwrap();
        let m = forward_marginal(&s, 5).unwrap();
        let x_t = array![0.1, 0.2];
        let out = Prediction::Eps
            .convert_array(&m, &x_t, &array![1.0, -1.0], Prediction::V)
            .unwrap();
        assert_eq!(
            out[1],
            Prediction::Eps.convert(&m, 0.2, -1.0, Prediction::V)
        );
        assert!(
            Prediction::Eps
                .convert_array(&m, &x_t, &array![1.0], Prediction::V)
                .is_err()
        );
    }

    proptest! {
        /// Every conversion between the four kinds agrees with the truth built from a
        /// known (x_0, eps), and round trips (v <-> eps <-> x0 <-> score) come back.
        #[test]
        fn conversions_agree_and_round_trip(
            t in 1usize..=1000, x0 in -3.0..3.0f64, eps in -3.0..3.0f64,
        ) {
            let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
            let m = forward_marginal(&s, t).unwrap();
            let x_t = m.sample(x0, eps);
            let (sg, n) = (m.signal(), m.noise());
            let truth = |k: Prediction| match k {
                Prediction::X0 => x0,
                Prediction::Eps => eps,
                Prediction::Score => -eps / n,
                Prediction::V => sg * eps - n * x0,
            };
            for from in ALL {
                for to in ALL {
                    let got = from.convert(&m, x_t, truth(from), to);
                    // Solving for x0 divides by sqrt(abar) >= 6e-3 (t = 1000) and for eps
                    // by sqrt(1 - abar) >= 1e-2 (t = 1); the score carries one more
                    // 1 / sqrt(1 - abar). So the error is ~1e-16 * 10 / (s n^2):
                    // 1e-13 / (s n^2) absolute bounds it with margin.
                    let tol = 1e-13 * (1.0 + truth(to).abs()) / (sg * n * n);
                    prop_assert!((got - truth(to)).abs() <= tol,
                        "{:?} -> {:?}: {} vs {}", from, to, got, truth(to));
                    let back = to.convert(&m, x_t, got, from);
                    prop_assert!((back - truth(from)).abs() <= 2.0 * tol / (sg * n));
                }
            }
        }
    }
}
