//! Ancestral sampling (Ho et al., algorithm 2): every one of the T steps draws
//! `x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2 I)`, the mean being the posterior mean of
//! `q(x_{t-1} | x_t, x_0)` at the predicted `x_0`, with no noise at the last step.

use tch::Tensor;

use super::{ClipX0, Denoiser, Sampler, Spacing, Trajectory, kept_timesteps, start};
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
        let steps: Vec<usize> = (1..=denoiser.process().timesteps()).collect();
        run_steps(denoiser, &steps, shape, clip_x0, trajectory)
    }
}

/// Ancestral sampling over a subset of the steps (improved DDPM's respacing): from each
/// kept step to the one before it, `x_prev ~ p(x_prev | x_t)` with the two-step
/// posterior's mean at the predicted `x_0` and the model's variance of that step (fixed,
/// or learned: its interpolation between `beta'` and `beta_tilde'` of the step, which is
/// what makes 50 to 100 steps work for a model with learned variances).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RespacedAncestral {
    /// Network evaluations (steps kept).
    pub steps: usize,
    /// Which steps.
    pub spacing: Spacing,
}

impl Sampler for RespacedAncestral {
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
        let kept = kept_timesteps(denoiser.process(), self.steps, self.spacing)?;
        run_steps(denoiser, &kept, shape, clip_x0, trajectory)
    }
}

/// Ancestral steps down the rising list `steps` (ending at T) to 0; a draw at every
/// step, none added at the last.
fn run_steps(
    denoiser: &dyn Denoiser,
    steps: &[usize],
    shape: &[i64],
    clip_x0: ClipX0,
    trajectory: &mut Trajectory,
) -> Result<Tensor> {
    let mut x = start(shape, denoiser.device());
    for i in (0..steps.len()).rev() {
        let (t, prev) = (steps[i], if i == 0 { 0 } else { steps[i - 1] });
        let z = x.randn_like();
        let (mean, variance) = denoiser.ancestral_step(&x, t, prev, clip_x0)?;
        x = if prev > 0 {
            mean + z * variance.sqrt()
        } else {
            mean
        };
        trajectory.step(&x);
    }
    Ok(x)
}
