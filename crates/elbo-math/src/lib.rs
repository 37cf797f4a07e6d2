//! Exact f64 mathematics of the evidence lower bound: Gaussians and their KL divergences,
//! noise schedules, forward and posterior diffusion kernels, ELBO bookkeeping, the
//! discretized Gaussian decoder, closed-form test beds, and the Fréchet distance between
//! Gaussians that scores samples in a feature space ([`frechet`]).
//!
//! This crate is the oracle the tensor code in `elbo-models` is tested against. It is
//! pure Rust on `ndarray` and `statrs`, does no IO, and never panics on bad input:
//! invalid parameters (a non-positive variance, a schedule whose `alpha_bar` does not
//! fall, a timestep out of range, mismatched lengths) come back as [`MathError`]s. Scalar
//! kernels are total functions on `f64`; array functions and constructors validate.
//!
//! The sections below follow the seeds' derivation in order, each step checked by a
//! doctest against this crate. Equation numbers are those of the seeds' note 003.
//!
//! # 1. The evidence lower bound
//!
//! For any distribution `q(z)`, Jensen's inequality bounds the evidence:
//! `log p(x) = E_q[log p(x, z) / q(z)] + KL(q(z) || p(z | x)) >= ELBO(q)`. In the
//! linear-Gaussian VAE everything is exact, so the identity holds to rounding:
//!
//! ```
//! use elbo_math::{DiagGaussian, testbed::linear_vae::LinearGaussianVae};
//! use ndarray::array;
//!
//! let vae = LinearGaussianVae::new(array![[1.0, 0.5], [-0.3, 2.0], [0.2, 0.1]], array![0.1, 0.0, -0.2], 0.4)?;
//! let x = array![0.5, -1.0, 0.3];
//! let q = DiagGaussian::new(array![0.2, -0.3], array![-1.0, -2.0])?;
//! let log_px = vae.log_evidence(&x)?;
//! let elbo = vae.elbo(&x, &q)?.elbo();
//! let gap = vae.kl_to_posterior(&x, &q)?;
//! assert!((log_px - (elbo + gap)).abs() < 1e-12);
//! assert!(elbo < log_px && gap > 0.0);
//! # Ok::<(), elbo_math::MathError>(())
//! ```
//!
//! # 2. The variational autoencoder
//!
//! With an encoder `q(z | x) = N(mu, diag(sigma^2))` the bound splits into a
//! reconstruction term and a prior-matching term,
//! `ELBO = E_q[log p(x | z)] - KL(q(z | x) || p(z))`, and `z = mu + sigma * eps` makes
//! the first differentiable. [`DiagGaussian`] works in log-variance form, and
//! [`ElboTerms`] keeps the terms apart:
//!
//! ```
//! use elbo_math::{DiagGaussian, ElboTerms, gaussian};
//! use ndarray::array;
//!
//! let q = DiagGaussian::new(array![0.5, -1.0], array![-0.5, 0.3])?;
//! let z = q.reparameterise(&array![1.0, 0.0])?;
//! assert_eq!(z[1], -1.0);
//! let prior_matching = q.kl_to_standard_normal();
//! assert_eq!(prior_matching, q.kl_divergence(&DiagGaussian::standard(2)?)?);
//! // The per-dimension kernel stays finite at extreme variances (here 1e-12 and 1e12).
//! assert!(gaussian::kl_divergence(0.0, -27.6, 3.0, 27.6).is_finite());
//!
//! let reconstruction = gaussian::log_density(0.3, z[0], 0.0) + gaussian::log_density(-0.8, z[1], 0.0);
//! let terms = ElboTerms::new(reconstruction, prior_matching, vec![])?;
//! assert_eq!(terms.elbo(), reconstruction - prior_matching);
//! # Ok::<(), elbo_math::MathError>(())
//! ```
//!
//! # 3. The Markovian hierarchical VAE
//!
//! Stacking latents as a chain, `p(x, z_{1:T}) = p(z_T) p(x | z_1) prod p(z_{t-1} | z_t)`
//! and `q(z_{1:T} | x) = q(z_1 | x) prod q(z_t | z_{t-1})`, the bound gains one term per
//! level. When the transitions are linear-Gaussian, consecutive ones compose into one
//! (the appendix identity, eq. 37): `N(x; a y, s^2)` after `N(y; b z, t^2)` is
//! `N(x; a b z, s^2 + a^2 t^2)`.
//!
//! ```
//! use elbo_math::compose::{GaussianTransition, compose};
//!
//! let inner = GaussianTransition::new(0.9, 0.19)?; // y | z
//! let outer = GaussianTransition::new(0.8, 0.36)?; // x | y
//! let xz = compose(&outer, &inner);
//! assert!((xz.scale() - 0.72).abs() < 1e-15);
//! assert!((xz.variance() - (0.36 + 0.64 * 0.19)).abs() < 1e-15);
//! # Ok::<(), elbo_math::MathError>(())
//! ```
//!
//! # 4. Variational diffusion
//!
//! A diffusion model is a Markovian HVAE whose encoder is fixed:
//! `q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, (1 - alpha_t) I)`, with the betas of a
//! [`NoiseSchedule`]. Composing the steps gives `q(x_t | x_0) = N(sqrt(abar_t) x_0,
//! (1 - abar_t) I)` (eq. 21-22):
//!
//! ```
//! use elbo_math::{NoiseSchedule, compose::forward_chain, diffusion::forward_marginal};
//!
//! let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
//! let chained = forward_chain(&schedule, 600)?;
//! let direct = forward_marginal(&schedule, 600)?;
//! assert!((chained.variance() - direct.variance()).abs() < 1e-12);
//! assert!((chained.scale() - direct.signal()).abs() < 1e-12);
//! # Ok::<(), elbo_math::MathError>(())
//! ```
//!
//! Flipping each `q(x_t | x_{t-1}, x_0)` by Bayes' rule (eq. 8) and telescoping (eq. 13)
//! rewrites the bound as `L_0 - L_T - sum_{t>=2} E KL(q(x_{t-1} | x_t, x_0) ||
//! p(x_{t-1} | x_t))` (eq. 19). The posterior is Gaussian with a mean that can be written
//! with `x_0` (eq. 25) or with the noise (eq. 29), and the reverse mean of eq. 34 uses a
//! noise prediction in the same formula:
//!
//! ```
//! use elbo_math::{NoiseSchedule, diffusion::{posterior, reverse_mean}};
//!
//! let schedule = NoiseSchedule::cosine(1000, 0.008, 0.999)?;
//! let p = posterior(&schedule, 250)?;
//! let (x0, eps) = (0.7, -1.2);
//! let x_t = p.marginal().sample(x0, eps);
//! let by_x0 = p.mean(x_t, x0);
//! let by_eps = reverse_mean(&schedule, 250, x_t, eps)?;
//! assert!((by_x0 - by_eps).abs() < 1e-12);
//! # Ok::<(), elbo_math::MathError>(())
//! ```
//!
//! With a shared reverse variance, each denoising-matching KL is a constant plus a
//! weighted squared error, in `x_0`, in the noise (eq. 35) or in the score:
//!
//! ```
//! use elbo_math::{NoiseSchedule, Prediction, diffusion::posterior};
//! use elbo_math::denoising_matching::{ReverseVariance, denoising_matching_kl, denoising_matching_weights};
//!
//! let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
//! let t = 400;
//! let p = posterior(&schedule, t)?;
//! let (x0, eps, eps_hat) = (0.3, 0.8, 0.5);
//! let x_t = p.marginal().sample(x0, eps);
//! let kl = denoising_matching_kl(&schedule, t, ReverseVariance::Beta, x_t, x0, p.mean_from_eps(x_t, eps_hat))?;
//! let w = denoising_matching_weights(&schedule, t, ReverseVariance::Beta)?;
//! assert!((kl - w.kl(Prediction::Eps, eps, eps_hat)).abs() < 1e-12 * kl);
//! let x0_hat = Prediction::Eps.convert(&p.marginal(), x_t, eps_hat, Prediction::X0);
//! assert!((kl - w.kl(Prediction::X0, x0, x0_hat)).abs() < 1e-9 * kl);
//! # Ok::<(), elbo_math::MathError>(())
//! ```
//!
//! On Gaussian data the whole bound is closed-form, and it sits below the exact evidence
//! of the model with optimal Gaussian reverse steps:
//!
//! ```
//! use elbo_math::NoiseSchedule;
//! use elbo_math::testbed::gaussian_diffusion::{GaussianDataDiffusion, ReverseStepVariance};
//!
//! let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
//! let model = GaussianDataDiffusion::new(0.5, 0.3, schedule, ReverseStepVariance::Posterior)?;
//! let terms = model.elbo(0.2)?;
//! assert_eq!(terms.denoising_matching().len(), 999);
//! assert!(terms.elbo() <= model.log_evidence(0.2)?);
//! assert!(terms.bits_per_dim(1)? > 0.0);
//! # Ok::<(), elbo_math::MathError>(())
//! ```
//!
//! Finally, `L_0` for 8-bit images uses the discretized Gaussian decoder, whose 256 bin
//! probabilities sum to one:
//!
//! ```
//! use elbo_math::discretized::discretized_gaussian_log_prob;
//!
//! let total: f64 = (0..=255u8).map(|k| discretized_gaussian_log_prob(k, 0.1, -3.0).exp()).sum();
//! assert!((total - 1.0).abs() < 1e-12);
//! ```

pub mod compose;
pub mod denoising_matching;
pub mod diag_gaussian;
pub mod diffusion;
pub mod discretized;
pub mod dpm_solver;
pub mod edm;
pub mod eigen;
pub mod elbo;
pub mod error;
pub mod frechet;
pub mod gaussian;
pub mod kid;
mod linalg;
pub mod normal_cdf;
pub mod parameterisation;
pub mod schedule;
pub mod testbed;
pub mod timesteps;
pub mod unipc;
mod validate;
pub mod vdm;
pub mod weighting;

pub use diag_gaussian::DiagGaussian;
pub use elbo::ElboTerms;
pub use error::{MathError, Result};
pub use parameterisation::Prediction;
pub use schedule::NoiseSchedule;
