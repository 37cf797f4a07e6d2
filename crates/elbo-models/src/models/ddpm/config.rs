//! A DDPM's configuration: the network, schedule, objective, loss, reverse variance,
//! label dropout and timestep sampling ([`DdpmConfig`]), its named presets
//! ([`DdpmPreset`]), and the training recipes it is trained with ([`Recipe`]).

use serde::{Deserialize, Serialize};

use super::diffusion::{Objective, ScheduleKind, VarianceKind};
use crate::error::{Error, Result};
use crate::models::names::named_option;
use crate::nn::unet::UnetConfig;

/// What training minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Ho et al.'s `L_simple`: the mean squared error between the network's output and
    /// its target (eps, x_0 or v) at a uniform t, unweighted.
    Simple,
    /// The bound's own weighting: at a uniform t, the denoising-matching KL (the decoder's
    /// negative log-likelihood at t = 1), in nats per dimension.
    Vlb,
    /// Improved DDPM's hybrid loss for learned variances: `L_simple + λ L_vlb`, the
    /// bound's term with the gradient through the mean stopped, so that it trains the
    /// variances only, and `L_vlb` as improved-diffusion scales it: T times the term at a
    /// uniform t in bits per dimension (λ = 0.001, [`DdpmConfig::hybrid_weight`]).
    Hybrid,
}

/// How training draws each example's timestep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimestepSampling {
    /// Uniformly on `1..=T` (Ho et al.).
    #[default]
    Uniform,
    /// Improved DDPM's importance sampling for `--loss vlb`
    /// ([`elbo_math::timesteps::LossSecondMoment`]): `p_t` proportional to the root
    /// mean square of the last 10 losses at t (uniform until every t has 10), each
    /// example's term weighted by `1 / (T p_t)`, so the loss stays an unbiased estimate
    /// of the bound's mean term with a lower variance.
    LossSecondMoment,
}

impl TimestepSampling {
    fn is_uniform(&self) -> bool {
        *self == TimestepSampling::Uniform
    }
}

/// The DDPM presets (see [`DdpmConfig::preset`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DdpmPreset {
    /// `ddpm-mnist`: 1.6 M parameters.
    #[default]
    #[serde(rename = "ddpm-mnist")]
    Mnist,
    /// `ddpm-cifar10`: Ho et al.'s 35.7 M-parameter CIFAR-10 network.
    #[serde(rename = "ddpm-cifar10")]
    Cifar10,
    /// `ddpm-64`: improved DDPM's 64x64 network (Nichol & Dhariwal's ImageNet-64 UNet
    /// with fixed variances).
    #[serde(rename = "ddpm-64")]
    Ddpm64,
}

/// The DDPM training recipes (see [`Recipe::of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecipeName {
    /// `mnist`: this project's `ddpm-mnist` budget.
    #[default]
    Mnist,
    /// `ho-cifar10`: Ho et al.'s CIFAR-10 recipe.
    HoCifar10,
}

named_option!(
    DdpmPreset => "DDPM preset",
    RecipeName => "DDPM recipe",
    LossKind => "loss",
    TimestepSampling => "timestep sampler",
    ScheduleKind => "schedule",
    Objective => "objective",
    VarianceKind => "variance",
);

/// A DDPM's configuration: network, schedule, objective, loss and reverse variance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DdpmConfig {
    /// The noise-prediction network.
    pub unet: UnetConfig,
    /// The noise schedule family.
    pub schedule: ScheduleKind,
    /// T.
    pub timesteps: usize,
    /// What the network predicts.
    pub objective: Objective,
    /// What training minimises.
    pub loss: LossKind,
    /// The reverse-step variance.
    pub variance: VarianceKind,
    /// Label dropout of a class-conditional model (`unet.num_classes` set): the
    /// probability that training replaces an example's label with the null label, which
    /// teaches the same network the unconditional model that classifier-free guidance
    /// needs (Ho & Salimans 2022 use 0.1 to 0.2). 0 (and absent from checkpoints) for an
    /// unconditional model.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cond_drop: f64,
    /// How training draws timesteps (uniform, and absent from checkpoints, unless
    /// importance-sampled with `--loss vlb`).
    #[serde(default, skip_serializing_if = "TimestepSampling::is_uniform")]
    pub timestep_sampling: TimestepSampling,
    /// λ of the hybrid loss (`None`, and absent from checkpoints: improved DDPM's 0.001);
    /// only with `loss: Hybrid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid_weight: Option<f64>,
}

/// Improved DDPM's λ of the hybrid loss.
pub const HYBRID_WEIGHT: f64 = 0.001;

fn is_zero(p: &f64) -> bool {
    *p == 0.0
}

impl DdpmConfig {
    /// A named preset for images of shape `image` (square):
    /// - `ddpm-mnist`: 32 base channels, multipliers (1, 2, 2) (28, 14, 7 on MNIST), two
    ///   residual blocks per level, attention at 7x7, no dropout: 1,623,169 parameters.
    /// - `ddpm-cifar10`: Ho et al.'s CIFAR-10 network, 128 base channels, multipliers
    ///   (1, 2, 2, 2), two residual blocks, attention at 16x16, dropout 0.1: 35.7 M.
    /// - `ddpm-64`: improved DDPM's 64x64 network (their ImageNet-64 flags
    ///   `--num_channels 128 --num_res_blocks 3`, channel multipliers (1, 2, 3, 4),
    ///   attention at 16x16 and 8x8, no dropout), with fixed variances (their
    ///   `--learn_sigma` doubles the output channels) and one attention head: 115,938,691
    ///   parameters on 64x64 RGB.
    ///
    /// Both: linear schedule, T = 1000, eps objective, `L_simple`, fixed-large variance.
    pub fn preset(preset: DdpmPreset, image: [i64; 3]) -> Result<DdpmConfig> {
        let [c, h, w] = image;
        if h != w {
            return Err(Error::Config {
                detail: format!("the DDPM UNet takes square images, found {h}x{w}"),
            });
        }
        let (base, mults, blocks, attention, dropout, groups) = match preset {
            DdpmPreset::Mnist => (32, vec![1, 2, 2], 2, vec![7], 0.0, 8),
            DdpmPreset::Cifar10 => (128, vec![1, 2, 2, 2], 2, vec![16], 0.1, 32),
            DdpmPreset::Ddpm64 => (128, vec![1, 2, 3, 4], 3, vec![16, 8], 0.0, 32),
        };
        let config = DdpmConfig {
            unet: UnetConfig {
                in_channels: c,
                image_size: h,
                base_channels: base,
                channel_mults: mults,
                res_blocks: blocks,
                attention_resolutions: attention,
                dropout,
                norm_groups: groups,
                num_classes: None,
                extra_inputs: 0,
                norm_eps: crate::nn::unet::DEFAULT_NORM_EPS,
                downsample_padding: 1,
                time_offset: 0,
                out_channels: None,
            },
            schedule: ScheduleKind::Linear,
            timesteps: 1000,
            objective: Objective::Eps,
            loss: LossKind::Simple,
            variance: VarianceKind::FixedLarge,
            cond_drop: 0.0,
            timestep_sampling: TimestepSampling::Uniform,
            hybrid_weight: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// The configuration with reverse variances `variance`: a learned range doubles the
    /// network's output channels (the second half interpolates each step's
    /// log-variance), a fixed one keeps them those of the image.
    pub fn with_variance(mut self, variance: VarianceKind) -> DdpmConfig {
        self.variance = variance;
        self.unet.out_channels =
            (variance == VarianceKind::LearnedRange).then_some(2 * self.unet.in_channels);
        self
    }

    /// λ of the hybrid loss.
    pub fn hybrid_weight(&self) -> f64 {
        self.hybrid_weight.unwrap_or(HYBRID_WEIGHT)
    }

    /// The preset made class-conditional on `classes` classes, with label dropout
    /// `cond_drop` during training.
    pub fn conditional(mut self, classes: i64, cond_drop: f64) -> Result<DdpmConfig> {
        self.unet.num_classes = Some(classes);
        self.cond_drop = cond_drop;
        self.validate()?;
        Ok(self)
    }

    /// Checks that the model can be built: the network, and label dropout in [0, 1) on a
    /// class-conditional network only.
    pub fn validate(&self) -> Result<()> {
        self.unet.validate()?;
        if !(1..=MAX_TIMESTEPS).contains(&self.timesteps) {
            return Err(Error::Config {
                detail: format!(
                    "a DDPM has 1 to {MAX_TIMESTEPS} steps, found {}: its schedule keeps about \
                     ten float64 tables of T entries (and the loss-second-moment sampler \
                     a history of 10 losses per step), and its bound takes T network calls \
                     per image; T = 1000 (Ho et al.) or 4000 (improved DDPM) are the usual",
                    self.timesteps
                ),
            });
        }
        if !(0.0..1.0).contains(&self.cond_drop) {
            return Err(Error::Config {
                detail: format!(
                    "label dropout (--cond-drop) must be in [0, 1), found {}",
                    self.cond_drop
                ),
            });
        }
        if self.timestep_sampling == TimestepSampling::LossSecondMoment
            && self.loss != LossKind::Vlb
        {
            return Err(Error::Config {
                detail: format!(
                    "importance-sampled timesteps (loss-second-moment) weigh the bound's terms; \
                     they need --loss vlb, found --loss {}",
                    self.loss
                ),
            });
        }
        let learned = self.variance == VarianceKind::LearnedRange;
        let outputs = self.unet.out_channels.unwrap_or(self.unet.in_channels);
        let expected = if learned { 2 } else { 1 } * self.unet.in_channels;
        if outputs != expected {
            return Err(Error::Config {
                detail: format!(
                    "the {} variance needs a network of {expected} output channels for \
                     {} image channels, found {outputs}",
                    self.variance, self.unet.in_channels
                ),
            });
        }
        match (learned, self.loss) {
            (true, LossKind::Simple) => {
                return Err(Error::Config {
                    detail: "learned variances are trained by the bound, which L_simple does \
                             not contain: use --loss hybrid (L_simple + 0.001 L_vlb, improved \
                             DDPM's) or --loss vlb with --variance learned-range"
                        .into(),
                });
            }
            (false, LossKind::Hybrid) => {
                return Err(Error::Config {
                    detail: format!(
                        "the hybrid loss's L_vlb term trains the reverse variances only (the \
                         gradient through the mean is stopped), and the {} variance is fixed: \
                         use --variance learned-range with it, or --loss simple or vlb",
                        self.variance
                    ),
                });
            }
            _ => {}
        }
        if let Some(w) = self.hybrid_weight {
            if self.loss != LossKind::Hybrid {
                return Err(Error::Config {
                    detail: format!(
                        "--hybrid-weight {w} weighs the hybrid loss's L_vlb term; the loss is \
                         {}: add --loss hybrid or leave it out",
                        self.loss
                    ),
                });
            }
            if !(w.is_finite() && w > 0.0) {
                return Err(Error::Config {
                    detail: format!("--hybrid-weight must be a positive number, found {w}"),
                });
            }
        }
        if self.cond_drop > 0.0 && self.unet.num_classes.is_none() {
            return Err(Error::Config {
                detail: format!(
                    "label dropout {} needs a class-conditional network (num_classes), found \
                     an unconditional one",
                    self.cond_drop
                ),
            });
        }
        Ok(())
    }
}

/// The most diffusion steps a DDPM may have: 100 times improved DDPM's 4000, with
/// tables of a few tens of megabytes (10^9 steps were killed for memory at 23 GB).
pub const MAX_TIMESTEPS: usize = 100_000;

/// A training recipe: the settings besides the model that a DDPM is trained with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    /// Optimiser steps.
    pub steps: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate (Adam).
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Global gradient-norm clipping.
    pub clip_grad_norm: f64,
    /// EMA decay of the weights (evaluation and sampling use the EMA weights).
    pub ema_decay: f64,
    /// Random horizontal flips of training images.
    pub horizontal_flip: bool,
}

impl Recipe {
    /// `mnist`: the `ddpm-mnist` budget of this project (2,000 steps of 64 images, Adam
    /// at 5e-4 after 200 warm-up steps, clipping at 1.0, EMA 0.995, which suits a run this
    /// short). `ho-cifar10`: Ho et al.'s CIFAR-10 recipe (800,000 steps of 128, Adam at
    /// 2e-4 after 5,000 warm-up steps, clipping at 1.0, EMA 0.9999, random horizontal
    /// flips; the `ddpm-cifar10` preset carries their dropout 0.1).
    pub fn of(name: RecipeName) -> Recipe {
        match name {
            RecipeName::Mnist => Recipe {
                steps: 2000,
                batch_size: 64,
                lr: 5e-4,
                warmup_steps: 200,
                clip_grad_norm: 1.0,
                ema_decay: 0.995,
                horizontal_flip: false,
            },
            RecipeName::HoCifar10 => Recipe {
                steps: 800_000,
                batch_size: 128,
                lr: 2e-4,
                warmup_steps: 5000,
                clip_grad_norm: 1.0,
                ema_decay: 0.9999,
                horizontal_flip: true,
            },
        }
    }
}
