//! Axis ranges with round tick values: steps of 1, 2 or 5 times a power of ten, and
//! tick labels that say no more digits than the step needs.

/// A numeric axis: its ticks run from `min` to `max` in steps of `step`, and they cover
/// the data range the axis was made for.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// The first tick, at or below the smallest value.
    pub min: f64,
    /// The last tick, at or above the largest value.
    pub max: f64,
    /// The distance between ticks: 1, 2 or 5 times a power of ten.
    pub step: f64,
    /// The tick values, `min` to `max`, each a whole multiple of `step`.
    pub ticks: Vec<f64>,
    /// The power of ten of `step`.
    exponent: i32,
}

/// `10^e`, exact for |e| <= 22.
fn pow10(e: i32) -> f64 {
    10f64.powi(e)
}

impl Axis {
    /// An axis covering `lo..=hi` (in either order) with about `target` ticks (clamped
    /// to 2..=50). When the two are equal, or equal to 9 digits, the range is widened
    /// around them (by 5% of their size, or by 1 around 0) so that it is never empty.
    /// `None` when a bound is not finite or the range does not fit in an `f64`.
    pub fn new(lo: f64, hi: f64, target: usize) -> Option<Axis> {
        if !(lo.is_finite() && hi.is_finite()) {
            return None;
        }
        let (mut lo, mut hi) = (lo.min(hi), lo.max(hi));
        let size = lo.abs().max(hi.abs());
        if hi - lo <= size * 1e-9 {
            let pad = if size > 0.0 { size * 0.05 } else { 1.0 };
            (lo, hi) = (lo - pad, hi + pad);
        }
        let span = hi - lo;
        if !span.is_finite() {
            return None;
        }
        let raw = span / (target.clamp(2, 50) - 1) as f64;
        let mut exponent = raw.log10().floor() as i32;
        let fraction = raw / pow10(exponent);
        let mantissa = if fraction < 1.5 {
            1.0
        } else if fraction < 3.0 {
            2.0
        } else if fraction < 7.0 {
            5.0
        } else {
            exponent += 1;
            1.0
        };
        // k steps, computed so that a decimal tick is the f64 nearest to it (0.3, not
        // 0.30000000000000004): an exact integer times or over an exact power of ten.
        let at = |k: f64| {
            if exponent >= 0 {
                k * mantissa * pow10(exponent)
            } else {
                k * mantissa / pow10(-exponent)
            }
        };
        let step = at(1.0);
        if !(step.is_finite() && step > 0.0) {
            return None;
        }
        let mut first = (lo / step).floor();
        if at(first + 1.0) <= lo {
            first += 1.0;
        }
        let mut last = (hi / step).ceil();
        if at(last - 1.0) >= hi {
            last -= 1.0;
        }
        let count = last - first;
        if !(1.0..=200.0).contains(&count) || first.abs().max(last.abs()) > 2f64.powi(52) {
            return None;
        }
        let ticks: Vec<f64> = (0..=count as usize).map(|i| at(first + i as f64)).collect();
        if !ticks.iter().all(|t| t.is_finite()) {
            return None;
        }
        Some(Axis {
            min: ticks[0],
            max: ticks[ticks.len() - 1],
            step,
            ticks,
            exponent,
        })
    }

    /// Where `value` lies on the axis: 0 at `min`, 1 at `max`.
    pub fn fraction(&self, value: f64) -> f64 {
        (value - self.min) / (self.max - self.min)
    }

    /// The label of a tick: fixed-point with the decimals the step needs (`0.25`,
    /// `1500`), or, for ticks of 100000 or more in size or steps finer than 0.001,
    /// scientific (`-1.2e3`, `2.5e-7`), with as many digits as the step needs. Zero is
    /// `0`.
    pub fn label(&self, value: f64) -> String {
        if value == 0.0 {
            return "0".to_string();
        }
        let decimals = (-self.exponent).max(0) as usize;
        let largest = self.min.abs().max(self.max.abs());
        if largest < 1e5 && decimals <= 3 {
            format!("{value:.decimals$}")
        } else {
            let digits = (largest.log10().floor() as i32 - self.exponent).clamp(0, 16) as usize;
            format!("{value:.digits$e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGES: &[(f64, f64)] = &[
        (0.0, 1.0),
        (1.0, 100.0),
        (80.5, 201.25),
        (-3.7, 2.2),
        (-1500.0, -1499.0),
        (0.3, 0.7),
        (1e-9, 3e-9),
        (-2.4e6, 1.0e5),
        (95.0, 95.000_1),
        (1e12, 5e13),
        (7.0, 7.0),
        (0.0, 0.0),
        (-2.5e-4, -2.5e-4),
        (1e200, 1e201),
    ];

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        for &(lo, hi) in RANGES {
            for target in [2, 3, 5, 8] {
                let axis = Axis::new(lo, hi, target).unwrap();
                let what = format!("{lo}..{hi} with {target} ticks: {axis:?}");
                assert!(axis.min <= lo && axis.max >= hi, "{what}");
                assert!(axis.max > axis.min, "{what}");
                // The step is 1, 2 or 5 times a power of ten.
                let power = pow10(axis.step.log10().floor() as i32);
                let mantissa = axis.step / power;
                assert!(
                    [1.0, 2.0, 5.0, 10.0]
                        .iter()
                        .any(|m| (mantissa - m).abs() < 1e-9),
                    "{what}"
                );
                // Every tick is a whole number of steps, one step after the other.
                for pair in axis.ticks.windows(2) {
                    let error = (pair[1] - pair[0] - axis.step).abs();
                    let rounding = 4.0 * f64::EPSILON * pair[1].abs();
                    assert!(error <= 1e-9 * axis.step + rounding, "{what}");
                }
                for t in &axis.ticks {
                    let k = t / axis.step;
                    assert!((k - k.round()).abs() < 1e-6, "{what}");
                }
                // Not more than a step of slack on either side, and a sensible count.
                if lo != hi {
                    assert!(
                        axis.min > lo - axis.step && axis.max < hi + axis.step,
                        "{what}"
                    );
                }
                assert!((2..=2 * target + 3).contains(&axis.ticks.len()), "{what}");
            }
        }
    }

    #[test]
    fn labels_are_distinct_and_read_back_as_their_ticks() {
        for &(lo, hi) in RANGES {
            let axis = Axis::new(lo, hi, 5).unwrap();
            let labels: Vec<String> = axis.ticks.iter().map(|&t| axis.label(t)).collect();
            for (i, (label, &tick)) in labels.iter().zip(&axis.ticks).enumerate() {
                let back: f64 = label.parse().unwrap();
                assert!((back - tick).abs() < axis.step * 1e-6, "{label} for {tick}");
                assert!(!labels[i + 1..].contains(label), "{labels:?}");
                assert!(label.len() <= 12, "{labels:?}");
            }
        }
        let axis = Axis::new(-3.7, 2.2, 5).unwrap();
        assert_eq!(axis.label(-2.0), "-2");
        let axis = Axis::new(0.3, 0.7, 5).unwrap();
        assert_eq!(axis.label(axis.ticks[1]), "0.4");
        let axis = Axis::new(-2.4e6, 1.0e5, 5).unwrap();
        assert_eq!(axis.label(-1.5e6), "-1.5e6");
        let axis = Axis::new(1e-9, 3e-9, 5).unwrap();
        assert_eq!(axis.label(2e-9), "2.0e-9");
    }

    #[test]
    fn equal_values_get_a_range_around_them() {
        let axis = Axis::new(3.0, 3.0, 5).unwrap();
        assert!(axis.min < 3.0 && axis.max > 3.0, "{axis:?}");
        assert!((axis.fraction(3.0) - 0.5).abs() < 0.26, "{axis:?}");
        let axis = Axis::new(0.0, 0.0, 5).unwrap();
        assert_eq!((axis.min, axis.max), (-1.0, 1.0));
        assert_eq!(axis.fraction(0.0), 0.5);
    }

    #[test]
    fn non_finite_or_unrepresentable_ranges_have_no_axis() {
        assert_eq!(Axis::new(f64::NAN, 1.0, 5), None);
        assert_eq!(Axis::new(0.0, f64::INFINITY, 5), None);
        assert_eq!(Axis::new(-f64::MAX, f64::MAX, 5), None);
        // Its last tick would be 2e308.
        assert_eq!(Axis::new(0.0, f64::MAX, 5), None);
    }
}
