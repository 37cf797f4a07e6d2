//! Closed-form test beds: models simple enough that the evidence, the posterior and the
//! ELBO are exact, so every identity of the derivation can be checked to rounding error,
//! and Monte Carlo estimates can be checked against the truth.
//!
//! - [`linear_vae`]: the linear-Gaussian VAE (`log p(x) = ELBO + KL(q || p(z|x))`).
//! - [`gaussian_diffusion`]: diffusion on Gaussian data with optimal Gaussian reverse
//!   steps (exact marginals, evidence and ELBO).
//! - [`gaussian_vdm`]: the variational diffusion model on Gaussian data with the optimal
//!   denoiser (every term of its continuous-time bound in closed form).
//! - [`diffusion_paths`]: sampled forward paths, the ELBO integrand in the seeds' two
//!   forms (eq. 6 and eq. 19), and its Monte Carlo average.

pub mod diffusion_paths;
pub mod gaussian_diffusion;
pub mod gaussian_vdm;
pub mod linear_vae;
