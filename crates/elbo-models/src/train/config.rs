//! Everything about a training run that is not the model: steps, batch, learning-rate
//! schedule, Adam, clipping, EMA, seed, checkpoint and log cadence, training aids.

use serde::{Deserialize, Serialize};

use super::aids::TrainingAids;
use super::optim::AdamConfig;
use crate::data::DataSpec;
use crate::error::{Error, Result};

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

/// How often a run reports and what it keeps: settings that never change the weights,
/// so that a resume may change them (every other setting of [`TrainConfig`] is compared
/// with the one the run was started with). In run records its fields sit beside
/// [`TrainConfig`]'s own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cadence {
    /// Write a checkpoint every this many steps (and always at the end).
    pub checkpoint_every: u64,
    /// How many checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Write a metrics line every this many steps.
    pub log_every: u64,
    /// Evaluate on at most this many test examples at each epoch's end (0: never).
    pub eval_examples: usize,
    /// Write TensorBoard event files in the run folder (absent in records of runs
    /// from before them: on).
    #[serde(default = "on")]
    pub tensorboard: bool,
}

fn on() -> bool {
    true
}

impl Default for Cadence {
    /// A checkpoint every 1,000 steps, 3 kept, a metrics line every 10 steps, the test
    /// ELBO on 1,000 images at each epoch's end.
    fn default() -> Self {
        Cadence {
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            log_every: 10,
            eval_examples: 1000,
            tensorboard: true,
        }
    }
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
    pub adam: AdamConfig,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay.
    pub ema_decay: Option<f64>,
    /// The run's seed: initialisation, data order, transforms, model noise.
    pub seed: u64,
    /// How often the run reports and what it keeps (a resume may change these).
    #[serde(flatten)]
    pub cadence: Cadence,
    /// Random horizontal flips of training images (CIFAR-10).
    pub horizontal_flip: bool,
    /// The data set (recorded so that evaluation finds the same test split).
    pub data: DataSpec,
    /// KL warm-up, free bits and gradient skipping (all off by default): they change
    /// the loss and the updates, never the reported ELBO.
    #[serde(default)]
    pub aids: TrainingAids,
    /// Run each step's forward pass under CUDA autocast in bfloat16 (weights, Adam and
    /// the loss's reduction stay fp32). CUDA only: refused on the CPU.
    #[serde(default)]
    pub autocast_bf16: bool,
}

impl Default for TrainConfig {
    /// pytorch/examples' VAE settings: Adam at 1e-3, batch 128; 10 epochs of the
    /// bundled 9,000-image sample (710 steps).
    fn default() -> Self {
        TrainConfig {
            steps: 710,
            batch_size: 128,
            lr: 1e-3,
            warmup_steps: 0,
            decay: LrDecay::Constant,
            adam: AdamConfig::default(),
            clip_grad_norm: None,
            ema_decay: None,
            seed: 0,
            cadence: Cadence::default(),
            horizontal_flip: false,
            data: DataSpec::Bundled,
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
        if self.steps == 0 {
            return bad(
                "steps must be at least 1 (an untrained model is not a run), found 0".into(),
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1, found 0".into());
        }
        if self.warmup_steps > self.steps {
            return bad(format!(
                "warmup_steps must be at most the {} steps of the run, found {}",
                self.steps, self.warmup_steps
            ));
        }
        if let LrDecay::Cosine { final_fraction } = self.decay
            && !(0.0..=1.0).contains(&final_fraction)
        {
            return bad(format!(
                "the cosine decay's final fraction must be in [0, 1], found {final_fraction}"
            ));
        }
        let wd = self.adam.weight_decay;
        if !(wd.is_finite() && (0.0..1.0).contains(&wd)) {
            return bad(format!("weight_decay must be in [0, 1), found {wd}"));
        }
        let Cadence {
            checkpoint_every,
            keep_checkpoints,
            log_every,
            ..
        } = self.cadence;
        if checkpoint_every == 0 || keep_checkpoints == 0 || log_every == 0 {
            return bad(format!(
                "checkpoint_every, keep_checkpoints and log_every must be at least 1, found \
                 {checkpoint_every}, {keep_checkpoints}, {log_every}"
            ));
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
