//! A VDM's training step ([`VdmStep`]): the bound per dimension at VDM's low-discrepancy
//! times, reported term by term with the schedule's endpoints; after the backward pass,
//! the learned shape's variance-minimising gradient ([`GammaNet::shape_backward`]).

use std::cell::RefCell;

use elbo_data::Transform;
use tch::{Kind, Tensor};

use super::Vdm;
use super::schedule::{GammaNet, ShapeSplit};
use crate::data;
use crate::nn::likelihood::Likelihood;
use crate::train::{Batch, Reported, StepLoss, TrainStep};

/// A VDM's training step: the bound per dimension; the learned shape's
/// variance-minimising gradient after the backward pass.
pub(super) struct VdmStep<'a> {
    model: &'a Vdm,
    pending: RefCell<Option<(ShapeSplit, Tensor)>>,
}

impl<'a> VdmStep<'a> {
    /// The step of `model`, with no gradient pending.
    pub(super) fn new(model: &'a Vdm) -> VdmStep<'a> {
        VdmStep {
            model,
            pending: RefCell::new(None),
        }
    }
}

impl TrainStep for VdmStep<'_> {
    fn transform(&self, horizontal_flip: bool) -> Transform {
        data::transform_for(Likelihood::DiscretizedGaussian, horizontal_flip)
    }

    fn loss(&self, batch: &Batch, _step: u64) -> StepLoss {
        let x = &batch.x;
        let b = x.size()[0];
        let dims = (x.numel() as i64 / b.max(1)) as f64;
        // VDM's low-discrepancy times: one uniform, the batch spread over [0, 1).
        let u = Tensor::rand([1], (Kind::Float, x.device()));
        let t = (Tensor::arange(b, (Kind::Float, x.device())) / b as f64 + u).fmod(1.0);
        let (terms, at) = self.model.terms_at(x, &t, true);
        let per_dim = |v: &Tensor| v.mean(Kind::Float) / dims;
        let diffusion = per_dim(&terms.diffusion);
        let prior = per_dim(&terms.prior);
        let reconstruction = per_dim(&terms.reconstruction);
        let loss = &diffusion + &prior - &reconstruction;
        if let Some(split) = at.split {
            // 2 L_i: the mean of L_i^2's gradient, for the shape (L_i per dimension).
            let scale = (&terms.diffusion / dims * 2.0).detach();
            *self.pending.borrow_mut() = Some((split, scale));
        }
        let (g0, g1) = self.model.gamma.endpoint_values();
        let bits = std::f64::consts::LN_2;
        StepLoss {
            reported: Reported::Scalars(vec![
                ("bpd".into(), (&loss / bits).detach()),
                ("diffusion".into(), diffusion.detach()),
                ("prior".into(), prior.detach()),
                ("reconstruction".into(), reconstruction.detach()),
            ]),
            loss,
            extra: vec![("gamma_min".into(), g0), ("gamma_max".into(), g1)],
        }
    }

    fn lr_scales(&self) -> Vec<(String, f64)> {
        self.model
            .config()
            .schedule_lr
            .map(|m| vec![("gamma.".to_string(), m)])
            .unwrap_or_default()
    }

    fn after_backward(&self) {
        if let Some((split, scale)) = self.pending.borrow_mut().take() {
            GammaNet::shape_backward(&split, &scale);
        }
    }
}
