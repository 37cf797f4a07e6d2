//! Training aids for models with several KL terms (hierarchical VAEs above all): they
//! change the loss the optimiser sees, never the ELBO that is reported.
//!
//! - KL warm-up (Sønderby et al. 2016, "Ladder variational autoencoders"): the KL terms
//!   (prior matching and every layer term) are weighted by
//!   `beta = min(1, (step + 1) / kl_warmup_steps)`, so the decoder learns to use the
//!   latents before the KL pulls the posteriors onto the priors.
//! - Free bits (Kingma et al. 2016, "Improved variational inference with inverse
//!   autoregressive flow"): each KL term enters the loss as
//!   `max(free_bits, its batch mean)`: a layer whose KL is under `free_bits` nats is not
//!   pushed further towards its prior, which keeps it from collapsing.
//! - Gradient skipping (Child 2021, "Very deep VAEs"): an update whose global gradient
//!   norm exceeds `skip_grad_norm` (or is not finite) is not applied; the metrics' step
//!   lines count the skips since the run's last (re)start in `skipped_updates`.
//!
//! All three are off by default, and with all off the loss is exactly `-mean ELBO`, the
//! VAE's loss. The loop applies the skipping; the loss the first two shape is the ELBO
//! step's (`models::ElboStep`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The training aids of a run (see the module documentation); all off by default.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct TrainingAids {
    /// Steps over which the KL weight rises linearly to 1 (0: off).
    #[serde(default)]
    pub kl_warmup_steps: u64,
    /// Nats per KL term (prior matching, each layer) below which the term is not
    /// penalised, applied to the batch mean (0: off).
    #[serde(default)]
    pub free_bits: f64,
    /// Skip updates whose gradient norm (before clipping) exceeds this (`None`: off).
    #[serde(default)]
    pub skip_grad_norm: Option<f64>,
}

impl TrainingAids {
    /// The KL weight at `step` (counted from 0): 1 without warm-up.
    pub fn kl_weight(&self, step: u64) -> f64 {
        if self.kl_warmup_steps == 0 {
            1.0
        } else {
            ((step + 1) as f64 / self.kl_warmup_steps as f64).min(1.0)
        }
    }

    /// Whether KL warm-up or free bits is on (they shape the ELBO step's loss).
    pub fn shapes_the_kl(&self) -> bool {
        self.kl_warmup_steps > 0 || self.free_bits > 0.0
    }

    /// Whether an update with gradient norm `grad_norm` is skipped.
    pub fn skips(&self, grad_norm: f64) -> bool {
        self.skip_grad_norm
            .is_some_and(|limit| !(grad_norm.is_finite() && grad_norm <= limit))
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(self.free_bits.is_finite() && self.free_bits >= 0.0) {
            return Err(Error::Config {
                detail: format!(
                    "free_bits must be a non-negative number of nats, found {}",
                    self.free_bits
                ),
            });
        }
        if let Some(s) = self.skip_grad_norm
            && !(s.is_finite() && s > 0.0)
        {
            return Err(Error::Config {
                detail: format!("skip_grad_norm must be positive, found {s}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_rises_linearly_to_one() {
        let aids = TrainingAids {
            kl_warmup_steps: 4,
            ..Default::default()
        };
        assert_eq!(aids.kl_weight(0), 0.25);
        assert_eq!(aids.kl_weight(3), 1.0);
        assert_eq!(aids.kl_weight(100), 1.0);
        assert_eq!(TrainingAids::default().kl_weight(0), 1.0);
    }

    #[test]
    fn skipping_and_validation() {
        let _generator = crate::testing::generator_lock();
        let aids = TrainingAids {
            skip_grad_norm: Some(10.0),
            ..Default::default()
        };
        assert!(!aids.skips(9.0));
        assert!(aids.skips(11.0));
        assert!(aids.skips(f64::NAN));
        assert!(!TrainingAids::default().skips(1e30));
        let bad = TrainingAids {
            free_bits: -1.0,
            ..Default::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("free_bits") && err.contains("-1"), "{err}");
    }
}
