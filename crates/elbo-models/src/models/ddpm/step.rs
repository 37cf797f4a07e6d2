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
        let at = At {
            x,
            x_t: &x_t,
            t: &t,
            eps: &eps,
            output: &output,
        };
        let (loss, reported) = match self.config.loss {
            LossKind::Simple => {
                let loss = at.simple(d);
                let reported = vec![("l_simple".to_string(), loss.detach())];
                (loss, reported)
            }
            LossKind::Vlb => {
                let term = at.vlb_term(d, &output);
                let loss = match (&weights, sampler) {
                    (Some(w), Some(sampler)) => {
                        record_losses(&mut sampler.borrow_mut(), &t, &term);
                        (term * w).mean(Kind::Float)
                    }
                    _ => term.mean(Kind::Float),
                };
                let reported = vec![("vlb_term_per_dim".to_string(), loss.detach())];
                (loss, reported)
            }
            LossKind::Hybrid => {
                let (loss, simple, term) = at.hybrid(d, self.config.hybrid_weight());
                let reported = vec![
                    ("l_simple".to_string(), simple.detach()),
                    ("vlb_term_per_dim".to_string(), term.detach()),
                ];
                (loss, reported)
            }
        };
        StepLoss {
            reported: Reported::Scalars(reported),
            loss,
            extra: Vec::new(),
        }
    }
}

/// A training batch's draws and the network's output there: what each loss is made of.
struct At<'a> {
    x: &'a Tensor,
    x_t: &'a Tensor,
    t: &'a Tensor,
    eps: &'a Tensor,
    output: &'a Tensor,
}

impl At<'_> {
    /// `L_simple`: the mean squared error of the output's mean part against its target.
    fn simple(&self, d: &super::Diffusion) -> Tensor {
        (d.mean_output(self.output, self.x_t) - d.target(self.x, self.t, self.eps))
            .square()
            .mean(Kind::Float)
    }

    /// The bound's term per example (nats per dimension): its mean from the output
    /// `for_mean`, its variance from the live output (learned or fixed).
    fn vlb_term(&self, d: &super::Diffusion, for_mean: &Tensor) -> Tensor {
        let dims = (self.x.numel() as i64 / self.x.size()[0].max(1)) as f64;
        let (x0_hat, _) = d.predictions(for_mean, self.x_t, self.t, ClipX0::None);
        let log_var = d.model_log_var(self.t, self.x_t, self.output);
        bound::term(
            d,
            self.x,
            self.x_t,
            self.t,
            &x0_hat,
            &log_var,
            Decoder::Discretized,
        ) / dims
    }

    /// Improved DDPM's hybrid loss `L_simple + λ L_vlb`: the bound's term with the mean
    /// from the detached output (its gradient reaches the variances only), as T times
    /// the term in bits per dimension (improved-diffusion's scaling). The loss, and its
    /// two parts (`L_simple`, the term in nats per dimension).
    fn hybrid(&self, d: &super::Diffusion, weight: f64) -> (Tensor, Tensor, Tensor) {
        let simple = self.simple(d);
        let term = self.vlb_term(d, &self.output.detach()).mean(Kind::Float);
        let scale = weight * d.timesteps() as f64 / std::f64::consts::LN_2;
        (&simple + &term * scale, simple, term)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ddpm::{Diffusion, Objective, ScheduleKind, VarianceKind};
    use tch::Device;

    /// The hybrid loss is `L_simple + λ T term / ln 2`, and its term's gradient reaches
    /// the variance channels only: on the mean channels the gradient is `L_simple`'s.
    #[test]
    fn the_hybrid_loss_trains_the_mean_by_l_simple_alone() {
        let _generator = crate::testing::generator_lock();
        let d = Diffusion::new(
            ScheduleKind::Linear.build(100).unwrap(),
            Objective::Eps,
            VarianceKind::LearnedRange,
            Device::Cpu,
        )
        .unwrap();
        tch::manual_seed(9);
        let x = Tensor::rand([3, 2, 4, 4], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let t = Tensor::from_slice(&[1i64, 40, 99]);
        let eps = x.randn_like();
        let x_t = d.q_sample(&x, &t, &eps);
        let leaf = || {
            (Tensor::randn([3, 4, 4, 4], (Kind::Float, Device::Cpu)) * 0.5)
                .detach()
                .set_requires_grad(true)
        };
        tch::manual_seed(10);
        let output = leaf();
        let at = At {
            x: &x,
            x_t: &x_t,
            t: &t,
            eps: &eps,
            output: &output,
        };
        let (loss, simple, term) = at.hybrid(&d, 0.001);
        let expected =
            simple.double_value(&[]) + 0.001 * 100.0 * term.double_value(&[]) / 2f64.ln();
        assert!((loss.double_value(&[]) - expected).abs() < 1e-5 * expected.abs());
        let hybrid_grad = Tensor::run_backward(&[&loss], &[&output], false, false).remove(0);
        tch::manual_seed(10);
        let same = leaf();
        let at = At {
            output: &same,
            ..at
        };
        let simple_grad = Tensor::run_backward(&[&at.simple(&d)], &[&same], false, false).remove(0);
        let gap = (hybrid_grad.narrow(1, 0, 2) - simple_grad.narrow(1, 0, 2))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(gap, 0.0, "the mean channels see L_simple's gradient only");
        let variance_grad = hybrid_grad.narrow(1, 2, 2).abs().max().double_value(&[]);
        assert!(variance_grad > 0.0, "the variance channels are trained");
        assert_eq!(
            simple_grad.narrow(1, 2, 2).abs().max().double_value(&[]),
            0.0
        );
    }
}
