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
//!
//! The model is in layers: its configuration, presets and recipes (`config`:
//! [`DdpmConfig`], [`Recipe`]); the schedule's coefficients ([`diffusion`]) and the
//! bound ([`bound`]); the [`Ddpm`] itself here, with its [`ElboModel`] core; its
//! training step (`step`: the objective at uniform or importance-sampled timesteps); and
//! its sampling (`sampling`: the denoiser, the samplers and [`guidance`]).

pub mod bound;
mod config;
pub mod diffusion;
pub mod guidance;
mod sampling;
mod step;

use tch::{Kind, Tensor, nn};

use crate::error::Result;
use crate::models::{Capabilities, ElboModel, ElboTerms, ExactBound, ModelConfig, SteppedSampling};
use crate::nn::likelihood::Likelihood;
pub use crate::nn::unet::{Unet, UnetConfig};
use crate::sample::{ClipX0, SamplerSpec, SamplingOptions, Spacing};
use crate::train::TrainStep;
pub use config::{
    DdpmConfig, DdpmPreset, LossKind, MAX_TIMESTEPS, Recipe, RecipeName, TimestepSampling,
};
pub use diffusion::{Decoder, Diffusion, Objective, ScheduleKind, VarianceKind};
pub use guidance::Guided;
use step::DdpmStep;
pub use step::drop_labels;

/// The family name in checkpoints.
pub const FAMILY: &str = "ddpm";

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
        let sampling = SamplingOptions::clipped(SamplerSpec::Ddim(crate::sample::ddim::Ddim {
            steps: diffusion.timesteps().min(50),
            eta: 0.0,
            spacing: Spacing::Uniform,
        }));
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

    /// The null label of a class-conditional model (its number of classes), `None` for
    /// an unconditional one.
    pub fn null_label(&self) -> Option<i64> {
        self.unet.null_label()
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
    fn train_step(&self) -> Result<Box<dyn TrainStep + '_>> {
        Ok(Box::new(DdpmStep::new(self)?))
    }

    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities {
            stepped: Some(self),
            exact_bound: Some(self),
            ..Capabilities::default()
        }
    }
}

impl ExactBound for Ddpm {
    fn exact_bound(&self, x: &Tensor) -> ElboTerms {
        bound::bound_terms(&self.diffusion, &self.network(), x, Decoder::Discretized)
    }
}
