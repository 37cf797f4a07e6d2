//! Criterion benches for the elbo workspace. The bench targets live in `benches/benches/`,
//! one file per crate area; this library only holds helpers they share.
//!
//! ```
//! assert_eq!(elbo_benches::elements_label(1_000_000), "1e6");
//! ```

/// A short label for an element count, used in bench names (`1000000` -> `"1e6"`).
pub fn elements_label(n: usize) -> String {
    if n >= 10 && n.is_power_of_ten() {
        format!("1e{}", n.ilog10())
    } else {
        n.to_string()
    }
}

trait PowerOfTen {
    fn is_power_of_ten(self) -> bool;
}

impl PowerOfTen for usize {
    fn is_power_of_ten(self) -> bool {
        let mut n = self;
        while n >= 10 && n % 10 == 0 {
            n /= 10;
        }
        n == 1
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
