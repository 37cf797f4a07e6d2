//! The univariate Gaussian in log-variance form: log-density, entropy, reparameterised
//! sampling and the analytic KL divergence, as scalar kernels and as elementwise ndarray
//! functions. A diagonal Gaussian is a product of these, so its quantities are sums of
//! them (see [`crate::DiagGaussian`]).
//!
//! Log-variance form keeps everything finite over variances from 1e-12 to 1e12 (and far
//! beyond): no variance is ever formed and divided by; `exp` only ever sees differences of
//! log-variances or the standardised residual.
//!
//! The scalar kernels are total functions on `f64` (non-finite inputs propagate into the
//! result, nothing panics); the array functions check shapes and finiteness and return
//! [`MathError`](crate::MathError)s.

use crate::error::Result;
use crate::validate;
use ndarray::{Array, ArrayRef, Dimension, Zip};

/// `ln(2 pi)`.
pub const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// `1/k!` for `k = 2..=19`, the coefficients of the series of `e^d - 1 - d`.
const INV_FACTORIALS: [f64; 18] = {
    let mut table = [0.0; 18];
    let mut factorial = 1.0;
    let mut k = 2;
    while k <= 19 {
        factorial *= k as f64;
        table[k - 2] = 1.0 / factorial;
        k += 1;
    }
    table
};

/// `e^d - 1 - d`, accurate to a few ulp for every `d`: the Taylor series for `|d| < 1`,
/// where the direct form would cancel, and `exp(d) - 1 - d` beyond (whose rounding error,
/// `ulp(e^d)`, is below 4e-16 of the result there). This is the variance part of every
/// Gaussian KL.
pub fn exp_m1_minus_identity(d: f64) -> f64 {
    if d.abs() < 1.0 {
        // sum_{k=2}^{19} d^k / k! = d^2 p(d); the first omitted term, d^20 / 20!, is below
        // 1e-18 of the sum for |d| < 1. p is evaluated by Estrin's scheme (pairs, then
        // powers d^2, d^4, d^8, d^16), whose short dependency chain runs ~3x faster than
        // Horner's 17 sequential steps, with the same few-ulp accuracy here.
        let c = &INV_FACTORIALS;
        let (d2, q) = (d * d, |i: usize| c[2 * i] + c[2 * i + 1] * d);
        let (d4, r) = (d2 * d2, |i: usize| q(2 * i) + q(2 * i + 1) * d2);
        let d8 = d4 * d4;
        let low = r(0) + r(1) * d4 + (r(2) + r(3) * d4) * d8;
        (low + q(8) * d8 * d8) * d2
    } else {
        d.exp() - 1.0 - d
    }
}

/// `log N(x; mean, exp(log_var))`.
pub fn log_density(x: f64, mean: f64, log_var: f64) -> f64 {
    let z = (x - mean) * (-0.5 * log_var).exp();
    -0.5 * (LN_2PI + log_var + z * z)
}

/// Differential entropy of `N(mean, exp(log_var))`: `(1 + ln(2 pi) + log_var) / 2`.
pub fn entropy(log_var: f64) -> f64 {
    0.5 * (1.0 + LN_2PI + log_var)
}

/// `KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p)))`
/// `= (e^d - 1 - d + (mean_q - mean_p)^2 e^{-log_var_p}) / 2` with `d = log_var_q - log_var_p`.
pub fn kl_divergence(mean_q: f64, log_var_q: f64, mean_p: f64, log_var_p: f64) -> f64 {
    let z = (mean_q - mean_p) * (-0.5 * log_var_p).exp();
    0.5 * (exp_m1_minus_identity(log_var_q - log_var_p) + z * z)
}

/// `KL(N(mean, exp(log_var)) || N(0, 1))`, the VAE's prior-matching term per dimension:
/// the general [`kl_divergence`] with `(0, 0)` as the second argument.
pub fn kl_to_standard_normal(mean: f64, log_var: f64) -> f64 {
    0.5 * (exp_m1_minus_identity(log_var) + mean * mean)
}

/// The reparameterisation `mean + exp(log_var / 2) * eps`: a draw from
/// `N(mean, exp(log_var))` when `eps ~ N(0, 1)`, differentiable in mean and log-variance.
pub fn reparameterise(mean: f64, log_var: f64, eps: f64) -> f64 {
    mean + (0.5 * log_var).exp() * eps
}

/// Elementwise [`log_density`] over arrays of one shape. Shapes are checked first; any
/// non-finite input makes some output non-finite, and then the inputs are scanned and the
/// first non-finite one is reported as an error (so valid input pays no extra pass).
pub fn log_density_elementwise<D: Dimension>(
    x: &ArrayRef<f64, D>,
    mean: &ArrayRef<f64, D>,
    log_var: &ArrayRef<f64, D>,
) -> Result<Array<f64, D>> {
    three_shapes(x, mean, log_var)?;
    let mut finite = true;
    let out = Zip::from(x)
        .and(mean)
        .and(log_var)
        .map_collect(|&x, &m, &lv| {
            let v = log_density(x, m, lv);
            finite &= v.is_finite();
            v
        });
    if !finite {
        three_finite(x, mean, log_var)?;
    }
    Ok(out)
}

/// Sum of [`log_density`] over all elements: the log-density of a diagonal Gaussian.
/// Checked as [`log_density_elementwise`].
pub fn log_density_sum<D: Dimension>(
    x: &ArrayRef<f64, D>,
    mean: &ArrayRef<f64, D>,
    log_var: &ArrayRef<f64, D>,
) -> Result<f64> {
    three_shapes(x, mean, log_var)?;
    let total = Zip::from(x)
        .and(mean)
        .and(log_var)
        .fold(0.0, |acc, &x, &m, &lv| acc + log_density(x, m, lv));
    if !total.is_finite() {
        three_finite(x, mean, log_var)?;
    }
    Ok(total)
}

/// Elementwise [`kl_divergence`] over arrays of one shape. Shapes are checked first; any
/// non-finite input makes some output non-finite, and then the inputs are scanned and the
/// first non-finite one is reported as an error (so valid input pays no extra pass).
pub fn kl_divergence_elementwise<D: Dimension>(
    mean_q: &ArrayRef<f64, D>,
    log_var_q: &ArrayRef<f64, D>,
    mean_p: &ArrayRef<f64, D>,
    log_var_p: &ArrayRef<f64, D>,
) -> Result<Array<f64, D>> {
    four_shapes(mean_q, log_var_q, mean_p, log_var_p)?;
    let mut finite = true;
    let out = Zip::from(mean_q)
        .and(log_var_q)
        .and(mean_p)
        .and(log_var_p)
        .map_collect(|&mq, &lq, &mp, &lp| {
            let v = kl_divergence(mq, lq, mp, lp);
            finite &= v.is_finite();
            v
        });
    if !finite {
        four_finite(mean_q, log_var_q, mean_p, log_var_p)?;
    }
    Ok(out)
}

/// Sum of [`kl_divergence`] over all elements: the KL between two diagonal Gaussians.
/// Checked as [`kl_divergence_elementwise`].
pub fn kl_divergence_sum<D: Dimension>(
    mean_q: &ArrayRef<f64, D>,
    log_var_q: &ArrayRef<f64, D>,
    mean_p: &ArrayRef<f64, D>,
    log_var_p: &ArrayRef<f64, D>,
) -> Result<f64> {
    four_shapes(mean_q, log_var_q, mean_p, log_var_p)?;
    let total = Zip::from(mean_q)
        .and(log_var_q)
        .and(mean_p)
        .and(log_var_p)
        .fold(0.0, |acc, &mq, &lq, &mp, &lp| {
            acc + kl_divergence(mq, lq, mp, lp)
        });
    if !total.is_finite() {
        four_finite(mean_q, log_var_q, mean_p, log_var_p)?;
    }
    Ok(total)
}

/// Elementwise [`kl_to_standard_normal`], checked as [`kl_divergence_elementwise`].
pub fn kl_to_standard_normal_elementwise<D: Dimension>(
    mean: &ArrayRef<f64, D>,
    log_var: &ArrayRef<f64, D>,
) -> Result<Array<f64, D>> {
    validate::same_shape("log-variance", mean, log_var)?;
    let mut finite = true;
    let out = Zip::from(mean).and(log_var).map_collect(|&m, &lv| {
        let v = kl_to_standard_normal(m, lv);
        finite &= v.is_finite();
        v
    });
    if !finite {
        validate::all_finite("mean", mean.iter())?;
        validate::all_finite("log-variance", log_var.iter())?;
    }
    Ok(out)
}

fn three_shapes<D: Dimension>(
    x: &ArrayRef<f64, D>,
    mean: &ArrayRef<f64, D>,
    log_var: &ArrayRef<f64, D>,
) -> Result<()> {
    validate::same_shape("mean", x, mean)?;
    validate::same_shape("log-variance", x, log_var)
}

fn three_finite<D: Dimension>(
    x: &ArrayRef<f64, D>,
    mean: &ArrayRef<f64, D>,
    log_var: &ArrayRef<f64, D>,
) -> Result<()> {
    validate::all_finite("x", x.iter())?;
    validate::all_finite("mean", mean.iter())?;
    validate::all_finite("log-variance", log_var.iter())
}

fn four_shapes<D: Dimension>(
    mean_q: &ArrayRef<f64, D>,
    log_var_q: &ArrayRef<f64, D>,
    mean_p: &ArrayRef<f64, D>,
    log_var_p: &ArrayRef<f64, D>,
) -> Result<()> {
    validate::same_shape("log-variance of q", mean_q, log_var_q)?;
    validate::same_shape("mean of p", mean_q, mean_p)?;
    validate::same_shape("log-variance of p", mean_q, log_var_p)
}

fn four_finite<D: Dimension>(
    mean_q: &ArrayRef<f64, D>,
    log_var_q: &ArrayRef<f64, D>,
    mean_p: &ArrayRef<f64, D>,
    log_var_p: &ArrayRef<f64, D>,
) -> Result<()> {
    validate::all_finite("mean of q", mean_q.iter())?;
    validate::all_finite("log-variance of q", log_var_q.iter())?;
    validate::all_finite("mean of p", mean_p.iter())?;
    validate::all_finite("log-variance of p", log_var_p.iter())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;
    use statrs::distribution::{Continuous, Normal};

    /// ln(1e12): log-variances in [-LV, LV] cover variances 1e-12..1e12.
    const LV: f64 = 27.631_021_115_928_547;

    fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
        (a - b).abs() <= abs + rel * a.abs().max(b.abs())
    }

    #[test]
    fn exp_m1_minus_identity_matches_direct_form_away_from_zero_and_series_near_it() {
        // Away from 0 the direct form has no cancellation: 1e-14 relative (a few ulp).
        for d in [-3.0f64, -1.5, 1.5, 2.0, 10.0] {
            let direct = d.exp() - 1.0 - d;
            assert!(
                close(exp_m1_minus_identity(d), direct, 1e-14, 0.0),
                "d = {d}"
            );
        }
        // Near 0 compare with the leading terms d^2/2 + d^3/6 + d^4/24, whose truncation
        // error d^5/120 is below 1e-27 at d = 1e-5: 1e-14 relative.
        let d: f64 = 1e-5;
        let series = d * d / 2.0 + d.powi(3) / 6.0 + d.powi(4) / 24.0;
        assert!(close(exp_m1_minus_identity(d), series, 1e-14, 0.0));
        // Both branches agree at the switch points: between arguments 2e-12 apart the
        // function moves by 2e-12 |e^d - 1|, which is 4.8e-12 of its value at d = 1 and
        // 2.5e-12 at d = -1; 5e-12 relative leaves a few ulp for the change of method.
        for switch in [-1.0, 1.0] {
            let below = exp_m1_minus_identity(switch - 1e-12);
            let above = exp_m1_minus_identity(switch + 1e-12);
            assert!(close(below, above, 5e-12, 0.0), "{below} vs {above}");
        }
        // Against mpmath at 40 digits (for the f64 inputs), rounded: 4e-16 relative.
        for (d, want) in [
            (0.7, 0.313_752_707_470_476_46),
            (-0.9, 0.306_569_659_740_599_13),
            (1e-3, 5.001_667_083_416_68e-7),
        ] {
            assert!(close(exp_m1_minus_identity(d), want, 4e-16, 0.0), "d = {d}");
        }
    }

    #[test]
    fn log_density_agrees_with_statrs() {
        // Independent implementation; 1e-13 relative: a few f64 operations each side.
        for (x, m, v) in [(0.3, -1.0, 2.5), (10.0, 0.0, 1e-4), (-5.0, 3.0, 1e6)] {
            let ours = log_density(x, m, f64::ln(v));
            let theirs = Normal::new(m, v.sqrt()).unwrap().ln_pdf(x);
            assert!(close(ours, theirs, 1e-13, 1e-13), "{ours} vs {theirs}");
        }
    }

    #[test]
    fn kl_to_standard_normal_is_the_general_kl_against_zero_zero() {
        for (m, lv) in [(0.0, 0.0), (1.5, -2.0), (-3.0, 5.0), (1e3, -LV)] {
            // Identical arithmetic up to the sign of a zero: exact equality expected.
            assert_eq!(kl_to_standard_normal(m, lv), kl_divergence(m, lv, 0.0, 0.0));
        }
        assert_eq!(kl_to_standard_normal(0.0, 0.0), 0.0);
    }

    /// Monte Carlo estimate of KL(q || p) = E_q[log q - log p], with its standard error.
    fn mc_kl(mq: f64, lq: f64, mp: f64, lp: f64, n: usize, seed: u64) -> (f64, f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for _ in 0..n {
            let x = reparameterise(mq, lq, rng.sample(StandardNormal));
            let r = log_density(x, mq, lq) - log_density(x, mp, lp);
            sum += r;
            sum_sq += r * r;
        }
        let mean = sum / n as f64;
        let var = (sum_sq / n as f64 - mean * mean).max(0.0);
        (mean, (var / n as f64).sqrt())
    }

    #[test]
    fn kl_matches_monte_carlo_in_both_directions() {
        let (mq, lq, mp, lp) = (0.7, f64::ln(0.5), -0.4, f64::ln(2.0));
        for (seed, (a, b, c, d)) in [(1, (mq, lq, mp, lp)), (2, (mp, lp, mq, lq))] {
            let exact = kl_divergence(a, b, c, d);
            let (estimate, se) = mc_kl(a, b, c, d, 200_000, seed);
            // 4 standard errors of the MC mean (fixed seed): a false alarm has p < 1e-4.
            assert!(
                (estimate - exact).abs() < 4.0 * se,
                "{estimate} vs {exact} (se {se})"
            );
        }
        // The two directions differ: KL is not symmetric.
        assert!((kl_divergence(mq, lq, mp, lp) - kl_divergence(mp, lp, mq, lq)).abs() > 0.1);
    }

    #[test]
    fn entropy_matches_monte_carlo() {
        let (m, lv) = (2.0, f64::ln(3.0));
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 100_000;
        let samples: Vec<f64> = (0..n)
            .map(|_| -log_density(reparameterise(m, lv, rng.sample(StandardNormal)), m, lv))
            .collect();
        let mean = samples.iter().sum::<f64>() / n as f64;
        let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n as f64;
        // 4 standard errors of the MC mean.
        assert!((mean - entropy(lv)).abs() < 4.0 * (var / n as f64).sqrt());
    }

    #[test]
    fn array_versions_agree_with_scalars_and_check_their_input() {
        let mq = Array2::from_shape_vec((2, 2), vec![0.1, -0.2, 0.3, 4.0]).unwrap();
        let lq = Array2::from_shape_vec((2, 2), vec![0.0, -1.0, 2.0, -LV]).unwrap();
        let mp = Array2::zeros((2, 2));
        let lp = Array2::from_shape_vec((2, 2), vec![1.0, 0.0, -3.0, LV]).unwrap();
        let kl = kl_divergence_elementwise(&mq, &lq, &mp, &lp).unwrap();
        let total = kl_divergence_sum(&mq, &lq, &mp, &lp).unwrap();
        // Same kernel; the sum differs from summing `kl` only by reassociation: 1e-15.
        assert!(close(total, kl.sum(), 1e-15, 0.0));
        assert_eq!(kl[[1, 0]], kl_divergence(0.3, 2.0, 0.0, -3.0));
        let ld = log_density_elementwise(&mq, &mp, &lp).unwrap();
        assert_eq!(ld[[0, 1]], log_density(-0.2, 0.0, 0.0));
        assert!(close(
            log_density_sum(&mq, &mp, &lp).unwrap(),
            ld.sum(),
            1e-15,
            0.0
        ));
        let k0 = kl_to_standard_normal_elementwise(&mq, &lq).unwrap();
        assert_eq!(k0[[0, 0]], kl_to_standard_normal(0.1, 0.0));

        let short = array![[1.0, 2.0]];
        assert!(kl_divergence_elementwise(&mq, &lq, &mp, &short).is_err());
        assert!(kl_to_standard_normal_elementwise(&mq, &short).is_err());
        assert!(log_density_sum(&mq, &short, &lp).is_err());
        // Every kind of non-finite value in every position is reported, by name and index.
        for bad_value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for slot in 0..4 {
                let mut args = [mq.clone(), lq.clone(), mp.clone(), lp.clone()];
                args[slot][[1, 1]] = bad_value;
                let [a, b, c, d] = &args;
                let e = kl_divergence_sum(a, b, c, d).unwrap_err();
                assert!(
                    matches!(e, crate::MathError::NotFinite { index: Some(3), .. }),
                    "{e}"
                );
                assert!(kl_divergence_elementwise(a, b, c, d).is_err());
                if slot < 3 {
                    assert!(log_density_sum(a, b, c).is_err());
                    assert!(log_density_elementwise(a, b, c).is_err());
                }
                if slot < 2 {
                    assert!(kl_to_standard_normal_elementwise(a, b).is_err());
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// KL is invariant under a common scaling x -> a x, which shifts both
        /// log-variances by ln(a^2). Over variances 1e-12..1e12 and scales 1e-6..1e6.
        #[test]
        fn kl_is_scale_invariant_and_finite_at_extreme_variances(
            mq in -1e3..1e3f64, mp in -1e3..1e3f64,
            lq in -LV..LV, lp in -LV..LV, log_a in -13.8..13.8f64,
        ) {
            let kl = kl_divergence(mq, lq, mp, lp);
            prop_assert!(kl.is_finite() && kl >= 0.0);
            let a = log_a.exp();
            let scaled = kl_divergence(a * mq, lq + 2.0 * log_a, a * mp, lp + 2.0 * log_a);
            // Error budget: the shifted log-variances round by about 1 ulp of 56 (7e-15),
            // which moves the variance part by |e^d - 1| * 1.4e-14 and the mean part z^2 by
            // 1.4e-14 relative; a * m rounds by 1.1e-16 relative, which the difference
            // a (mq - mp) turns into 2.2e-16 (|mq| + |mp|) / |mq - mp| relative on z.
            let z2 = (mq - mp).powi(2) * (-lp).exp();
            let d = lq - lp;
            let mean_rounding = 5e-16 * (mq.abs() + mp.abs()) * (mq - mp).abs() * (-lp).exp();
            let slack = 1e-14 * (d.exp_m1().abs() + z2) + mean_rounding;
            prop_assert!(close(kl, scaled, 1e-12, slack), "{} vs {}", kl, scaled);
        }

        /// KL(q || q) = 0 and KL grows with mean separation, at any variance.
        #[test]
        fn kl_vanishes_for_equal_arguments(m in -1e6..1e6f64, lv in -LV..LV) {
            prop_assert_eq!(kl_divergence(m, lv, m, lv), 0.0);
            // About one standard deviation apart. The separation actually represented is
            // (m + sd) - m, exact by Sterbenz' lemma when m + sd and m are within a factor 2
            // and otherwise within 1 ulp of m + sd ~ sd; then KL = (delta / sd)^2 / 2 to
            // 1e-14 relative (two exps and a square).
            let sd = (0.5 * lv).exp();
            let m2 = m + sd;
            let expected = 0.5 * ((m2 - m) / sd).powi(2);
            prop_assert!(close(kl_divergence(m2, lv, m, lv), expected, 1e-14, 0.0));
        }

        /// The variance-form definition 1/2 (r - 1 - ln r + delta^2 / v_p) agrees where it
        /// is itself accurate (ratio away from 1).
        #[test]
        fn kl_agrees_with_variance_form(
            mq in -10.0..10.0f64, mp in -10.0..10.0f64, lq in -LV..LV, lp in -LV..LV,
        ) {
            prop_assume!((lq - lp).abs() > 0.5);
            let (vq, vp) = (lq.exp(), lp.exp());
            let r = vq / vp;
            let reference = 0.5 * (r - 1.0 - r.ln() + (mq - mp).powi(2) / vp);
            // Both forms are a handful of operations without cancellation here: 1e-12.
            prop_assert!(close(kl_divergence(mq, lq, mp, lp), reference, 1e-12, 0.0));
        }

        /// log N(a x; a m, a^2 v) = log N(x; m, v) - ln a, at any variance.
        #[test]
        fn log_density_transforms_like_a_density(
            x in -1e3..1e3f64, m in -1e3..1e3f64, lv in -LV..LV, log_a in -13.8..13.8f64,
        ) {
            let lp = log_density(x, m, lv);
            prop_assert!(lp.is_finite());
            let a = log_a.exp();
            let moved = log_density(a * x, a * m, lv + 2.0 * log_a) + log_a;
            // Error budget as for the KL: 7e-15 absolute on the shifted log-variance (and
            // so 1.4e-14 relative on z^2), plus the rounding of a * x and a * m carried
            // through the difference, plus 1e-13 relative for the final sums.
            let z2 = (x - m).powi(2) * (-lv).exp();
            let diff_rounding = 5e-16 * (x.abs() + m.abs()) * (x - m).abs() * (-lv).exp();
            let slack = 1e-14 * (1.0 + lv.abs() + z2) + diff_rounding;
            prop_assert!(close(lp, moved, 1e-13, slack), "{} vs {}", lp, moved);
        }

        /// Entropy shifts by ln a under scaling by a (exactly linear in log_var).
        #[test]
        fn entropy_shifts_with_scale(lv in -LV..LV, log_a in -13.8..13.8f64) {
            let shifted = entropy(lv + 2.0 * log_a);
            // One rounding of lv + 2 log_a: 1e-14 absolute.
            prop_assert!(close(shifted, entropy(lv) + log_a, 0.0, 1e-14));
        }
    }
}
