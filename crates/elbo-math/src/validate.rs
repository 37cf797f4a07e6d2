//! Input checks shared by the modules: each turns a bad value into the [`MathError`] that
//! names it. Crate-private.

use crate::error::{MathError, Result};
use ndarray::{ArrayRef, Dimension};

/// `value` must be finite.
pub(crate) fn finite(what: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(MathError::NotFinite {
            what,
            found: value,
            index: None,
        })
    }
}

/// `value` must be positive and finite.
pub(crate) fn positive(what: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(MathError::NotPositive {
            what,
            found: value,
            index: None,
        })
    }
}

/// `value` must lie in the open interval (0, 1).
pub(crate) fn unit_open(what: &'static str, value: f64, index: Option<usize>) -> Result<f64> {
    if value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(MathError::OutOfRange {
            what,
            expected: "(0, 1)",
            found: value,
            index,
        })
    }
}

/// Every element must be finite; the error names the first one that is not.
pub(crate) fn all_finite<'a>(
    what: &'static str,
    values: impl IntoIterator<Item = &'a f64>,
) -> Result<()> {
    match values.into_iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((i, &v)) => Err(MathError::NotFinite {
            what,
            found: v,
            index: Some(i),
        }),
        None => Ok(()),
    }
}

/// Every element must be positive and finite; the error names the first one that is not.
pub(crate) fn all_positive<'a>(
    what: &'static str,
    values: impl IntoIterator<Item = &'a f64>,
) -> Result<()> {
    match values
        .into_iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v > 0.0))
    {
        Some((i, &v)) => Err(MathError::NotPositive {
            what,
            found: v,
            index: Some(i),
        }),
        None => Ok(()),
    }
}

/// `b` must have the shape of `a` (the reference input, named by its role).
pub(crate) fn same_shape<D: Dimension>(
    what: &'static str,
    expected: &ArrayRef<f64, D>,
    found: &ArrayRef<f64, D>,
) -> Result<()> {
    if expected.shape() == found.shape() {
        Ok(())
    } else {
        Err(MathError::ShapeMismatch {
            what,
            expected: expected.shape().to_vec(),
            found: found.shape().to_vec(),
        })
    }
}

/// `found` must equal `expected`.
pub(crate) fn same_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(MathError::LengthMismatch {
            what,
            expected,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn checks_name_the_first_bad_element() {
        let e = all_positive("variance", &[1.0, 2.0, 0.0, -1.0]).unwrap_err();
        assert_eq!(
            e,
            MathError::NotPositive {
                what: "variance",
                found: 0.0,
                index: Some(2)
            }
        );
        assert!(all_finite("mean", &[1.0, f64::INFINITY]).is_err());
        assert!(all_finite("mean", &[1.0, -3.0]).is_ok());
        assert!(unit_open("beta", 1.0, Some(0)).is_err());
        assert_eq!(positive("scale", 2.0), Ok(2.0));
        assert!(finite("x", f64::NAN).is_err());
    }

    #[test]
    fn shape_and_length_mismatches_are_errors() {
        let a = array![1.0, 2.0];
        let b = array![1.0, 2.0, 3.0];
        assert!(same_shape("b", &a, &b).is_err());
        assert!(same_shape("a", &a, &a).is_ok());
        assert!(same_len("b", 2, 3).is_err());
    }
}
