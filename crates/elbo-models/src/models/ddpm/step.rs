//! A DDPM's training step ([`DdpmStep`]): its own objective ([`LossKind`]) at a drawn
//! timestep, not the ELBO. Timesteps are uniform, or importance-sampled by the loss
//! history ([`TimestepSampling::LossSecondMoment`]), whose state the step checkpoints; a
//! class-conditional model's labels are dropped ([`drop_labels`]) for classifier-free
//! guidance.

use std::cell::RefCell;
use std::collections::BTreeMap;

use elbo_data::Transform;
use elbo_math::timesteps::LossSecondMoment;
use tch::{Kind, Tensor};

use super::config::{LossKind, TimestepSampling};
use super::diffusion::Decoder;
use super::{Ddpm, bound};
use crate::data;
use crate::error::{Error, Result};
use crate::nn::likelihood::Likelihood;
use crate::sample::ClipX0;
use crate::train::{Batch, Reported, StepLoss, TrainStep};

impl Ddpm {
    /// Its training loss on `x` (labels `labels`) at a uniform t: `L_simple` or the
    /// bound's term (per dimension), with what to report. A class-conditional model sees
    /// each label, or with probability `cond_drop` the null label.
    fn training_loss(
        &self,
        x: &Tensor,
        labels: &Tensor,
        sampler: Option<&RefCell<LossSecondMoment>>,
    ) -> StepLoss {
        let d = &self.diffusion;
        let b = x.size()[0];
        let big_t = d.timesteps() as i64;
        let (t, weights) = match sampler {
            None => (
                Tensor::randint_low(1, big_t + 1, [b], (Kind::Int64, x.device())),
                None,
            ),
            Some(sampler) => {
                let (t, w) = importance_draws(&sampler.borrow(), b);
                (t.to_device(x.device()), Some(w.to_device(x.device())))
            }
        };
        let eps = x.randn_like();
        let x_t = d.q_sample(x, &t, &eps);
        // Drawn after t and eps, and only when conditional: an unconditional model's
        // draws are those of before.
        let labels = self
            .null_label()
            .map(|null| drop_labels(labels, null, self.config.cond_drop));
        let output = self.unet.forward_labelled(&x_t, &t, labels.as_ref(), true);
        let (name, loss) = match self.config.loss {
            LossKind::Simple => (
                "l_simple",
                (output - d.target(x, &t, &eps)).square().mean(Kind::Float),
            ),
            LossKind::Vlb => {
                let dims = (x.numel() as i64 / b.max(1)) as f64;
                let (x0_hat, _) = d.predictions(&output, &x_t, &t, ClipX0::None);
                let term = bound::term(d, x, &x_t, &t, &x0_hat, Decoder::Discretized) / dims;
                let loss = match (&weights, sampler) {
                    (Some(w), Some(sampler)) => {
                        record_losses(&mut sampler.borrow_mut(), &t, &term);
                        (term * w).mean(Kind::Float)
                    }
                    _ => term.mean(Kind::Float),
                };
                ("vlb_term_per_dim", loss)
            }
        };
        StepLoss {
            reported: Reported::Scalars(vec![(name.into(), loss.detach())]),
            loss,
            extra: Vec::new(),
        }
    }
}

/// `b` timesteps drawn from `sampler` (one uniform draw each from libtorch's generator,
/// on the CPU) and their importance weights `1 / (T p_t)`.
fn importance_draws(sampler: &LossSecondMoment, b: i64) -> (Tensor, Tensor) {
    let u = Tensor::rand([b], (Kind::Double, tch::Device::Cpu));
    let u = Vec::<f64>::try_from(u).unwrap_or_default();
    let (t, w): (Vec<i64>, Vec<f64>) = sampler
        .draws(&u)
        .into_iter()
        .map(|(t, w)| (t as i64, w))
        .unzip();
    (
        Tensor::from_slice(&t),
        Tensor::from_slice(&w).to_kind(Kind::Float),
    )
}

/// Records each example's (unweighted) term at its timestep. Non-finite terms are left
/// out: the training loop's guard deals with such a step.
fn record_losses(sampler: &mut LossSecondMoment, t: &Tensor, term: &Tensor) {
    let to_vec = |x: &Tensor| {
        Vec::<f64>::try_from(x.detach().to_device(tch::Device::Cpu).to_kind(Kind::Double))
            .unwrap_or_default()
    };
    for (t, loss) in to_vec(t).into_iter().zip(to_vec(term)) {
        if loss.is_finite() {
            // t came from the sampler's own draw: within 1..=T.
            let _ = sampler.record(t as usize, loss);
        }
    }
}

/// The names of an importance sampler's state in checkpoints (under the step prefix).
const SAMPLER_LOSSES: &str = "timesteps.losses";
const SAMPLER_COUNTS: &str = "timesteps.counts";

/// A DDPM's training step: its own objective ([`LossKind`]), not the ELBO; with
/// importance-sampled timesteps, the sampler and its loss history.
pub(super) struct DdpmStep<'a> {
    model: &'a Ddpm,
    sampler: Option<RefCell<LossSecondMoment>>,
}

impl<'a> DdpmStep<'a> {
    /// The step of `model`, with a fresh importance sampler when its configuration asks
    /// for one.
    pub(super) fn new(model: &'a Ddpm) -> Result<DdpmStep<'a>> {
        let sampler = match model.config.timestep_sampling {
            TimestepSampling::Uniform => None,
            TimestepSampling::LossSecondMoment => {
                Some(RefCell::new(new_sampler(model.diffusion.timesteps())?))
            }
        };
        Ok(DdpmStep { model, sampler })
    }
}

impl TrainStep for DdpmStep<'_> {
    fn transform(&self, horizontal_flip: bool) -> Transform {
        data::transform_for(Likelihood::DiscretizedGaussian, horizontal_flip)
    }

    fn loss(&self, batch: &Batch, _step: u64) -> StepLoss {
        self.model
            .training_loss(&batch.x, &batch.labels, self.sampler.as_ref())
    }

    /// The importance sampler's loss history: (T, 10) losses (zero-padded, oldest
    /// first) and (T,) counts, in f64.
    fn state(&self) -> Vec<(String, Tensor)> {
        let Some(sampler) = &self.sampler else {
            return Vec::new();
        };
        let sampler = sampler.borrow();
        let history = sampler.history();
        let width = LossSecondMoment::IMPROVED_DDPM.0;
        let mut losses = vec![0.0f64; history.len() * width];
        for (row, kept) in history.iter().enumerate() {
            losses[row * width..row * width + kept.len()].copy_from_slice(kept);
        }
        let counts: Vec<f64> = history.iter().map(|k| k.len() as f64).collect();
        vec![
            (
                SAMPLER_LOSSES.to_string(),
                Tensor::from_slice(&losses).reshape([history.len() as i64, width as i64]),
            ),
            (SAMPLER_COUNTS.to_string(), Tensor::from_slice(&counts)),
        ]
    }

    fn restore(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let Some(sampler) = &self.sampler else {
            return Ok(());
        };
        let (Some(losses), Some(counts)) =
            (tensors.get(SAMPLER_LOSSES), tensors.get(SAMPLER_COUNTS))
        else {
            return Err(Error::Checkpoint {
                detail: format!(
                    "{SAMPLER_LOSSES} and {SAMPLER_COUNTS} are missing: the run samples its \
                     timesteps by importance, the checkpoint has no loss history"
                ),
            });
        };
        let steps = self.model.diffusion.timesteps();
        let width = LossSecondMoment::IMPROVED_DDPM.0;
        let bad = |what: String| Error::Checkpoint { detail: what };
        if losses.size() != [steps as i64, width as i64] || counts.size() != [steps as i64] {
            return Err(bad(format!(
                "the loss history has shape {:?} and counts {:?}, expected [{steps}, {width}] \
                 and [{steps}]",
                losses.size(),
                counts.size()
            )));
        }
        let losses = Vec::<f64>::try_from(losses.to_kind(Kind::Double).flatten(0, -1))?;
        let counts = Vec::<f64>::try_from(counts.to_kind(Kind::Double))?;
        let history = counts
            .iter()
            .enumerate()
            .map(|(row, &n)| {
                let n = n as usize;
                (n as f64 == counts[row] && n <= width)
                    .then(|| losses[row * width..row * width + n].to_vec())
                    .ok_or_else(|| bad(format!("timestep {}: a count of {n}", row + 1)))
            })
            .collect::<Result<Vec<_>>>()?;
        let fresh = new_sampler(steps)?;
        *sampler.borrow_mut() = fresh
            .with_history(history)
            .map_err(|e| bad(e.to_string()))?;
        Ok(())
    }
}

/// Improved DDPM's sampler over `1..=steps`.
fn new_sampler(steps: usize) -> Result<LossSecondMoment> {
    let (history, uniform) = LossSecondMoment::IMPROVED_DDPM;
    LossSecondMoment::new(steps, history, uniform).map_err(|e| Error::MathIn {
        what: "the timestep sampler".to_string(),
        source: e,
    })
}

/// Classifier-free guidance's label dropout: each of `labels` replaced by `null` with
/// probability `p` (one uniform draw per label when `p > 0`, none otherwise).
pub fn drop_labels(labels: &Tensor, null: i64, p: f64) -> Tensor {
    let labels = labels.to_kind(Kind::Int64);
    if p <= 0.0 {
        return labels;
    }
    let dropped = Tensor::rand(labels.size(), (Kind::Float, labels.device())).lt(p);
    labels.masked_fill(&dropped, null)
}
