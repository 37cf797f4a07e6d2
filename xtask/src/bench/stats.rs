//! Summaries of timing samples, and the comparison of two sides.

use serde::{Deserialize, Serialize};

/// Median, minimum and maximum of a set of samples (in the report as
/// `{"median": .., "min": .., "max": .., "n": ..}`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The median (the mean of the two middle samples for an even count).
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
    /// How many samples.
    pub n: usize,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none or one is not finite.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            n,
        })
    }
}

/// How many times faster `ours` is than `theirs` (time per step: larger is better for
/// us), from the medians, with the range the extremes allow: from ours at its slowest
/// against theirs at its fastest, to the reverse.
pub fn speedup(ours: Summary, theirs: Summary) -> (f64, f64, f64) {
    (
        theirs.median / ours.median,
        theirs.min / ours.max,
        theirs.max / ours.min,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
    }

    #[test]
    fn empty_or_non_finite_samples_have_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn speedup_is_their_time_over_ours_with_its_range() {
        let ours = Summary::of(&[2.0, 2.0, 3.0]).unwrap();
        let theirs = Summary::of(&[4.0, 5.0, 6.0]).unwrap();
        let (ratio, low, high) = speedup(ours, theirs);
        assert_eq!(ratio, 2.5);
        assert_eq!(low, 4.0 / 3.0);
        assert_eq!(high, 3.0);
    }
}
