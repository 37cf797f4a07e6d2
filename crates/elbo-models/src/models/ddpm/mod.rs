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
pub mod guidance;

use std::cell::RefCell;
use std::collections::BTreeMap;

use elbo_data::Transform;
use elbo_math::timesteps::LossSecondMoment;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use crate::data;
use crate::error::{Error, Result};
use crate::models::names::named_option;
use crate::models::{Capabilities, ElboModel, ElboTerms, ExactBound, ModelConfig, SteppedSampling};
use crate::nn::likelihood::Likelihood;
pub use crate::nn::unet::{Unet, UnetConfig};
use crate::sample::{
    Classes, ClipX0, Denoiser, Guidance, NoiseProcess, SamplerSpec, SamplingOptions, Spacing,
};
use crate::train::aids::TrainingAids;
use crate::train::{Batch, Reported, StepLoss, TrainStep};
pub use diffusion::{Decoder, Diffusion, Objective, ScheduleKind, VarianceKind};
pub use guidance::Guided;

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
}

fn is_zero(p: &f64) -> bool {
    *p == 0.0
}

impl DdpmConfig {
    /// A named preset for images of shape `image` (square):
    /// - `ddpm-mnist`: 32 base channels, multipliers (1, 2, 2) (28, 14, 7 on MNIST), two
    ///   residual blocks per level, attention at 7x7, no dropout: 1,623,169 parameters.
    /// - `ddpm-cifar10`: Ho et al.'s CIFAR-10 network, 128 base channels, multipliers
    ///   (1, 2, 2, 2), two residual blocks, attention at 16x16, dropout 0.1: 35.7 M.
    ///
    /// Both: linear schedule, T = 1000, eps objective, `L_simple`, fixed-large variance.
    pub fn preset(preset: DdpmPreset, image: [i64; 3]) -> Result<DdpmConfig> {
        let [c, h, w] = image;
        if h != w {
            return Err(Error::Config {
                detail: format!("the DDPM UNet takes square images, found {h}x{w}"),
            });
        }
        let (base, mults, attention, dropout, groups) = match preset {
            DdpmPreset::Mnist => (32, vec![1, 2, 2], vec![7], 0.0, 8),
            DdpmPreset::Cifar10 => (128, vec![1, 2, 2, 2], vec![16], 0.1, 32),
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
                num_classes: None,
                extra_inputs: 0,
            },
            schedule: ScheduleKind::Linear,
            timesteps: 1000,
            objective: Objective::Eps,
            loss: LossKind::Simple,
            variance: VarianceKind::FixedLarge,
            cond_drop: 0.0,
            timestep_sampling: TimestepSampling::Uniform,
        };
        config.validate()?;
        Ok(config)
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

/// A DDPM on a [`nn::VarStore`] (its UNet under `unet`).
pub struct Ddpm {
    config: DdpmConfig,
    unet: Unet,
    diffusion: Diffusion,
    sampling: SamplingOptions,
}

impl Ddpm {
    /// The model under `path` (whose device the coefficient tensors share).
    pub fn new(path: &nn::Path<'_>, config: DdpmConfig) -> Result<Ddpm> {
        config.validate()?;
        let unet = Unet::new(&(path / "unet"), &config.unet)?;
        let schedule = config.schedule.build(config.timesteps)?;
        let diffusion = Diffusion::new(schedule, config.objective, config.variance, path.device())?;
        // DDIM-50 when T >= 50, else DDIM over all T steps.
        let sampling = SamplingOptions::clipped(SamplerSpec::Ddim {
            steps: diffusion.timesteps().min(50),
            eta: 0.0,
            spacing: Spacing::Uniform,
        });
        Ok(Ddpm {
            config,
            unet,
            diffusion,
            sampling,
        })
    }

    /// The model with `sampling` as what [`ElboModel::sample`] uses (the sample grids of
    /// training, say); an error if the sampler does not fit T.
    pub fn with_sampling(mut self, sampling: SamplingOptions) -> Result<Ddpm> {
        self.check(&sampling)?;
        self.sampling = sampling;
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &DdpmConfig {
        &self.config
    }

    /// The network.
    pub fn unet(&self) -> &Unet {
        &self.unet
    }

    /// The schedule and coefficients.
    pub fn diffusion(&self) -> &Diffusion {
        &self.diffusion
    }

    /// The network in evaluation mode (no dropout; a conditional model's null label).
    pub fn network(&self) -> impl Fn(&Tensor, &Tensor) -> Tensor + '_ {
        move |x: &Tensor, t: &Tensor| self.unet.forward(x, t, false)
    }

    fn image_shape(&self, n: i64) -> [i64; 4] {
        let u = &self.config.unet;
        [n, u.in_channels, u.image_size, u.image_size]
    }

    /// The null label of a class-conditional model (its number of classes), `None` for
    /// an unconditional one.
    pub fn null_label(&self) -> Option<i64> {
        self.unet.null_label()
    }

    /// Its training loss on `x` (labels `labels`) at a uniform t: `L_simple` or the
    /// bound's term (per dimension), with what to report. A class-conditional model sees
    /// each label, or with probability `cond_drop` the null label.
    fn training_loss(
        &self,
        x: &Tensor,
        labels: &Tensor,
        sampler: Option<&RefCell<LossSecondMoment>>,
    ) -> StepLoss {
        let d = &self.diffusion;
        let b = x.size()[0];
        let big_t = d.timesteps() as i64;
        let (t, weights) = match sampler {
            None => (
                Tensor::randint_low(1, big_t + 1, [b], (Kind::Int64, x.device())),
                None,
            ),
            Some(sampler) => {
                let (t, w) = importance_draws(&sampler.borrow(), b);
                (t.to_device(x.device()), Some(w.to_device(x.device())))
            }
        };
        let eps = x.randn_like();
        let x_t = d.q_sample(x, &t, &eps);
        // Drawn after t and eps, and only when conditional: an unconditional model's
        // draws are those of before.
        let labels = self
            .null_label()
            .map(|null| drop_labels(labels, null, self.config.cond_drop));
        let output = self.unet.forward_labelled(&x_t, &t, labels.as_ref(), true);
        let (name, loss) = match self.config.loss {
            LossKind::Simple => (
                "l_simple",
                (output - d.target(x, &t, &eps)).square().mean(Kind::Float),
            ),
            LossKind::Vlb => {
                let dims = (x.numel() as i64 / b.max(1)) as f64;
                let (x0_hat, _) = d.predictions(&output, &x_t, &t, ClipX0::None);
                let term = bound::term(d, x, &x_t, &t, &x0_hat, Decoder::Discretized) / dims;
                let loss = match (&weights, sampler) {
                    (Some(w), Some(sampler)) => {
                        record_losses(&mut sampler.borrow_mut(), &t, &term);
                        (term * w).mean(Kind::Float)
                    }
                    _ => term.mean(Kind::Float),
                };
                ("vlb_term_per_dim", loss)
            }
        };
        StepLoss {
            reported: Reported::Scalars(vec![(name.into(), loss.detach())]),
            loss,
            extra: Vec::new(),
        }
    }
}

/// `b` timesteps drawn from `sampler` (one uniform draw each from libtorch's generator,
/// on the CPU) and their importance weights `1 / (T p_t)`.
fn importance_draws(sampler: &LossSecondMoment, b: i64) -> (Tensor, Tensor) {
    let u = Tensor::rand([b], (Kind::Double, tch::Device::Cpu));
    let u = Vec::<f64>::try_from(u).unwrap_or_default();
    let (t, w): (Vec<i64>, Vec<f64>) = sampler
        .draws(&u)
        .into_iter()
        .map(|(t, w)| (t as i64, w))
        .unzip();
    (
        Tensor::from_slice(&t),
        Tensor::from_slice(&w).to_kind(Kind::Float),
    )
}

/// Records each example's (unweighted) term at its timestep. Non-finite terms are left
/// out: the training loop's guard deals with such a step.
fn record_losses(sampler: &mut LossSecondMoment, t: &Tensor, term: &Tensor) {
    let to_vec = |x: &Tensor| {
        Vec::<f64>::try_from(x.detach().to_device(tch::Device::Cpu).to_kind(Kind::Double))
            .unwrap_or_default()
    };
    for (t, loss) in to_vec(t).into_iter().zip(to_vec(term)) {
        if loss.is_finite() {
            // t came from the sampler's own draw: within 1..=T.
            let _ = sampler.record(t as usize, loss);
        }
    }
}

/// The names of an importance sampler's state in checkpoints (under the step prefix).
const SAMPLER_LOSSES: &str = "timesteps.losses";
const SAMPLER_COUNTS: &str = "timesteps.counts";

/// A DDPM's training step: its own objective ([`LossKind`]), not the ELBO; with
/// importance-sampled timesteps, the sampler and its loss history.
struct DdpmStep<'a> {
    model: &'a Ddpm,
    sampler: Option<RefCell<LossSecondMoment>>,
}

impl TrainStep for DdpmStep<'_> {
    fn transform(&self, horizontal_flip: bool) -> Transform {
        data::transform_for(Likelihood::DiscretizedGaussian, horizontal_flip)
    }

    fn loss(&self, batch: &Batch, _step: u64) -> StepLoss {
        self.model
            .training_loss(&batch.x, &batch.labels, self.sampler.as_ref())
    }

    /// The importance sampler's loss history: (T, 10) losses (zero-padded, oldest
    /// first) and (T,) counts, in f64.
    fn state(&self) -> Vec<(String, Tensor)> {
        let Some(sampler) = &self.sampler else {
            return Vec::new();
        };
        let sampler = sampler.borrow();
        let history = sampler.history();
        let width = LossSecondMoment::IMPROVED_DDPM.0;
        let mut losses = vec![0.0f64; history.len() * width];
        for (row, kept) in history.iter().enumerate() {
            losses[row * width..row * width + kept.len()].copy_from_slice(kept);
        }
        let counts: Vec<f64> = history.iter().map(|k| k.len() as f64).collect();
        vec![
            (
                SAMPLER_LOSSES.to_string(),
                Tensor::from_slice(&losses).reshape([history.len() as i64, width as i64]),
            ),
            (SAMPLER_COUNTS.to_string(), Tensor::from_slice(&counts)),
        ]
    }

    fn restore(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let Some(sampler) = &self.sampler else {
            return Ok(());
        };
        let (Some(losses), Some(counts)) =
            (tensors.get(SAMPLER_LOSSES), tensors.get(SAMPLER_COUNTS))
        else {
            return Err(Error::Checkpoint {
                detail: format!(
                    "{SAMPLER_LOSSES} and {SAMPLER_COUNTS} are missing: the run samples its \
                     timesteps by importance, the checkpoint has no loss history"
                ),
            });
        };
        let steps = self.model.diffusion.timesteps();
        let width = LossSecondMoment::IMPROVED_DDPM.0;
        let bad = |what: String| Error::Checkpoint { detail: what };
        if losses.size() != [steps as i64, width as i64] || counts.size() != [steps as i64] {
            return Err(bad(format!(
                "the loss history has shape {:?} and counts {:?}, expected [{steps}, {width}] \
                 and [{steps}]",
                losses.size(),
                counts.size()
            )));
        }
        let losses = Vec::<f64>::try_from(losses.to_kind(Kind::Double).flatten(0, -1))?;
        let counts = Vec::<f64>::try_from(counts.to_kind(Kind::Double))?;
        let history = counts
            .iter()
            .enumerate()
            .map(|(row, &n)| {
                let n = n as usize;
                (n as f64 == counts[row] && n <= width)
                    .then(|| losses[row * width..row * width + n].to_vec())
                    .ok_or_else(|| bad(format!("timestep {}: a count of {n}", row + 1)))
            })
            .collect::<Result<Vec<_>>>()?;
        let fresh = new_sampler(steps)?;
        *sampler.borrow_mut() = fresh
            .with_history(history)
            .map_err(|e| bad(e.to_string()))?;
        Ok(())
    }
}

/// Improved DDPM's sampler over `1..=steps`.
fn new_sampler(steps: usize) -> Result<LossSecondMoment> {
    let (history, uniform) = LossSecondMoment::IMPROVED_DDPM;
    LossSecondMoment::new(steps, history, uniform).map_err(|e| Error::Config {
        detail: format!("the timestep sampler: {e}"),
    })
}

/// The number of classes of a guided draw of `n` of each class from `model`: an error
/// unless the model is class-conditional and n a multiple of its classes.
fn guided_classes(model: &Ddpm, n: i64) -> Result<i64> {
    let classes = guidance::classes_of(model)?;
    if n % classes != 0 {
        return Err(Error::Config {
            detail: format!(
                "drawing every class draws as many of each: expected a number of samples that \
                 is a multiple of {classes}, found {n}"
            ),
        });
    }
    Ok(classes)
}

/// Classifier-free guidance's label dropout: each of `labels` replaced by `null` with
/// probability `p` (one uniform draw per label when `p > 0`, none otherwise).
pub fn drop_labels(labels: &Tensor, null: i64, p: f64) -> Tensor {
    let labels = labels.to_kind(Kind::Int64);
    if p <= 0.0 {
        return labels;
    }
    let dropped = Tensor::rand(labels.size(), (Kind::Float, labels.device())).lt(p);
    labels.masked_fill(&dropped, null)
}

impl Denoiser for Ddpm {
    fn process(&self) -> &dyn NoiseProcess {
        self.diffusion.schedule()
    }

    fn device(&self) -> tch::Device {
        self.diffusion.device()
    }

    fn predict(&self, x_t: &Tensor, t: usize, clip_x0: ClipX0) -> (Tensor, Tensor) {
        let t = Tensor::full([x_t.size()[0]], t as i64, (Kind::Int64, x_t.device()));
        let output = self.unet.forward(x_t, &t, false);
        self.diffusion.predictions(&output, x_t, &t, clip_x0)
    }

    fn reverse_step(&self, x0_hat: &Tensor, x_t: &Tensor, t: usize) -> (Tensor, f64) {
        let steps = Tensor::full([x_t.size()[0]], t as i64, (Kind::Int64, x_t.device()));
        (
            self.diffusion.reverse_mean(x0_hat, x_t, &steps),
            self.diffusion.model_variance(t),
        )
    }
}

impl ElboModel for Ddpm {
    fn config(&self) -> ModelConfig {
        ModelConfig::Ddpm(self.config.clone())
    }

    fn likelihood(&self) -> Likelihood {
        Likelihood::DiscretizedGaussian
    }

    /// A one-sample unbiased estimate ([`bound::sampled_terms`]): two network calls.
    fn elbo_terms(&self, x: &Tensor) -> ElboTerms {
        bound::sampled_terms(&self.diffusion, &self.network(), x, Decoder::Discretized)
    }

    fn log_importance_weights(&self, x: &Tensor, k: i64) -> Result<Tensor> {
        Ok(bound::log_weights(
            &self.diffusion,
            &self.network(),
            x,
            k,
            Decoder::Discretized,
        ))
    }

    /// With [`SteppedSampling::default_sampling`]: DDIM over min(T, 50) steps, clipped.
    fn sample(&self, n: i64) -> Result<Tensor> {
        let (x, _) = self.sample_with(n, &self.default_sampling(), 0)?;
        Ok(x.clamp(-1.0, 1.0))
    }

    /// The prediction of `x_0` from `x_t` at t = T / 10 (one network call): how much of
    /// an image survives a tenth of the forward process.
    fn reconstruct(&self, x: &Tensor) -> Tensor {
        let d = &self.diffusion;
        let t_mid = (d.timesteps() / 10).max(1) as i64;
        let t = Tensor::full([x.size()[0]], t_mid, (Kind::Int64, x.device()));
        let x_t = d.q_sample(x, &t, &x.randn_like());
        let output = self.unet.forward(&x_t, &t, false);
        d.predictions(&output, &x_t, &t, ClipX0::Static).0
    }

    /// Refuses the VAEs' aids (KL warm-up, free bits): a DDPM has no KL term to weigh.
    fn train_step(&self, aids: &TrainingAids) -> Result<Box<dyn TrainStep + '_>> {
        if aids.kl_warmup_steps > 0 || aids.free_bits > 0.0 {
            return Err(Error::Config {
                detail: format!(
                    "KL warm-up and free bits shape a VAE's KL terms; a DDPM has no such term \
                     to weigh (found kl_warmup {}, free_bits {})",
                    aids.kl_warmup_steps, aids.free_bits
                ),
            });
        }
        let sampler = match self.config.timestep_sampling {
            TimestepSampling::Uniform => None,
            TimestepSampling::LossSecondMoment => {
                Some(RefCell::new(new_sampler(self.diffusion.timesteps())?))
            }
        };
        Ok(Box::new(DdpmStep {
            model: self,
            sampler,
        }))
    }

    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities {
            stepped: Some(self),
            exact_bound: Some(self),
            ..Capabilities::default()
        }
    }
}

impl SteppedSampling for Ddpm {
    /// DDIM with min(T, 50) uniform steps, `eta = 0`, each step's `x_0` clipped,
    /// unless [`Ddpm::with_sampling`] chose otherwise.
    fn default_sampling(&self) -> SamplingOptions {
        self.sampling
    }

    fn process(&self) -> &dyn NoiseProcess {
        Denoiser::process(self)
    }

    fn classes(&self) -> Option<i64> {
        self.null_label()
    }

    fn check(&self, options: &SamplingOptions) -> Result<()> {
        options.sampler.validate(Denoiser::process(self))?;
        options.clip_x0.validate()?;
        match options.guidance {
            None => Ok(()),
            Some(guidance) => {
                let one = match guidance.classes {
                    Classes::All => Guidance {
                        classes: Classes::One(0),
                        ..guidance
                    },
                    Classes::One(_) => guidance,
                };
                Guided::new(self, &one, 1).map(|_| ())
            }
        }
    }

    /// With `options.guidance`, a class-conditional model's guided draw ([`Guided`]);
    /// `Classes::All` draws n / classes of each class in turn (in batches of at most
    /// 256), in class order, and keeps the frames of each.
    fn sample_with(
        &self,
        n: i64,
        options: &SamplingOptions,
        frames: usize,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.check(options)?;
        let Some(guidance) = options.guidance else {
            return tch::no_grad(|| {
                crate::sample::sample(self, &self.image_shape(n), options, frames)
            });
        };
        let Classes::All = guidance.classes else {
            let guided = Guided::new(self, &guidance, n)?;
            return tch::no_grad(|| {
                crate::sample::sample(&guided, &self.image_shape(n), options, frames)
            });
        };
        let classes = guided_classes(self, n)?;
        let mut images = Vec::new();
        let mut kept: Vec<Vec<Tensor>> = Vec::new();
        for class in 0..classes {
            let mut left = n / classes;
            while left > 0 {
                let now = left.min(256);
                let one = SamplingOptions {
                    guidance: Some(Guidance {
                        classes: Classes::One(class),
                        ..guidance
                    }),
                    ..*options
                };
                let (x, states) = self.sample_with(now, &one, frames)?;
                images.push(x);
                kept.resize_with(states.len().max(kept.len()), Vec::new);
                for (all, state) in kept.iter_mut().zip(states) {
                    all.push(state);
                }
                left -= now;
            }
        }
        let frames = kept.iter().map(|f| Tensor::cat(f, 0)).collect();
        Ok((Tensor::cat(&images, 0), frames))
    }
}

impl ExactBound for Ddpm {
    fn exact_bound(&self, x: &Tensor) -> ElboTerms {
        bound::bound_terms(&self.diffusion, &self.network(), x, Decoder::Discretized)
    }
}
