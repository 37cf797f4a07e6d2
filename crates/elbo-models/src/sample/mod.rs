//! Sampling a diffusion model's reverse process: one [`Sampler`] trait, one file per
//! sampler ([`ancestral`], [`ddim`], [`dpm`]: DPM-Solver++, [`unipc`], [`edm`]: EDM's
//! Euler and Heun), the names users
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
pub mod edm;
#[cfg(test)]
mod gaussian;
mod spec;
pub mod unipc;

use elbo_math::NoiseSchedule;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
pub use spec::{SamplerSpec, Spacing, kept_timesteps};

/// Seeds libtorch's (process-wide) generator before drawing samples. Every command's
/// `--seed` is a u64, the seed libtorch keeps (its bits, as its i64 argument).
pub fn seed_draws(seed: u64) {
    tch::manual_seed(i64::from_ne_bytes(seed.to_ne_bytes()));
}

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
    Error::MathIn {
        what: "noise process".to_string(),
        source: e,
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
    /// `x_0` and of `eps`; `x_0` clipped as `clip_x0` says (and `eps` then recomputed
    /// from it).
    fn predict(&self, x_t: &Tensor, t: usize, clip_x0: ClipX0) -> (Tensor, Tensor);
    /// One ancestral step from `t` to `prev < t` (`t - 1` on the full grid, the previous
    /// kept step of a respaced sampler), one network call: the mean of `p(x_prev | x_t)`
    /// (the posterior mean of `q(x_prev | x_t, x_0)` at the predicted `x_0`, clipped as
    /// `clip_x0` says) and its variance, the model's choice (a scalar tensor, or one per
    /// pixel for a learned variance; 0 at `prev = 0`).
    fn ancestral_step(
        &self,
        x_t: &Tensor,
        t: usize,
        prev: usize,
        clip_x0: ClipX0,
    ) -> Result<(Tensor, Tensor)>;
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
        clip_x0: ClipX0,
        trajectory: &mut Trajectory,
    ) -> Result<Tensor>;
}

/// What each step does with its prediction of `x_0` before using it.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum ClipX0 {
    /// Nothing.
    None,
    /// Clips it to [-1, 1], the data's range (Ho et al.; the default).
    #[default]
    Static,
    /// Saharia et al.'s (2022) dynamic thresholding: per example, `s` = the `percentile`
    /// quantile of `|x_0|` (at least 1), then `x_0` is clipped to [-s, s] and divided by
    /// `s`. Pixels that a large guidance scale pushes past the data's range are pulled
    /// back inside it instead of saturating. Saharia et al. use the 0.995 quantile.
    Dynamic {
        /// The quantile, in (0, 1].
        percentile: f64,
    },
}

impl ClipX0 {
    /// Saharia et al.'s quantile.
    pub const SAHARIA_PERCENTILE: f64 = 0.995;

    /// An error unless a dynamic threshold's quantile is in (0, 1].
    pub fn validate(self) -> Result<()> {
        match self {
            ClipX0::Dynamic { percentile } if !(percentile > 0.0 && percentile <= 1.0) => {
                Err(Error::Config {
                    detail: format!(
                        "the dynamic threshold's percentile must be in (0, 1], found {percentile}"
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// `x0` (shape (B, ...)) as this rule leaves it.
    pub fn apply(self, x0: &Tensor) -> Tensor {
        match self {
            ClipX0::None => x0.shallow_clone(),
            ClipX0::Static => x0.clamp(-1.0, 1.0),
            ClipX0::Dynamic { percentile } => {
                let b = x0.size()[0];
                let s = x0
                    .abs()
                    .reshape([b, -1])
                    .quantile_scalar(percentile, 1, true, "linear")
                    .clamp_min(1.0);
                let mut shape = vec![b];
                shape.resize(x0.dim(), 1);
                let s = s.reshape(&shape);
                x0.clamp_tensor(Some(-&s), Some(s.shallow_clone())) / s
            }
        }
    }
}

/// Classifier-free guidance (Ho & Salimans 2022) for a class-conditional model: the
/// prediction `(1 + w) eps(x, c) - w eps(x, null)` (in whatever the network predicts,
/// which is linear in eps), both terms from one network call on a doubled batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guidance {
    /// Which classes to draw.
    pub classes: Classes,
    /// `w`: 0 is the plain conditional model (one network call on the batch), larger
    /// trades diversity for fidelity to the class.
    pub scale: f64,
}

/// The classes a guided draw asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classes {
    /// Every sample of this class.
    One(i64),
    /// As many of each class, in class order (n must be a multiple of the number of
    /// classes): a grid with n / classes columns has one row per class.
    All,
}

impl std::fmt::Display for Classes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Classes::One(k) => write!(f, "{k}"),
            Classes::All => f.write_str("all"),
        }
    }
}

impl std::str::FromStr for Classes {
    type Err = Error;
    /// `all`, or a class number.
    fn from_str(s: &str) -> Result<Classes> {
        if s == "all" {
            return Ok(Classes::All);
        }
        s.parse::<i64>()
            .ok()
            .filter(|k| *k >= 0)
            .map(Classes::One)
            .ok_or_else(|| Error::Config {
                detail: format!("a class is `all` or a class number (0, 1, ...), found `{s}`"),
            })
    }
}

/// How to sample: which sampler, what each step does with its prediction of `x_0`, and
/// for a class-conditional model which classes and how strongly guided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingOptions {
    /// The sampler.
    pub sampler: SamplerSpec,
    /// Each step's treatment of its prediction of `x_0` (default: clipped to [-1, 1]).
    pub clip_x0: ClipX0,
    /// Classes and guidance (`None`: unguided; a class-conditional model then draws from
    /// its null label, the unconditional model it learned).
    pub guidance: Option<Guidance>,
}

impl SamplingOptions {
    /// `sampler` with each step's `x_0` clipped, unguided.
    pub fn clipped(sampler: SamplerSpec) -> SamplingOptions {
        SamplingOptions {
            sampler,
            ..SamplingOptions::default()
        }
    }

    /// Whether a batch of n may be drawn as several smaller batches with the same
    /// options: not when drawing as many of each class, which orders the whole batch.
    pub fn splits(&self) -> bool {
        !matches!(
            self.guidance,
            Some(Guidance {
                classes: Classes::All,
                ..
            })
        )
    }
}

impl Default for SamplingOptions {
    /// DDIM-50, clipped, unguided.
    fn default() -> Self {
        SamplingOptions {
            sampler: SamplerSpec::default(),
            clip_x0: ClipX0::Static,
            guidance: None,
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
    options.clip_x0.validate()?;
    let sampler = options.sampler.build();
    let mut trajectory = Trajectory::new(frames, sampler.network_calls(big_t));
    let x = sampler.run(denoiser, shape, options.clip_x0, &mut trajectory)?;
    // A grid of NaNs is written as black pixels that look like a result: refuse it.
    if x.isfinite().all().int64_value(&[]) == 0 {
        return Err(Error::Config {
            detail: format!(
                "sampling with {}{} gave values that are not finite (NaN or infinite): a \
                 setting that large overflows float32 (or the model's weights are not finite)",
                options.sampler,
                options.guidance.map_or(String::new(), |g| format!(
                    " and guidance scale {:?}",
                    g.scale
                ))
            ),
        });
    }
    Ok((x, trajectory.states))
}

/// The starting noise `x_T ~ N(0, I)`.
fn start(shape: &[i64], device: Device) -> Tensor {
    Tensor::randn(shape, (Kind::Float, device))
}

/// The network as the bound and the samplers' tests see it: output at `(x_t, t)`.
pub type Network<'a> = dyn Fn(&Tensor, &Tensor) -> Tensor + 'a;

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    /// Saharia et al.'s rule by hand: the quantile of |x| by linear interpolation
    /// between order statistics, floored at 1; clip to [-s, s]; divide by s.
    fn by_hand(x: &[f64], q: f64) -> Vec<f64> {
        let mut sorted: Vec<f64> = x.iter().map(|v| v.abs()).collect();
        sorted.sort_by(f64::total_cmp);
        let pos = q * (sorted.len() - 1) as f64;
        let (i, frac) = (pos.floor() as usize, pos.fract());
        let upper = sorted[(i + 1).min(sorted.len() - 1)];
        let s = (sorted[i] + frac * (upper - sorted[i])).max(1.0);
        x.iter().map(|v| v.clamp(-s, s) / s).collect()
    }

    #[test]
    fn dynamic_thresholding_rescales_each_example_by_its_quantile() {
        let wide = [0.0, -0.5, 1.0, -1.5, 2.0, -2.5, 3.0, -3.5, 4.0];
        let narrow = [0.2, -0.9, 0.5, 0.0, 1.0, -0.3, 0.7, -1.0, 0.1];
        let x = Tensor::from_slice(&[wide, narrow].concat())
            .to_kind(Kind::Float)
            .reshape([2, 1, 3, 3]);
        let q = 0.8;
        let got = values(&ClipX0::Dynamic { percentile: q }.apply(&x));
        // The wide example's 0.8 quantile is 3.2 (between 3.0 and 3.5): s = 3.2, so its
        // values shrink and the largest saturate at 1; the narrow one's is below 1: s = 1,
        // unchanged.
        let expected = [by_hand(&wide, q), by_hand(&narrow, q)].concat();
        assert!((expected[8] - 1.0).abs() < 1e-12 && (expected[2] - 1.0 / 3.2).abs() < 1e-12);
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
        assert_eq!(values(&ClipX0::Static.apply(&x))[8], 1.0);
        assert_eq!(values(&ClipX0::None.apply(&x)), values(&x));
        assert!(ClipX0::Dynamic { percentile: 0.0 }.validate().is_err());
        assert!(ClipX0::Dynamic { percentile: 1.0 }.validate().is_ok());
    }

    #[test]
    fn classes_parse_and_print() {
        for text in ["all", "0", "7"] {
            assert_eq!(text.parse::<Classes>().unwrap().to_string(), text);
        }
        for bad in ["-1", "x", ""] {
            let err = bad.parse::<Classes>().unwrap_err().to_string();
            assert!(err.contains("`all` or a class number"), "{err}");
        }
    }
}
