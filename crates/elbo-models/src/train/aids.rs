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
//! VAE's loss.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::models::ElboTerms;

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

    /// Whether the loss at `step` is the plain negative ELBO.
    pub fn loss_is_plain(&self, step: u64) -> bool {
        self.free_bits == 0.0 && self.kl_weight(step) == 1.0
    }

    /// The loss at `step`: `-mean ELBO` when [`TrainingAids::loss_is_plain`], otherwise
    /// `-mean reconstruction + beta * sum over KL terms of max(free_bits, mean term)`.
    pub fn loss(&self, terms: &ElboTerms, step: u64) -> Tensor {
        if self.loss_is_plain(step) {
            return -terms.elbo().mean(Kind::Float);
        }
        let beta = self.kl_weight(step);
        let kl_terms =
            std::iter::once(&terms.prior_matching).chain(terms.layers.iter().map(|(_, t)| t));
        let mut kl = Tensor::zeros([], (Kind::Float, terms.reconstruction.device()));
        for term in kl_terms {
            let mean = term.mean(Kind::Float);
            kl += if self.free_bits > 0.0 {
                mean.clamp_min(self.free_bits)
            } else {
                mean
            };
        }
        kl * beta - terms.reconstruction.mean(Kind::Float)
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

    fn terms() -> ElboTerms {
        ElboTerms {
            reconstruction: Tensor::from_slice(&[-100.0f32, -120.0]),
            prior_matching: Tensor::from_slice(&[4.0f32, 6.0]),
            layers: vec![("kl_layer_1".into(), Tensor::from_slice(&[0.5f32, 1.5]))],
        }
    }

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    // The values below are sums of a few small f32 numbers: exact to 1e-4.
    #[test]
    fn off_by_default_is_the_negative_elbo() {
        let _generator = crate::testing::generator_lock();
        let aids = TrainingAids::default();
        assert!(aids.loss_is_plain(0));
        // -mean(-100 - 4 - 0.5, -120 - 6 - 1.5) = 116.
        assert!((value(&aids.loss(&terms(), 0)) - 116.0).abs() < 1e-4);
    }

    #[test]
    fn warm_up_scales_the_kl_terms_and_ends_at_one() {
        let _generator = crate::testing::generator_lock();
        let aids = TrainingAids {
            kl_warmup_steps: 4,
            ..Default::default()
        };
        assert_eq!(aids.kl_weight(0), 0.25);
        assert_eq!(aids.kl_weight(3), 1.0);
        assert_eq!(aids.kl_weight(100), 1.0);
        // 110 (reconstruction) + 0.25 * (5 + 1) = 111.5.
        assert!((value(&aids.loss(&terms(), 0)) - 111.5).abs() < 1e-4);
        assert!((value(&aids.loss(&terms(), 3)) - 116.0).abs() < 1e-4);
    }

    #[test]
    fn free_bits_floor_each_term_separately() {
        let _generator = crate::testing::generator_lock();
        let aids = TrainingAids {
            free_bits: 2.0,
            ..Default::default()
        };
        // Prior matching (mean 5) is above the floor, the layer (mean 1) below: 110 + 5 + 2.
        assert!((value(&aids.loss(&terms(), 0)) - 117.0).abs() < 1e-4);
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
