//! ELBO bookkeeping: [`ElboTerms`] holds the three kinds of term of the seeds' rearranged
//! bound (eq. 19),
//!
//! ```text
//! ELBO = L_0 + L_T + sum_{t=2}^T L_{t-1}
//!      = reconstruction - prior_matching - sum_t denoising_matching[t],
//! ```
//!
//! with `reconstruction = L_0 = E_q[log p(x_0 | x_1)]`, `prior_matching = -L_T =
//! KL(q(x_T | x_0) || p(x_T))` and `denoising_matching[t] = -L_{t-1} =
//! E_q KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` for `t = 2..=T`, all in nats. A VAE is
//! the case with no denoising terms (`reconstruction - prior_matching`).

use crate::error::{MathError, Result};
use crate::validate;
use std::f64::consts::LN_2;

/// The terms of an ELBO, in nats, for one data point (or summed over a batch).
#[derive(Debug, Clone, PartialEq)]
pub struct ElboTerms {
    reconstruction: f64,
    prior_matching: f64,
    denoising_matching: Vec<f64>,
}

impl ElboTerms {
    /// Checks that every term is finite. `denoising_matching[i]` is the term for
    /// `t = i + 2`; pass an empty vector for a VAE.
    pub fn new(
        reconstruction: f64,
        prior_matching: f64,
        denoising_matching: Vec<f64>,
    ) -> Result<Self> {
        validate::finite("reconstruction term", reconstruction)?;
        validate::finite("prior-matching term", prior_matching)?;
        validate::all_finite("denoising-matching term", denoising_matching.iter())?;
        Ok(Self {
            reconstruction,
            prior_matching,
            denoising_matching,
        })
    }

    /// `L_0 = E_q[log p(x | z_1)]`.
    pub fn reconstruction(&self) -> f64 {
        self.reconstruction
    }

    /// `KL(q(z_T | x) || p(z_T))`.
    pub fn prior_matching(&self) -> f64 {
        self.prior_matching
    }

    /// The per-step denoising-matching KLs, `[t = 2, ..., t = T]`.
    pub fn denoising_matching(&self) -> &[f64] {
        &self.denoising_matching
    }

    /// The sum of the denoising-matching terms.
    pub fn denoising_matching_total(&self) -> f64 {
        self.denoising_matching.iter().sum()
    }

    /// The ELBO, `reconstruction - prior_matching - sum denoising_matching`, in nats.
    pub fn elbo(&self) -> f64 {
        self.reconstruction - self.prior_matching - self.denoising_matching_total()
    }

    /// The negative ELBO in nats (the loss, an upper bound on `-log p(x)`).
    pub fn negative_elbo(&self) -> f64 {
        -self.elbo()
    }

    /// The negative ELBO in bits per dimension for data of `num_dims` dimensions.
    pub fn bits_per_dim(&self, num_dims: usize) -> Result<f64> {
        nats_to_bits_per_dim(self.negative_elbo(), num_dims)
    }

    /// Adds two sets of terms (for summing over independent dimensions or a batch); they
    /// must have the same number of denoising steps.
    pub fn combine(&self, other: &ElboTerms) -> Result<ElboTerms> {
        validate::same_len(
            "denoising-matching terms",
            self.denoising_matching.len(),
            other.denoising_matching.len(),
        )?;
        let denoising = self
            .denoising_matching
            .iter()
            .zip(&other.denoising_matching)
            .map(|(a, b)| a + b)
            .collect();
        ElboTerms::new(
            self.reconstruction + other.reconstruction,
            self.prior_matching + other.prior_matching,
            denoising,
        )
    }
}

/// Converts a negative log-likelihood (or negative ELBO) in nats into bits per dimension,
/// `nats / (num_dims ln 2)`.
pub fn nats_to_bits_per_dim(nats: f64, num_dims: usize) -> Result<f64> {
    validate::finite("negative log-likelihood in nats", nats)?;
    if num_dims == 0 {
        return Err(MathError::Empty {
            what: "data (number of dimensions must be at least 1)",
        });
    }
    Ok(nats / (num_dims as f64 * LN_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elbo_is_reconstruction_minus_kls() {
        let terms = ElboTerms::new(-10.0, 2.0, vec![0.5, 0.25, 0.125]).unwrap();
        // Dyadic values: exact.
        assert_eq!(terms.denoising_matching_total(), 0.875);
        assert_eq!(terms.elbo(), -12.875);
        assert_eq!(terms.negative_elbo(), 12.875);
        assert_eq!(terms.reconstruction(), -10.0);
        assert_eq!(terms.prior_matching(), 2.0);
        assert_eq!(terms.denoising_matching(), &[0.5, 0.25, 0.125]);
        let vae = ElboTerms::new(-3.0, 1.0, vec![]).unwrap();
        assert_eq!(vae.elbo(), -4.0);
    }

    #[test]
    fn bits_per_dim_divides_by_dims_and_ln2() {
        let terms = ElboTerms::new(-LN_2 * 3072.0 * 3.0, 0.0, vec![]).unwrap();
        // One division of a product by the same product: 1 ulp.
        assert!((terms.bits_per_dim(3072).unwrap() - 3.0).abs() < 1e-15);
        assert!(terms.bits_per_dim(0).is_err());
        assert!(nats_to_bits_per_dim(f64::NAN, 3).is_err());
    }

    #[test]
    fn combine_adds_termwise_and_checks_lengths() {
        let a = ElboTerms::new(-1.0, 0.5, vec![0.25]).unwrap();
        let b = ElboTerms::new(-2.0, 0.25, vec![0.5]).unwrap();
        let c = a.combine(&b).unwrap();
        assert_eq!(c, ElboTerms::new(-3.0, 0.75, vec![0.75]).unwrap());
        assert_eq!(c.elbo(), a.elbo() + b.elbo());
        let vae = ElboTerms::new(-1.0, 0.5, vec![]).unwrap();
        assert!(a.combine(&vae).is_err());
        assert!(ElboTerms::new(f64::NEG_INFINITY, 0.0, vec![]).is_err());
        assert!(ElboTerms::new(0.0, 0.0, vec![f64::NAN]).is_err());
    }
}
