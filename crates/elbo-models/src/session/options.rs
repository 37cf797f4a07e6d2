//! What a user may set about a training run besides the model ([`TrainOptions`], `None`
//! where the model's defaults apply) and those defaults ([`TrainDefaults`]: a VAE's, a
//! DDPM recipe's), resolved into the loop's [`TrainConfig`].

use std::path::PathBuf;

use tch::Device;

use crate::data::DataSpec;
use crate::error::{Error, Result};
use crate::models::ddpm::Recipe;
use crate::train::aids::TrainingAids;
use crate::train::{self, Cadence, LrDecay, TrainConfig};

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
    /// Write TensorBoard event files in the run folder (default on).
    pub tensorboard: bool,
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
            tensorboard: true,
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
            eval_examples: base.cadence.eval_examples,
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
        if let Some(asked) = self.batch_size.filter(|&b| b > train_examples) {
            return Err(Error::Config {
                detail: format!(
                    "--batch-size {asked} is more than the {train_examples} training images: \
                     choose at most {train_examples}"
                ),
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
            // A default warm-up longer than a short run is cut to the run; one asked for is
            // checked as given.
            warmup_steps: self.warmup.unwrap_or(defaults.warmup.min(steps)),
            decay: match self.cosine_to {
                Some(final_fraction) => LrDecay::Cosine { final_fraction },
                None => LrDecay::Constant,
            },
            adam: train::optim::AdamConfig {
                weight_decay: self.weight_decay.unwrap_or(0.0),
                ..base.adam
            },
            clip_grad_norm: self.clip.or(defaults.clip),
            ema_decay: self.ema.or(defaults.ema),
            seed: self.seed,
            cadence: Cadence {
                checkpoint_every: self
                    .checkpoint_every
                    .unwrap_or(base.cadence.checkpoint_every),
                keep_checkpoints: self.keep.unwrap_or(base.cadence.keep_checkpoints),
                eval_examples: defaults.eval_examples,
                tensorboard: self.tensorboard,
                ..base.cadence
            },
            horizontal_flip: defaults.horizontal_flip,
            data: self.data.clone(),
            aids: TrainingAids {
                skip_grad_norm: self.skip_grad_norm,
                ..aids
            },
            autocast_bf16: self.autocast_bf16,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ddpm::RecipeName;

    /// A batch larger than the training split is refused, not trained as the whole split
    /// under a false name; the split's size itself is a batch.
    #[test]
    fn a_batch_larger_than_the_data_is_refused() {
        let options = |b| TrainOptions {
            batch_size: Some(b),
            ..TrainOptions::default()
        };
        let vae = TrainDefaults::vae();
        let err = options(1_000_000_000)
            .resolve(&vae, 9000, TrainingAids::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--batch-size 1000000000 is more than the 9000 training images"),
            "{err}"
        );
        let whole = options(9000)
            .resolve(&vae, 9000, TrainingAids::default())
            .unwrap();
        assert_eq!(whole.batch_size, 9000);
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
        assert_eq!(config.cadence.eval_examples, 100);
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
        // The recipe's 200 warm-up steps are cut to a 5-step run; an asked-for warm-up
        // longer than the run is left for the loop to refuse.
        assert_eq!(config.warmup_steps, 5);
        let asked = TrainOptions {
            steps: Some(5),
            warmup: Some(9),
            ..TrainOptions::default()
        };
        let config = asked
            .resolve(&recipe, 9000, TrainingAids::default())
            .unwrap();
        assert_eq!(config.warmup_steps, 9);
        assert!(config.validate().is_err());
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
