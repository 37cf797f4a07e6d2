//! The variational diffusion model (Kingma et al., 2021): the DDPM's bound in continuous
//! time, parameterised by `gamma(t) = -log SNR(t)` ([`elbo_math::vdm`]), with a noise
//! schedule that is learned.
//!
//! For an image `x` (8-bit pixels in [-1, 1], D dimensions), `z_t = alpha_t x + sigma_t
//! eps` with `alpha_t^2 = sigmoid(-gamma(t))`, `sigma_t^2 = sigmoid(gamma(t))`, and
//!
//! ```text
//! -ELBO(x) = -E log p(x | z_0)                  reconstruction: the discretized Gaussian
//!                                               of mean z_0 / alpha_0, scale sigma_0 / alpha_0
//!          + KL(q(z_1 | x) || N(0, I))          prior matching at gamma_1
//!          + 1/2 E_{t ~ U(0, 1), eps} [gamma'(t) |eps - eps_hat(z_t; gamma(t))|^2]
//!                                               the diffusion loss (T -> infinity)
//! ```
//!
//! or, with `timesteps: Some(T)`, the T-step diffusion loss `T/2 E_i (exp(gamma(t_i) -
//! gamma(t_{i-1})) - 1) |eps - eps_hat|^2` at a uniform step i. The network is the
//! DDPM's UNet, fed `z_t` and sinusoidal features `sin(2^n pi z_t)`, `cos(2^n pi z_t)`
//! (Kingma et al.'s Fourier features, which let it see the last bits of a pixel at low
//! noise), and told the time as `1000 (gamma - gamma_min) / (gamma_max - gamma_min)` in
//! the configured range, so that it is a function of the SNR and not of t.
//!
//! Training draws one time per example by VDM's low-discrepancy rule (one uniform per
//! batch, the batch spread over [0, 1)), and trains the schedule's endpoints on the bound
//! and its shape on the variance of the diffusion loss ([`schedule`]).
//!
//! The model is in layers: its configuration and presets (`config`: [`VdmConfig`],
//! [`VdmPreset`]); the schedule ([`schedule`]); the [`Vdm`] itself here, with its terms
//! of the bound, its [`ElboModel`] core and its exact bound; its training step (`step`);
//! and its sampling (`sampling`: the denoiser on the schedule's grid).

mod config;
mod sampling;
pub mod schedule;
mod step;

use tch::{Kind, Tensor, nn};

use crate::error::{Error, Result};
use crate::models::{Capabilities, ElboModel, ElboTerms, ExactBound, ModelConfig, SteppedSampling};
use crate::nn::gaussian::{kl_to_standard_normal, sum_per_example};
use crate::nn::likelihood::{Likelihood, discretized_gaussian_log_prob};
pub use crate::nn::unet::{Unet, UnetConfig};
use crate::sample::{ClipX0, Denoiser, SamplerSpec, SamplingOptions, Spacing};
use crate::train::TrainStep;
pub use config::{MAX_TIMESTEPS, VdmConfig, VdmPreset};
pub use schedule::{GammaAt, GammaKind, GammaNet};
use step::VdmStep;

/// The family name in checkpoints.
pub const FAMILY: &str = "vdm";

/// The one-sample terms of a batch: per example, in nats.
pub struct VdmTerms {
    /// `log p(x | z_0)`.
    pub reconstruction: Tensor,
    /// `KL(q(z_1 | x) || N(0, I))`.
    pub prior: Tensor,
    /// The diffusion loss's one-sample estimate.
    pub diffusion: Tensor,
}

impl VdmTerms {
    /// As ELBO terms (the diffusion loss as the one layer `diffusion`).
    pub fn elbo_terms(self) -> ElboTerms {
        ElboTerms {
            reconstruction: self.reconstruction,
            prior_matching: self.prior,
            layers: vec![("diffusion".to_string(), self.diffusion)],
        }
    }
}

/// `sigmoid(-gamma)` and `sigmoid(gamma)` as square roots, shaped to broadcast over
/// `like` (B, ...): the signal and noise scales.
fn scales(gamma: &Tensor, like: &Tensor) -> (Tensor, Tensor) {
    let mut shape = vec![like.size()[0]];
    shape.resize(like.dim(), 1);
    let g = gamma.reshape(&shape);
    ((-&g).sigmoid().sqrt(), g.sigmoid().sqrt())
}

/// A VDM on a [`nn::VarStore`]: its UNet under `unet`, its schedule under `gamma`.
pub struct Vdm {
    config: VdmConfig,
    unet: Unet,
    gamma: GammaNet,
    sampling: SamplingOptions,
}

impl Vdm {
    /// The model under `path`.
    pub fn new(path: &nn::Path<'_>, config: VdmConfig) -> Result<Vdm> {
        config.validate()?;
        let unet = Unet::new(&(path / "unet"), &config.unet)?;
        let gamma = GammaNet::new(
            &(path / "gamma"),
            config.gamma,
            (config.gamma_min, config.gamma_max),
            config.gamma_features,
            config.sampling_steps,
        )?;
        let sampling = SamplingOptions::clipped(SamplerSpec::Ddim(crate::sample::ddim::Ddim {
            steps: config.sampling_steps.min(50),
            eta: 0.0,
            spacing: Spacing::Uniform,
        }));
        Ok(Vdm {
            config,
            unet,
            gamma,
            sampling,
        })
    }

    /// The model with `sampling` as what [`ElboModel::sample`] uses.
    pub fn with_sampling(mut self, sampling: SamplingOptions) -> Result<Vdm> {
        self.check(&sampling)?;
        self.sampling = sampling;
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &VdmConfig {
        &self.config
    }

    /// The schedule.
    pub fn schedule(&self) -> &GammaNet {
        &self.gamma
    }

    /// The network's input: `z` and its Fourier features, along the channels.
    pub fn network_input(&self, z: &Tensor) -> Tensor {
        if self.config.fourier_exponents.is_empty() {
            return z.shallow_clone();
        }
        let mut parts = vec![z.shallow_clone()];
        for &n in &self.config.fourier_exponents {
            let angle = z * (2f64.powi(n as i32) * std::f64::consts::PI);
            parts.push(angle.sin());
            parts.push(angle.cos());
        }
        Tensor::cat(&parts, 1)
    }

    /// The network's prediction of eps at `z` (B, C, H, W) and `gamma` (B,).
    pub fn eps_hat(&self, z: &Tensor, gamma: &Tensor, train: bool) -> Tensor {
        let span = self.config.gamma_max - self.config.gamma_min;
        let time = (gamma - self.config.gamma_min) * (1000.0 / span);
        self.unet.forward(&self.network_input(z), &time, train)
    }

    /// The network in evaluation mode, as `eps_hat(z, gamma)`.
    pub fn network(&self) -> impl Fn(&Tensor, &Tensor) -> Tensor + '_ {
        move |z: &Tensor, gamma: &Tensor| self.eps_hat(z, gamma, false)
    }

    /// The schedule at times `t` (B,), with the learned shape cut out of the graph when
    /// `split` (training: see [`GammaNet::at_split`]). In discrete time, `t` is read as
    /// the step `i = floor(t T) + 1`, and the result is at `t_i = i / T`, with
    /// `derivative` holding `T (exp(gamma(t_i) - gamma(t_{i-1})) - 1)` (the weight that
    /// makes `1/2 derivative |eps - eps_hat|^2` the T-step loss's one-sample estimate).
    fn schedule_at(&self, t: &Tensor, split: bool) -> GammaAt {
        match self.config.timesteps {
            None if split => self.gamma.at_split(t),
            None => self.gamma.at(t),
            Some(big_t) => {
                // In float64: gamma moves by about (gamma_max - gamma_min) / T between
                // steps, which float32's difference of two gammas near 10 loses at large
                // T (at T = 1e8 the bound collapsed to 0.03 bits/dim).
                let n = big_t as f64;
                let i = (t.to_kind(Kind::Double) * n).floor().clamp(0.0, n - 1.0) + 1.0;
                let ends = Tensor::cat(&[&i / n, (&i - 1.0) / n], 0);
                let both = self.gamma.at(&ends);
                let b = t.size()[0];
                let (g_t, g_s) = (both.gamma.narrow(0, 0, b), both.gamma.narrow(0, b, b));
                let weight = (&g_t - g_s).expm1() * n;
                GammaAt {
                    gamma: g_t.to_kind(t.kind()),
                    derivative: weight.to_kind(t.kind()),
                    split: None,
                }
            }
        }
    }

    /// The diffusion loss's one-sample estimate for each example of `x` at its time `t`
    /// (B,) with noise `eps`, under `denoise` (eps_hat at `(z, gamma)`), and the schedule
    /// there.
    pub fn diffusion_terms(
        &self,
        x: &Tensor,
        t: &Tensor,
        eps: &Tensor,
        denoise: &dyn Fn(&Tensor, &Tensor) -> Tensor,
        split: bool,
    ) -> (Tensor, GammaAt) {
        let at = self.schedule_at(t, split);
        let (alpha, sigma) = scales(&at.gamma, x);
        let z = alpha * x + sigma * eps;
        let error = sum_per_example(&(eps - denoise(&z, &at.gamma)).square());
        ((&at.derivative * error) * 0.5, at)
    }

    /// `KL(q(z_1 | x) || N(0, I))` per example: at gamma_1, `q(z_1 | x) = N(alpha_1 x,
    /// sigma_1^2 I)`.
    pub fn prior_term(&self, x: &Tensor) -> Tensor {
        let (_, g1) = self.gamma.endpoints();
        let (alpha, _) = scales(&g1.reshape([1]).expand([x.size()[0]], false), x);
        // ln sigma^2 = ln sigmoid(gamma) = -softplus(-gamma).
        let log_var = (-(-&g1).softplus()).expand_as(x);
        kl_to_standard_normal(&(alpha * x), &log_var)
    }

    /// `log p(x | z_0)` per example for one draw of `z_0 = alpha_0 x + sigma_0 eps`: the
    /// discretized Gaussian of mean `z_0 / alpha_0` and scale `sigma_0 / alpha_0 =
    /// exp(gamma_0 / 2)` on the 8-bit grid.
    pub fn reconstruction_term(&self, x: &Tensor) -> Tensor {
        let (g0, _) = self.gamma.endpoints();
        let b = x.size()[0];
        let (alpha, sigma) = scales(&g0.reshape([1]).expand([b], false), x);
        let z0 = &alpha * x + sigma * x.randn_like();
        let log_scale = (&g0 * 0.5).expand_as(x);
        discretized_gaussian_log_prob(x, &(z0 / alpha), &log_scale)
    }

    /// One-sample terms of `x` at times `t` (B,): t, then eps, then the decoder's noise
    /// are drawn in that order.
    fn terms_at(&self, x: &Tensor, t: &Tensor, train: bool) -> (VdmTerms, GammaAt) {
        let eps = x.randn_like();
        let denoise = |z: &Tensor, g: &Tensor| self.eps_hat(z, g, train);
        let (diffusion, at) = self.diffusion_terms(x, t, &eps, &denoise, train);
        let terms = VdmTerms {
            reconstruction: self.reconstruction_term(x),
            prior: self.prior_term(x),
            diffusion,
        };
        (terms, at)
    }

    /// The diffusion loss of `x` at `points` fixed times (the midpoints of `points`
    /// equal strata of [0, 1); in discrete time use T points: one per step), one draw of
    /// eps each, shape (points, B): their mean over the points is the diffusion loss by
    /// the midpoint rule (in discrete time: exactly the T-step sum, each step's error
    /// from one draw); their spread is that of the one-sample estimate.
    pub fn diffusion_profile(&self, x: &Tensor, points: usize) -> Tensor {
        let b = x.size()[0];
        let network = self.network();
        let rows: Vec<Tensor> = (0..points)
            .map(|k| {
                let t = Tensor::full(
                    [b],
                    (k as f64 + 0.5) / points as f64,
                    (Kind::Float, x.device()),
                );
                self.diffusion_terms(x, &t, &x.randn_like(), &network, false)
                    .0
            })
            .collect();
        Tensor::stack(&rows, 0)
    }

    /// The points of the exact evaluation: T in discrete time, else the grid's steps.
    pub fn bound_points(&self) -> usize {
        self.config.timesteps.unwrap_or(self.config.sampling_steps)
    }

    /// `gamma(t)` at `points + 1` evenly spaced times from 0 to 1, in f64.
    pub fn gamma_curve(&self, points: usize) -> Result<Vec<f64>> {
        let n = points.max(1);
        let t = Tensor::arange(n as i64 + 1, (Kind::Float, self.gamma_device())) / n as f64;
        let gamma = tch::no_grad(|| self.gamma.at(&t).gamma.to_kind(Kind::Double));
        Ok(Vec::<f64>::try_from(gamma.to_device(tch::Device::Cpu))?)
    }

    fn gamma_device(&self) -> tch::Device {
        self.gamma.endpoints().0.device()
    }
}

impl ElboModel for Vdm {
    fn config(&self) -> ModelConfig {
        ModelConfig::Vdm(self.config.clone())
    }

    fn likelihood(&self) -> Likelihood {
        Likelihood::DiscretizedGaussian
    }

    /// A one-sample unbiased estimate: t uniform on [0, 1), one network call.
    fn elbo_terms(&self, x: &Tensor) -> ElboTerms {
        let t = Tensor::rand([x.size()[0]], (Kind::Float, x.device()));
        self.terms_at(x, &t, false).0.elbo_terms()
    }

    /// A continuous-time VDM's bound is an integral over t, not a sum over a latent
    /// path: it has no importance weights.
    fn log_importance_weights(&self, _x: &Tensor, _k: i64) -> Result<Tensor> {
        Err(Error::Config {
            detail: "the VDM's bound is an integral over time, not a sum over one latent \
                     path: it has no importance-weighted (IWAE) bound; evaluate with --iw 0"
                .into(),
        })
    }

    /// With [`SteppedSampling::default_sampling`]: DDIM over 50 steps of the grid.
    fn sample(&self, n: i64) -> Result<Tensor> {
        let (x, _) = self.sample_with(n, &self.default_sampling(), 0)?;
        Ok(x.clamp(-1.0, 1.0))
    }

    /// The prediction of `x_0` from `z_t` at t = 1/10 (one network call).
    fn reconstruct(&self, x: &Tensor) -> Tensor {
        let step = (self.config.sampling_steps / 10).max(1);
        let gamma = self.gamma.gamma_at_step(step);
        let (alpha, sigma) = (
            elbo_math::vdm::alpha_squared(gamma).sqrt(),
            elbo_math::vdm::sigma_squared(gamma).sqrt(),
        );
        let z = x * alpha + x.randn_like() * sigma;
        self.predict(&z, step, ClipX0::Static).0
    }

    /// Refuses the VAEs' aids (KL warm-up, free bits): the VDM's KL terms are the
    /// diffusion's, not a latent code's to protect.
    fn train_step(&self) -> Result<Box<dyn TrainStep + '_>> {
        Ok(Box::new(VdmStep::new(self)))
    }

    fn capabilities(&self) -> Capabilities<'_> {
        Capabilities {
            stepped: Some(self),
            exact_bound: Some(self),
            ..Capabilities::default()
        }
    }
}

impl ExactBound for Vdm {
    /// The diffusion loss at [`Vdm::bound_points`] fixed times (one eps each), reported
    /// in ten groups of times; the prior term exactly; the reconstruction from one draw
    /// of `z_0`.
    fn exact_bound(&self, x: &Tensor) -> ElboTerms {
        let points = self.bound_points();
        let profile = self.diffusion_profile(x, points) / points as f64;
        let groups = 10.min(points);
        let mut layers = Vec::new();
        for g in 0..groups {
            let (lo, hi) = (g * points / groups, (g + 1) * points / groups);
            let name = format!(
                "diffusion t={:.1}..{:.1}",
                lo as f64 / points as f64,
                hi as f64 / points as f64
            );
            layers.push((
                name,
                profile
                    .narrow(0, lo as i64, (hi - lo) as i64)
                    .sum_dim_intlist(0, false, Kind::Float),
            ));
        }
        ElboTerms {
            reconstruction: self.reconstruction_term(x),
            prior_matching: self.prior_term(x),
            layers,
        }
    }
}
