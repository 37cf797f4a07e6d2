//! Sampling a diffusion model's reverse process: one [`Sampler`] trait, one file per
//! sampler ([`ancestral`], [`ddim`], [`dpm`]: DPM-Solver++, [`unipc`]), the names users
//! type parsed
//! in one place
//! ([`SamplerSpec`]), over a [`NoiseProcess`] (alpha, sigma, log-SNR on the model's time
//! grid) and a [`Denoiser`] (the model's predictions at a step).
//!
//! A sampler runs its own loop, so one that keeps a history of predictions (a
//! multistep solver) keeps it there.

pub mod ancestral;
pub mod ddim;
pub mod dpm;
mod spec;
pub mod unipc;

use elbo_math::NoiseSchedule;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
pub use spec::{SamplerSpec, Spacing, kept_timesteps};

/// A noise process as samplers see it: `x_t = alpha(t) x_0 + sigma(t) eps` on the
/// model's time grid `t = 0..=T` (`t = 0` is the data), with `alpha(t)^2 = alpha_bar(t)`
/// and `alpha^2 + sigma^2 = 1` (variance preserving).
pub trait NoiseProcess {
    /// T: the steps of the grid.
    fn timesteps(&self) -> usize;
    /// `alpha_bar(t)`, with `alpha_bar(0) = 1`.
    fn alpha_bar(&self, t: usize) -> Result<f64>;
    /// The variance of `q(x_{t-1} | x_t, x_0)` on this grid, t in `1..=T`.
    fn posterior_variance(&self, t: usize) -> Result<f64>;
    /// The process on the kept steps only (for samplers that skip steps).
    fn respace(&self, kept: &[usize]) -> Result<NoiseSchedule>;
    /// `alpha(t) = sqrt(alpha_bar(t))`, the signal's scale.
    fn signal_scale(&self, t: usize) -> Result<f64> {
        Ok(self.alpha_bar(t)?.sqrt())
    }
    /// `sigma(t) = sqrt(1 - alpha_bar(t))`, the noise's scale.
    fn noise_scale(&self, t: usize) -> Result<f64> {
        Ok((1.0 - self.alpha_bar(t)?).sqrt())
    }
    /// `log(alpha^2 / sigma^2)`, the log signal-to-noise ratio.
    fn log_snr(&self, t: usize) -> Result<f64> {
        let ab = self.alpha_bar(t)?;
        Ok((ab / (1.0 - ab)).ln())
    }
}

fn math(e: elbo_math::MathError) -> Error {
    Error::Config {
        detail: format!("noise process: {e}"),
    }
}

/// A discrete schedule (elbo-math's, in f64) is a noise process.
impl NoiseProcess for NoiseSchedule {
    fn timesteps(&self) -> usize {
        self.num_steps()
    }
    fn alpha_bar(&self, t: usize) -> Result<f64> {
        NoiseSchedule::alpha_bar(self, t).map_err(math)
    }
    fn posterior_variance(&self, t: usize) -> Result<f64> {
        NoiseSchedule::posterior_variance(self, t).map_err(math)
    }
    fn respace(&self, kept: &[usize]) -> Result<NoiseSchedule> {
        NoiseSchedule::respace(self, kept).map_err(|e| Error::Config {
            detail: format!("respacing the schedule: {e}"),
        })
    }
    fn log_snr(&self, t: usize) -> Result<f64> {
        NoiseSchedule::log_snr(self, t).map_err(math)
    }
}

/// What a sampler asks of a model: its noise process, and its predictions at a step.
pub trait Denoiser {
    /// The model's noise process.
    fn process(&self) -> &dyn NoiseProcess;
    /// Where the model's tensors live.
    fn device(&self) -> Device;
    /// One network call at step `t` (of `1..=T`) on the batch `x_t`: the predictions of
    /// `x_0` and of `eps`; with `clip_x0`, `x_0` is clipped to [-1, 1] and `eps`
    /// recomputed from it.
    fn predict(&self, x_t: &Tensor, t: usize, clip_x0: bool) -> (Tensor, Tensor);
    /// The ancestral reverse step `p(x_{t-1} | x_t)` at the predicted `x_0`: its mean and
    /// its variance (the model's choice of variance).
    fn reverse_step(&self, x0_hat: &Tensor, x_t: &Tensor, t: usize) -> (Tensor, f64);
}

/// A way to run the reverse process from noise to data.
pub trait Sampler {
    /// Network evaluations per sample.
    fn network_calls(&self, big_t: usize) -> usize;
    /// Runs from `x_T ~ N(0, I)` of shape `shape` to `x_0`; `trajectory` receives the
    /// state after each step.
    fn run(
        &self,
        denoiser: &dyn Denoiser,
        shape: &[i64],
        clip_x0: bool,
        trajectory: &mut Trajectory,
    ) -> Result<Tensor>;
}

/// How to sample: which sampler, and whether each step clips its prediction of `x_0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingOptions {
    /// The sampler.
    pub sampler: SamplerSpec,
    /// Clip each step's prediction of `x_0` to [-1, 1] (Ho et al.; the default).
    pub clip_x0: bool,
}

impl Default for SamplingOptions {
    /// DDIM-50, clipped.
    fn default() -> Self {
        SamplingOptions {
            sampler: SamplerSpec::default(),
            clip_x0: true,
        }
    }
}

/// Intermediate states kept along a sampling run: `frames` of them, evenly spread over
/// the steps (the last is the result).
pub struct Trajectory {
    every: usize,
    steps: usize,
    taken: usize,
    /// The states kept so far.
    pub states: Vec<Tensor>,
}

impl Trajectory {
    /// Keeps `frames` states of a run of `steps` steps (none when `frames` is 0).
    pub fn new(frames: usize, steps: usize) -> Trajectory {
        Trajectory {
            every: if frames == 0 {
                0
            } else {
                steps.div_ceil(frames)
            },
            steps,
            taken: 0,
            states: Vec::new(),
        }
    }

    /// Called with the state after each step.
    pub fn step(&mut self, x: &Tensor) {
        self.taken += 1;
        if self.every > 0 && (self.taken.is_multiple_of(self.every) || self.taken == self.steps) {
            self.states.push(x.shallow_clone());
        }
    }
}

/// Runs the sampler `options` names on `denoiser` from noise of shape `shape`, keeping
/// `frames` intermediate states. Every step draws a standard normal (also where a
/// deterministic sampler leaves it unused, so that the random stream does not depend on
/// the sampler's noise scale).
pub fn sample(
    denoiser: &dyn Denoiser,
    shape: &[i64],
    options: &SamplingOptions,
    frames: usize,
) -> Result<(Tensor, Vec<Tensor>)> {
    let big_t = denoiser.process().timesteps();
    options.sampler.validate(denoiser.process())?;
    let sampler = options.sampler.build();
    let mut trajectory = Trajectory::new(frames, sampler.network_calls(big_t));
    let x = sampler.run(denoiser, shape, options.clip_x0, &mut trajectory)?;
    Ok((x, trajectory.states))
}

/// The starting noise `x_T ~ N(0, I)`.
fn start(shape: &[i64], device: Device) -> Tensor {
    Tensor::randn(shape, (Kind::Float, device))
}

/// The network as the bound and the samplers' tests see it: output at `(x_t, t)`.
pub type Network<'a> = dyn Fn(&Tensor, &Tensor) -> Tensor + 'a;
