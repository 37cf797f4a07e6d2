//! Ancestral sampling (Ho et al., algorithm 2): every one of the T steps draws
//! `x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2 I)`, the mean being the posterior mean of
//! `q(x_{t-1} | x_t, x_0)` at the predicted `x_0`, with no noise at the last step.

use tch::Tensor;

use super::{ClipX0, Denoiser, Sampler, Trajectory, start};
use crate::error::Result;

/// The ancestral sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ancestral;

impl Sampler for Ancestral {
    fn network_calls(&self, big_t: usize) -> usize {
        big_t
    }

    fn run(
        &self,
        denoiser: &dyn Denoiser,
        shape: &[i64],
        clip_x0: ClipX0,
        trajectory: &mut Trajectory,
    ) -> Result<Tensor> {
        let mut x = start(shape, denoiser.device());
        for t in (1..=denoiser.process().timesteps()).rev() {
            let (x0_hat, _) = denoiser.predict(&x, t, clip_x0);
            let z = x.randn_like();
            let (mean, variance) = denoiser.reverse_step(&x0_hat, &x, t);
            x = if t > 1 {
                mean + z * variance.sqrt()
            } else {
                mean
            };
            trajectory.step(&x);
        }
        Ok(x)
    }
}
