//! EDM (Karras, Aittala, Aila & Laine 2022) as a model family: the σ-parameterisation
//! `x = y + σ n` with the denoiser preconditioned as the paper's Table 1 writes it,
//!
//! ```text
//! D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))
//! c_skip = σ_data² / (σ² + σ_data²),  c_out = σ σ_data / sqrt(σ² + σ_data²),
//! c_in = 1 / sqrt(σ² + σ_data²),      c_noise = ln(σ) / 4
//! ```
//!
//! trained on `λ(σ) |D(y + σ n; σ) - y|²` with `ln σ ~ N(P_mean, P_std²)` and
//! `λ(σ) = (σ² + σ_data²) / (σ σ_data)²` (the formulas are `elbo_math::edm`'s). The
//! network `F` is the DDPM presets' UNet; its time input is `1000 c_noise` (= 250 ln σ:
//! the 0..1000 scale elbo's UNets are told their time on; c_noise itself is EDM's).
//!
//! For evaluation and sampling the model lives on a grid of `levels` noise levels,
//! `ln σ` evenly spaced from `σ_min` to `σ_max`, seen as a variance-preserving process
//! (`abar = 1 / (1 + σ²)`, `x_t = x / sqrt(1 + σ²)`): every sampler of elbo runs on it
//! (EDM's own `heun-N` by default, on the grid's levels nearest Karras's ρ = 7 steps),
//! and its T-step bound with the posterior's variances (the DDPM's, with `D` as the
//! prediction of `x_0`) is its ELBO in bits per dimension. EDM's options (σ_data, the
//! training σ's distribution, the grid) belong to this family; a VP model (`ddpm`) has
//! none of them.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use elbo_data::Transform;
use elbo_math::NoiseSchedule;
use elbo_math::edm::{LogNormalSigma, Preconditioning};

use super::ddpm::{DdpmConfig, DdpmPreset, Decoder, Diffusion, Objective, VarianceKind, bound};
use crate::data;
use crate::error::{Error, Result};
use crate::models::names::named_option;
use crate::models::{Capabilities, ElboModel, ElboTerms, ExactBound, ModelConfig, SteppedSampling};
use crate::nn::likelihood::Likelihood;
pub use crate::nn::unet::{Unet, UnetConfig};
use crate::sample::edm::{Edm as EdmSampler, EdmSolver};
use crate::sample::{
    ClipX0, Denoiser, Guidance, NoiseProcess, SamplerSpec, SamplingOptions, Spacing,
};
use crate::train::{Batch, Reported, StepLoss, TrainStep};

/// The family name in checkpoints.
pub const FAMILY: &str = "edm";

/// The EDM presets: the DDPM presets' networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EdmPreset {
    /// `edm-mnist`: `ddpm-mnist`'s UNet.
    #[default]
    #[serde(rename = "edm-mnist")]
    Mnist,
    /// `edm-cifar10`: `ddpm-cifar10`'s UNet (Ho et al.'s 35.7 M network).
    #[serde(rename = "edm-cifar10")]
    Cifar10,
}

named_option!(EdmPreset => "EDM preset");

/// An EDM model's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdmConfig {
    /// The network `F`.
    pub unet: UnetConfig,
    /// `σ_data`, the data's standard deviation the preconditioning assumes (0.5).
    pub sigma_data: f64,
    /// The mean of `ln σ` in training (-1.2).
    pub p_mean: f64,
    /// The standard deviation of `ln σ` in training (1.2).
    pub p_std: f64,
    /// The smallest noise level of the grid (0.002).
    pub sigma_min: f64,
    /// The largest (80).
    pub sigma_max: f64,
    /// The grid's noise levels (1000): evaluation's T and the samplers' steps.
    pub levels: usize,
}

impl EdmConfig {
    /// A preset for images of shape `image` with EDM's settings: σ_data 0.5, `ln σ ~
    /// N(-1.2, 1.2²)`, a grid of 1000 levels from 0.002 to 80.
    pub fn preset(preset: EdmPreset, image: [i64; 3]) -> Result<EdmConfig> {
        let ddpm = match preset {
            EdmPreset::Mnist => DdpmPreset::Mnist,
            EdmPreset::Cifar10 => DdpmPreset::Cifar10,
        };
        let LogNormalSigma { p_mean, p_std } = LogNormalSigma::EDM;
        let config = EdmConfig {
            unet: DdpmConfig::preset(ddpm, image)?.unet,
            sigma_data: 0.5,
            p_mean,
            p_std,
            sigma_min: 0.002,
            sigma_max: 80.0,
            levels: 1000,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks that the model can be built.
    pub fn validate(&self) -> Result<()> {
        self.unet.validate()?;
        let bad = |detail: String| Err(Error::Config { detail });
        if self.unet.num_classes.is_some() || self.unet.extra_inputs != 0 {
            return bad("elbo's EDM model is unconditional and sees the image only".into());
        }
        if self.unet.out_channels.is_some() {
            return bad("EDM's network predicts as many channels as it reads".into());
        }
        Preconditioning::new(self.sigma_data).map_err(|e| Error::Config {
            detail: format!("--sigma-data: {e}"),
        })?;
        self.training_sigma()
            .validate()
            .map_err(|e| Error::Config {
                detail: format!("the training noise levels: {e}"),
            })?;
        if !(self.sigma_min > 0.0 && self.sigma_min < self.sigma_max && self.sigma_max.is_finite())
        {
            return bad(format!(
                "the grid runs from sigma_min to a larger finite sigma_max, both positive; \
                 found {} and {}",
                self.sigma_min, self.sigma_max
            ));
        }
        if !(2..=super::ddpm::MAX_TIMESTEPS).contains(&self.levels) {
            return bad(format!(
                "the grid has 2 to {} noise levels, found {}",
                super::ddpm::MAX_TIMESTEPS,
                self.levels
            ));
        }
        Ok(())
    }

    /// The training distribution of σ.
    pub fn training_sigma(&self) -> LogNormalSigma {
        LogNormalSigma {
            p_mean: self.p_mean,
            p_std: self.p_std,
        }
    }

    /// The grid's σ at step t (1..=levels): `ln σ` evenly spaced from σ_min to σ_max.
    pub fn sigma_at(&self, t: usize) -> f64 {
        let f = (t.max(1) - 1) as f64 / (self.levels - 1) as f64;
        (self.sigma_min.ln() + f * (self.sigma_max.ln() - self.sigma_min.ln())).exp()
    }

    /// The grid as a variance-preserving schedule: `abar_t = 1 / (1 + σ_t²)`.
    pub fn schedule(&self) -> Result<NoiseSchedule> {
        let ab: Vec<f64> = (1..=self.levels)
            .map(|t| 1.0 / (1.0 + self.sigma_at(t).powi(2)))
            .collect();
        NoiseSchedule::from_alpha_bar(&ab).map_err(|e| Error::MathIn {
            what: "the EDM grid".to_string(),
            source: e,
        })
    }
}

/// An EDM model on a [`nn::VarStore`]: its UNet under `unet`.
pub struct Edm {
    config: EdmConfig,
    unet: Unet,
    precond: Preconditioning,
    /// The grid as the DDPM's machinery takes it (bound, predictions, ancestral steps).
    grid: Diffusion,
    /// σ of each grid step (entry t; entry 0 is 0).
    sigmas: Tensor,
    sampling: SamplingOptions,
}

impl Edm {
    /// The model under `path`.
    pub fn new(path: &nn::Path<'_>, config: EdmConfig) -> Result<Edm> {
        config.validate()?;
        let unet = Unet::new(&(path / "unet"), &config.unet)?;
        let grid = Diffusion::new(
            config.schedule()?,
            Objective::X0,
            VarianceKind::FixedSmall,
            path.device(),
        )?;
        let mut sigmas = vec![0.0];
        sigmas.extend((1..=config.levels).map(|t| config.sigma_at(t)));
        let sigmas = Tensor::from_slice(&sigmas)
            .to_kind(Kind::Float)
            .to_device(path.device());
        // EDM's deterministic sampler at 35 calls (its CIFAR-10 setting).
        let sampling = SamplingOptions::clipped(SamplerSpec::Edm(EdmSampler {
            steps: 18.min(config.levels),
            solver: EdmSolver::Heun,
            spacing: Spacing::Karras,
            churn: None,
        }));
        Ok(Edm {
            precond: Preconditioning::new(config.sigma_data)?,
            config,
            unet,
            grid,
            sigmas,
            sampling,
        })
    }

    /// The model with `sampling` as what [`ElboModel::sample`] uses.
    pub fn with_sampling(mut self, sampling: SamplingOptions) -> Result<Edm> {
        self.check(&sampling)?;
        self.sampling = sampling;
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &EdmConfig {
        &self.config
    }

    /// `D(x; σ)` for `x` in the σ-parameterisation (B, C, H, W) and σ (B,).
    pub fn denoise(&self, x: &Tensor, sigma: &Tensor, train: bool) -> Tensor {
        let sd2 = self.precond.sigma_data().powi(2);
        let s = sigma.reshape([-1, 1, 1, 1]);
        let s2 = s.square();
        let c_skip = (&s2 + sd2).reciprocal() * sd2;
        let c_out = &s * self.precond.sigma_data() * (&s2 + sd2).rsqrt();
        let c_in = (&s2 + sd2).rsqrt();
        // 1000 c_noise: the 0..1000 scale of the UNet's time input.
        let time = sigma.log() * 250.0;
        let f = self.unet.forward(&(x * c_in), &time, train);
        c_skip * x + c_out * f
    }

    /// The network on the grid as the DDPM's machinery calls it: `x_t` (the
    /// variance-preserving scale) at steps `t` (B,) to its prediction of `x_0`, `D`.
    pub fn network(&self) -> impl Fn(&Tensor, &Tensor) -> Tensor + '_ {
        move |x_t: &Tensor, t: &Tensor| {
            let sigma = self.sigmas.index_select(0, t);
            let scale = (sigma.square() + 1.0).sqrt().reshape([-1, 1, 1, 1]);
            self.denoise(&(x_t * scale), &sigma, false)
        }
    }

    fn image_shape(&self, n: i64) -> [i64; 4] {
        let u = &self.config.unet;
        [n, u.in_channels, u.image_size, u.image_size]
    }

    /// EDM's loss of a batch `y` (in [-1, 1]): σ drawn first (`ln σ ~ N(P_mean,
    /// P_std²)`), then the noise; `λ(σ) |D - y|²` averaged over pixels and examples.
    fn training_loss(&self, y: &Tensor) -> Tensor {
        let b = y.size()[0];
        let n = Tensor::randn([b], (Kind::Float, y.device()));
        let sigma = (n * self.config.p_std + self.config.p_mean).exp();
        let x = y + y.randn_like() * sigma.reshape([-1, 1, 1, 1]);
        let d = self.denoise(&x, &sigma, true);
        let sd2 = self.precond.sigma_data().powi(2);
        let weight = (sigma.square() + sd2) / (sigma.square() * sd2);
        let per_example = (d - y)
            .square()
            .mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
        (weight * per_example).mean(Kind::Float)
    }
}

impl ElboModel for Edm {
    fn config(&self) -> ModelConfig {
        ModelConfig::Edm(self.config.clone())
    }

    fn likelihood(&self) -> Likelihood {
        Likelihood::DiscretizedGaussian
    }

    /// A one-sample unbiased estimate of the grid's T-step bound: two network calls.
    fn elbo_terms(&self, x: &Tensor) -> ElboTerms {
        bound::sampled_terms(&self.grid, &self.network(), x, Decoder::Discretized)
    }

    fn log_importance_weights(&self, x: &Tensor, k: i64) -> Result<Tensor> {
        Ok(bound::log_weights(
            &self.grid,
            &self.network(),
            x,
            k,
            Decoder::Discretized,
        ))
    }

    /// With [`SteppedSampling::default_sampling`]: Heun over 18 levels (35 calls).
    fn sample(&self, n: i64) -> Result<Tensor> {
        let (x, _) = self.sample_with(n, &self.default_sampling(), 0)?;
        Ok(x.clamp(-1.0, 1.0))
    }

    /// `D` at σ = 0.5 (σ_data) from one draw of the noise.
    fn reconstruct(&self, x: &Tensor) -> Tensor {
        let sigma = Tensor::full([x.size()[0]], 0.5, (Kind::Float, x.device()));
        let noisy = x + x.randn_like() * 0.5;
        self.denoise(&noisy, &sigma, false).clamp(-1.0, 1.0)
    }

    fn train_step(&self) -> Result<Box<dyn TrainStep + '_>> {
        Ok(Box::new(EdmStep { model: self }))
    }

    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities {
            stepped: Some(self),
            exact_bound: Some(self),
            ..Capabilities::default()
        }
    }
}

impl ExactBound for Edm {
    /// The grid's T-step bound, every term evaluated (T network calls per image).
    fn exact_bound(&self, x: &Tensor) -> ElboTerms {
        bound::bound_terms(&self.grid, &self.network(), x, Decoder::Discretized)
    }
}

impl Denoiser for Edm {
    fn process(&self) -> &dyn NoiseProcess {
        self.grid.schedule()
    }

    fn device(&self) -> tch::Device {
        self.grid.device()
    }

    fn predict(&self, x_t: &Tensor, t: usize, clip_x0: ClipX0) -> (Tensor, Tensor) {
        let steps = Tensor::full([x_t.size()[0]], t as i64, (Kind::Int64, x_t.device()));
        let output = self.network()(x_t, &steps);
        self.grid.predictions(&output, x_t, &steps, clip_x0)
    }

    fn ancestral_step(
        &self,
        x_t: &Tensor,
        t: usize,
        prev: usize,
        clip_x0: ClipX0,
    ) -> Result<(Tensor, Tensor)> {
        let steps = Tensor::full([x_t.size()[0]], t as i64, (Kind::Int64, x_t.device()));
        let output = self.network()(x_t, &steps);
        self.grid.ancestral_step(&output, x_t, t, prev, clip_x0)
    }
}

impl SteppedSampling for Edm {
    fn default_sampling(&self) -> SamplingOptions {
        self.sampling
    }

    fn classes(&self) -> Option<i64> {
        None
    }

    /// Refuses guidance: elbo's EDM model is unconditional.
    fn check_guidance(&self, guidance: Option<Guidance>) -> Result<()> {
        if guidance.is_some() {
            return Err(Error::Config {
                detail: "guidance needs a class-conditional model; elbo's EDM model is \
                         unconditional"
                    .into(),
            });
        }
        Ok(())
    }

    fn sample_with(
        &self,
        n: i64,
        options: &SamplingOptions,
        frames: usize,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.check(options)?;
        tch::no_grad(|| crate::sample::sample(self, &self.image_shape(n), options, frames))
    }
}

/// EDM's training step.
struct EdmStep<'a> {
    model: &'a Edm,
}

impl TrainStep for EdmStep<'_> {
    fn transform(&self, horizontal_flip: bool) -> Transform {
        data::transform_for(Likelihood::DiscretizedGaussian, horizontal_flip)
    }

    fn loss(&self, batch: &Batch, _step: u64) -> StepLoss {
        let loss = self.model.training_loss(&batch.x);
        StepLoss {
            reported: Reported::Scalars(vec![("edm_loss".into(), loss.detach())]),
            loss,
            extra: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn tiny() -> EdmConfig {
        let mut config = EdmConfig::preset(EdmPreset::Mnist, [1, 28, 28]).unwrap();
        config.unet.base_channels = 8;
        config.unet.norm_groups = 4;
        config.unet.channel_mults = vec![1, 2];
        config.unet.res_blocks = 1;
        config.unet.attention_resolutions = vec![];
        config
    }

    /// The preconditioning is elbo-math's Table 1 (checked through an untrained network,
    /// whose zero output layer makes `F = 0`: `D = c_skip x`), and the grid's levels run
    /// from σ_min to σ_max as a variance-preserving schedule.
    #[test]
    fn the_preconditioning_and_the_grid_follow_the_paper() {
        let _generator = crate::testing::generator_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Edm::new(&vs.root(), tiny()).unwrap();
        let p = Preconditioning::new(0.5).unwrap();
        let x = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
        let sigma = Tensor::from_slice(&[0.01f32, 0.5, 40.0]);
        let d = model.denoise(&x, &sigma, false);
        for (i, s) in [0.01f64, 0.5, 40.0].into_iter().enumerate() {
            let i = i as i64;
            let want = &x.get(i) * p.c_skip(s);
            let gap = (d.get(i) - want).abs().max().double_value(&[]);
            assert!(gap < 1e-5, "sigma {s}: {gap}");
        }
        let config = tiny();
        assert!((config.sigma_at(1) - 0.002).abs() < 1e-12);
        assert!((config.sigma_at(1000) - 80.0).abs() < 1e-9);
        let schedule = config.schedule().unwrap();
        let ab = schedule.alpha_bar(500).unwrap();
        assert!((((1.0 - ab) / ab).sqrt() - config.sigma_at(500)).abs() < 1e-9);
    }

    /// Its loss is EDM's: with F = 0 (the untrained network) `D = c_skip x`, so the loss
    /// of one example at σ is λ(σ) mean (c_skip (y + σ n) - y)², computed here from the
    /// same draws.
    #[test]
    fn the_training_loss_is_lambda_weighted_denoising_error() {
        let _generator = crate::testing::generator_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Edm::new(&vs.root(), tiny()).unwrap();
        let y = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        tch::manual_seed(4);
        let got = model.training_loss(&y).double_value(&[]);
        tch::manual_seed(4);
        let n = Tensor::randn([2], (Kind::Float, Device::Cpu));
        let noise = y.randn_like();
        let p = Preconditioning::new(0.5).unwrap();
        let mut want = 0.0;
        for i in 0..2 {
            let sigma = (-1.2 + 1.2 * n.double_value(&[i])).exp();
            let x = y.get(i) + noise.get(i) * sigma;
            let err = (x * p.c_skip(sigma) - y.get(i)).square().mean(Kind::Float);
            want += p.loss_weight(sigma) * err.double_value(&[]) / 2.0;
        }
        assert!((got / want - 1.0).abs() < 1e-4, "{got} vs {want}");
    }

    /// A few steps of training, the bound, and sampling with Heun and DDIM on the grid
    /// run and give finite values; guidance is refused.
    #[test]
    fn it_trains_evaluates_and_samples() {
        let _generator = crate::testing::generator_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let mut config = tiny();
        config.levels = 50;
        let model = Edm::new(&vs.root(), config).unwrap();
        let x = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let terms = model.elbo_terms(&x);
        assert_eq!(terms.elbo().isfinite().all().int64_value(&[]), 1);
        for sampler in ["heun-5", "ddim-5", "ancestral-5"] {
            let options = SamplingOptions::clipped(sampler.parse().unwrap());
            let (x, _) = model.sample_with(2, &options, 0).unwrap();
            assert_eq!(x.isfinite().all().int64_value(&[]), 1, "{sampler}");
        }
        assert_eq!(
            model
                .train_step()
                .unwrap()
                .loss(
                    &Batch {
                        x: x.shallow_clone(),
                        labels: Tensor::zeros([2], (Kind::Int64, Device::Cpu)),
                    },
                    0
                )
                .loss
                .isfinite()
                .int64_value(&[]),
            1
        );
    }
}
