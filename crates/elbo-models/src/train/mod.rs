//! The training loop every model shares: minibatches, Adam(W) with warm-up and decay,
//! gradient clipping, EMA, checkpoints, metrics, sample grids, resume and interruption.
//!
//! Reproducibility: every random draw is a function of (seed, step). The data order and
//! the pixel transforms come from elbo-data, keyed by (seed, epoch, example); the
//! model's own noise (reparameterisation) comes from libtorch's generator, re-seeded
//! from (seed, step) before each step. So training 2n steps and training n, stopping,
//! resuming and training n more give the same weights, bit for bit, on the CPU.

pub mod aids;
pub mod checkpoint;
pub mod optim;

use std::collections::BTreeMap;
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use elbo_data::{Batching, Dataset, EpochSeed, Loader, LoaderConfig};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn::VarStore};

use crate::data;
use crate::error::{Error, Result};
use crate::eval;
use crate::eval::image;
use crate::models::{ElboModel, ElboTerms};
use crate::nn::likelihood::Likelihood;
use aids::TrainingAids;
use checkpoint::CheckpointMeta;
use optim::{Adam, AdamConfig};

/// How the learning rate changes after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LrDecay {
    /// Constant.
    #[default]
    Constant,
    /// Cosine from the peak down to `final_fraction` of it at the last step.
    Cosine {
        /// The last step's learning rate as a fraction of the peak.
        final_fraction: f64,
    },
}

/// Everything about a training run that is not the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimiser steps in all.
    pub steps: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up from 0 to the peak.
    pub warmup_steps: u64,
    /// After warm-up.
    pub decay: LrDecay,
    /// Adam's moments and weight decay.
    pub adam: AdamConfigSerde,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay.
    pub ema_decay: Option<f64>,
    /// The run's seed: initialisation, data order, transforms, model noise.
    pub seed: u64,
    /// Write a checkpoint every this many steps (and always at the end).
    pub checkpoint_every: u64,
    /// How many checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Evaluate on at most this many test examples at each epoch's end (0: never).
    pub eval_examples: usize,
    /// Random horizontal flips of training images (CIFAR-10).
    pub horizontal_flip: bool,
    /// The data set, as named on the command line (recorded so that evaluation finds
    /// the same test split).
    pub data: String,
    /// KL warm-up, free bits and gradient skipping (all off by default): they change
    /// the loss and the updates, never the reported ELBO.
    #[serde(default)]
    pub aids: TrainingAids,
    /// Run each step's forward pass under CUDA autocast in bfloat16 (weights, Adam and
    /// the loss's reduction stay fp32). CUDA only: refused on the CPU.
    #[serde(default)]
    pub autocast_bf16: bool,
}

/// [`AdamConfig`] as it is written in run configurations.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfigSerde {
    /// See [`AdamConfig::beta1`].
    pub beta1: f64,
    /// See [`AdamConfig::beta2`].
    pub beta2: f64,
    /// See [`AdamConfig::eps`].
    pub eps: f64,
    /// See [`AdamConfig::weight_decay`].
    pub weight_decay: f64,
}

impl From<AdamConfigSerde> for AdamConfig {
    fn from(c: AdamConfigSerde) -> AdamConfig {
        AdamConfig {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
        }
    }
}

impl Default for TrainConfig {
    /// pytorch/examples' VAE settings: Adam at 1e-3, batch 128; 10 epochs of the
    /// bundled 9,000-image sample (710 steps).
    fn default() -> Self {
        let adam = AdamConfig::default();
        TrainConfig {
            steps: 710,
            batch_size: 128,
            lr: 1e-3,
            warmup_steps: 0,
            decay: LrDecay::Constant,
            adam: AdamConfigSerde {
                beta1: adam.beta1,
                beta2: adam.beta2,
                eps: adam.eps,
                weight_decay: adam.weight_decay,
            },
            clip_grad_norm: None,
            ema_decay: None,
            seed: 0,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            log_every: 10,
            eval_examples: 1000,
            horizontal_flip: false,
            data: "mnist-sample".to_string(),
            aids: TrainingAids::default(),
            autocast_bf16: false,
        }
    }
}

impl TrainConfig {
    /// The learning rate at `step` (counted from 0).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            LrDecay::Constant => self.lr,
            LrDecay::Cosine { final_fraction } => {
                let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.lr * (final_fraction + (1.0 - final_fraction) * cosine)
            }
        }
    }

    /// Checks the values that would make a run fail later.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(Error::Config { detail });
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1, found 0".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be positive and finite, found {}", self.lr));
        }
        if let Some(d) = self.ema_decay
            && !(0.0..1.0).contains(&d)
        {
            return bad(format!("ema_decay must be in [0, 1), found {d}"));
        }
        if let Some(c) = self.clip_grad_norm
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("clip_grad_norm must be positive, found {c}"));
        }
        self.aids.validate()
    }
}

/// The data of a run.
pub struct TrainData<'a> {
    /// Training examples.
    pub train: &'a Dataset,
    /// Test examples (evaluated at each epoch's end).
    pub test: &'a Dataset,
}

/// What the loop reports as it goes (for a progress bar or log lines).
#[derive(Clone, Debug)]
pub struct Progress {
    /// The step just taken (counted from 1).
    pub step: u64,
    /// Steps in all.
    pub steps: u64,
    /// The epoch (counted from 0).
    pub epoch: u64,
    /// The batch means of the ELBO terms.
    pub terms: Vec<(String, f64)>,
    /// Steps per second since the (re)start.
    pub steps_per_second: f64,
    /// A test-set evaluation made at this step (at an epoch's end), if any.
    pub test_elbo: Option<f64>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Finished {
    /// All steps were taken.
    Completed,
    /// The stop flag was raised; the checkpoint written is named.
    Interrupted {
        /// The step the run stopped after.
        step: u64,
    },
}

/// The outcome of [`train`].
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// How it ended.
    pub finished: Finished,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// Steps taken in this call.
    pub steps_taken: u64,
}

/// A run folder: `config.json`, `checkpoints/`, `metrics.jsonl`, `samples/`.
pub struct RunDir {
    /// The folder.
    pub root: PathBuf,
}

impl RunDir {
    /// The run folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }
    /// Where checkpoints go.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// The metrics log.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// Where sample grids go.
    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }
}

/// How a call to [`train`] starts and stops.
#[derive(Clone, Copy, Debug)]
pub struct Control<'a> {
    /// Continue from the newest checkpoint of the run folder (refused if it belongs to
    /// another model or configuration) instead of starting a new run.
    pub resume: bool,
    /// Raised (by a Ctrl-C handler, say) to end the run after the current step with a
    /// checkpoint.
    pub stop: &'a AtomicBool,
}

/// The seed of libtorch's generator for step `step` of a run seeded `seed` (SplitMix64
/// of the pair, so neighbouring steps get unrelated streams).
pub fn step_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as i64 & i64::MAX
}

/// Trains `model` (whose variables live in `vs`) on `data`, writing into `run`, started
/// and stopped as `control` says; `observer` sees the progress at every logged step.
///
/// libtorch's random generator is process-global: two trainings running at once in
/// one process draw from the same stream and are then not reproducible.
pub fn train(
    model: &dyn ElboModel,
    vs: &mut VarStore,
    data: &TrainData<'_>,
    config: &TrainConfig,
    run: &RunDir,
    control: Control<'_>,
    observer: &mut dyn FnMut(&Progress),
) -> Result<TrainReport> {
    let Control { resume, stop } = control;
    let likelihood = model.likelihood();
    config.validate()?;
    let device = vs.device();
    if config.autocast_bf16 {
        if !device.is_cuda() {
            return Err(Error::Config {
                detail: format!(
                    "bf16 autocast runs on CUDA only, and this run is on {device:?}: drop \
                     --autocast or pass --device cuda"
                ),
            });
        }
        crate::sys::ffi::set_cuda_autocast_bf16().map_err(|detail| Error::Config { detail })?;
    }
    let batching = Batching {
        batch_size: NonZeroUsize::new(config.batch_size).unwrap_or(NonZeroUsize::MIN),
        drop_last: false,
    };
    let loader = Loader::new(
        data.train,
        LoaderConfig {
            batching,
            shuffle: true,
            seed: config.seed,
            transform: data::transform_for(likelihood, config.horizontal_flip),
        },
    );
    let steps_per_epoch = loader.batches_per_epoch().max(1) as u64;
    let mut adam = Adam::new(vs, config.adam.into());
    let mut ema = config.ema_decay.map(|_| Ema::new(vs));

    let meta_template = CheckpointMeta {
        format: checkpoint::FORMAT,
        elbo_version: env!("CARGO_PKG_VERSION").to_string(),
        model: model.family().to_string(),
        model_config: model.config_json(),
        train_config: serde_json::to_value(config).unwrap_or_default(),
        step: 0,
        seed: config.seed,
        tensors: String::new(),
    };
    let existing = checkpoint::list(&run.checkpoints())?;
    let mut step = 0;
    if resume {
        let loaded = checkpoint::load(&run.checkpoints())?;
        loaded
            .meta
            .check_compatible(model.family(), &meta_template.model_config)?;
        if loaded.meta.seed != config.seed {
            return Err(Error::Checkpoint {
                detail: format!(
                    "it was trained with seed {}, this run asks for seed {}",
                    loaded.meta.seed, config.seed
                ),
            });
        }
        restore(
            vs,
            &mut adam,
            ema.as_mut(),
            &loaded.tensors,
            loaded.meta.step,
        )?;
        step = loaded.meta.step;
        truncate_metrics(&run.metrics(), step)?;
    } else if let Some(last) = existing.last() {
        return Err(Error::Config {
            detail: format!(
                "the run folder {} already holds a run (checkpoint {}): pass --resume to \
                 continue it, or choose another run folder",
                run.root.display(),
                last.display()
            ),
        });
    } else {
        std::fs::create_dir_all(&run.root)?;
        checkpoint::write_atomically(&run.root.join("config.json"), |temp| {
            let value = serde_json::json!({
                "model": meta_template.model,
                "model_config": meta_template.model_config,
                "train_config": meta_template.train_config,
            });
            std::fs::write(
                temp,
                serde_json::to_string_pretty(&value).unwrap_or_default(),
            )?;
            Ok(())
        })?;
    }

    let save = |step: u64, adam: &Adam, ema: Option<&Ema>, vs: &VarStore| -> Result<PathBuf> {
        let mut meta = meta_template.clone();
        meta.step = step;
        checkpoint::save(
            &run.checkpoints(),
            meta,
            &state_tensors(vs, adam, ema),
            config.keep_checkpoints,
        )
    };

    let test_set = if config.eval_examples > 0 {
        Some(data::fixed_tensor(
            data.test,
            likelihood,
            Some(config.eval_examples),
            device,
        )?)
    } else {
        None
    };
    let start = step;
    let started = Instant::now();
    let mut last_checkpoint = None;
    let mut order_epoch = u64::MAX;
    let mut order = loader.order(0);
    let mut metrics = MetricsLog::open(&run.metrics())?;
    let mut skipped = 0u64;
    while step < config.steps {
        let epoch = step / steps_per_epoch;
        let index = (step % steps_per_epoch) as usize;
        if epoch != order_epoch {
            order = loader.order(epoch);
            order_epoch = epoch;
        }
        let Some(indices) = order.batches(batching).nth(index) else {
            break;
        };
        let images = loader
            .config()
            .transform
            .apply(
                data.train,
                indices,
                EpochSeed {
                    seed: config.seed,
                    epoch,
                },
            )
            .map_err(|e| Error::Config {
                detail: format!("training data: {e}"),
            })?;
        let x = data::to_tensor(&images, device);

        let outcome =
            optimise(model, &mut adam, &x, config, step).map_err(|value| Error::NonFiniteLoss {
                step: step + 1,
                value,
                last_checkpoint: last_checkpoint
                    .clone()
                    .or_else(|| checkpoint::list(&run.checkpoints()).ok()?.pop()),
            })?;
        skipped += u64::from(outcome.skipped);
        if let (false, Some(ema), Some(decay)) = (outcome.skipped, ema.as_mut(), config.ema_decay) {
            ema.update(vs, decay);
        }
        step += 1;

        let epoch_end = step % steps_per_epoch == 0 || step == config.steps;
        let log_now = step % config.log_every.max(1) == 0 || epoch_end;
        let mut test_elbo = None;
        if epoch_end {
            if let Some(test) = &test_set {
                let value = tch::no_grad(|| mean_elbo(model, test, 500));
                test_elbo = Some(value);
                let mut line = serde_json::json!({
                    "kind": "epoch", "step": step, "epoch": epoch + 1, "test_elbo": value,
                });
                let active = eval::active_units(model, test, 500);
                if !active.is_empty() {
                    line["active_units"] = eval::active_units_json(&active);
                }
                metrics.write(&line)?;
            }
            write_pictures(model, likelihood, run, epoch + 1, test_set.as_ref())?;
        }
        if log_now {
            let mut line = serde_json::json!({
                "kind": "step", "step": step, "epoch": epoch, "loss": outcome.loss, "lr": outcome.lr,
            });
            for (name, value) in outcome.reported.means() {
                line[name] = value.into();
            }
            if let Some(norm) = outcome.grad_norm {
                line["grad_norm"] = norm.into();
            }
            if config.aids.kl_warmup_steps > 0 {
                line["kl_weight"] = config.aids.kl_weight(step - 1).into();
            }
            if config.aids.skip_grad_norm.is_some() {
                line["skipped_updates"] = skipped.into();
            }
            metrics.write(&line)?;
            let elapsed = started.elapsed().as_secs_f64().max(1e-9);
            observer(&Progress {
                step,
                steps: config.steps,
                epoch,
                terms: outcome.reported.means(),
                steps_per_second: (step - start) as f64 / elapsed,
                test_elbo,
            });
        }
        if step % config.checkpoint_every.max(1) == 0 || step == config.steps {
            last_checkpoint = Some(save(step, &adam, ema.as_ref(), vs)?);
        }
        if stop.load(Ordering::SeqCst) && step < config.steps {
            let path = match &last_checkpoint {
                Some(p) if p.ends_with(format!("step-{step:09}.json")) => p.clone(),
                _ => save(step, &adam, ema.as_ref(), vs)?,
            };
            return Ok(TrainReport {
                finished: Finished::Interrupted { step },
                checkpoint: path,
                steps_taken: step - start,
            });
        }
    }
    let checkpoint = match last_checkpoint {
        Some(p) => p,
        None => save(step, &adam, ema.as_ref(), vs)?,
    };
    Ok(TrainReport {
        finished: Finished::Completed,
        checkpoint,
        steps_taken: step - start,
    })
}

/// What a step reports about its batch.
pub enum Reported {
    /// The ELBO terms (models trained on their ELBO).
    Elbo(ElboTerms),
    /// The named scalars of a [`crate::models::TrainingLoss`] (a DDPM's `L_simple`).
    Loss(Vec<(String, Tensor)>),
}

impl Reported {
    /// The batch means by name, as written to metrics.
    pub fn means(&self) -> Vec<(String, f64)> {
        match self {
            Reported::Elbo(terms) => terms.means(),
            Reported::Loss(values) => values
                .iter()
                .map(|(name, t)| (name.clone(), t.double_value(&[])))
                .collect(),
        }
    }
}

/// What one optimiser step did.
pub struct StepOutcome {
    /// The batch's ELBO terms or loss values (for logging; their graph is spent).
    pub reported: Reported,
    /// The loss the optimiser saw (the negative mean ELBO unless training aids are on).
    pub loss: f64,
    /// The learning rate of the step.
    pub lr: f64,
    /// The global gradient norm before clipping, when clipping or skipping asked for it.
    pub grad_norm: Option<f64>,
    /// Whether the update was skipped (`aids.skip_grad_norm`).
    pub skipped: bool,
}

/// One optimiser step of `model` on the batch `x`, the training loop's step `step`
/// (counted from 0): seeds libtorch's generator from (seed, step), computes the loss,
/// back-propagates, clips or skips as `config` says and updates the weights at the
/// scheduled learning rate. The EMA, if any, is the caller's.
///
/// A non-finite loss is returned as `Err(loss)` before anything is updated.
pub fn optimise(
    model: &dyn ElboModel,
    adam: &mut Adam,
    x: &Tensor,
    config: &TrainConfig,
    step: u64,
) -> std::result::Result<StepOutcome, f64> {
    tch::manual_seed(step_seed(config.seed, step));
    let forward = || match model.training_loss(x) {
        Some(own) => (own.loss, Reported::Loss(own.reported)),
        None => {
            let terms = model.elbo_terms(x);
            (config.aids.loss(&terms, step), Reported::Elbo(terms))
        }
    };
    // `train` checks that the device is CUDA and sets the autocast dtype to bf16.
    let (loss, reported) = if config.autocast_bf16 {
        tch::autocast(true, forward)
    } else {
        forward()
    };
    let loss = loss.to_kind(Kind::Float);
    let loss_value = loss.double_value(&[]);
    if !loss_value.is_finite() {
        return Err(loss_value);
    }
    adam.zero_grad();
    loss.backward();
    let grad_norm = match (config.clip_grad_norm, config.aids.skip_grad_norm) {
        (None, None) => None,
        (clip, _) => Some(adam.clip_grad_norm(clip.unwrap_or(f64::INFINITY))),
    };
    let skipped = grad_norm.is_some_and(|norm| config.aids.skips(norm));
    let lr = config.lr_at(step);
    if skipped {
        adam.skip_step();
    } else {
        adam.step(lr);
    }
    Ok(StepOutcome {
        reported,
        loss: loss_value,
        lr,
        grad_norm,
        skipped,
    })
}

/// The mean ELBO per example of `x`, in batches of `batch`.
pub fn mean_elbo(model: &dyn ElboModel, x: &Tensor, batch: i64) -> f64 {
    let n = x.size()[0];
    let mut total = 0.0;
    for chunk in x.split(batch, 0) {
        total += model
            .elbo_terms(&chunk)
            .elbo()
            .sum(Kind::Double)
            .double_value(&[]);
    }
    total / n as f64
}

fn write_pictures(
    model: &dyn ElboModel,
    likelihood: Likelihood,
    run: &RunDir,
    epoch: u64,
    test: Option<&Tensor>,
) -> Result<()> {
    let samples = tch::no_grad(|| model.sample(64));
    let unit = |t: &Tensor| data::to_unit_range(likelihood, t);
    image::save_grid(
        &unit(&samples),
        8,
        &run.samples().join(format!("epoch-{epoch:03}.png")),
    )?;
    if let Some(test) = test {
        let inputs = test.narrow(0, 0, test.size()[0].min(32));
        let recon = tch::no_grad(|| model.reconstruct(&inputs));
        // Rows of 8 inputs, each followed by a row of their reconstructions.
        let pairs = Tensor::stack(
            &[
                unit(&inputs).reshape([
                    -1,
                    8,
                    inputs.size()[1],
                    inputs.size()[2],
                    inputs.size()[3],
                ]),
                unit(&recon).reshape([-1, 8, inputs.size()[1], inputs.size()[2], inputs.size()[3]]),
            ],
            1,
        )
        .flatten(0, 2);
        image::save_grid(
            &pairs,
            8,
            &run.samples()
                .join(format!("reconstructions-epoch-{epoch:03}.png")),
        )?;
    }
    Ok(())
}

/// The exponential moving average of the weights.
struct Ema {
    names: Vec<String>,
    shadow: Vec<Tensor>,
}

impl Ema {
    fn new(vs: &VarStore) -> Ema {
        let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let (names, shadow) = vars
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .unzip();
        Ema { names, shadow }
    }

    fn update(&mut self, vs: &VarStore, decay: f64) {
        let vars = vs.variables();
        tch::no_grad(|| {
            for (name, shadow) in self.names.iter().zip(&mut self.shadow) {
                if let Some(v) = vars.get(name) {
                    let _ = shadow.lerp_(v, 1.0 - decay);
                }
            }
        });
    }
}

fn state_tensors(vs: &VarStore, adam: &Adam, ema: Option<&Ema>) -> Vec<(String, Tensor)> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut out: Vec<(String, Tensor)> = vars
        .into_iter()
        .map(|(name, t)| (format!("model.{name}"), t.detach()))
        .collect();
    out.extend(adam.state());
    if let Some(ema) = ema {
        out.extend(
            ema.names
                .iter()
                .zip(&ema.shadow)
                .map(|(n, t)| (format!("ema.{n}"), t.shallow_clone())),
        );
    }
    out
}

/// Copies the `model.*` tensors of a checkpoint into `vs` (or the `ema.*` ones when
/// `use_ema` and present), checking every name and shape.
pub fn load_weights(
    vs: &mut VarStore,
    tensors: &BTreeMap<String, Tensor>,
    use_ema: bool,
) -> Result<()> {
    let prefix = if use_ema && tensors.keys().any(|k| k.starts_with("ema.")) {
        "ema."
    } else {
        "model."
    };
    let mut vars = vs.variables();
    for (name, var) in vars.iter_mut() {
        let key = format!("{prefix}{name}");
        let saved = tensors.get(&key).ok_or_else(|| Error::Checkpoint {
            detail: format!("weight {key} is missing: the checkpoint is of another model"),
        })?;
        if saved.size() != var.size() {
            return Err(Error::Checkpoint {
                detail: format!(
                    "weight {key} has shape {:?}, the model needs {:?}",
                    saved.size(),
                    var.size()
                ),
            });
        }
        tch::no_grad(|| var.copy_(&saved.to_device(var.device())));
    }
    Ok(())
}

fn restore(
    vs: &mut VarStore,
    adam: &mut Adam,
    ema: Option<&mut Ema>,
    tensors: &BTreeMap<String, Tensor>,
    step: u64,
) -> Result<()> {
    load_weights(vs, tensors, false)?;
    let device = vs.device();
    let on_device: BTreeMap<String, Tensor> = tensors
        .iter()
        .filter(|(k, _)| k.starts_with("adam."))
        .map(|(k, t)| (k.clone(), t.to_device(device)))
        .collect();
    adam.load_state(&on_device, step as i64)?;
    if let Some(ema) = ema {
        for (name, shadow) in ema.names.iter().zip(&mut ema.shadow) {
            let key = format!("ema.{name}");
            let saved = tensors.get(&key).ok_or_else(|| Error::Checkpoint {
                detail: format!("{key} is missing: the run has EMA, the checkpoint has none"),
            })?;
            tch::no_grad(|| shadow.copy_(&saved.to_device(device)));
        }
    }
    Ok(())
}

/// `metrics.jsonl`, appended line by line (each line written whole).
struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    fn open(path: &Path) -> Result<MetricsLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(MetricsLog { file })
    }

    fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        let mut line = value.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        Ok(())
    }
}

/// Drops the metrics lines after `step` (from a run that went on past its last
/// checkpoint), rewriting the file atomically.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    checkpoint::write_atomically(path, |temp| Ok(std::fs::write(temp, kept)?))
}

/// The device-independent part of a model's set-up: a fresh [`VarStore`] on `device`
/// with libtorch's generator seeded from the run's seed (so initial weights are a
/// function of the seed).
pub fn var_store(seed: u64, device: Device) -> VarStore {
    tch::manual_seed(step_seed(seed, u64::MAX));
    VarStore::new(device)
}
