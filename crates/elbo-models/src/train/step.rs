//! One optimiser step, and what a model brings to it: a [`TrainStep`] owns the loss of a
//! batch and what is reported of it; [`optimise`] owns everything else (seeding, the
//! backward pass, the gradient hook, clipping or skipping, the Adam update).

use elbo_data::Transform;
use tch::{Kind, Tensor};

use super::aids::TrainingAids;
use super::config::TrainConfig;
use super::optim::Adam;
use super::state::step_seed;
use crate::data;
use crate::error::Result;
use crate::models::{ElboModel, ElboTerms};

/// A training batch: images in the step's input scale, and their labels.
pub struct Batch {
    /// Images, (batch, C, H, W), transformed as [`TrainStep::transform`] says.
    pub x: Tensor,
    /// Labels, (batch,), int64.
    pub labels: Tensor,
}

/// What a batch's loss reports besides the loss itself.
pub enum Reported {
    /// The ELBO terms (models trained on their ELBO).
    Elbo(ElboTerms),
    /// Named scalars (a DDPM's `l_simple`, a classifier's cross-entropy).
    Scalars(Vec<(String, Tensor)>),
}

impl Reported {
    /// The batch means by name, as written to metrics.
    pub fn means(&self) -> Vec<(String, f64)> {
        match self {
            Reported::Elbo(terms) => terms.means(),
            Reported::Scalars(values) => values
                .iter()
                .map(|(name, t)| (name.clone(), t.double_value(&[])))
                .collect(),
        }
    }
}

/// The loss of one batch.
pub struct StepLoss {
    /// The scalar to minimise.
    pub loss: Tensor,
    /// What to report of the batch (detached or not: only read).
    pub reported: Reported,
    /// Further values for the step's metrics line (a KL warm-up's weight).
    pub extra: Vec<(String, f64)>,
}

/// What a model brings to the training loop: the transform of its training images and
/// the loss of a batch. Everything else (data order, seeding, schedule, clipping, EMA,
/// checkpoints, metrics) is the loop's.
pub trait TrainStep {
    /// The pixel transform of training images (`horizontal_flip`: the run asks for
    /// random flips).
    fn transform(&self, horizontal_flip: bool) -> Transform;
    /// The loss of `batch` at step `step` (counted from 0). Draws from libtorch's
    /// generator, which [`optimise`] has seeded from (seed, step).
    fn loss(&self, batch: &Batch, step: u64) -> StepLoss;
}

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

impl TrainStep for ElboStep<'_> {
    fn transform(&self, horizontal_flip: bool) -> Transform {
        data::transform_for(self.model.likelihood(), horizontal_flip)
    }

    fn loss(&self, batch: &Batch, step: u64) -> StepLoss {
        let terms = self.model.elbo_terms(&batch.x);
        let loss = self.aids.loss(&terms, step);
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

/// The seam between the backward pass and the optimiser step: what data-parallel
/// training plugs in to reduce the gradients across processes.
pub trait GradientSync {
    /// Makes every gradient of `params` (those that have one) the same in every process:
    /// their mean over the processes.
    fn reduce(&self, params: &[Tensor]) -> Result<()>;
}

/// What one optimiser step did.
pub struct StepOutcome {
    /// The batch's ELBO terms or loss values (for logging; their graph is spent).
    pub reported: Reported,
    /// The step's further metrics values.
    pub extra: Vec<(String, f64)>,
    /// The loss the optimiser saw (the negative mean ELBO unless training aids are on).
    pub loss: f64,
    /// The learning rate of the step.
    pub lr: f64,
    /// The global gradient norm before clipping, when clipping or skipping asked for it.
    pub grad_norm: Option<f64>,
    /// Whether the update was skipped (`aids.skip_grad_norm`).
    pub skipped: bool,
}

/// Why a step was not taken.
#[derive(Debug)]
pub enum StepFailure {
    /// The loss was NaN or infinite (nothing was updated).
    NonFinite(f64),
    /// The gradient reduction failed.
    Sync(crate::Error),
}

/// One optimiser step of `step` on `batch`, the training loop's step `index` (counted
/// from 0): seeds libtorch's generator from (seed, index), computes the loss,
/// back-propagates, hands the gradients to `sync` (if any), clips or skips as `config`
/// says and updates the weights at the scheduled learning rate. The EMA, if any, is the
/// caller's. A non-finite loss fails before anything is updated.
pub fn optimise(
    step: &dyn TrainStep,
    adam: &mut Adam,
    batch: &Batch,
    config: &TrainConfig,
    index: u64,
    sync: Option<&dyn GradientSync>,
) -> std::result::Result<StepOutcome, StepFailure> {
    tch::manual_seed(step_seed(config.seed, index));
    let forward = || step.loss(batch, index);
    // The trainer checks that the device is CUDA and sets the autocast dtype to bf16.
    let StepLoss {
        loss,
        reported,
        extra,
    } = if config.autocast_bf16 {
        tch::autocast(true, forward)
    } else {
        forward()
    };
    let loss = loss.to_kind(Kind::Float);
    let loss_value = loss.double_value(&[]);
    if !loss_value.is_finite() {
        return Err(StepFailure::NonFinite(loss_value));
    }
    adam.zero_grad();
    loss.backward();
    if let Some(sync) = sync {
        sync.reduce(adam.params()).map_err(StepFailure::Sync)?;
    }
    let grad_norm = match (config.clip_grad_norm, config.aids.skip_grad_norm) {
        (None, None) => None,
        (clip, _) => Some(adam.clip_grad_norm(clip.unwrap_or(f64::INFINITY))),
    };
    let skipped = grad_norm.is_some_and(|norm| config.aids.skips(norm));
    let lr = config.lr_at(index);
    if skipped {
        adam.skip_step();
    } else {
        adam.step(lr);
    }
    Ok(StepOutcome {
        reported,
        extra,
        loss: loss_value,
        lr,
        grad_norm,
        skipped,
    })
}
