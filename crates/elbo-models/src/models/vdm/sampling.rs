//! How a VDM samples: the [`Denoiser`] its samplers run on the grid of its learned
//! schedule (the network's prediction at a step's gamma, and the ancestral step through
//! the schedule's posterior), and its [`SteppedSampling`], which refuses guidance.

use tch::{Kind, Tensor};

use super::Vdm;
use crate::error::{Error, Result};
use crate::models::SteppedSampling;
use crate::sample::{ClipX0, Denoiser, Guidance, NoiseProcess, SamplingOptions};

impl Vdm {
    fn image_shape(&self, n: i64) -> [i64; 4] {
        let u = &self.config.unet;
        [n, u.in_channels, u.image_size, u.image_size]
    }
}

impl Denoiser for Vdm {
    fn process(&self) -> &dyn NoiseProcess {
        &self.gamma
    }

    fn device(&self) -> tch::Device {
        self.gamma_device()
    }

    fn predict(&self, x_t: &Tensor, t: usize, clip_x0: ClipX0) -> (Tensor, Tensor) {
        let b = x_t.size()[0];
        let gamma = self.gamma.gamma_at_step(t);
        let g = Tensor::full([b], gamma, (Kind::Float, x_t.device()));
        let eps = self.eps_hat(x_t, &g, false);
        let (alpha, sigma) = (
            elbo_math::vdm::alpha_squared(gamma).sqrt(),
            elbo_math::vdm::sigma_squared(gamma).sqrt(),
        );
        let x0 = (x_t - &eps * sigma) / alpha;
        if clip_x0 == ClipX0::None {
            return (x0, eps);
        }
        let x0 = clip_x0.apply(&x0);
        let eps = (x_t - &x0 * alpha) / sigma;
        (x0, eps)
    }

    /// The posterior `q(z_prev | z_t, x_0)` at the predicted `x_0`: the ancestral step
    /// in the learned schedule (its variance, the posterior's), its coefficients from
    /// elbo-math's posterior between the two steps' `alpha_bar`s.
    fn ancestral_step(
        &self,
        x_t: &Tensor,
        t: usize,
        prev: usize,
        clip_x0: ClipX0,
    ) -> Result<(Tensor, Tensor)> {
        let (x0_hat, _) = self.predict(x_t, t, clip_x0);
        let p = self.gamma.step_posterior(t, prev)?;
        let variance = if prev == 0 { 0.0 } else { p.variance() };
        Ok((
            x0_hat * p.coef_x0() + x_t * p.coef_xt(),
            Tensor::full([], variance, (Kind::Float, x_t.device())),
        ))
    }
}

impl SteppedSampling for Vdm {
    fn default_sampling(&self) -> SamplingOptions {
        self.sampling
    }

    fn classes(&self) -> Option<i64> {
        None
    }

    /// Refuses guidance: the VDM is unconditional.
    fn check_guidance(&self, guidance: Option<Guidance>) -> Result<()> {
        if guidance.is_some() {
            return Err(Error::Config {
                detail: "guidance needs a class-conditional model; the VDM is unconditional".into(),
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
