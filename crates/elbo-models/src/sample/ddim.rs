//! DDIM (Song et al., 2021) over a subset of the timesteps: from the predictions of `x_0`
//! and `eps` at a kept step, `x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev -
//! sigma^2) eps + sigma z`, with `sigma^2 = eta^2` times the posterior variance of the
//! respaced process (`eta = 0`: deterministic; `eta = 1`: the posterior's variance).

use tch::Tensor;

use super::{ClipX0, Denoiser, NoiseProcess, Sampler, Spacing, Trajectory, kept_timesteps, start};
use crate::error::Result;

/// The DDIM sampler.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ddim {
    /// Network evaluations (timesteps kept).
    pub steps: usize,
    /// The noise scale.
    pub eta: f64,
    /// Which timesteps.
    pub spacing: Spacing,
}

impl Sampler for Ddim {
    fn network_calls(&self, _big_t: usize) -> usize {
        self.steps
    }

    fn run(
        &self,
        denoiser: &dyn Denoiser,
        shape: &[i64],
        clip_x0: ClipX0,
        trajectory: &mut Trajectory,
    ) -> Result<Tensor> {
        let process = denoiser.process();
        let kept = kept_timesteps(process, self.steps, self.spacing)?;
        // The process itself when every step is kept, else its respaced version.
        let respaced;
        let grid: &dyn NoiseProcess = if kept.len() == process.timesteps() {
            process
        } else {
            respaced = process.respace(&kept)?;
            &respaced
        };
        let mut x = start(shape, denoiser.device());
        for i in (1..=kept.len()).rev() {
            let (x0_hat, eps_hat) = denoiser.predict(&x, kept[i - 1], clip_x0);
            let z = x.randn_like();
            let ab_prev = grid.alpha_bar(i - 1)?;
            let tilde = if i > 1 {
                grid.posterior_variance(i)?
            } else {
                0.0
            };
            let variance = self.eta * self.eta * tilde;
            let direction = (1.0 - ab_prev - variance).max(0.0).sqrt();
            x = x0_hat * ab_prev.sqrt() + eps_hat * direction + z * variance.sqrt();
            trajectory.step(&x);
        }
        Ok(x)
    }
}
