//! The standard normal CDF in log space, accurate in both tails: `ln Phi(x)` and
//! `ln(Phi(b) - Phi(a))`, the building blocks of the discretized Gaussian likelihood.
//!
//! The error function is computed here rather than taken from statrs, whose `erf` and
//! `erfc` are accurate only to about 3e-11 relative (measured against mpmath). For
//! `|z| < sqrt(3/2)`, `erf` is the everywhere-positive series
//! `erf(z) = 2/sqrt(pi) e^{-z^2} sum_n z (2z^2)^n / (2n+1)!!`. Beyond it the tail is split
//! as `erfc(z) = e^{-z^2} erfcx(z)`: the slowly varying `erfcx` comes from Legendre's
//! continued fraction for `Gamma(1/2, z^2)`, and the Gaussian factor is formed from the
//! exact square of the argument (one fused multiply-add), never from a rounded `z^2`.
//! Everything is accurate to a few ulp, and log-space results never underflow.
//!
//! `ln(Phi(b) - Phi(a))` picks, for each interval, a form without cancellation:
//! Gauss-Legendre quadrature of the density when the interval is narrow on the scale of
//! the density's variation; a difference of tails whose log-ratio
//! `-(b - a)(a + b)/2 + ln erfcx(b/sqrt 2) - ln erfcx(a/sqrt 2)` is formed from differences;
//! or a sum of two `erf`s across zero.

use crate::gaussian::LN_2PI;
use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI, LN_2, PI};

/// Where the erf series hands over to the continued fraction: `z^2 = 3/2`.
const SPLIT: f64 = 1.224_744_871_391_589;

/// The same split for the standard normal's argument: `x = sqrt(2) SPLIT = sqrt(3)`.
const TAIL: f64 = 1.732_050_807_568_877_2;

/// `erf(z)` for `|z| < SPLIT` by the positive series (at most ~40 terms).
fn erf_series(z: f64) -> f64 {
    let two_z2 = 2.0 * z * z;
    let (mut term, mut sum) = (z, z);
    let mut n = 1.0;
    while term.abs() > 1e-17 * sum.abs() {
        term *= two_z2 / (2.0 * n + 1.0);
        sum += term;
        n += 1.0;
    }
    FRAC_2_SQRT_PI * (-z * z).exp() * sum
}

/// `ln erfcx(z) = ln(e^{z^2} erfc(z)) = ln(z F(z^2)) - ln(pi)/2` for `z >= SPLIT`, where
/// `F(X) = Gamma(1/2, X) e^X / sqrt(X)` is Legendre's continued fraction
/// `1 / (X + 1/2 - (1 * 1/2) / (X + 5/2 - (2 * 3/2) / (X + 9/2 - ...)))`. It lies in
/// (-1.2, -0.5) + `-ln z`, so rounding in `z` moves it by ~1 ulp only.
///
/// The fraction is evaluated backwards from a fixed depth (80 terms for X < 4, 40 below
/// 16, 20 beyond: at least 20 more than the forward Lentz method needs for 1e-16 at each
/// range's lower end); backward evaluation damps rounding errors, so the result is
/// within ~1 ulp, where the forward method drifts to ~8 ulp at X = 3/2.
fn log_erfcx(z: f64) -> f64 {
    let big_x = z * z;
    if big_x == f64::INFINITY {
        // F(X) ~ 1/X.
        return -z.ln() - 0.5 * PI.ln();
    }
    let depth = if big_x < 4.0 {
        80
    } else if big_x < 16.0 {
        40
    } else {
        20
    };
    let mut tail = 0.0;
    for i in (1..=depth).rev() {
        let i = f64::from(i);
        tail = -i * (i - 0.5) / (big_x + 0.5 + 2.0 * i + tail);
    }
    (z / (big_x + 0.5 + tail)).ln() - 0.5 * PI.ln()
}

/// `(s, e)` with `s + e = x^2` exactly: the rounded square and its rounding error.
fn exact_square(x: f64) -> (f64, f64) {
    let s = x * x;
    (s, x.mul_add(x, -s))
}

/// `ln Q(x)`, the log of the upper tail `1 - Phi(x)`, for `x >= TAIL`: the exponent
/// `-x^2/2` is formed from `x` itself, not from `x / sqrt(2)`, whose rounding would cost
/// `x^2 * 1e-16`.
fn log_upper_tail(x: f64) -> f64 {
    let (s, e) = exact_square(x);
    if s == f64::INFINITY {
        return f64::NEG_INFINITY;
    }
    -0.5 * s - 0.5 * e + log_erfcx(x * FRAC_1_SQRT_2) - LN_2
}

/// `Q(x) = 1 - Phi(x)` for `x >= 0`, to a few ulp relative: `exp(-s/2)` of the exactly
/// halved rounded square is accurate to 1 ulp, and the rounding error enters as a factor.
fn upper_tail(x: f64) -> f64 {
    if x < TAIL {
        0.5 * (1.0 - erf_series(x * FRAC_1_SQRT_2))
    } else {
        let (s, e) = exact_square(x);
        if s > 1500.0 {
            // Q(x) < e^{-750}: zero in f64 (and e, up to ulp(s), could overflow exp).
            return 0.0;
        }
        0.5 * (-0.5 * s).exp() * (-0.5 * e).exp() * log_erfcx(x * FRAC_1_SQRT_2).exp()
    }
}

/// `erfc(z)` for `z >= SPLIT`, in the linear domain (same construction as [`upper_tail`]).
fn erfc_large(z: f64) -> f64 {
    let (s, e) = exact_square(z);
    if s > 750.0 {
        // erfc(z) < e^{-750}: zero in f64.
        return 0.0;
    }
    (-s).exp() * (-e).exp() * log_erfcx(z).exp()
}

/// The error function, accurate to a few ulp everywhere.
pub fn erf(z: f64) -> f64 {
    if z.abs() < SPLIT {
        erf_series(z)
    } else if z.is_nan() {
        f64::NAN
    } else {
        (1.0 - erfc_large(z.abs())).copysign(z)
    }
}

/// `ln erfc(z)`, accurate to a few ulp for every finite z (no underflow in the tail).
pub fn log_erfc(z: f64) -> f64 {
    if z >= SPLIT {
        let (s, e) = exact_square(z);
        if s == f64::INFINITY {
            f64::NEG_INFINITY
        } else {
            -s - e + log_erfcx(z)
        }
    } else if z > -SPLIT {
        (1.0 - erf_series(z)).ln()
    } else if z.is_nan() {
        f64::NAN
    } else {
        // erfc(z) = 2 - erfc(-z), with erfc(-z) < 0.085.
        (2.0 - erfc_large(-z)).ln()
    }
}

/// `ln Phi(x)`, the log of the standard normal CDF; finite for every finite x whose square
/// is finite, `-inf` at `-inf`, 0 at `+inf`, NaN for NaN.
pub fn log_ndtr(x: f64) -> f64 {
    if x <= -TAIL {
        log_upper_tail(-x)
    } else if x < TAIL {
        (0.5 * (1.0 + erf_series(x * FRAC_1_SQRT_2))).ln()
    } else if x.is_nan() {
        f64::NAN
    } else {
        // Phi(x) = 1 - Q(x) with Q(x) < 0.042: log1p keeps every digit.
        (-upper_tail(x)).ln_1p()
    }
}

/// `ln(Q(a) - Q(b))` for `TAIL <= a < b`: the log-ratio `ln Q(b) - ln Q(a)` is formed from
/// differences (of the exponents, and of the small `ln erfcx` terms), so that no large
/// logarithm is subtracted from another.
fn log_upper_tail_between(a: f64, b: f64) -> f64 {
    let log_ratio =
        -0.5 * (b - a) * (a + b) + log_erfcx(b * FRAC_1_SQRT_2) - log_erfcx(a * FRAC_1_SQRT_2);
    log_upper_tail(a) + (-log_ratio.exp_m1()).ln()
}

/// `ln(Phi(b) - Phi(a))` for `a < b` (either may be infinite); NaN if `a >= b` or either
/// is NaN.
pub fn log_prob_between(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() || a >= b {
        return f64::NAN;
    }
    if a == f64::NEG_INFINITY {
        return log_ndtr(b);
    }
    if b == f64::INFINITY {
        return log_ndtr(-a);
    }
    if (b - a) * (1.0 + a.abs().max(b.abs())) < 0.1 {
        log_integral_gauss_legendre(a, b)
    } else if a >= TAIL {
        log_upper_tail_between(a, b)
    } else if b <= -TAIL {
        log_upper_tail_between(-b, -a)
    } else if a >= 0.0 {
        // Q(a) >= 0.042, and the interval is wide enough that Q(b) <= 0.9 Q(a).
        (upper_tail(a) - upper_tail(b)).ln()
    } else if b <= 0.0 {
        (upper_tail(-b) - upper_tail(-a)).ln()
    } else {
        // Across zero: erf(b / sqrt 2) >= 0 >= erf(a / sqrt 2), a sum of magnitudes.
        (0.5 * (erf(b * FRAC_1_SQRT_2) - erf(a * FRAC_1_SQRT_2))).ln()
    }
}

/// `ln integral_a^b phi(x) dx` by 5-point Gauss-Legendre quadrature in log space. Used when
/// `(b - a)(1 + max(|a|, |b|)) < 0.1`, where the rule's error term,
/// `3.9e-13 h^11 phi^(10)`, is below 1e-19 of the integral.
fn log_integral_gauss_legendre(a: f64, b: f64) -> f64 {
    const NODES: [f64; 5] = [
        -0.906_179_845_938_664,
        -0.538_469_310_105_683_1,
        0.0,
        0.538_469_310_105_683_1,
        0.906_179_845_938_664,
    ];
    const WEIGHTS: [f64; 5] = [
        0.236_926_885_056_189_1,
        0.478_628_670_499_366_5,
        0.568_888_888_888_888_9,
        0.478_628_670_499_366_5,
        0.236_926_885_056_189_1,
    ];
    let (half, centre) = (0.5 * (b - a), 0.5 * (a + b));
    let exponents = NODES.map(|u| {
        let x = centre + half * u;
        -0.5 * x * x
    });
    let top = exponents.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = exponents
        .iter()
        .zip(WEIGHTS)
        .map(|(e, w)| w * (e - top).exp())
        .sum();
    half.ln() - 0.5 * LN_2PI + top + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / a.abs().max(b.abs())
    }

    /// `ln Phi(x)` for x < 0 via the Mills-ratio integral
    /// `Phi(x) = phi(x) int_0^inf exp(x s - s^2 / 2) ds`, by Simpson's rule: an independent
    /// reference for the deep tail.
    fn log_ndtr_by_quadrature(x: f64) -> f64 {
        let upper = 60.0 / x.abs();
        let n = 20_000;
        let h = upper / n as f64;
        let f = |s: f64| (x * s - 0.5 * s * s).exp();
        let inner: f64 = (1..n)
            .map(|i| f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
            .sum();
        let integral = (f(0.0) + f(upper) + inner) * h / 3.0;
        -0.5 * x * x - 0.5 * LN_2PI + integral.ln()
    }

    #[test]
    fn erf_and_log_erfc_match_reference_values_on_both_sides_of_the_split() {
        // mpmath at 40 digits. 4e-16 relative: a few ulp (series or continued fraction,
        // then one exp or ln).
        for (x, want) in [
            (1e-3, 0.001_128_378_790_969_236_4),
            (0.5, 0.520_499_877_813_046_5),
            (1.2, 0.910_313_978_229_635_4),
            (1.25, 0.922_900_128_256_458_2),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
        ] {
            assert!(rel(erf(x), want) < 4e-16, "erf({x}) = {} vs {want}", erf(x));
            assert_eq!(erf(-x), -erf(x));
        }
        for (x, want) in [
            (-2.0, 0.690_805_573_646_587_7),
            (-0.5, 0.419_039_147_775_559_6),
            (0.3, -0.398_430_051_440_085_27),
            (1.2, -2.411_440_355_166_929_6),
            (1.25, -2.562_653_661_922_125_7),
            (3.0, -10.720_363_041_981_113),
            (10.0, -102.879_889_024_844_89),
            (30.0, -903.974_117_110_643_9),
            (300.0, -90_006.276_152_973_06),
        ] {
            assert!(
                rel(log_erfc(x), want) < 4e-16,
                "ln erfc({x}) = {} vs {want}",
                log_erfc(x)
            );
        }
        assert_eq!(erf(f64::INFINITY), 1.0);
        assert!(erf(f64::NAN).is_nan() && log_erfc(f64::NAN).is_nan());
    }

    #[test]
    fn log_ndtr_matches_reference_values() {
        // Reference values from mpmath at 40 digits, rounded to f64. 1e-15 relative: the
        // error function is accurate to a few ulp and ln adds one.
        assert!(rel(log_ndtr(-5.0), -15.064_998_393_988_726) < 1e-15);
        assert!(rel(log_ndtr(-10.0), -53.231_285_150_512_47) < 1e-15);
        assert!(rel(log_ndtr(-40.0), -804.608_442_013_753_8) < 1e-15);
        assert!(rel(log_ndtr(8.0), -6.220_960_574_271_786e-16) < 1e-15);
        assert_eq!(log_ndtr(0.0), -std::f64::consts::LN_2);
        assert_eq!(log_ndtr(f64::NEG_INFINITY), f64::NEG_INFINITY);
        assert_eq!(log_ndtr(f64::INFINITY), 0.0);
        assert!(log_ndtr(f64::NAN).is_nan());
    }

    #[test]
    fn log_ndtr_deep_tail_matches_quadrature_and_is_continuous_at_the_split() {
        for x in [-12.0, -29.0, -31.0, -50.0, -1e3, -1e6] {
            // Simpson with 20000 panels on a smooth, fast-decaying integrand: 1e-12.
            assert!(
                rel(log_ndtr(x), log_ndtr_by_quadrature(x)) < 1e-12,
                "x = {x}"
            );
        }
        // Continuous across the series / continued-fraction splits at x = -+sqrt(3): the
        // derivative phi / Phi is at most 2.15 there, so 2e-12 apart the values differ by
        // < 4.3e-12; 4.4e-12 leaves 1e-13 for the two methods' disagreement.
        for split in [-TAIL, TAIL] {
            let (below, above) = (log_ndtr(split - 1e-12), log_ndtr(split + 1e-12));
            assert!(below < above && above - below < 4.4e-12, "{below} {above}");
        }
        // ln Phi(-1e200) ~ -5e399 is below the f64 range: -inf, not NaN.
        assert_eq!(log_ndtr(-1e200), f64::NEG_INFINITY);
    }

    #[test]
    fn interval_probabilities_by_every_branch() {
        // Phi(1) - Phi(-1) from mpmath: 1e-14 relative.
        let p = log_prob_between(-1.0, 1.0).exp();
        assert!(rel(p, 0.682_689_492_137_085_9) < 1e-14);
        assert!(
            rel(
                log_prob_between(f64::NEG_INFINITY, 0.0),
                -std::f64::consts::LN_2
            ) < 1e-15
        );
        assert_eq!(log_prob_between(0.0, f64::INFINITY), log_ndtr(0.0));
        // One interval per branch, against mpmath at 50 digits: 1e-14 relative.
        for (a, b, reference) in [
            (0.0, 1e-3, -7.826_693_978_853_465),       // quadrature
            (-3.0, -2.0, -3.844_353_426_334_205_6),    // lower tails
            (35.0, 35.2, -616.975_990_412_226_3),      // deep upper tails
            (-40.5, -40.0, -804.608_442_015_550_3),    // deep lower tails
            (100.0, 100.001, -5_007.876_277_342_747),  // deep tails, just wide enough
            (1e4, 1e4 + 1e-3, -50_000_010.129_324_32), // far tail
        ] {
            assert!(rel(log_prob_between(a, b), reference) < 1e-14, "({a}, {b})");
        }
        assert!(log_prob_between(1.0, 1.0).is_nan());
        assert!(log_prob_between(f64::NAN, 1.0).is_nan());
    }

    proptest! {
        /// Additivity: P(a, c) = P(a, b) + P(b, c) for any a < b < c, in log space, over
        /// the whole line including the deep tails and narrow bins.
        #[test]
        fn interval_probabilities_add(
            a in -60.0..60.0f64, w1 in 1e-9..5.0f64, w2 in 1e-9..5.0f64,
        ) {
            let (b, c) = (a + w1, a + w1 + w2);
            let whole = log_prob_between(a, c);
            let parts = log_prob_between(a, b);
            let rest = log_prob_between(b, c);
            let top = parts.max(rest);
            let sum = top + ((parts - top).exp() + (rest - top).exp()).ln();
            prop_assert!(whole.is_finite());
            // Every branch is accurate to a few ulp in probability, i.e. a few 1e-16 in log
            // probability, plus a few ulp of |ln p| from forming the logs (|ln p| reaches
            // ~1900 at a = -60): 1e-14 (1 + |ln p|) leaves a margin of ~10.
            prop_assert!((whole - sum).abs() < 1e-14 * (1.0 + whole.abs()), "{} vs {}", whole, sum);
        }
    }
}
