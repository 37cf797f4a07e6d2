//! The training step of a model trained on its ELBO (the VAE family): the negative mean
//! ELBO, shaped by the KL training aids (warm-up, free bits; [`TrainingAids`]). The
//! reported terms are always the true bound's.

use elbo_data::Transform;
use tch::{Kind, Tensor};

use super::ElboModel;
use crate::data;
use crate::error::{Error, Result};
use crate::terms::ElboTerms;
use crate::train::aids::TrainingAids;
use crate::train::{Batch, Reported, StepLoss, TrainStep};

/// The step of a model trained on its ELBO: the negative mean ELBO, reshaped by the
/// training aids (KL warm-up, free bits); the reported terms are the true bound's.
pub struct ElboStep<'a> {
    model: &'a dyn ElboModel,
    aids: TrainingAids,
}

impl<'a> ElboStep<'a> {
    /// The ELBO step of `model` with `aids`.
    pub fn new(model: &'a dyn ElboModel, aids: &TrainingAids) -> ElboStep<'a> {
        ElboStep { model, aids: *aids }
    }

    /// [`ElboStep::new`] as what [`ElboModel::train_step`] returns.
    pub fn boxed(model: &'a dyn ElboModel, aids: &TrainingAids) -> Result<Box<dyn TrainStep + 'a>> {
        Ok(Box::new(ElboStep::new(model, aids)))
    }
}

/// The step `model` trains with under `aids`: its own ([`ElboModel::train_step`]) when
/// neither KL warm-up nor free bits is on; otherwise the ELBO step they shape, which
/// needs KL terms of latent layers to weigh: a model without latent layers (a diffusion
/// model) refuses them. (Gradient skipping is the loop's, for every model.)
pub fn step_for<'a>(
    model: &'a dyn ElboModel,
    aids: &TrainingAids,
) -> Result<Box<dyn TrainStep + 'a>> {
    if !aids.shapes_the_kl() {
        return model.train_step();
    }
    if model.capabilities().latents.is_none() {
        return Err(Error::Config {
            detail: format!(
                "KL warm-up and free bits weigh the KL terms of a model's latent layers; a {} \
                 model has none (found kl_warmup {}, free_bits {}): leave them off",
                model.config().family(),
                aids.kl_warmup_steps,
                aids.free_bits
            ),
        });
    }
    ElboStep::boxed(model, aids)
}

impl TrainStep for ElboStep<'_> {
    fn transform(&self, horizontal_flip: bool) -> Transform {
        data::transform_for(self.model.likelihood(), horizontal_flip)
    }

    fn kl_aids(&self) -> Option<TrainingAids> {
        Some(self.aids)
    }

    fn loss(&self, batch: &Batch, step: u64) -> StepLoss {
        let terms = self.model.elbo_terms(&batch.x);
        let loss = kl_shaped_loss(&self.aids, &terms, step);
        let mut extra = Vec::new();
        if self.aids.kl_warmup_steps > 0 {
            extra.push(("kl_weight".to_string(), self.aids.kl_weight(step)));
        }
        StepLoss {
            loss,
            reported: Reported::Elbo(terms),
            extra,
        }
    }
}

/// The loss at `step`: `-mean ELBO` when no aid changes it (no free bits, a KL weight
/// of 1), otherwise `-mean reconstruction + beta * sum over KL terms of max(free_bits,
/// mean term)`, beta the warm-up's weight.
pub fn kl_shaped_loss(aids: &TrainingAids, terms: &ElboTerms, step: u64) -> Tensor {
    let beta = aids.kl_weight(step);
    if aids.free_bits == 0.0 && beta == 1.0 {
        return -terms.elbo().mean(Kind::Float);
    }
    let kl_terms =
        std::iter::once(&terms.prior_matching).chain(terms.layers.iter().map(|(_, t)| t));
    let mut kl = Tensor::zeros([], (Kind::Float, terms.reconstruction.device()));
    for term in kl_terms {
        let mean = term.mean(Kind::Float);
        kl += if aids.free_bits > 0.0 {
            mean.clamp_min(aids.free_bits)
        } else {
            mean
        };
    }
    kl * beta - terms.reconstruction.mean(Kind::Float)
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
        // -mean(-100 - 4 - 0.5, -120 - 6 - 1.5) = 116.
        assert!((value(&kl_shaped_loss(&aids, &terms(), 0)) - 116.0).abs() < 1e-4);
    }

    #[test]
    fn warm_up_scales_the_kl_terms_and_ends_at_one() {
        let _generator = crate::testing::generator_lock();
        let aids = TrainingAids {
            kl_warmup_steps: 4,
            ..Default::default()
        };
        // 110 (reconstruction) + 0.25 * (5 + 1) = 111.5.
        assert!((value(&kl_shaped_loss(&aids, &terms(), 0)) - 111.5).abs() < 1e-4);
        assert!((value(&kl_shaped_loss(&aids, &terms(), 3)) - 116.0).abs() < 1e-4);
    }

    #[test]
    fn free_bits_floor_each_term_separately() {
        let _generator = crate::testing::generator_lock();
        let aids = TrainingAids {
            free_bits: 2.0,
            ..Default::default()
        };
        // Prior matching (mean 5) is above the floor, the layer (mean 1) below: 110 + 5 + 2.
        assert!((value(&kl_shaped_loss(&aids, &terms(), 0)) - 117.0).abs() < 1e-4);
    }
}
