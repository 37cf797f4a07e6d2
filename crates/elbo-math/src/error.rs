//! The crate's one error type: every fallible function returns [`MathError`], and every
//! variant says what was expected, what was found and where.

use thiserror::Error;

/// Shorthand for `Result<T, MathError>`.
pub type Result<T> = std::result::Result<T, MathError>;

/// Why a computation refused its input. Nothing in this crate panics on bad input; it
/// returns one of these instead.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum MathError {
    /// A quantity that must be finite (a mean, a log-variance, an observation) was NaN or
    /// infinite.
    #[error("{what} must be finite, found {found}{}", at(*.index))]
    NotFinite {
        /// The name of the quantity, e.g. `"log-variance of q"`.
        what: &'static str,
        /// The offending value.
        found: f64,
        /// The position in the input, when the input was a sequence.
        index: Option<usize>,
    },
    /// A quantity that must be positive and finite (a variance, a scale) was not.
    #[error("{what} must be positive and finite, found {found}{}", at(*.index))]
    NotPositive {
        /// The name of the quantity, e.g. `"variance"`.
        what: &'static str,
        /// The offending value.
        found: f64,
        /// The position in the input, when the input was a sequence.
        index: Option<usize>,
    },
    /// A quantity fell outside the interval it must lie in.
    #[error("{what} must lie in {expected}, found {found}{}", at(*.index))]
    OutOfRange {
        /// The name of the quantity, e.g. `"beta"`.
        what: &'static str,
        /// The allowed interval, written out, e.g. `"(0, 1)"`.
        expected: &'static str,
        /// The offending value.
        found: f64,
        /// The position in the input, when the input was a sequence.
        index: Option<usize>,
    },
    /// Two inputs that must have the same length did not.
    #[error("{what} has length {found}, expected {expected}")]
    LengthMismatch {
        /// Which input had the wrong length.
        what: &'static str,
        /// The length it should have had.
        expected: usize,
        /// The length it had.
        found: usize,
    },
    /// Two arrays that must have the same shape did not.
    #[error("{what} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Which input had the wrong shape.
        what: &'static str,
        /// The shape it should have had.
        expected: Vec<usize>,
        /// The shape it had.
        found: Vec<usize>,
    },
    /// An iteration that converges for every valid input did not (a defect, or an input
    /// beyond float64's range).
    #[error("{what} did not converge after {iterations} iterations")]
    NoConvergence {
        /// What was iterated.
        what: &'static str,
        /// How many iterations ran.
        iterations: usize,
    },
    /// An input that must not be empty was.
    #[error("{what} must not be empty")]
    Empty {
        /// Which input was empty.
        what: &'static str,
    },
    /// A timestep outside the range an operation is defined on.
    #[error("timestep must lie in {min}..={max} for {what}, found {found}")]
    TimestepOutOfRange {
        /// The operation that was asked for.
        what: &'static str,
        /// The smallest allowed timestep.
        min: usize,
        /// The largest allowed timestep.
        max: usize,
        /// The timestep that was given.
        found: usize,
    },
    /// `alpha_bar` must fall strictly as the timestep grows.
    #[error(
        "alpha_bar must be strictly decreasing, found alpha_bar = {found} at index {index} \
         after {previous}"
    )]
    NotDecreasing {
        /// The value that failed to fall.
        found: f64,
        /// The value before it.
        previous: f64,
        /// The position of `found` in the input.
        index: usize,
    },
    /// A list of timesteps must rise strictly.
    #[error(
        "timesteps must be strictly increasing, found {found} after {previous} at index {index}"
    )]
    NotIncreasing {
        /// The timestep that failed to rise.
        found: usize,
        /// The timestep before it.
        previous: usize,
        /// The position of `found` in the input.
        index: usize,
    },
    /// A symmetric matrix that must be positive definite was not (its Cholesky
    /// factorisation met a non-positive pivot).
    #[error("{what} must be positive definite, found pivot {pivot} at row {row}")]
    NotPositiveDefinite {
        /// The name of the matrix.
        what: &'static str,
        /// The offending pivot.
        pivot: f64,
        /// The row at which the factorisation failed.
        row: usize,
    },
    /// Too few observations for a statistic (a covariance needs at least two rows).
    #[error("{what} needs at least {expected_at_least} samples, found {found}")]
    TooFewSamples {
        /// The statistic and its input, e.g. `"covariance of features"`.
        what: &'static str,
        /// The smallest number of samples that works.
        expected_at_least: usize,
        /// The number given.
        found: usize,
    },
    /// A matrix that must be symmetric was not.
    #[error(
        "{what} must be symmetric, found entry ({row}, {col}) = {found} against its mirror \
         {mirror}"
    )]
    NotSymmetric {
        /// The name of the matrix.
        what: &'static str,
        /// The row of the first offending entry.
        row: usize,
        /// Its column.
        col: usize,
        /// The entry at (row, col).
        found: f64,
        /// The entry at (col, row).
        mirror: f64,
    },
    /// A value given as 8-bit data scaled to `[-1, 1]` was not one of the 256 grid points
    /// `2k/255 - 1`.
    #[error(
        "8-bit data scaled to [-1, 1] must be one of the 256 values 2k/255 - 1, found {found} \
         at index {index}"
    )]
    NotOnGrid {
        /// The offending value.
        found: f64,
        /// The position in the input.
        index: usize,
    },
}

/// `" at index 3"` for `Some(3)`, nothing for `None`.
fn at(index: Option<usize>) -> String {
    index.map_or_else(String::new, |i| format!(" at index {i}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_was_expected_found_and_where() {
        let e = MathError::NotPositive {
            what: "variance",
            found: -1.0,
            index: Some(3),
        };
        assert_eq!(
            e.to_string(),
            "variance must be positive and finite, found -1 at index 3"
        );
        let e = MathError::NotFinite {
            what: "mean",
            found: f64::NAN,
            index: None,
        };
        assert_eq!(e.to_string(), "mean must be finite, found NaN");
        let e = MathError::TimestepOutOfRange {
            what: "posterior",
            min: 1,
            max: 10,
            found: 11,
        };
        assert_eq!(
            e.to_string(),
            "timestep must lie in 1..=10 for posterior, found 11"
        );
    }
}
