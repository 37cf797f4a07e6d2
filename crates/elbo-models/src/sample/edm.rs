//! EDM's samplers (Karras et al. 2022, Algorithms 1 and 2) on any [`Denoiser`]: Euler
//! or Heun steps of the probability-flow ODE `dx/dσ = (x - D(x; σ)) / σ` down a grid of
//! noise levels, with the optional stochastic "churn". A variance-preserving model is
//! seen through `σ = sqrt((1 - abar) / abar)` and `x = x_t / sqrt(abar)`, its prediction
//! of `x_0` being `D`; the grid is the model's own steps nearest EDM's ρ = 7 levels by
//! default (`-karras`), and a churned level `σ̂` is the nearest of the model's levels
//! (EDM's `round_sigma`). Euler's steps are DDIM's (`eta = 0`) on the same steps.
//!
//! The step arithmetic is `elbo_math::edm`'s, and the sampler is tested against
//! `elbo_math::edm::sample` written out in f64.

use elbo_math::edm::{Churn, Solver, network_calls};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{ClipX0, Denoiser, NoiseProcess, Sampler, Spacing, Trajectory, kept_timesteps, start};
use crate::error::Result;

/// Euler or Heun, as a sampler name says (`euler-N`, `heun-N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdmSolver {
    /// One network call per step.
    Euler,
    /// Two per step but the last: `2N - 1` calls.
    Heun,
}

impl EdmSolver {
    fn math(self) -> Solver {
        match self {
            EdmSolver::Euler => Solver::Euler,
            EdmSolver::Heun => Solver::Heun,
        }
    }
}

/// The churn of Algorithm 2 as a sampler name gives it (`-churn=S` with optional
/// `-tmin=`, `-tmax=`, `-snoise=`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdmChurn {
    /// `S_churn`.
    pub churn: f64,
    /// `S_tmin` (0 by default).
    pub tmin: f64,
    /// `S_tmax` (`None`: no upper bound).
    pub tmax: Option<f64>,
    /// `S_noise` (1 by default).
    pub noise: f64,
}

impl EdmChurn {
    /// As elbo-math takes it.
    pub fn math(self) -> Churn {
        Churn {
            s_churn: self.churn,
            s_tmin: self.tmin,
            s_tmax: self.tmax.unwrap_or(f64::INFINITY),
            s_noise: self.noise,
        }
    }
}

/// EDM's sampler over `steps` noise levels of the model (then 0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edm {
    /// N: the noise levels visited (the model's steps kept).
    pub steps: usize,
    /// Euler or Heun.
    pub solver: EdmSolver,
    /// Which of the model's steps (Karras's ρ = 7 levels by default).
    pub spacing: Spacing,
    /// Algorithm 2's churn; `None`: Algorithm 1, deterministic.
    pub churn: Option<EdmChurn>,
}

/// `σ(t) = exp(-log_snr(t) / 2)`, 0 at t = 0.
fn sigma(process: &dyn NoiseProcess, t: usize) -> Result<f64> {
    if t == 0 {
        return Ok(0.0);
    }
    Ok((-process.log_snr(t)? / 2.0).exp())
}

impl Sampler for Edm {
    fn network_calls(&self, _big_t: usize) -> usize {
        network_calls(self.solver.math(), self.steps)
    }

    fn run(
        &self,
        denoiser: &dyn Denoiser,
        shape: &[i64],
        clip_x0: ClipX0,
        trajectory: &mut Trajectory,
    ) -> Result<Tensor> {
        let process = denoiser.process();
        let big_t = process.timesteps();
        let mut steps: Vec<usize> = kept_timesteps(process, self.steps, self.spacing)?;
        steps.reverse();
        steps.push(0);
        let levels: Vec<f64> = (1..=big_t)
            .map(|t| sigma(process, t))
            .collect::<Result<_>>()?;
        let churn = self.churn.map_or_else(Churn::none, EdmChurn::math);
        let n = self.steps;
        // D(x; σ(t)): the model's x_0 at x_t = x / sqrt(1 + σ²).
        let denoise = |x: &Tensor, t: usize| -> Result<Tensor> {
            let scale = (1.0 + sigma(process, t)?.powi(2)).sqrt();
            Ok(denoiser.predict(&(x / scale), t, clip_x0).0)
        };
        // x_T ~ N(0, I) in the model's scale is x = x_T sqrt(1 + σ_T²).
        let mut x =
            start(shape, denoiser.device()) * (1.0 + sigma(process, steps[0])?.powi(2)).sqrt();
        for i in 0..n {
            let (t, t_next) = (steps[i], steps[i + 1]);
            let (level, next) = (sigma(process, t)?, sigma(process, t_next)?);
            // A draw every step, used or not: the random stream does not depend on the
            // churn settings.
            let z = x.randn_like();
            let gamma = churn.gamma(level, n);
            let mut t_hat = t;
            if gamma > 0.0 {
                // The model's level nearest to σ (1 + γ), not below σ.
                let target = level * (1.0 + gamma);
                t_hat = (t..=big_t)
                    .min_by(|&a, &b| {
                        (levels[a - 1] - target)
                            .abs()
                            .total_cmp(&(levels[b - 1] - target).abs())
                    })
                    .unwrap_or(t);
            }
            let level_hat = sigma(process, t_hat)?;
            if level_hat > level {
                let scale = churn.s_noise * (level_hat * level_hat - level * level).sqrt();
                x += z * scale;
            }
            let d = (&x - denoise(&x, t_hat)?) / level_hat;
            let euler = &x + &d * (next - level_hat);
            let in_model_scale = |x: &Tensor| x / (1.0 + next * next).sqrt();
            x = match (self.solver, t_next > 0) {
                (EdmSolver::Heun, true) => {
                    // The trajectory counts network calls: the predictor's state is one.
                    trajectory.step(&in_model_scale(&euler));
                    let d_next = (&euler - denoise(&euler, t_next)?) / next;
                    x + (d + d_next) * (0.5 * (next - level_hat))
                }
                _ => euler,
            };
            trajectory.step(&in_model_scale(&x));
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::gaussian::GaussianDenoiser;
    use crate::sample::{SamplerSpec, ddim::Ddim};
    use elbo_math::NoiseSchedule;
    use ndarray::Array1;
    use tch::{Device, Kind};

    const N: i64 = 2048;

    fn denoiser() -> GaussianDenoiser {
        GaussianDenoiser {
            schedule: NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap(),
            mu: 0.3,
            s: 0.5,
        }
    }

    fn run(spec: &str, denoiser: &GaussianDenoiser) -> Tensor {
        let spec: SamplerSpec = spec.parse().unwrap();
        tch::manual_seed(5);
        spec.build()
            .run(denoiser, &[N], ClipX0::None, &mut Trajectory::new(0, 1))
            .unwrap()
    }

    fn f64s(t: &Tensor) -> Array1<f64> {
        Array1::from(Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap())
    }

    /// The same run written out in f64 with elbo-math's Algorithm 2 (1 without churn):
    /// the levels of the model's steps the sampler keeps, its `round_sigma` the nearest
    /// level of the model, and the same draws (libtorch's, in the sampler's order: the
    /// start, then one per step).
    fn reference(spec: &str, denoiser: &GaussianDenoiser) -> Array1<f64> {
        let SamplerSpec::Edm(edm) = spec.parse::<SamplerSpec>().unwrap() else {
            panic!("{spec} is not EDM's")
        };
        let process: &dyn NoiseProcess = &denoiser.schedule;
        let levels: Vec<f64> = (1..=1000).map(|t| sigma(process, t).unwrap()).collect();
        let mut sigmas: Vec<f64> = kept_timesteps(process, edm.steps, edm.spacing)
            .unwrap()
            .iter()
            .rev()
            .map(|&t| levels[t - 1])
            .collect();
        sigmas.push(0.0);
        tch::manual_seed(5);
        let start = f64s(&Tensor::randn([N], (Kind::Float, Device::Cpu)));
        let draws: Vec<Array1<f64>> = (0..edm.steps)
            .map(|_| f64s(&Tensor::randn([N], (Kind::Float, Device::Cpu))))
            .collect();
        let (mu, s2) = (denoiser.mu, denoiser.s * denoiser.s);
        let x = start * (1.0 + sigmas[0] * sigmas[0]).sqrt();
        elbo_math::edm::sample(
            &x,
            &sigmas,
            edm.solver.math(),
            &edm.churn.map_or_else(Churn::none, EdmChurn::math),
            |x, s| Ok(x.mapv(|v| mu + s2 / (s2 + s * s) * (v - mu))),
            |target| {
                *levels
                    .iter()
                    .min_by(|a, b| (*a - target).abs().total_cmp(&(*b - target).abs()))
                    .unwrap()
            },
            |i| draws[i].clone(),
        )
        .unwrap()
    }

    fn gap(a: &Array1<f64>, b: &Array1<f64>) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Euler, Heun, and Heun with churn equal the f64 algorithm on the same draws (the
    /// tensor side is float32: about 1e-6 relative per step over the data's unit scale);
    /// Euler's steps are DDIM's on the same steps.
    #[test]
    fn euler_and_heun_with_and_without_churn_follow_the_algorithms_in_f64() {
        let _generator = crate::testing::generator_lock();
        let d = denoiser();
        for spec in [
            "euler-10",
            "heun-10",
            "heun-18-logsnr",
            "heun-10-churn=30-tmin=0.05-tmax=50-snoise=1.003",
        ] {
            let got = f64s(&run(spec, &d));
            let gap = gap(&got, &reference(spec, &d));
            assert!(gap < 2e-4, "{spec}: {gap}");
        }
        let ddim = SamplerSpec::Ddim(Ddim {
            steps: 10,
            eta: 0.0,
            spacing: Spacing::Karras,
        });
        tch::manual_seed(5);
        let by_ddim = ddim
            .build()
            .run(&d, &[N], ClipX0::None, &mut Trajectory::new(0, 1))
            .unwrap();
        let gap = gap(&f64s(&by_ddim), &f64s(&run("euler-10", &d)));
        assert!(gap < 1e-4, "euler-10 vs ddim-10-karras: {gap}");
    }

    /// On the Gaussian test bed (the model's own steps nearest Karras's levels, from
    /// sigma = 157 at t = T), halving the step halves Euler's error (order 1: seen 0.25,
    /// 0.128, 0.064 at 20, 40, 80 levels) and quarters Heun's (order 2: 0.43, 0.085,
    /// 0.019 at 10, 20, 40), so that at 39 network calls Heun (20 levels) beats Euler at
    /// 40; churn adds noise.
    #[test]
    fn euler_is_first_order_heun_second_order_and_churn_is_stochastic() {
        let _generator = crate::testing::generator_lock();
        let d = denoiser();
        let (s2, mu) = (0.25, 0.3);
        let process: &dyn NoiseProcess = &d.schedule;
        let (top, bottom) = (sigma(process, 1000).unwrap(), sigma(process, 1).unwrap());
        tch::manual_seed(5);
        let start =
            f64s(&Tensor::randn([N], (Kind::Float, Device::Cpu))) * (1.0 + top * top).sqrt();
        // The exact flow from x_T down to sigma(1), then the jump to D there that every
        // sampler's last step makes.
        let truth = start.mapv(|x| {
            let at_bottom = mu + (x - mu) * ((s2 + bottom * bottom) / (s2 + top * top)).sqrt();
            mu + s2 / (s2 + bottom * bottom) * (at_bottom - mu)
        });
        let error = |spec: &str| gap(&f64s(&run(spec, &d)), &truth);
        let euler = ["euler-20", "euler-40", "euler-80"].map(error);
        let heun = ["heun-10", "heun-20", "heun-40"].map(error);
        for pair in euler.windows(2) {
            let ratio = pair[0] / pair[1];
            assert!((1.7..2.3).contains(&ratio), "Euler's errors {euler:?}");
        }
        for pair in heun.windows(2) {
            assert!(pair[0] / pair[1] > 3.5, "Heun's errors {heun:?}");
        }
        assert!(heun[1] < euler[1], "Heun {heun:?}, Euler {euler:?}");
        let churned = f64s(&run("heun-10-churn=30", &d));
        assert!(
            gap(&churned, &f64s(&run("heun-10", &d))) > 1e-2,
            "churn added no noise"
        );
    }

    #[test]
    fn network_calls_are_n_for_euler_and_2n_minus_1_for_heun() {
        for (spec, calls) in [
            ("euler-18", 18),
            ("heun-18", 35),
            ("heun-1", 1),
            ("heun-10", 19),
        ] {
            let spec: SamplerSpec = spec.parse().unwrap();
            assert_eq!(spec.build().network_calls(1000), calls, "{spec}");
        }
    }
}
