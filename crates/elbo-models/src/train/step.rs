//! One optimiser step, and what a model brings to it: a [`TrainStep`] owns the loss of a
//! batch and what is reported of it; [`optimise`] owns everything else (seeding, the
//! backward pass, the gradient hook, clipping or skipping, the Adam update).

use std::collections::BTreeMap;

use elbo_data::Transform;
use tch::{Kind, Tensor};

use super::config::TrainConfig;
use super::optim::Adam;
use super::state::rank_step_seed;
use crate::dist::Replica;
use crate::error::Result;
use crate::terms::ElboTerms;

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
    /// What the step carries from one step to the next (an importance sampler's loss
    /// history), saved with every checkpoint (under the prefix `step.`) so that a resume
    /// continues the same run. None by default.
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// The KL training aids this step applies (the ELBO step's); `None` by default. The
    /// loop refuses a configuration whose KL aids the step would not apply.
    fn kl_aids(&self) -> Option<super::aids::TrainingAids> {
        None
    }
    /// Called after the loss's backward pass, before the gradients are reduced or
    /// used: a step may add gradients of its own here (the VDM's variance-minimising
    /// gradient of its schedule's shape). Nothing by default.
    fn after_backward(&self) {}
    /// Restores [`TrainStep::state`] from a checkpoint's tensors (names without the
    /// prefix); an error if they are missing or do not fit.
    fn restore(&self, _tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
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
    /// Whether any process asked to stop (the same answer in every process).
    pub stop: bool,
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
/// from 0): seeds libtorch's generator from (seed, index, rank), computes the loss,
/// back-propagates, hands the gradients to the `replica`'s processes with the loss and
/// the stop flag (nothing to do for a single process, [`Replica::alone`]), clips or skips
/// as `config` says and updates the weights at the scheduled learning rate. The EMA, if
/// any, is the caller's. A non-finite loss (the global one, in a data-parallel job)
/// fails before anything is updated.
pub fn optimise(
    step: &dyn TrainStep,
    adam: &mut Adam,
    batch: &Batch,
    config: &TrainConfig,
    index: u64,
    replica: &Replica<'_>,
) -> std::result::Result<StepOutcome, StepFailure> {
    tch::manual_seed(rank_step_seed(config.seed, index, replica.replicas.rank()));
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
    // Every process takes part in the reduction, whatever its own loss: the decision to
    // stop on a non-finite loss is taken on the global one.
    adam.zero_grad();
    loss.backward();
    step.after_backward();
    let mut shared = [
        loss.double_value(&[]) * replica.share,
        f64::from(u8::from(replica.stop_requested)),
    ];
    replica
        .replicas
        .reduce(adam.params(), replica.share, &mut shared)
        .map_err(StepFailure::Sync)?;
    let [loss_value, stop] = shared;
    if !loss_value.is_finite() {
        return Err(StepFailure::NonFinite(loss_value));
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
        stop: stop > 0.0,
    })
}
