//! The denoising diffusion probabilistic model (Ho et al., 2020) as the seeds derive
//! it: a fixed Gaussian forward process `q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1},
//! beta_t I)`, a learned reverse process `p(x_{t-1} | x_t) = N(mu_theta(x_t, t),
//! sigma_t^2 I)` whose mean comes from a UNet's prediction (of eps, x_0 or v), and the
//! discretized Gaussian decoder for 8-bit pixels scaled to [-1, 1].
//!
//! Training minimises `L_simple` (the unweighted squared error of the prediction at a
//! uniform t) or the true bound's term at a uniform t; evaluation reports the full bound
//! ([`bound::bound_terms`]) in bits per dimension. Every coefficient comes from
//! elbo-math's [`elbo_math::NoiseSchedule`].

pub mod bound;
pub mod diffusion;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use crate::error::{Error, Result};
use crate::models::{ElboModel, ElboTerms, TrainingLoss};
use crate::nn::likelihood::Likelihood;
pub use crate::nn::unet::{Unet, UnetConfig};
pub use crate::sample::{Sampler, Spacing};
pub use diffusion::{Decoder, Diffusion, Objective, ScheduleKind, VarianceKind};

/// The family name in checkpoints.
pub const FAMILY: &str = "ddpm";

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
}

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
}

impl DdpmConfig {
    /// A named preset for images of shape `image` (square):
    /// - `ddpm-mnist`: 32 base channels, multipliers (1, 2, 2) (28, 14, 7 on MNIST), two
    ///   residual blocks per level, attention at 7x7, no dropout: 1,623,169 parameters.
    /// - `ddpm-cifar10`: Ho et al.'s CIFAR-10 network, 128 base channels, multipliers
    ///   (1, 2, 2, 2), two residual blocks, attention at 16x16, dropout 0.1: 35.7 M.
    ///
    /// Both: linear schedule, T = 1000, eps objective, `L_simple`, fixed-large variance.
    pub fn preset(name: &str, image: [i64; 3]) -> Result<DdpmConfig> {
        let [c, h, w] = image;
        if h != w {
            return Err(Error::Config {
                detail: format!("the DDPM UNet takes square images, found {h}x{w}"),
            });
        }
        let (base, mults, attention, dropout, groups) = match name {
            "ddpm-mnist" => (32, vec![1, 2, 2], vec![7], 0.0, 8),
            "ddpm-cifar10" => (128, vec![1, 2, 2, 2], vec![16], 0.1, 32),
            other => {
                return Err(Error::Config {
                    detail: format!(
                        "unknown DDPM preset {other:?}: expected ddpm-mnist or ddpm-cifar10"
                    ),
                });
            }
        };
        let config = DdpmConfig {
            unet: UnetConfig {
                in_channels: c,
                image_size: h,
                base_channels: base,
                channel_mults: mults,
                res_blocks: 2,
                attention_resolutions: attention,
                dropout,
                norm_groups: groups,
            },
            schedule: ScheduleKind::Linear,
            timesteps: 1000,
            objective: Objective::Eps,
            loss: LossKind::Simple,
            variance: VarianceKind::FixedLarge,
        };
        config.unet.validate()?;
        Ok(config)
    }
}

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
    pub fn named(name: &str) -> Result<Recipe> {
        match name {
            "mnist" => Ok(Recipe {
                steps: 2000,
                batch_size: 64,
                lr: 5e-4,
                warmup_steps: 200,
                clip_grad_norm: 1.0,
                ema_decay: 0.995,
                horizontal_flip: false,
            }),
            "ho-cifar10" => Ok(Recipe {
                steps: 800_000,
                batch_size: 128,
                lr: 2e-4,
                warmup_steps: 5000,
                clip_grad_norm: 1.0,
                ema_decay: 0.9999,
                horizontal_flip: true,
            }),
            other => Err(Error::Config {
                detail: format!("unknown DDPM recipe {other:?}: expected mnist or ho-cifar10"),
            }),
        }
    }
}

/// A DDPM on a [`nn::VarStore`] (its UNet under `unet`).
pub struct Ddpm {
    config: DdpmConfig,
    unet: Unet,
    diffusion: Diffusion,
    sampler: Sampler,
    clip_x0: bool,
}

impl Ddpm {
    /// The model under `path` (whose device the coefficient tensors share).
    pub fn new(path: &nn::Path<'_>, config: DdpmConfig) -> Result<Ddpm> {
        let unet = Unet::new(&(path / "unet"), &config.unet)?;
        let schedule = config.schedule.build(config.timesteps)?;
        let diffusion = Diffusion::new(schedule, config.objective, config.variance, path.device())?;
        let mut ddpm = Ddpm {
            config,
            unet,
            diffusion,
            sampler: Sampler::Ancestral,
            clip_x0: true,
        };
        // DDIM-50 when T >= 50, else DDIM over all T steps.
        let steps = ddpm.diffusion.timesteps().min(50);
        ddpm.set_sampler(
            Sampler::Ddim {
                steps,
                eta: 0.0,
                spacing: Spacing::Uniform,
            },
            true,
        )?;
        Ok(ddpm)
    }

    /// The configuration.
    pub fn config(&self) -> &DdpmConfig {
        &self.config
    }

    /// The schedule and coefficients.
    pub fn diffusion(&self) -> &Diffusion {
        &self.diffusion
    }

    /// Chooses how [`ElboModel::sample`] draws (default DDIM-50, `eta = 0`) and whether
    /// each step clips its prediction of `x_0` to [-1, 1] (default yes, as Ho et al.);
    /// an error if the sampler keeps more steps than T.
    pub fn set_sampler(&mut self, sampler: Sampler, clip_x0: bool) -> Result<()> {
        if let Sampler::Ddim { steps, spacing, .. } = sampler {
            crate::sample::kept_timesteps(self.diffusion.timesteps(), steps, spacing)?;
        }
        self.sampler = sampler;
        self.clip_x0 = clip_x0;
        Ok(())
    }

    /// The sampler [`ElboModel::sample`] uses.
    pub fn sampler(&self) -> Sampler {
        self.sampler
    }

    /// The network in evaluation mode (no dropout).
    fn network(&self) -> impl Fn(&Tensor, &Tensor) -> Tensor + '_ {
        move |x: &Tensor, t: &Tensor| self.unet.forward(x, t, false)
    }

    fn image_shape(&self, n: i64) -> [i64; 4] {
        let u = &self.config.unet;
        [n, u.in_channels, u.image_size, u.image_size]
    }

    /// `n` samples with `sampler`, and `frames` states along the way (the last is the
    /// result).
    pub fn sample_with(
        &self,
        n: i64,
        sampler: Sampler,
        clip_x0: bool,
        frames: usize,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let network = self.network();
        tch::no_grad(|| {
            crate::sample::sample(
                &self.diffusion,
                &network,
                &self.image_shape(n),
                sampler,
                clip_x0,
                frames,
            )
        })
    }
}

impl ElboModel for Ddpm {
    fn family(&self) -> &'static str {
        FAMILY
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }

    fn likelihood(&self) -> Likelihood {
        Likelihood::DiscretizedGaussian
    }

    /// A one-sample unbiased estimate ([`bound::sampled_terms`]): two network calls.
    fn elbo_terms(&self, x: &Tensor) -> ElboTerms {
        bound::sampled_terms(&self.diffusion, &self.network(), x, Decoder::Discretized)
    }

    fn exact_bound(&self, x: &Tensor) -> Option<ElboTerms> {
        Some(bound::bound_terms(
            &self.diffusion,
            &self.network(),
            x,
            Decoder::Discretized,
        ))
    }

    fn default_iw_samples(&self) -> Option<i64> {
        None
    }

    fn training_loss(&self, x: &Tensor) -> Option<TrainingLoss> {
        let d = &self.diffusion;
        let b = x.size()[0];
        let big_t = d.timesteps() as i64;
        let t = Tensor::randint_low(1, big_t + 1, [b], (Kind::Int64, x.device()));
        let eps = x.randn_like();
        let x_t = d.q_sample(x, &t, &eps);
        let output = self.unet.forward(&x_t, &t, true);
        Some(match self.config.loss {
            LossKind::Simple => {
                let loss = (output - d.target(x, &t, &eps)).square().mean(Kind::Float);
                TrainingLoss {
                    reported: vec![("l_simple".into(), loss.detach())],
                    loss,
                }
            }
            LossKind::Vlb => {
                let dims = (x.numel() as i64 / b.max(1)) as f64;
                let (x0_hat, _) = d.predictions(&output, &x_t, &t, false);
                let kl = d.denoising_matching(x, &x_t, &t, &x0_hat);
                let nll = -d.reconstruction(x, &x_t, &t, &x0_hat, Decoder::Discretized);
                let term = kl.where_self(&t.gt(1), &nll);
                let loss = term.mean(Kind::Float) / dims;
                TrainingLoss {
                    reported: vec![("vlb_term_per_dim".into(), loss.detach())],
                    loss,
                }
            }
        })
    }

    fn log_importance_weights(&self, x: &Tensor, k: i64) -> Tensor {
        bound::log_weights(&self.diffusion, &self.network(), x, k, Decoder::Discretized)
    }

    fn sample(&self, n: i64) -> Tensor {
        match self.sample_with(n, self.sampler, self.clip_x0, 0) {
            Ok((x, _)) => x.clamp(-1.0, 1.0),
            // Unreachable: `set_sampler` validated the sampler against T, and the
            // default (DDIM-50) is checked when the model is built.
            Err(_) => Tensor::zeros(self.image_shape(n), (Kind::Float, self.diffusion.device())),
        }
    }

    /// The prediction of `x_0` from `x_t` at t = T / 10 (one network call): how much of
    /// an image survives a tenth of the forward process.
    fn reconstruct(&self, x: &Tensor) -> Tensor {
        let d = &self.diffusion;
        let t_mid = (d.timesteps() / 10).max(1) as i64;
        let t = Tensor::full([x.size()[0]], t_mid, (Kind::Int64, x.device()));
        let x_t = d.q_sample(x, &t, &x.randn_like());
        let output = self.unet.forward(&x_t, &t, false);
        d.predictions(&output, &x_t, &t, true).0
    }

    fn configure_sampler(&mut self, sampler: &str, clip_x0: bool) -> Result<()> {
        self.set_sampler(sampler.parse()?, clip_x0)
    }

    fn trajectory(&self, rows: i64, frames: usize) -> Option<Tensor> {
        let (_, states) = self
            .sample_with(rows, self.sampler, self.clip_x0, frames)
            .ok()?;
        // (frames, rows, C, H, W) -> rows of frames.
        let stacked = Tensor::stack(&states, 0).clamp(-1.0, 1.0);
        Some(stacked.transpose(0, 1).flatten(0, 1))
    }
}
