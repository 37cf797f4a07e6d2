//! Criterion benches for the elbo workspace. The bench targets live in `benches/benches/`,
//! one file per crate area; this library only holds helpers they share.
//!
//! ```
//! assert_eq!(elbo_benches::elements_label(1_000_000), "1e6");
//! ```

/// A short label for an element count, used in bench names (`1000000` -> `"1e6"`).
pub fn elements_label(n: usize) -> String {
    let mut mantissa = n;
    let mut exponent = 0;
    while mantissa >= 10 && mantissa.is_multiple_of(10) {
        mantissa /= 10;
        exponent += 1;
    }
    if mantissa == 1 && exponent > 0 {
        format!("1e{exponent}")
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_powers_of_ten_compactly_and_others_in_full() {
        assert_eq!(elements_label(1_000_000), "1e6");
        assert_eq!(elements_label(10), "1e1");
        assert_eq!(elements_label(9_000), "9000");
        assert_eq!(elements_label(7), "7");
    }
}
