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
    /// Learning-rate multipliers of groups of variables, by name prefix (the VDM's
    /// schedule): the loop gives Adam one group per prefix. None by default.
    fn lr_scales(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
    /// Restores [`TrainStep::state`] from a checkpoint's tensors (names without the
    /// prefix); an error if they are missing or do not fit.
    fn restore(&self, _tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

/// What one optimiser step did. The values are tensors on the step's device, read only
/// when they are logged: reading one waits for the device.
pub struct StepOutcome {
    /// The batch's ELBO terms or loss values (for logging; their graph is spent).
    pub reported: Reported,
    /// The step's further metrics values.
    pub extra: Vec<(String, f64)>,
    /// The loss the optimiser saw (the negative mean ELBO unless training aids are on):
    /// a one-element float tensor (the global loss, in a data-parallel job).
    pub loss: Tensor,
    /// The learning rate of the step.
    pub lr: f64,
    /// The global gradient norm before clipping, when clipping or skipping asked for it
    /// (a one-element float tensor).
    pub grad_norm: Option<Tensor>,
    /// 1 when the update was held back (skipped by `aids.skip_grad_norm`, or the run
    /// halted by a non-finite loss, see [`Guard`]), else 0: a one-element float32 tensor
    /// on the device, for the caller's EMA update ([`super::Ema::update`]).
    pub held: Tensor,
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

/// What the device knows of a run's steps, kept there so that no step waits for the
/// host to read it (a read drains a GPU's queue): whether a step's loss was not finite,
/// at which step and with what value, and how many updates `skip_grad_norm` skipped.
/// From the first non-finite loss on every update is held back (weights, Adam's moments
/// and the EMA stay as they were before that step), so that the host can learn of it
/// later, at a logged step or a checkpoint ([`Guard::check`]), and still find nothing
/// changed. In a data-parallel job the global loss is on the host anyway (it is reduced
/// with the stop flag): there a non-finite loss fails the step at once.
pub struct Guard {
    /// 1 from the first non-finite loss on, else 0 (float32).
    halted: Tensor,
    /// The index of the first step with a non-finite loss, or -1 (int64).
    first: Tensor,
    /// The loss at that step (float32).
    value: Tensor,
    /// Updates skipped by `skip_grad_norm` while not halted (int64).
    skipped: Tensor,
}

impl Guard {
    /// A guard on `device` that has seen nothing.
    pub fn new(device: tch::Device) -> Guard {
        Guard {
            halted: Tensor::zeros([], (Kind::Float, device)),
            first: Tensor::full([], -1, (Kind::Int64, device)),
            value: Tensor::zeros([], (Kind::Float, device)),
            skipped: Tensor::zeros([], (Kind::Int64, device)),
        }
    }

    /// Notes the loss of step `index` (a one-element float32 tensor on the guard's
    /// device), on the device.
    fn observe(&mut self, index: u64, loss: &Tensor) {
        tch::no_grad(|| {
            let bad = loss.isfinite().logical_not();
            let newly = bad.logical_and(&self.halted.eq(0.0));
            let _ = self.first.masked_fill_(&newly, index as i64);
            self.value.copy_(&loss.where_self(&newly, &self.value));
            let _ = self.halted.logical_or_(&bad);
        });
    }

    /// The flag that holds this step's update back: halted, or `skip` (a boolean
    /// one-element tensor, counted as a skipped update unless halted).
    fn hold(&mut self, skip: Option<&Tensor>) -> Tensor {
        tch::no_grad(|| match skip {
            None => self.halted.copy(),
            Some(skip) => {
                let counted = skip.logical_and(&self.halted.eq(0.0));
                let _ = self.skipped.g_add_(&counted);
                self.halted.logical_or(skip).to_kind(Kind::Float)
            }
        })
    }

    /// Reads what the device knows: `Err((step, loss))` with the first step (counted
    /// from 1) whose loss was not finite, if any. One wait for the device.
    pub fn check(&self) -> std::result::Result<(), (u64, f64)> {
        if self.halted.double_value(&[]) == 0.0 {
            return Ok(());
        }
        let first = self.first.int64_value(&[]);
        Err((first.max(0) as u64 + 1, self.value.double_value(&[])))
    }

    /// How many updates `skip_grad_norm` skipped (one wait for the device).
    pub fn skipped(&self) -> u64 {
        self.skipped.int64_value(&[]).max(0) as u64
    }
}

/// One optimiser step of `step` on `batch`, the training loop's step `index` (counted
/// from 0): seeds libtorch's generator from (seed, index, rank), computes the loss,
/// back-propagates, hands the gradients to the `replica`'s processes with the loss and
/// the stop flag (nothing to do for a single process, [`Replica::alone`]), clips or skips
/// as `config` says and updates the weights at the scheduled learning rate. The EMA, if
/// any, is the caller's (with [`StepOutcome::held`]). Nothing here waits for the device
/// in a single process: a non-finite loss is noted by the `guard`, which holds every
/// update back from then on, and the caller learns of it from [`Guard::check`]. In a
/// data-parallel job a non-finite global loss fails before anything is updated.
pub fn optimise(
    step: &dyn TrainStep,
    adam: &mut Adam,
    batch: &Batch,
    config: &TrainConfig,
    index: u64,
    replica: &Replica<'_>,
    guard: &mut Guard,
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
    let (loss, stop) = if replica.replicas.size() > 1 {
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
        (Tensor::from(loss_value), stop > 0.0)
    } else {
        let loss = loss.detach();
        guard.observe(index, &loss);
        (loss, replica.stop_requested)
    };
    let grad_norm = match (config.clip_grad_norm, config.aids.skip_grad_norm) {
        (None, None) => None,
        (clip, _) => Some(adam.clip_grad_norm(clip.unwrap_or(f64::INFINITY))),
    };
    // Skipped unless the norm is finite and within the limit (NaN compares false).
    let skip = match (&grad_norm, config.aids.skip_grad_norm) {
        (Some(norm), Some(limit)) => Some(norm.le(limit).logical_not()),
        _ => None,
    };
    let held = guard.hold(skip.as_ref());
    let lr = config.lr_at(index);
    adam.step_unless(lr, Some(&held));
    Ok(StepOutcome {
        reported,
        extra,
        loss,
        lr,
        grad_norm,
        held,
        stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{Ema, optim::Adam};
    use tch::nn::{self, Module, VarStore};
    use tch::{Device, Kind};

    /// A least-squares step on a linear map whose loss is NaN at the steps in `bad`.
    struct Linear {
        net: nn::Linear,
        bad: Vec<u64>,
    }

    impl TrainStep for Linear {
        fn transform(&self, horizontal_flip: bool) -> Transform {
            Transform {
                horizontal_flip,
                ..Transform::default()
            }
        }

        fn loss(&self, batch: &Batch, step: u64) -> StepLoss {
            let mut loss = self.net.forward(&batch.x).square().mean(Kind::Float);
            if self.bad.contains(&step) {
                loss *= f64::NAN;
            }
            StepLoss {
                reported: Reported::Scalars(vec![("loss".into(), loss.detach())]),
                loss,
                extra: Vec::new(),
            }
        }
    }

    /// Runs `steps` steps from the same start; returns the weights, Adam's state, the
    /// EMA's state, the guard and the outcomes' held flags.
    fn run(
        bad: &[u64],
        steps: u64,
        config: &TrainConfig,
        fused: bool,
    ) -> (Vec<(String, Tensor)>, Guard, Vec<f64>) {
        let vs = VarStore::new(Device::Cpu);
        let net = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        tch::no_grad(|| {
            let values = Tensor::arange(8, (Kind::Float, Device::Cpu)).g_mul_scalar(0.1);
            net.ws
                .shallow_clone()
                .copy_(&values.narrow(0, 0, 6).reshape([2, 3]));
            net.bs
                .as_ref()
                .unwrap()
                .shallow_clone()
                .copy_(&values.narrow(0, 6, 2));
        });
        let step = Linear {
            net,
            bad: bad.to_vec(),
        };
        let batch = Batch {
            x: Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([4, 3]) - 5.0,
            labels: Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
        };
        let mut adam = Adam::new(&vs, config.adam);
        adam.set_fused(fused);
        let mut ema = Ema::new(&vs);
        let mut guard = Guard::new(Device::Cpu);
        let mut held = Vec::new();
        for index in 0..steps {
            let outcome = optimise(
                &step,
                &mut adam,
                &batch,
                config,
                index,
                &Replica::alone(),
                &mut guard,
            )
            .unwrap_or_else(|_| panic!("step {index} fails only in a parallel job"));
            ema.update(&vs, 0.9, Some(&outcome.held));
            held.push(outcome.held.double_value(&[]));
        }
        let state = super::super::state_tensors(&vs, &adam, Some(&ema))
            .into_iter()
            .map(|(name, t)| (name, t.copy()))
            .collect();
        (state, guard, held)
    }

    fn config() -> TrainConfig {
        TrainConfig {
            lr: 0.05,
            ..TrainConfig::default()
        }
    }

    /// A NaN loss at step 3 (index 2) is noted on the device and read later: the guard
    /// names step 3, and after five steps the weights, Adam's moments and the EMA are
    /// exactly those after two (nothing updated from the bad step on, though the later
    /// losses were finite), fused or not.
    #[test]
    fn a_non_finite_loss_holds_every_later_update_and_is_named_when_read() {
        let _generator = crate::testing::generator_lock();
        for fused in [true, false] {
            let (two, clean, _) = run(&[], 2, &config(), fused);
            assert_eq!(clean.check(), Ok(()));
            let (five, guard, held) = run(&[2], 5, &config(), fused);
            let (step, value) = guard.check().unwrap_err();
            assert_eq!(step, 3, "fused {fused}");
            assert!(value.is_nan());
            assert_eq!(held, [0.0, 0.0, 1.0, 1.0, 1.0]);
            for ((name, a), (_, b)) in two.iter().zip(&five) {
                assert!(
                    a.equal(b),
                    "{name} changed after the bad step (fused {fused})"
                );
            }
            // A later bad step does not overwrite the first.
            let (_, guard, _) = run(&[1, 3], 5, &config(), fused);
            assert_eq!(guard.check().unwrap_err().0, 2);
        }
    }

    /// Gradient skipping decided on the device: every update skipped at a tiny limit
    /// (counted, weights as they started), none at a huge one (the same weights as
    /// without skipping), and a halted step is not counted as a skip.
    #[test]
    fn skipping_is_decided_and_counted_on_the_device() {
        let _generator = crate::testing::generator_lock();
        let with_limit = |limit: f64| {
            let mut config = config();
            config.aids.skip_grad_norm = Some(limit);
            config
        };
        let (start, _, _) = run(&[], 0, &config(), true);
        let (skipped, guard, held) = run(&[], 4, &with_limit(1e-9), true);
        assert_eq!(guard.skipped(), 4);
        assert_eq!(held, [1.0; 4]);
        for ((name, a), (_, b)) in start.iter().zip(&skipped) {
            if !name.starts_with("adam.") {
                assert!(a.equal(b), "{name} moved though every update was skipped");
            }
        }
        let (free, guard, _) = run(&[], 4, &with_limit(1e9), true);
        assert_eq!(guard.skipped(), 0);
        let (plain, _, _) = run(&[], 4, &config(), true);
        for ((name, a), (_, b)) in plain.iter().zip(&free) {
            assert!(a.equal(b), "{name}");
        }
        let (_, guard, _) = run(&[1], 4, &with_limit(1e-9), true);
        assert_eq!(guard.skipped(), 1, "only the step before the halt counts");
    }
}
