//! Decoder likelihoods `log p(x | z)` on tensors, summed per example.

use std::fmt;
use std::str::FromStr;

use tch::{Reduction, Tensor};

use crate::error::Error;
use crate::nn::gaussian::sum_per_example;

/// The observation model of a decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Likelihood {
    /// Bernoulli on binarised pixels (dynamic binarisation by default): a true
    /// likelihood, the setting of published MNIST NLLs.
    #[default]
    Bernoulli,
    /// pytorch/examples' VAE: binary cross-entropy against grey levels in [0, 1]. Not a
    /// likelihood of the data (its normaliser is missing); kept for comparison with that
    /// example only.
    ContinuousBce,
    /// Ho et al.'s discretized Gaussian for 8-bit data scaled to [-1, 1], with a
    /// learned per-pixel log-scale.
    DiscretizedGaussian,
}

impl Likelihood {
    /// How many output channels the decoder needs per data channel.
    pub fn params_per_channel(self) -> i64 {
        match self {
            Likelihood::Bernoulli | Likelihood::ContinuousBce => 1,
            Likelihood::DiscretizedGaussian => 2,
        }
    }

    /// `log p(x | decoder output)`, summed per example. `output` has
    /// [`Likelihood::params_per_channel`] times the channels of `x`.
    pub fn log_prob(self, output: &Tensor, x: &Tensor) -> Tensor {
        match self {
            Likelihood::Bernoulli | Likelihood::ContinuousBce => bernoulli_log_prob(output, x),
            Likelihood::DiscretizedGaussian => {
                let parts = output.chunk(2, 1);
                discretized_gaussian_log_prob(x, &parts[0], &parts[1])
            }
        }
    }

    /// The mean of `p(x | decoder output)` in the data's scale, for pictures.
    pub fn mean(self, output: &Tensor) -> Tensor {
        match self {
            Likelihood::Bernoulli | Likelihood::ContinuousBce => output.sigmoid(),
            Likelihood::DiscretizedGaussian => output.chunk(2, 1)[0].clamp(-1.0, 1.0),
        }
    }
}

impl FromStr for Likelihood {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "bernoulli" => Ok(Likelihood::Bernoulli),
            "continuous-bce" => Ok(Likelihood::ContinuousBce),
            "discretized-gaussian" => Ok(Likelihood::DiscretizedGaussian),
            other => Err(Error::Config {
                detail: format!(
                    "unknown likelihood {other:?}: expected bernoulli, continuous-bce or \
                     discretized-gaussian"
                ),
            }),
        }
    }
}

impl fmt::Display for Likelihood {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Likelihood::Bernoulli => "bernoulli",
            Likelihood::ContinuousBce => "continuous-bce",
            Likelihood::DiscretizedGaussian => "discretized-gaussian",
        })
    }
}

/// `sum x log sigmoid(l) + (1 - x) log sigmoid(-l)` per example, from logits `l`.
pub fn bernoulli_log_prob(logits: &Tensor, x: &Tensor) -> Tensor {
    let bce = logits.binary_cross_entropy_with_logits::<Tensor>(x, None, None, Reduction::None);
    -sum_per_example(&bce)
}

/// Ho et al.'s discretized Gaussian `log p(x | mean, exp(log_scale))` per example, for `x`
/// on the 8-bit grid of [-1, 1]: the bins are `x +- 1/255`, the lowest extended to
/// `-inf` and the highest to `+inf`. Computed with `log_ndtr` and the symmetry of the
/// normal so that it stays finite far in the tails (the twin of
/// `elbo_math::discretized::discretized_gaussian_log_prob`).
pub fn discretized_gaussian_log_prob(x: &Tensor, mean: &Tensor, log_scale: &Tensor) -> Tensor {
    const HALF_BIN: f64 = 1.0 / 255.0;
    let inv_sigma = (-log_scale).exp();
    let centred = x - mean;
    let upper = (&centred + HALF_BIN) * &inv_sigma;
    let lower = (&centred - HALF_BIN) * &inv_sigma;
    // Interior bins: log(Phi(b) - Phi(a)); reflect to the left tail when a > 0, where
    // both CDFs are near 1 and their difference would cancel.
    let reflect = lower.gt(0.0);
    // `a.where_self(&cond, &b)` is `where(cond, a, b)`.
    let b = (-&lower).where_self(&reflect, &upper);
    let a = (-&upper).where_self(&reflect, &lower);
    let log_b = b.special_log_ndtr();
    let log_a = a.special_log_ndtr();
    let interior = &log_b + (-(&log_a - &log_b).exp()).log1p();
    // Edge bins: log Phi(b) for the lowest, log(1 - Phi(a)) = log Phi(-a) for the highest.
    let lowest = upper.special_log_ndtr();
    let highest = (-&lower).special_log_ndtr();
    let edge = 1.0 - HALF_BIN;
    let upper_part = highest.where_self(&x.gt(edge), &interior);
    let per_pixel = lowest.where_self(&x.lt(-edge), &upper_part);
    sum_per_example(&per_pixel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::gaussian::tests::values;
    use elbo_math::discretized as exact;

    #[test]
    fn bernoulli_matches_the_formula() {
        let _generator = crate::testing::generator_lock();
        let logits = Tensor::from_slice(&[-30.0f64, -1.0, 0.0, 2.0]).reshape([1, 4]);
        let x = Tensor::from_slice(&[0.0f64, 1.0, 1.0, 0.3]).reshape([1, 4]);
        let got = values(&bernoulli_log_prob(&logits, &x))[0];
        let want: f64 = [(-30.0f64, 0.0f64), (-1.0, 1.0), (0.0, 1.0), (2.0, 0.3)]
            .iter()
            .map(|&(l, x)| {
                let log_sig = |v: f64| -((-v).exp().ln_1p());
                x * log_sig(l) + (1.0 - x) * log_sig(-l)
            })
            .sum();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn discretized_gaussian_matches_elbo_math_across_bins_and_tails() {
        let _generator = crate::testing::generator_lock();
        let levels: Vec<u8> = vec![0, 1, 37, 127, 128, 200, 254, 255];
        let cases = [
            (0.0, -5.0),
            (0.9, -3.0),
            (-0.99, -6.0),
            (0.3, 0.0),
            (5.0, -4.0),
            (-3.0, 1.0),
        ];
        for &(mean, log_scale) in &cases {
            for &k in &levels {
                let x = exact::level_to_unit(k);
                let xt = Tensor::from_slice(&[x]).reshape([1, 1]);
                let m = Tensor::from_slice(&[mean]).reshape([1, 1]);
                let s = Tensor::from_slice(&[log_scale]).reshape([1, 1]);
                // f64 tensors here; log_ndtr and log1p(-exp) agree with elbo-math's
                // tail-accurate forms to ~1e-10 relative, so 1e-6 leaves room for the
                // different formulas without hiding a wrong bin.
                let got = values(&discretized_gaussian_log_prob(&xt, &m, &s))[0];
                let want = exact::discretized_gaussian_log_prob(k, mean, log_scale);
                assert!(got.is_finite(), "k {k}, mean {mean}, log_scale {log_scale}");
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs() + 1e-6,
                    "k {k}, mean {mean}, log_scale {log_scale}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn discretized_gaussian_probabilities_sum_to_one() {
        let _generator = crate::testing::generator_lock();
        let levels: Vec<f64> = (0..=255u8).map(exact::level_to_unit).collect();
        let x = Tensor::from_slice(&levels).reshape([256, 1]);
        let mean = Tensor::full([256, 1], 0.2, (tch::Kind::Double, tch::Device::Cpu));
        let log_scale = Tensor::full([256, 1], -2.5, (tch::Kind::Double, tch::Device::Cpu));
        let total: f64 = values(&discretized_gaussian_log_prob(&x, &mean, &log_scale))
            .iter()
            .map(|l| l.exp())
            .sum();
        // 256 f64 terms, each within ~1e-12: 1e-9.
        assert!((total - 1.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        let _generator = crate::testing::generator_lock();
        for l in [
            Likelihood::Bernoulli,
            Likelihood::ContinuousBce,
            Likelihood::DiscretizedGaussian,
        ] {
            assert_eq!(l.to_string().parse::<Likelihood>().unwrap(), l);
        }
        let err = "gaussian".parse::<Likelihood>().unwrap_err().to_string();
        assert!(err.contains("expected bernoulli"), "{err}");
    }
}
