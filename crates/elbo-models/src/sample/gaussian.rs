//! Gaussian data N(mu, s^2) in every pixel and its exact denoiser: the test bed of the
//! samplers' tests.

use elbo_math::NoiseSchedule;
use tch::{Device, Tensor};

use super::{ClipX0, Denoiser, NoiseProcess};

/// Gaussian data N(mu, s^2) in every pixel, and its exact denoiser: the posterior
/// mean of x_0 given x_t.
pub(crate) struct GaussianDenoiser {
    pub schedule: NoiseSchedule,
    pub mu: f64,
    pub s: f64,
}

impl Denoiser for GaussianDenoiser {
    fn process(&self) -> &dyn NoiseProcess {
        &self.schedule
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn predict(&self, x_t: &Tensor, t: usize, _clip_x0: ClipX0) -> (Tensor, Tensor) {
        let ab = NoiseProcess::alpha_bar(&self.schedule, t).unwrap();
        let (a, sigma) = (ab.sqrt(), (1.0 - ab).sqrt());
        let shrink = a * self.s * self.s / (a * a * self.s * self.s + sigma * sigma);
        let x0 = (x_t - a * self.mu) * shrink + self.mu;
        let eps = (x_t - &x0 * a) / sigma;
        (x0, eps)
    }
    fn ancestral_step(
        &self,
        _x_t: &Tensor,
        _t: usize,
        _prev: usize,
        _clip_x0: ClipX0,
    ) -> crate::error::Result<(Tensor, Tensor)> {
        unreachable!("the ODE samplers do not take ancestral steps")
    }
}
