//! The one place that puts a model and the training loop together: a model's trainer
//! ([`trainer`]: its identity, its test evaluation and pictures at each epoch's end) and
//! its run ([`fit`]), for a single process or as one process of a data-parallel job.
//! The loop below ([`crate::train`]) never names a model; the sessions above
//! ([`crate::session`]) call this.

use elbo_data::Dataset;
use tch::Tensor;
use tch::nn::VarStore;

use crate::data;
use crate::dist::{Alone, Replicas};
use crate::error::Result;
use crate::eval::{Pictures, TestElbo};
use crate::models::ElboModel;
use crate::train::{Control, Identity, Observer, RunDir, TrainConfig, TrainReport, Trainer};

/// The data of a run.
pub struct TrainData<'a> {
    /// Training examples.
    pub train: &'a Dataset,
    /// Test examples (evaluated at each epoch's end).
    pub test: &'a Dataset,
}

/// How a model's run goes besides the model and the data.
pub struct RunPlan<'a> {
    /// The training settings.
    pub config: &'a TrainConfig,
    /// The run folder.
    pub run: &'a RunDir,
    /// The model's name in what the run reports (`vae-mlp`, `ddpm-mnist`, ...).
    pub label: String,
    /// The processes it runs in ([`Alone`], or a [`crate::dist::Parallel`] job).
    pub replicas: &'a dyn Replicas,
}

/// The standard loop of an ELBO model: its identity from its configuration, test
/// evaluation on `test` (if given) and sample pictures at each epoch's end.
pub fn trainer<'a>(
    model: &'a dyn ElboModel,
    config: TrainConfig,
    run: RunDir,
    label: impl Into<String>,
    test: Option<Tensor>,
) -> Trainer<'a> {
    let model_config = model.config();
    let identity = Identity {
        family: model_config.family().to_string(),
        config: model_config.to_json(),
    };
    let pictures = Pictures::new(model, test.as_ref());
    let mut trainer = Trainer::new(config, run, identity, label);
    if let Some(test) = test {
        trainer = trainer.hook(TestElbo::new(model, test));
    }
    trainer.hook(pictures)
}

/// Trains `model` (whose variables live in `vs`) on `data` as `plan` says, with its own
/// training step and the standard loop ([`trainer`]): test evaluation on the first
/// `config.cadence.eval_examples` test images (by the process that writes the run folder) and
/// pictures at each epoch's end.
pub fn fit(
    model: &dyn ElboModel,
    vs: &mut VarStore,
    data: &TrainData<'_>,
    plan: RunPlan<'_>,
    control: Control<'_>,
    observer: &mut dyn Observer,
) -> Result<TrainReport> {
    let RunPlan {
        config,
        run,
        label,
        replicas,
    } = plan;
    let test = match config.cadence.eval_examples {
        0 => None,
        _ if replicas.rank() != 0 => None,
        n => Some(data::fixed_tensor(
            data.test,
            model.likelihood(),
            Some(n),
            vs.device(),
        )?),
    };
    let step = crate::models::step_for(model, &config.aids)?;
    trainer(model, config.clone(), run.clone(), label, test)
        .replicas(replicas)
        .fit(step.as_ref(), vs, data.train, control, observer)
}

/// [`fit`] in a single process, the model named by its family.
pub fn train(
    model: &dyn ElboModel,
    vs: &mut VarStore,
    data: &TrainData<'_>,
    config: &TrainConfig,
    run: &RunDir,
    control: Control<'_>,
    observer: &mut dyn Observer,
) -> Result<TrainReport> {
    let plan = RunPlan {
        config,
        run,
        label: model.config().family().to_string(),
        replicas: &Alone,
    };
    fit(model, vs, data, plan, control, observer)
}
