//! UniPC (Zhao et al., 2023), variant bh2, order 2, in data-prediction form: the
//! DPM-Solver++ 2M step as predictor, and after each network call the corrector UniC,
//! which takes the step that led here again with the new prediction as one more point
//! (no extra network call) and replaces the predicted state by the corrected one. Its
//! weights come from `elbo_math::unipc` (f64). The step to the data is the prediction of
//! `x_0` itself and is not corrected (no network call follows it).

use std::collections::VecDeque;

use elbo_math::dpm_solver::{Point, step_orders};
use elbo_math::unipc::corrector;
use tch::Tensor;

use super::dpm::{combine, math, point_at, solver_step, step_below};
use super::{ClipX0, Denoiser, Sampler, Spacing, Trajectory, kept_timesteps, start};
use crate::error::Result;

/// The UniPC sampler (bh2, order 2, with its corrector).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UniPc {
    /// Network evaluations (timesteps kept).
    pub steps: usize,
    /// Which timesteps.
    pub spacing: Spacing,
}

impl Sampler for UniPc {
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
        let orders = step_orders(kept.len(), 2);
        let mut x = start(shape, denoiser.device());
        // (point, prediction of x_0 there), newest first.
        let mut history: VecDeque<(Point, Tensor)> = VecDeque::with_capacity(2);
        // The state the last step started from, and that step's order.
        let mut previous: Option<(Tensor, usize)> = None;
        for (n, i) in (1..=kept.len()).rev().enumerate() {
            let here = point_at(process, kept[i - 1])?;
            let (prediction, _) = denoiser.predict(&x, kept[i - 1], clip_x0);
            if let Some((x_start, order)) = previous.take() {
                let points: Vec<Point> = history.iter().take(order).map(|(p, _)| *p).collect();
                let c = corrector(&points, here).map_err(|e| math("UniPC", e))?;
                x = combine(
                    &x_start,
                    c.x_weight,
                    &c.data,
                    history.iter().map(|(_, d)| d),
                ) + &prediction * c.at_t;
            }
            history.push_front((here, prediction));
            history.truncate(2);
            let order = orders[n].min(history.len());
            let next = point_at(process, step_below(&kept, i))?;
            let updated = solver_step(&x, &history, order, next)?;
            previous = Some((x, order));
            x = updated;
            trajectory.step(&x);
        }
        Ok(x)
    }
}
