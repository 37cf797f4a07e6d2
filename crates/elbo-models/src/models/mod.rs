//! What every model of this crate offers the shared training, evaluation and sampling
//! code, and the registry of model families.
//!
//! [`ElboModel`] is the small core every model has: its ELBO term by term, importance
//! weights, samples, reconstructions, its typed configuration and its training step.
//! What only some models have is a small capability trait that callers ask for through
//! [`ElboModel::capabilities`]: [`Latents`] (posterior means, for active units),
//! [`Hierarchical`] (samples that fix the top layers), [`Interpolating`] (one latent
//! space to walk in), [`SteppedSampling`] (a diffusion's samplers and trajectories) and
//! [`ExactBound`] (a bound whose every term can be evaluated rather than sampled).
//!
//! [`ModelConfig`] is the registry: one variant per family, recorded in checkpoints,
//! with [`ModelConfig::build`] as the factory.

pub(crate) mod config;
pub mod ddpm;
pub mod edm;
mod elbo_step;
pub mod hvae;
pub mod names;
pub mod vae;
pub mod vdm;

pub use config::ModelConfig;
pub use elbo_step::{ElboStep, kl_shaped_loss, step_for};

use tch::Tensor;

use crate::error::Result;
use crate::nn::likelihood::Likelihood;
use crate::sample::{Guidance, SamplingOptions};
pub use crate::terms::ElboTerms;
use crate::train::TrainStep;

/// A latent-variable model trained by maximising its ELBO (or, like the DDPM, an
/// objective of its own whose optimum is the ELBO's).
pub trait ElboModel {
    /// The configuration that fixes the shapes of its weights, as recorded in
    /// checkpoints.
    fn config(&self) -> ModelConfig;
    /// The observation model (it decides how pixels are transformed for this model).
    fn likelihood(&self) -> Likelihood;
    /// The ELBO terms of a batch `x` (in the model's data scale), one sample each.
    fn elbo_terms(&self, x: &Tensor) -> ElboTerms;
    /// `log p(x, z_k) - log q(z_k | x)` for `k` draws per example, shape (k, batch); an
    /// error for a model whose bound is not over one latent path (the VDM's integral over
    /// time).
    fn log_importance_weights(&self, x: &Tensor, k: i64) -> Result<Tensor>;
    /// `n` samples, as images in the data scale (a diffusion model's with its default
    /// sampler).
    fn sample(&self, n: i64) -> Result<Tensor>;
    /// Reconstructions of `x` through the posterior mean, as images in the data scale.
    fn reconstruct(&self, x: &Tensor) -> Tensor;
    /// The training step of this model: the negative ELBO for the VAEs, the model's own
    /// objective for the diffusion models. With KL warm-up or free bits, a run trains
    /// through [`step_for`], which shapes a VAE's step by them and refuses them for a
    /// model with no KL term to weigh.
    fn train_step(&self) -> Result<Box<dyn TrainStep + '_>>;
    /// The capabilities it has beyond the core.
    fn capabilities(&self) -> Capabilities<'_>;
}

/// What a model can do beyond [`ElboModel`]'s core, each a small trait (absent: the
/// model cannot).
#[derive(Clone, Copy, Default)]
pub struct Capabilities<'a> {
    /// Posterior means of its latent layers.
    pub latents: Option<&'a dyn Latents>,
    /// Samples that share the top layers of a hierarchy.
    pub hierarchy: Option<&'a dyn Hierarchical>,
    /// Walks in a single latent space.
    pub interpolation: Option<&'a dyn Interpolating>,
    /// Sampling in steps (a diffusion's samplers).
    pub stepped: Option<&'a dyn SteppedSampling>,
    /// A bound whose every term is evaluated rather than sampled.
    pub exact_bound: Option<&'a dyn ExactBound>,
}

impl<'a> Capabilities<'a> {
    /// What a hierarchical VAE has: latent layers whose top can be held fixed.
    pub fn hierarchical<M: Latents + Hierarchical>(model: &'a M) -> Capabilities<'a> {
        Capabilities {
            latents: Some(model),
            hierarchy: Some(model),
            ..Capabilities::default()
        }
    }
}

/// A model with latent layers.
pub trait Latents {
    /// How many latent layers the model stacks (1 for a VAE).
    fn latent_layers(&self) -> usize;
    /// One draw of the posterior mean of every latent layer, bottom (`z_1`) first, each
    /// flattened to (batch, dims): the mean of `q(z_l | x, ...)` given one sample of the
    /// layers it is conditioned on. Averaged over draws and examples it gives the active
    /// units ([`crate::eval::active_units`]).
    fn posterior_means(&self, x: &Tensor) -> Vec<(String, Tensor)>;
}

/// A hierarchy of latent layers whose top can be held fixed.
pub trait Hierarchical {
    /// `rows * columns` images, row after row: each row shares one draw of the top
    /// `fixed` latent layers and redraws the layers below from the prior, which shows
    /// what each level of a hierarchy encodes. An error unless `1 <= fixed < layers`.
    fn fixed_top_samples(&self, fixed: usize, rows: i64, columns: i64) -> Result<Tensor>;
}

/// A model with one latent space to interpolate in.
pub trait Interpolating {
    /// `rows` strips of `steps` images each, decoded along straight lines between two
    /// latent draws from the prior.
    fn interpolations(&self, rows: i64, steps: i64) -> Tensor;
}

/// A model that samples in steps (a diffusion model), with a choice of sampler.
///
/// It is a [`Denoiser`](crate::sample::Denoiser): its noise process (T, alpha-bar,
/// log-SNR) is the one its samplers run on.
pub trait SteppedSampling: crate::sample::Denoiser {
    /// The sampler [`ElboModel::sample`] uses.
    fn default_sampling(&self) -> SamplingOptions;
    /// The classes of a class-conditional model (`None`: unconditional).
    fn classes(&self) -> Option<i64>;
    /// An error unless `options` fit the model: the sampler fits T (of
    /// [`SteppedSampling::process`]), a dynamic threshold's quantile is in (0, 1], and
    /// guidance asks a class-conditional model for its classes with a scale it can use
    /// ([`SteppedSampling::check_guidance`], the model's own part of the check).
    fn check(&self, options: &SamplingOptions) -> Result<()> {
        options
            .sampler
            .validate(crate::sample::Denoiser::process(self))?;
        options.clip_x0.validate()?;
        self.check_guidance(options.guidance)
    }
    /// An error unless `guidance` (`None`: an unguided draw) fits the model: what
    /// [`SteppedSampling::check`] asks of each model after the checks every stepped model
    /// shares.
    fn check_guidance(&self, guidance: Option<Guidance>) -> Result<()>;
    /// `n` samples with `options`, and `frames` states along the way (the last is the
    /// result); an error if they do not fit the model ([`SteppedSampling::check`]).
    fn sample_with(
        &self,
        n: i64,
        options: &SamplingOptions,
        frames: usize,
    ) -> Result<(Tensor, Vec<Tensor>)>;
}

/// A bound of many terms (a diffusion's T) that can be evaluated exactly, term by term,
/// where [`ElboModel::elbo_terms`] is a sampled estimate. One importance sample of such
/// a model costs T network calls, so evaluation computes no IWAE bound unless asked.
pub trait ExactBound {
    /// Every term of the bound of `x`, evaluated.
    fn exact_bound(&self, x: &Tensor) -> ElboTerms;
}

/// `n` samples of `model` in its data scale: with `sampling`, a stepped model's sampler
/// of choice (refused by models with one sampler); without, the model's own.
pub fn draw_samples(
    model: &dyn ElboModel,
    n: i64,
    sampling: Option<&SamplingOptions>,
) -> Result<Tensor> {
    // Batches of at most this many images: any n fits in memory.
    const BATCH: i64 = 256;
    if n > BATCH && sampling.is_none_or(SamplingOptions::splits) {
        let mut parts = Vec::new();
        let mut left = n;
        while left > 0 {
            let now = left.min(BATCH);
            parts.push(draw_samples(model, now, sampling)?);
            left -= now;
        }
        return Ok(Tensor::cat(&parts, 0));
    }
    if let (Some(options), Some(stepped)) = (sampling, model.capabilities().stepped)
        && !options.splits()
    {
        // Drawn class by class by the model itself.
        return Ok(stepped.sample_with(n, options, 0)?.0.clamp(-1.0, 1.0));
    }
    match (sampling, model.capabilities().stepped) {
        (None, _) => model.sample(n),
        // A stepped sampler works in [-1, 1], where its last step may overshoot.
        (Some(options), Some(stepped)) => {
            Ok(stepped.sample_with(n, options, 0)?.0.clamp(-1.0, 1.0))
        }
        (Some(options), None) => Err(crate::Error::Config {
            detail: format!(
                "a {} model has a single sampler; --sampler {} applies to models that sample \
                 in steps (DDPMs)",
                model.config().family(),
                options.sampler
            ),
        }),
    }
}

/// `rows` sampling runs of `frames` states each, from `x_T` to `x_0`, as one batch of
/// images row after row (the trajectories of a stepped sampler).
pub fn trajectory(
    model: &dyn SteppedSampling,
    options: &SamplingOptions,
    rows: i64,
    frames: usize,
) -> Result<Tensor> {
    let (_, states) = model.sample_with(rows, options, frames)?;
    // (frames, rows, C, H, W) -> rows of frames.
    let stacked = Tensor::stack(&states, 0).clamp(-1.0, 1.0);
    Ok(stacked.transpose(0, 1).flatten(0, 1))
}
