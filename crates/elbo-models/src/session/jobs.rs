//! Training jobs as the `elbo train` commands describe them, with every default
//! resolved here (a preset's, a recipe's), never in the CLI: each job names its model
//! with typed options, and [`TrainOptions`] holds what a user may set about the run,
//! `None` where the model's defaults apply.

use std::path::PathBuf;

use elbo_data::Splits;
use tch::Device;

use crate::data::{self, DataSpec};
use crate::error::{Error, Result};
use crate::eval::{self, EvalReport};
use crate::models::ModelConfig;
use crate::models::ddpm::{
    DdpmConfig, DdpmPreset, LossKind, Objective, Recipe, RecipeName, ScheduleKind, VarianceKind,
};
use crate::models::hvae::{HvaeArch, HvaeConfig, HvaeVariant};
use crate::models::vae::{VaeConfig, VaePreset};
use crate::nn::likelihood::Likelihood;
use crate::train::aids::TrainingAids;
use crate::train::{self, Control, LrDecay, Observer, TrainConfig, TrainReport, Trainer};

/// What a user may set about a training run besides the model; `None` takes the
/// model's default (its recipe's, for a DDPM).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// The data.
    pub data: DataSpec,
    /// The run folder (default `runs/<model>-<UTC time>`).
    pub run: Option<PathBuf>,
    /// Where to train.
    pub device: Device,
    /// Epochs of the training split (ignored when `steps` is given).
    pub epochs: Option<u64>,
    /// Optimiser steps.
    pub steps: Option<u64>,
    /// Examples per step.
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// Linear warm-up steps.
    pub warmup: Option<u64>,
    /// Cosine decay to this fraction of the peak at the last step (default constant).
    pub cosine_to: Option<f64>,
    /// AdamW's decoupled weight decay (default 0).
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm.
    pub clip: Option<f64>,
    /// Keep an EMA of the weights with this decay.
    pub ema: Option<f64>,
    /// The run's seed.
    pub seed: u64,
    /// Checkpoint every N steps (and at the end; default 1000).
    pub checkpoint_every: Option<u64>,
    /// Checkpoints to keep (default 3).
    pub keep: Option<usize>,
    /// Skip updates whose gradient norm exceeds this.
    pub skip_grad_norm: Option<f64>,
    /// bf16 autocast of the forward pass (CUDA only).
    pub autocast_bf16: bool,
}

impl Default for TrainOptions {
    /// The bundled data on the CPU, seed 0, everything else the model's default.
    fn default() -> Self {
        TrainOptions {
            data: DataSpec::Bundled,
            run: None,
            device: Device::Cpu,
            epochs: None,
            steps: None,
            batch_size: None,
            lr: None,
            warmup: None,
            cosine_to: None,
            weight_decay: None,
            clip: None,
            ema: None,
            seed: 0,
            checkpoint_every: None,
            keep: None,
            skip_grad_norm: None,
            autocast_bf16: false,
        }
    }
}

/// A model family's training defaults, which [`TrainOptions`] override.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainDefaults {
    /// The length: epochs (a VAE's 10) or steps (a DDPM recipe's).
    pub length: Length,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// Gradient clipping.
    pub clip: Option<f64>,
    /// EMA decay.
    pub ema: Option<f64>,
    /// Random horizontal flips.
    pub horizontal_flip: bool,
    /// Test images evaluated at each epoch's end.
    pub eval_examples: usize,
}

/// How long a run is by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// Passes over the training split.
    Epochs(u64),
    /// Optimiser steps.
    Steps(u64),
}

impl TrainDefaults {
    /// The VAEs' defaults: pytorch/examples' settings (Adam at 1e-3, batch 128) for 10
    /// epochs, the test ELBO on 1,000 images at each epoch's end.
    pub fn vae() -> TrainDefaults {
        let base = TrainConfig::default();
        TrainDefaults {
            length: Length::Epochs(10),
            batch_size: base.batch_size,
            lr: base.lr,
            warmup: 0,
            clip: None,
            ema: None,
            horizontal_flip: false,
            eval_examples: base.eval_examples,
        }
    }

    /// A DDPM recipe's; the per-epoch check of the bound costs 2 network calls per
    /// image, so it runs on 100 test images.
    pub fn recipe(recipe: &Recipe) -> TrainDefaults {
        TrainDefaults {
            length: Length::Steps(recipe.steps),
            batch_size: recipe.batch_size,
            lr: recipe.lr,
            warmup: recipe.warmup_steps,
            clip: Some(recipe.clip_grad_norm),
            ema: Some(recipe.ema_decay),
            horizontal_flip: recipe.horizontal_flip,
            eval_examples: 100,
        }
    }
}

impl TrainOptions {
    /// The run's configuration: these options over `defaults`, for a training split of
    /// `train_examples` images, with the training aids `aids`.
    pub fn resolve(
        &self,
        defaults: &TrainDefaults,
        train_examples: usize,
        aids: TrainingAids,
    ) -> Result<TrainConfig> {
        let base = TrainConfig::default();
        let batch_size = self.batch_size.unwrap_or(defaults.batch_size);
        if batch_size == 0 {
            return Err(Error::Config {
                detail: "--batch-size must be at least 1, found 0".into(),
            });
        }
        let steps = match (self.steps, self.epochs, defaults.length) {
            (Some(steps), _, _) | (None, None, Length::Steps(steps)) => steps,
            (None, Some(epochs), _) | (None, None, Length::Epochs(epochs)) => {
                let per_epoch = train_examples.div_ceil(batch_size) as u64;
                epochs.checked_mul(per_epoch).ok_or_else(|| Error::Config {
                    detail: format!("{epochs} epochs of {per_epoch} steps overflow the step count"),
                })?
            }
        };
        Ok(TrainConfig {
            steps,
            batch_size,
            lr: self.lr.unwrap_or(defaults.lr),
            warmup_steps: self.warmup.unwrap_or(defaults.warmup),
            decay: match self.cosine_to {
                Some(final_fraction) => LrDecay::Cosine { final_fraction },
                None => LrDecay::Constant,
            },
            adam: train::AdamConfigSerde {
                weight_decay: self.weight_decay.unwrap_or(0.0),
                ..base.adam
            },
            clip_grad_norm: self.clip.or(defaults.clip),
            ema_decay: self.ema.or(defaults.ema),
            seed: self.seed,
            checkpoint_every: self.checkpoint_every.unwrap_or(base.checkpoint_every),
            keep_checkpoints: self.keep.unwrap_or(base.keep_checkpoints),
            eval_examples: defaults.eval_examples,
            horizontal_flip: defaults.horizontal_flip,
            data: self.data.clone(),
            aids: TrainingAids {
                skip_grad_norm: self.skip_grad_norm,
                ..aids
            },
            autocast_bf16: self.autocast_bf16,
            ..base
        })
    }
}

/// The evaluation after a completed run, on the test split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalEval {
    /// The IWAE bound with this many samples (none for `None`).
    pub iw: Option<i64>,
    /// Only the first this many test images (`None`: all).
    pub examples: Option<usize>,
}

/// A training job: a model family's options, its defaults, and the run's options.
pub trait Job {
    /// The model's name in run folders and reports (`vae-mlp`, `hvae-ladder`, ...).
    fn label(&self) -> String;
    /// The model's configuration for images of shape `image`.
    fn model(&self, image: [i64; 3]) -> Result<ModelConfig>;
    /// The training defaults the options override.
    fn defaults(&self) -> TrainDefaults;
    /// The training aids (KL warm-up, free bits).
    fn aids(&self) -> TrainingAids;
    /// The evaluation after training.
    fn final_eval(&self) -> FinalEval;
    /// The run's options.
    fn options(&self) -> &TrainOptions;
}

/// A VAE training job (`elbo train vae`).
#[derive(Clone, Debug, PartialEq)]
pub struct VaeJob {
    /// The network.
    pub preset: VaePreset,
    /// The decoder likelihood.
    pub likelihood: Likelihood,
    /// KL warm-up and free bits.
    pub aids: TrainingAids,
    /// IWAE samples of the final evaluation on the whole test split (`None`: none).
    pub final_iw: Option<i64>,
    /// The run.
    pub train: TrainOptions,
}

impl Default for VaeJob {
    /// vae-mlp, Bernoulli, no aids, IWAE-1000 at the end, the default run options.
    fn default() -> Self {
        VaeJob {
            preset: VaePreset::Mlp,
            likelihood: Likelihood::Bernoulli,
            aids: TrainingAids::default(),
            final_iw: Some(1000),
            train: TrainOptions::default(),
        }
    }
}

impl Job for VaeJob {
    fn label(&self) -> String {
        self.preset.to_string()
    }
    fn model(&self, image: [i64; 3]) -> Result<ModelConfig> {
        Ok(ModelConfig::Vae(VaeConfig::preset(
            self.preset,
            image,
            self.likelihood,
        )?))
    }
    fn defaults(&self) -> TrainDefaults {
        TrainDefaults::vae()
    }
    fn aids(&self) -> TrainingAids {
        self.aids
    }
    fn final_eval(&self) -> FinalEval {
        FinalEval {
            iw: self.final_iw,
            examples: None,
        }
    }
    fn options(&self) -> &TrainOptions {
        &self.train
    }
}

/// A hierarchical VAE training job (`elbo train hvae`).
#[derive(Clone, Debug, PartialEq)]
pub struct HvaeJob {
    /// Markov or ladder.
    pub variant: HvaeVariant,
    /// Latent layers.
    pub layers: usize,
    /// Latent sizes, bottom first (default [`crate::models::hvae::default_latent_dims`]).
    pub latent_dims: Option<Vec<i64>>,
    /// The networks (default: MLP for the Markov HVAE, convolutional for the ladder).
    pub arch: Option<HvaeArch>,
    /// Width of the deterministic networks (default: the variant's).
    pub width: Option<i64>,
    /// The decoder likelihood.
    pub likelihood: Likelihood,
    /// KL warm-up and free bits.
    pub aids: TrainingAids,
    /// IWAE samples of the final evaluation (`None`: none).
    pub final_iw: Option<i64>,
    /// The run.
    pub train: TrainOptions,
}

impl Job for HvaeJob {
    fn label(&self) -> String {
        format!("hvae-{}", self.variant)
    }
    fn model(&self, image: [i64; 3]) -> Result<ModelConfig> {
        Ok(ModelConfig::Hvae(HvaeConfig::new(
            self.variant,
            image,
            self.layers,
            self.latent_dims.clone(),
            self.arch,
            self.width,
            self.likelihood,
        )?))
    }
    fn defaults(&self) -> TrainDefaults {
        TrainDefaults::vae()
    }
    fn aids(&self) -> TrainingAids {
        self.aids
    }
    fn final_eval(&self) -> FinalEval {
        FinalEval {
            iw: self.final_iw,
            examples: None,
        }
    }
    fn options(&self) -> &TrainOptions {
        &self.train
    }
}

/// A DDPM training job (`elbo train ddpm`): a preset with changes, a recipe for the
/// training settings the options do not give.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DdpmJob {
    /// The network.
    pub preset: DdpmPreset,
    /// The training settings.
    pub recipe: RecipeName,
    /// The noise schedule (default the preset's linear).
    pub schedule: Option<ScheduleKind>,
    /// T (default 1000).
    pub timesteps: Option<usize>,
    /// What the network predicts (default eps).
    pub objective: Option<Objective>,
    /// What training minimises (default `L_simple`).
    pub loss: Option<LossKind>,
    /// The reverse variance (default fixed-large).
    pub variance: Option<VarianceKind>,
    /// Dropout in the residual blocks (default the preset's).
    pub dropout: Option<f64>,
    /// Test images of the final evaluation of the full bound (T network calls each).
    pub final_examples: usize,
    /// The run.
    pub train: TrainOptions,
}

impl DdpmJob {
    /// The preset for `image` with the job's changes.
    pub fn config(&self, image: [i64; 3]) -> Result<DdpmConfig> {
        let mut config = DdpmConfig::preset(self.preset, image)?;
        if let Some(v) = self.schedule {
            config.schedule = v;
        }
        if let Some(v) = self.timesteps {
            if v == 0 {
                return Err(Error::Config {
                    detail: "a diffusion needs at least 1 timestep, found 0".into(),
                });
            }
            config.timesteps = v;
        }
        if let Some(v) = self.objective {
            config.objective = v;
        }
        if let Some(v) = self.loss {
            config.loss = v;
        }
        if let Some(v) = self.variance {
            config.variance = v;
        }
        if let Some(v) = self.dropout {
            config.unet.dropout = v;
        }
        config.unet.validate()?;
        Ok(config)
    }
}

impl Job for DdpmJob {
    fn label(&self) -> String {
        self.preset.to_string()
    }
    fn model(&self, image: [i64; 3]) -> Result<ModelConfig> {
        Ok(ModelConfig::Ddpm(self.config(image)?))
    }
    fn defaults(&self) -> TrainDefaults {
        TrainDefaults::recipe(&Recipe::of(self.recipe))
    }
    fn aids(&self) -> TrainingAids {
        TrainingAids::default()
    }
    fn final_eval(&self) -> FinalEval {
        FinalEval {
            iw: None,
            examples: Some(self.final_examples),
        }
    }
    fn options(&self) -> &TrainOptions {
        &self.train
    }
}

/// What a finished (or interrupted) job reports.
pub struct JobReport {
    /// The run folder.
    pub run: PathBuf,
    /// The training loop's report.
    pub train: TrainReport,
    /// The final evaluation on the test split, when the run completed.
    pub eval: Option<EvalReport>,
    /// The newest sample grid.
    pub samples: Option<PathBuf>,
    /// The training curves, when drawn.
    pub curves: Option<PathBuf>,
}

/// The run folder of a job: the one asked for, or `runs/<label>-<UTC time>`.
pub fn run_folder(asked: Option<&PathBuf>, label: &str) -> PathBuf {
    asked
        .cloned()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{label}-{}", utc_stamp())))
}

/// Runs a job: loads the data, builds the model (or, with `control.resume`, restores
/// it), trains, and evaluates on the test split.
pub fn train(
    job: &dyn Job,
    control: Control<'_>,
    observer: &mut dyn Observer,
) -> Result<JobReport> {
    let options = job.options();
    let splits: Splits = options.data.load()?;
    let [c, h, w] = splits.train.image_shape().map(|d| d as i64);
    let model_config = job.model([c, h, w])?;
    let config = options.resolve(&job.defaults(), splits.train.len(), job.aids())?;
    let device = options.device;
    let mut vs = train::var_store(config.seed, device);
    let model = model_config.build(&vs.root())?;
    let label = job.label();
    let run = train::RunDir::new(run_folder(options.run.as_ref(), &label));
    let test = match config.eval_examples {
        0 => None,
        n => Some(data::fixed_tensor(
            &splits.test,
            model.likelihood(),
            Some(n),
            device,
        )?),
    };
    let step = model.train_step(&config.aids)?;
    let report = Trainer::for_model(model.as_ref(), config, run.clone(), label, test).fit(
        step.as_ref(),
        &mut vs,
        &splits.train,
        control,
        observer,
    )?;
    let eval = match report.finished {
        train::Finished::Completed => {
            let FinalEval { iw, examples } = job.final_eval();
            let test = data::fixed_tensor(&splits.test, model.likelihood(), examples, device)?;
            Some(eval::evaluate(model.as_ref(), &test, iw, 100))
        }
        train::Finished::Interrupted { .. } => None,
    };
    let curves = run.curves();
    Ok(JobReport {
        samples: run.newest_samples(),
        curves: curves.exists().then_some(curves),
        run: run.root,
        train: report,
        eval,
    })
}

/// The current UTC time as `YYYYMMDD-HHMMSS`, for run folder names.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_a_utc_date_and_time() {
        let _generator = crate::testing::generator_lock();
        let stamp = utc_stamp();
        assert_eq!(stamp.len(), 15, "{stamp}");
        let year: i32 = stamp[..4].parse().unwrap();
        assert!((2024..2200).contains(&year), "{stamp}");
        assert_eq!(&stamp[8..9], "-");
    }

    /// A recipe fills exactly the options not given; a VAE's length is in epochs.
    #[test]
    fn options_override_the_defaults_and_only_those() {
        let _generator = crate::testing::generator_lock();
        let recipe = TrainDefaults::recipe(&Recipe::of(RecipeName::Mnist));
        let options = TrainOptions {
            lr: Some(1e-4),
            ..TrainOptions::default()
        };
        let config = options
            .resolve(&recipe, 9000, TrainingAids::default())
            .unwrap();
        assert_eq!((config.steps, config.batch_size), (2000, 64));
        assert_eq!((config.lr, config.warmup_steps), (1e-4, 200));
        assert_eq!(
            (config.clip_grad_norm, config.ema_decay),
            (Some(1.0), Some(0.995))
        );
        assert_eq!(config.eval_examples, 100);
        let vae = TrainOptions::default()
            .resolve(&TrainDefaults::vae(), 9000, TrainingAids::default())
            .unwrap();
        // 10 epochs of ceil(9000 / 128) = 71 steps.
        assert_eq!((vae.steps, vae.lr, vae.ema_decay), (710, 1e-3, None));
        let epochs = TrainOptions {
            epochs: Some(2),
            steps: Some(5),
            ..TrainOptions::default()
        };
        let config = epochs
            .resolve(&recipe, 9000, TrainingAids::default())
            .unwrap();
        assert_eq!(config.steps, 5, "steps win over epochs");
        let overflow = TrainOptions {
            epochs: Some(u64::MAX),
            ..TrainOptions::default()
        };
        let err = overflow
            .resolve(&TrainDefaults::vae(), 9000, TrainingAids::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflow"), "{err}");
    }
}
