//! The training loop every model shares, and what plugs into it.
//!
//! The [`Trainer`] owns the loop: data order, seeding, the learning-rate schedule,
//! clipping, the EMA, the NaN guard, the stop flag, resume, and when checkpoints and
//! metrics lines are written. What a model brings is its [`TrainStep`] (the loss of a
//! batch and what to report); what runs at each epoch's end are [`Hook`]s (test
//! evaluation, sample pictures); where the run keeps what is [`layout`]. The processes the
//! loop runs in are one value ([`Trainer::replicas`], a [`crate::dist::Replicas`]): a
//! single process, or a data-parallel job in which the same loop runs in every process:
//! each takes its slice of every global batch, the gradients are reduced between the
//! backward pass and the optimiser step, rank 0's state is broadcast at the start, and
//! rank 0 alone writes the run folder and runs the hooks. The loop never names a model:
//! what builds a model's trainer is [`crate::fit`].
//!
//! Reproducibility: every random draw is a function of (seed, step). The data order and
//! the pixel transforms come from elbo-data, keyed by (seed, epoch, example); the
//! model's own noise (reparameterisation) comes from libtorch's generator, re-seeded
//! from (seed, step) before each step. So training 2n steps and training n, stopping,
//! resuming and training n more give the same weights, bit for bit, on the CPU.
//!
//! (The loop and the policies that share its state, start or resume, the epoch end, the
//! save of a finite state, are methods of the one `Trainer`, so that a step reads top to
//! bottom; all that stands alone lives in the modules below.)

pub mod aids;
pub mod board;
pub mod checkpoint;
mod config;
mod events;
pub mod hooks;
pub mod layout;
pub mod metrics;
pub mod optim;
mod resume;
mod state;
mod step;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use elbo_data::{Batching, Dataset, EpochSeed, Loader, LoaderConfig};
use tch::{Device, Tensor, nn::VarStore};

pub use config::{Cadence, LrDecay, TrainConfig};
pub use events::{Control, Finished, Identity, Observer, Progress, RunStart, TrainReport};
pub use hooks::{EpochEnd, Hook};
pub use layout::RunDir;
pub use state::rank_step_seed;
pub use state::{Ema, load_weights, restore_state, state_tensors, step_seed, var_store};
pub use step::{Batch, Guard, Reported, StepFailure, StepLoss, StepOutcome, TrainStep, optimise};

use crate::data;
use crate::dist::{Alone, Replica, Replicas};
use crate::error::{Error, Result};
use checkpoint::CheckpointMeta;
use metrics::MetricsLog;
use optim::Adam;

/// The training loop, with its policies: hooks at epoch ends, the processes it runs in,
/// and whether this process writes the run folder.
pub struct Trainer<'a> {
    config: TrainConfig,
    run: RunDir,
    identity: Identity,
    label: String,
    hooks: Vec<Box<dyn Hook + 'a>>,
    replicas: &'a dyn Replicas,
    writer: bool,
}

impl<'a> Trainer<'a> {
    /// A loop that trains as `config` says into `run`, its checkpoints marked with
    /// `identity`; `label` names the model in what it reports.
    pub fn new(
        config: TrainConfig,
        run: RunDir,
        identity: Identity,
        label: impl Into<String>,
    ) -> Trainer<'a> {
        Trainer {
            config,
            run,
            identity,
            label: label.into(),
            hooks: Vec::new(),
            replicas: &Alone,
            writer: true,
        }
    }

    /// Adds a hook, run at each epoch's end after the ones added before.
    pub fn hook(mut self, hook: impl Hook + 'a) -> Trainer<'a> {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Makes this loop one process of `replicas` (a data-parallel job, [`crate::dist::Parallel`];
    /// by default [`Alone`]): it trains on its slice of each global batch, reduces the
    /// gradients through the job's process group, starts from rank 0's state, and writes
    /// the run folder only if it is rank 0.
    pub fn replicas(mut self, replicas: &'a dyn Replicas) -> Trainer<'a> {
        self.writer = replicas.rank() == 0;
        self.replicas = replicas;
        self
    }

    /// Whether this process writes the run folder (config, metrics, checkpoints,
    /// pictures); the default. In data-parallel training only rank 0 does.
    pub fn writer(mut self, writes: bool) -> Trainer<'a> {
        self.writer = writes;
        self
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    fn meta(&self, step: u64) -> CheckpointMeta {
        CheckpointMeta {
            format: checkpoint::FORMAT,
            elbo_version: env!("CARGO_PKG_VERSION").to_string(),
            model: self.identity.family.clone(),
            model_config: self.identity.config.clone(),
            train_config: serde_json::to_value(&self.config).unwrap_or_default(),
            step,
            seed: self.config.seed,
            tensors: String::new(),
            tensors_sha256: None,
            world_size: Some(self.replicas.size()),
        }
    }

    /// Checks the configuration and the device, and sets the autocast dtype.
    fn prepare(&self, device: Device) -> Result<()> {
        self.config.validate()?;
        if self.config.autocast_bf16 {
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
        Ok(())
    }

    /// Trains with `step` the variables of `vs` on `train`, started and stopped as
    /// `control` says; `observer` sees the start and every logged step.
    ///
    /// libtorch's random generator is process-global: two trainings running at once in
    /// one process draw from the same stream and are then not reproducible.
    pub fn fit(
        &mut self,
        step: &dyn TrainStep,
        vs: &mut VarStore,
        train: &Dataset,
        control: Control<'_>,
        observer: &mut dyn Observer,
    ) -> Result<TrainReport> {
        let device = vs.device();
        self.prepare(device)?;
        if train.is_empty() {
            return Err(Error::Config {
                detail: format!(
                    "the training split of {} has no images: nothing to train on",
                    self.config.data
                ),
            });
        }
        let config = self.config.clone();
        let replicas = self.replicas;
        check_divisible(config.batch_size, train.len(), replicas.size())?;
        let applied = step.kl_aids().filter(aids::TrainingAids::shapes_the_kl);
        if config.aids.shapes_the_kl()
            && applied.is_none_or(|a| {
                (a.kl_warmup_steps, a.free_bits)
                    != (config.aids.kl_warmup_steps, config.aids.free_bits)
            })
        {
            return Err(Error::Config {
                detail: format!(
                    "the configuration asks for KL warm-up {} and free bits {}, which this \
                     training step does not apply: build the step with \
                     elbo_models::models::step_for (as fit::fit does)",
                    config.aids.kl_warmup_steps, config.aids.free_bits
                ),
            });
        }
        if let (true, Some((name, _))) = (replicas.size() > 1, step.state().first()) {
            return Err(Error::Config {
                detail: format!(
                    "this training step keeps state of its own from step to step ({name}), \
                     which each process would grow apart and data-parallel training does not \
                     reduce: train it in one process"
                ),
            });
        }
        let batching = Batching {
            batch_size: NonZeroUsize::new(config.batch_size).unwrap_or(NonZeroUsize::MIN),
            drop_last: false,
        };
        let loader = Loader::new(
            train,
            LoaderConfig {
                batching,
                shuffle: true,
                seed: config.seed,
                transform: step.transform(config.horizontal_flip),
            },
        );
        let steps_per_epoch = loader.batches_per_epoch().max(1) as u64;
        let mut adam = Adam::new(vs, config.adam);
        for (prefix, multiplier) in step.lr_scales() {
            if adam.scale_lr(&prefix, multiplier) == 0 {
                return Err(Error::Config {
                    detail: format!(
                        "a learning-rate multiplier of {multiplier} for the variables {prefix}* \
                         names none of the model's trainable variables"
                    ),
                });
            }
        }
        let mut ema = config.ema_decay.map(|_| Ema::new(vs));
        if replicas.size() > 1 {
            let job = serde_json::json!({
                "model": self.identity.family, "model_config": self.identity.config,
                "train_config": serde_json::to_value(&config).unwrap_or_default(),
                "train_examples": train.len(), "resume": control.resume,
            });
            let explain = |root: &str| {
                let root = serde_json::from_str(root).unwrap_or_default();
                checkpoint::json_differences("", &root, &job)
                    .join("; ")
                    .replace(": checkpoint ", ": rank 0 has ")
                    .replace(", asked ", ", this rank ")
            };
            replicas.same_everywhere(
                "the model, the training options or the data",
                &job.to_string(),
                &explain,
                "Every process must run the same command on the same data",
            )?;
        }
        // Only the writer touches the run folder; in a data-parallel job the others then
        // take rank 0's step and state.
        let begun = if self.writer {
            self.run.lock().and_then(|lock| {
                self.run.remove_stale_temporaries();
                let index = self.start_or_resume(control, step, vs, &mut adam, ema.as_mut())?;
                Ok((Some(lock), index))
            })
        } else {
            Ok((None, 0))
        };
        let failing = replicas.failing_ranks(begun.is_ok())?;
        let (_lock, index) = begun?;
        if !failing.is_empty() {
            return Err(Error::Distributed {
                detail: format!(
                    "rank {failing:?} could not start the run (its own message says why); \
                     rank {} stops too",
                    replicas.rank()
                ),
            });
        }
        let mut index = start_from_root(replicas, index, vs, &mut adam, ema.as_mut())?;
        observer.started(&RunStart {
            label: self.label.clone(),
            parameters: vs
                .trainable_variables()
                .iter()
                .map(|t| t.numel() as i64)
                .sum(),
            data: config.data.to_string(),
            train_examples: train.len(),
            steps: config.steps,
            start_step: index,
            batch_size: config.batch_size,
            device,
            threads: tch::get_num_threads(),
            run: self.run.root.clone(),
        });

        let start = index;
        let started = Instant::now();
        let mut last_checkpoint: Option<PathBuf> = None;
        let mut order_epoch = u64::MAX;
        let mut order = loader.order(0);
        let mut metrics = if self.writer {
            let log = MetricsLog::open(&self.run.metrics())?;
            Some(if config.cadence.tensorboard {
                log.with_board(board::Board::open(&self.run, index)?)
            } else {
                log
            })
        } else {
            None
        };
        let mut guard = Guard::new(device);
        // Throughput between logged steps (TensorBoard only: metrics.jsonl stays a
        // function of the seed, so a resumed run's log equals an unbroken one's).
        let mut last_log = (Instant::now(), index);
        while index < config.steps {
            let epoch = index / steps_per_epoch;
            let position = (index % steps_per_epoch) as usize;
            if epoch != order_epoch {
                order = loader.order(epoch);
                order_epoch = epoch;
            }
            let Some(global) = order.batches(batching).nth(position) else {
                break;
            };
            let indices = replicas.shard(global);
            let share = indices.len() as f64 / global.len().max(1) as f64;
            let images = loader
                .config()
                .transform
                .apply(
                    train,
                    indices,
                    EpochSeed {
                        seed: config.seed,
                        epoch,
                    },
                )
                .map_err(|e| Error::Data {
                    detail: format!("training data: {e}"),
                })?;
            let labels: Vec<i64> = indices
                .iter()
                .map(|&i| i64::from(train.labels()[i]))
                .collect();
            let batch = Batch {
                x: data::to_tensor(&images, device),
                labels: data::upload(Tensor::from_slice(&labels), device),
            };

            let replica = Replica {
                replicas,
                share,
                stop_requested: control.stop.load(Ordering::SeqCst),
            };
            let non_finite = |step, value, last: &_| non_finite_loss(&self.run, step, value, last);
            let outcome = optimise(
                step, &mut adam, &batch, &config, index, &replica, &mut guard,
            )
            .map_err(|failure| match failure {
                StepFailure::NonFinite(value) => non_finite(index + 1, value, &last_checkpoint),
                StepFailure::Sync(e) => e,
            })?;
            if let (Some(ema), Some(decay)) = (ema.as_mut(), config.ema_decay) {
                ema.update(vs, decay, Some(&outcome.held));
            }
            index += 1;

            let epoch_end = index % steps_per_epoch == 0 || index == config.steps;
            let log_now = index % config.cadence.log_every.max(1) == 0 || epoch_end;
            // Reading the batch's terms back is a device sync: only at logged steps.
            let mut reported = if log_now {
                outcome.reported.means()
            } else {
                Vec::new()
            };
            if log_now {
                // The global batch's means: each process's, weighted by its share.
                let mut values: Vec<f64> = reported.iter().map(|(_, v)| v * share).collect();
                replicas.sum(&mut values)?;
                for ((_, v), summed) in reported.iter_mut().zip(values) {
                    *v = summed;
                }
            }
            let stop_now = replicas.stops(outcome.stop, control.stop.load(Ordering::SeqCst));
            let checkpoint_now =
                index % config.cadence.checkpoint_every.max(1) == 0 || index == config.steps;
            // What the device noted of the steps since the last read (a non-finite loss,
            // after which nothing was updated) is read where the host looks anyway.
            if log_now || checkpoint_now || stop_now {
                guard
                    .check()
                    .map_err(|(step, value)| non_finite(step, value, &last_checkpoint))?;
            }
            if let (true, Some(metrics)) = (log_now, metrics.as_mut()) {
                let mut line = serde_json::json!({
                    "kind": "step", "step": index, "epoch": epoch,
                    "loss": outcome.loss.double_value(&[]), "lr": outcome.lr,
                });
                for (name, value) in reported.iter().chain(&outcome.extra) {
                    line[name] = (*value).into();
                }
                if let Some(norm) = &outcome.grad_norm {
                    line["grad_norm"] = norm.double_value(&[]).into();
                }
                if config.aids.skip_grad_norm.is_some() {
                    line["skipped_updates"] = guard.skipped().into();
                }
                metrics.write(&line)?;
                if let Some(board) = metrics.board() {
                    let (then, from) = last_log;
                    let images = (index - from) as f64 * config.batch_size as f64;
                    board.throughput(index, images / then.elapsed().as_secs_f64().max(1e-9))?;
                }
                last_log = (Instant::now(), index);
            }
            if checkpoint_now {
                last_checkpoint = Some(self.save(
                    index,
                    step,
                    &adam,
                    ema.as_ref(),
                    vs,
                    last_checkpoint.as_ref(),
                )?);
            }
            // Nothing optional runs before the checkpoint of this step is on disk.
            let mut evaluation = Vec::new();
            if epoch_end && self.writer {
                evaluation = self.epoch_end(index, epoch + 1, metrics.as_mut())?;
            }
            if checkpoint_now || epoch_end {
                // The others wait here while rank 0 writes and evaluates.
                replicas.wait_for_root()?;
            }
            if log_now {
                let elapsed = started.elapsed().as_secs_f64().max(1e-9);
                observer.progress(&Progress {
                    step: index,
                    steps: config.steps,
                    epoch,
                    terms: reported,
                    steps_per_second: (index - start) as f64 / elapsed,
                    evaluation,
                });
            }
            if stop_now && index < config.steps {
                let path = match &last_checkpoint {
                    Some(p) if layout::is_checkpoint_of(p, index) => p.clone(),
                    _ => self.save(
                        index,
                        step,
                        &adam,
                        ema.as_ref(),
                        vs,
                        last_checkpoint.as_ref(),
                    )?,
                };
                return Ok(TrainReport {
                    finished: Finished::Interrupted { step: index },
                    checkpoint: path,
                    steps_taken: index - start,
                    agreed: None,
                });
            }
        }
        if let Err((step, value)) = guard.check() {
            return Err(non_finite_loss(&self.run, step, value, &last_checkpoint));
        }
        let checkpoint = match last_checkpoint {
            Some(p) => p,
            None => self.save(index, step, &adam, ema.as_ref(), vs, None)?,
        };
        // The processes of a job apply the same reduced gradients: their states must be
        // equal to the bit. Checked once, at the end (a digest of every tensor).
        let agreed = if replicas.size() > 1 {
            let digest = state::digest(&state_tensors(vs, &adam, ema.as_ref()));
            replicas.same_everywhere(
                &format!("the trained state after step {index} (sha256 of every weight, Adam moment and EMA tensor)"),
                &digest,
                &|root| format!("rank 0 holds {root}, this rank {digest}"),
                "The replicas drifted apart: please report it with the command and the launcher",
            )?;
            Some(digest)
        } else {
            None
        };
        Ok(TrainReport {
            finished: Finished::Completed,
            checkpoint,
            steps_taken: index - start,
            agreed,
        })
    }

    /// Runs the hooks, writes the epoch's metrics line and redraws the curves; returns
    /// the numbers of the evaluation.
    fn epoch_end(
        &mut self,
        step: u64,
        epoch: u64,
        metrics: Option<&mut MetricsLog>,
    ) -> Result<Vec<(String, f64)>> {
        let at = EpochEnd {
            epoch,
            step,
            run: &self.run,
        };
        let mut values = Vec::new();
        for hook in &mut self.hooks {
            values.extend(hook.epoch_end(&at)?);
        }
        if let Some(metrics) = metrics {
            if !values.is_empty() {
                let mut line = serde_json::json!({"kind": "epoch", "step": step, "epoch": epoch});
                for (name, value) in &values {
                    line[name] = value.clone();
                }
                metrics.write(&line)?;
            }
            if let Some(board) = metrics.board() {
                board.pictures(&self.run, step, epoch)?;
            }
        }
        // A run whose steps log nothing numeric has no curves yet (`false`).
        metrics::write_curves(&self.run.metrics(), &self.run.curves(), &self.label)?;
        Ok(values
            .into_iter()
            .filter_map(|(name, value)| value.as_f64().map(|v| (name, v)))
            .collect())
    }

    /// Writes the checkpoint of `step` (a process that does not write only names it),
    /// after checking that every tensor of the state is finite: a checkpoint is only ever
    /// written of a state one can resume from. `last` is the newest good checkpoint.
    fn save(
        &self,
        step: u64,
        train_step: &dyn TrainStep,
        adam: &Adam,
        ema: Option<&Ema>,
        vs: &VarStore,
        last: Option<&PathBuf>,
    ) -> Result<PathBuf> {
        let mut tensors = state_tensors(vs, adam, ema);
        tensors.extend(
            train_step
                .state()
                .into_iter()
                .map(|(name, t)| (format!("{}{name}", layout::STEP), t)),
        );
        let not_finite = tch::no_grad(|| {
            tensors
                .iter()
                .find(|(_, t)| t.isfinite().all().int64_value(&[]) == 0)
                .map(|(name, _)| name.clone())
        });
        if let Some(name) = not_finite {
            return Err(Error::NonFiniteState {
                step,
                name,
                last_checkpoint: last
                    .cloned()
                    .or_else(|| checkpoint::list(&self.run.checkpoints()).ok()?.pop()),
            });
        }
        if !self.writer {
            return Ok(self
                .run
                .checkpoints()
                .join(layout::checkpoint_names(step).1));
        }
        checkpoint::save(
            &self.run.checkpoints(),
            self.meta(step),
            &tensors,
            self.config.cadence.keep_checkpoints,
        )
    }
}

/// Refuses a data-parallel job whose global batch does not divide among its processes,
/// or whose epochs end with a batch smaller than the number of processes.
fn check_divisible(batch: usize, examples: usize, world: usize) -> Result<()> {
    check_global_batch(batch, world)?;
    let last = examples % batch;
    if last != 0 && last < world {
        return Err(Error::Config {
            detail: format!(
                "each epoch of {examples} examples ends with a batch of {last}, fewer than the \
                 {world} processes: choose a batch size that leaves at least {world} (or none)"
            ),
        });
    }
    Ok(())
}

/// Refuses a global batch that does not divide among `world` processes (a launcher
/// checks it before starting them).
pub fn check_global_batch(batch: usize, world: usize) -> Result<()> {
    if !batch.is_multiple_of(world) {
        return Err(Error::Config {
            detail: format!(
                "--batch-size {batch} is the global batch and does not divide among {world} \
                 processes: choose a multiple of {world} (e.g. {})",
                (batch / world).max(1) * world
            ),
        });
    }
    Ok(())
}

/// Makes this process's step and state rank 0's: broadcasts the step, the weights, Adam's
/// moments and the EMA; returns the step. A process alone is its own rank 0.
fn start_from_root(
    parallel: &dyn Replicas,
    index: u64,
    vs: &mut VarStore,
    adam: &mut Adam,
    ema: Option<&mut Ema>,
) -> Result<u64> {
    if parallel.size() == 1 {
        return Ok(index);
    }
    let step = Tensor::from_slice(&[index as i64]);
    parallel.broadcast_from_root(std::slice::from_ref(&step))?;
    let index = step.int64_value(&[0]) as u64;
    let named = state_tensors(vs, adam, ema.as_deref());
    let received: Vec<Tensor> = named
        .iter()
        .map(|(_, t)| t.to_device(Device::Cpu).contiguous().copy())
        .collect();
    parallel.broadcast_from_root(&received)?;
    if parallel.rank() != 0 {
        let tensors = named
            .iter()
            .map(|(name, _)| name.clone())
            .zip(received)
            .collect();
        restore_state(vs, adam, ema, &tensors, index)?;
    }
    Ok(index)
}

/// The error of a run stopped by the non-finite loss of `step` (counted from 1): it
/// names the last checkpoint written, or the newest in the run folder.
fn non_finite_loss(run: &RunDir, step: u64, value: f64, last: &Option<PathBuf>) -> Error {
    Error::NonFiniteLoss {
        step,
        value,
        last_checkpoint: last
            .clone()
            .or_else(|| checkpoint::list(&run.checkpoints()).ok()?.pop()),
    }
}

#[cfg(test)]
mod tests {
    use super::check_divisible;

    #[test]
    fn a_global_batch_must_divide_among_the_processes_and_leave_each_an_example() {
        let _generator = crate::testing::generator_lock();
        assert!(check_divisible(64, 9000, 2).is_ok());
        assert!(
            check_divisible(64, 9000, 1).is_ok(),
            "one process takes anything"
        );
        let err = check_divisible(63, 9000, 2).unwrap_err().to_string();
        assert!(
            err.contains("--batch-size 63") && err.contains("among 2") && err.contains("62"),
            "{err}"
        );
        // 9,001 examples in batches of 64 end with a batch of 41 (fine for 2 processes);
        // 8,961 end with one of 1, which 2 processes cannot share.
        assert!(check_divisible(64, 9001, 2).is_ok());
        let err = check_divisible(64, 8961, 2).unwrap_err().to_string();
        assert!(err.contains("ends with a batch of 1"), "{err}");
        // Each message reads as one sentence: no run of spaces from a lost `\`.
        for err in [check_divisible(63, 9000, 2), check_divisible(64, 8961, 2)] {
            let err = err.unwrap_err().to_string();
            assert!(!err.contains("  "), "{err}");
        }
    }
}
